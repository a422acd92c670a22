//! Each mode's kernel aggregates -> [`Record`]s for folding: on-CPU counts as samples,
//! off-CPU and lock waits as microseconds, with the frame each adds at its leaf (the task
//! state; the lock, named from the process's symbols where it can be).

use std::collections::BTreeMap;

use hindsight_common::lock_flags;

use super::{fold::Record, process::ProcessTable, report::LockSummary, symbolize::Symbolizer};
use crate::bpf::{RawProfile, locks, offcpu::TaskState};

fn micros(ns: u64) -> u64 {
    (ns + 500) / 1000
}

pub fn oncpu(raw: &RawProfile) -> Vec<Record> {
    raw.oncpu
        .iter()
        .map(|s| Record {
            tgid: s.key.tgid,
            user_stack_id: s.key.user_stack_id,
            kernel_stack_id: s.key.kernel_stack_id,
            tid: s.key.pid,
            weight: s.count,
            count: s.count,
            leaf: None,
        })
        .collect()
}

pub fn offcpu(raw: &RawProfile) -> Vec<Record> {
    raw.offcpu
        .iter()
        .map(|(key, stats)| Record {
            tgid: key.tgid,
            user_stack_id: key.user_stack_id,
            kernel_stack_id: key.kernel_stack_id,
            tid: key.pid,
            weight: micros(stats.total_ns),
            count: stats.count,
            leaf: Some(TaskState::from_code(key.state).frame().to_owned()),
        })
        .collect()
}

/// Lock records, and the per-lock table (heaviest first) for the summary.
pub fn locks(
    raw: &RawProfile,
    processes: &ProcessTable,
    symbolizer: &mut Symbolizer,
) -> (Vec<Record>, Vec<LockSummary>) {
    let mut names: BTreeMap<(u32, u64, u32), String> = BTreeMap::new();
    let mut table: BTreeMap<(u32, u64, u32), LockSummary> = BTreeMap::new();
    let mut records = Vec::new();
    for (key, stats) in &raw.locks {
        let id = (key.tgid, key.lock_addr, key.flags);
        let name = names
            .entry(id)
            .or_insert_with(|| lock_name(key.tgid, key.lock_addr, key.flags, processes, symbolizer))
            .clone();
        let entry = table.entry(id).or_insert_with(|| LockSummary {
            lock: name.clone(),
            kind: locks::kind(key.flags),
            process: processes
                .get(key.tgid)
                .map_or_else(|| format!("[pid {}]", key.tgid), |p| p.comm.clone()),
            tgid: key.tgid,
            waits: 0,
            total_ns: 0,
            max_ns: 0,
        });
        entry.waits += stats.count;
        entry.total_ns += stats.total_ns;
        entry.max_ns = entry.max_ns.max(stats.max_ns);
        records.push(Record {
            tgid: key.tgid,
            user_stack_id: key.user_stack_id,
            kernel_stack_id: key.kernel_stack_id,
            // Lock keys are per process.
            tid: 0,
            weight: micros(stats.total_ns),
            count: stats.count,
            leaf: Some(format!("[{} {name}]", locks::kind(key.flags))),
        });
    }
    let mut table: Vec<LockSummary> = table.into_values().collect();
    table.sort_by_key(|l| std::cmp::Reverse(l.total_ns));
    (records, table)
}

/// A futex by the variable it lies in (`ledger_lock`), else its address; a kernel lock by
/// its kernel symbol when it is a static one, else its address.
fn lock_name(
    tgid: u32,
    addr: u64,
    flags: u32,
    processes: &ProcessTable,
    symbolizer: &mut Symbolizer,
) -> String {
    if flags & lock_flags::FUTEX != 0 {
        processes
            .get(tgid)
            .and_then(|p| symbolizer.data(p, addr))
            .unwrap_or_else(|| format!("0x{addr:x}"))
    } else {
        symbolizer
            .kernel_data(addr)
            .unwrap_or_else(|| format!("0x{addr:x}"))
    }
}
