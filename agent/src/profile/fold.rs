//! Raw kernel records -> folded stacks: resolves each record's stack ids to frames
//! (symbolized per process), prefixes the process name, appends the record's own leaf frame
//! (an off-CPU state, a lock), and merges identical stacks. Every record lands in the
//! output; a stack the kernel could not record becomes a `[lost]` frame, one it could not
//! walk an `[unknown]` frame. Kernel frames of the tracing machinery itself (the
//! `__traceiter_*`/`bpf_trace_run*`/`bpf_prog_*` frames at the leaf of a tracepoint's
//! stack) are trimmed: they are our cost, not the workload's.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hindsight_common::errno;

use super::{
    process::ProcessTable,
    stack::{Folded, KERNEL_SUFFIX},
    symbolize::{FrameNames, Symbolizer, UNKNOWN, lookup_addr},
};

/// A stack the kernel did not record (map collision or full map).
pub const LOST: &str = "[lost]";

/// One aggregated kernel record: a process, its two stacks, a weight.
#[derive(Debug, Clone)]
pub struct Record {
    pub tgid: u32,
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
    /// Thread id when grouping per thread, else 0.
    pub tid: u32,
    /// Samples (on-CPU) or microseconds (off-CPU, locks).
    pub weight: u64,
    /// Events behind the weight: samples, waits, or lock contentions.
    pub count: u64,
    /// Frame appended above the stack (off-CPU state, lock name).
    pub leaf: Option<String>,
}

/// What folding saw, for the report. Weights are in the profile's unit.
#[derive(Debug, Default, Clone, Copy)]
pub struct FoldStats {
    pub weight: u64,
    /// Weight whose user stack was lost (collision, full map).
    pub lost_user: u64,
    /// Weight whose kernel stack was lost.
    pub lost_kernel: u64,
    /// Weight of user processes whose user stack could not be walked at all.
    pub unwalkable_user: u64,
    /// Weight whose user stack does not reach a thread or process entry point (`main`,
    /// `start_thread`, `_start`, `clone`...): cut short, typically by code built without
    /// frame pointers.
    pub truncated_user: u64,
    pub processes: usize,
    /// Processes gone before the end of the profile.
    pub exited: usize,
}

/// Outermost user frames of a whole stack.
const ENTRY_POINTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "__libc_start_main_impl",
    "main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "thread_start",
];

/// Kernel frames of the tracing machinery: they and everything above them are trimmed
/// from kernel stacks.
fn is_tracing_frame(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "__traceiter_",
        "trace_call_bpf",
        "perf_trace_",
        "__probestub_",
        "perf_syscall_",
        "bpf_get_stack",
        "__bpf_get_stack",
        "get_perf_callchain",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || name.ends_with("[bpf]")
}

/// One record's stack as frames (the process name first), with its process: what pprof
/// export labels by process and cgroup before processes are merged by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStack {
    pub tgid: u32,
    /// The thread when grouping per thread (its frame follows the process frame), else 0.
    pub tid: u32,
    pub frames: Vec<String>,
    pub weight: u64,
    /// Events behind the weight (waits, contentions; samples for on-CPU).
    pub count: u64,
}

/// Folds the records into one profile, processes of the same name merged.
pub fn fold(
    records: &[Record],
    stacks: &HashMap<u32, Vec<u64>>,
    processes: &ProcessTable,
    symbolizer: &mut Symbolizer,
) -> (Folded, FoldStats) {
    let (stacks, stats) = fold_stacks(records, stacks, processes, symbolizer);
    (Folded::from_stacks(&stacks), stats)
}

/// Resolves every record to frames, one [`ProcessStack`] per record.
pub fn fold_stacks(
    records: &[Record],
    stacks: &HashMap<u32, Vec<u64>>,
    processes: &ProcessTable,
    symbolizer: &mut Symbolizer,
) -> (Vec<ProcessStack>, FoldStats) {
    let mut stats = FoldStats::default();
    let stack = |id: i32| -> Option<&Vec<u64>> {
        if id < 0 {
            return None;
        }
        stacks.get(&(id as u32)).filter(|ips| !ips.is_empty())
    };
    // Symbolize in batches: kernel addresses together, user addresses per process.
    let mut kernel_addrs = Vec::new();
    let mut user_addrs: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for r in records {
        if let Some(ips) = stack(r.kernel_stack_id) {
            kernel_addrs.extend(ips.iter().enumerate().map(|(i, ip)| lookup_addr(i, *ip)));
        }
        if let Some(ips) = stack(r.user_stack_id) {
            user_addrs
                .entry(r.tgid)
                .or_default()
                .extend(ips.iter().enumerate().map(|(i, ip)| lookup_addr(i, *ip)));
        }
    }
    let kernel_names = symbolizer.kernel(&kernel_addrs);
    let mut user_names: HashMap<u32, HashMap<u64, FrameNames>> = HashMap::new();
    for (tgid, addrs) in &user_addrs {
        let names = match processes.get(*tgid) {
            Some(process) => symbolizer.user(process, addrs),
            None => addrs
                .iter()
                .map(|a| (*a, vec![UNKNOWN.to_owned()]))
                .collect(),
        };
        user_names.insert(*tgid, names);
    }

    let mut folded = Vec::with_capacity(records.len());
    let mut threads: HashMap<(u32, u32), String> = HashMap::new();
    let mut seen = BTreeSet::new();
    for r in records {
        stats.weight += r.weight;
        seen.insert(r.tgid);
        let process = processes.get(r.tgid);
        let mut frames =
            vec![process.map_or_else(|| format!("[pid {}]", r.tgid), |p| p.comm.clone())];
        if r.tid != 0 {
            let name = threads
                .entry((r.tgid, r.tid))
                .or_insert_with(|| thread_name(r.tgid, r.tid));
            frames.push(format!("{name} (tid {})", r.tid));
        }
        match stack(r.user_stack_id) {
            Some(ips) => {
                let names = &user_names[&r.tgid];
                let first = frames.len();
                for (i, ip) in ips.iter().enumerate().rev() {
                    frames.extend(names[&lookup_addr(i, *ip)].iter().cloned());
                }
                if !frames[first..]
                    .iter()
                    .take(2)
                    .any(|f| ENTRY_POINTS.contains(&f.as_str()))
                {
                    stats.truncated_user += r.weight;
                }
            }
            None if r.user_stack_id == -errno::EFAULT => {
                // Kernel threads have no user stack; for anything else it was unwalkable.
                if !process.is_some_and(|p| p.kernel_thread) {
                    stats.unwalkable_user += r.weight;
                    frames.push(UNKNOWN.to_owned());
                }
            }
            None => {
                stats.lost_user += r.weight;
                frames.push(LOST.to_owned());
            }
        }
        match stack(r.kernel_stack_id) {
            Some(ips) => {
                let mut kernel: Vec<&String> = ips
                    .iter()
                    .enumerate()
                    .rev()
                    .flat_map(|(i, ip)| kernel_names[&lookup_addr(i, *ip)].iter())
                    .collect();
                // From the first machinery frame on, everything leaf-ward is the probe
                // (BPF JIT code may even be named after the symbol that precedes it).
                if let Some(at) = kernel.iter().position(|f| is_tracing_frame(f)) {
                    kernel.truncate(at);
                }
                frames.extend(kernel.into_iter().map(|f| format!("{f}{KERNEL_SUFFIX}")));
            }
            // No kernel part: a sample in user mode, or a record without kernel stack.
            None if r.kernel_stack_id == -errno::EFAULT => {}
            None => {
                stats.lost_kernel += r.weight;
                frames.push(format!("{LOST}{KERNEL_SUFFIX}"));
            }
        }
        if let Some(leaf) = &r.leaf {
            frames.push(leaf.clone());
        }
        if r.weight > 0 {
            folded.push(ProcessStack {
                tgid: r.tgid,
                tid: r.tid,
                frames,
                weight: r.weight,
                count: r.count,
            });
        }
    }
    stats.processes = seen.len();
    stats.exited = seen
        .iter()
        .filter(|t| processes.get(**t).is_some_and(|p| p.exited))
        .count();
    (folded, stats)
}

/// A thread's name (its comm), or `[exited]` once it is gone.
fn thread_name(tgid: u32, tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "[exited]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn outer_fixture_fn() -> u64 {
        std::hint::black_box(1)
    }

    #[inline(never)]
    fn inner_fixture_fn() -> u64 {
        std::hint::black_box(2)
    }

    #[test]
    fn folds_our_own_stack_and_keeps_failures_visible() {
        let me = std::process::id();
        let mut processes = ProcessTable::default();
        processes.observe(me, None);
        let leaf = inner_fixture_fn as *const () as u64 + 1;
        // A return address: inside outer, past its start.
        let caller = outer_fixture_fn as *const () as u64 + 2;
        let record = |user, kernel, weight, leaf: Option<&str>| Record {
            tgid: me,
            user_stack_id: user,
            kernel_stack_id: kernel,
            // Grouped by thread when it is a wait (this test's thread).
            tid: if leaf.is_some() {
                nix::unistd::gettid().as_raw() as u32
            } else {
                0
            },
            weight,
            count: weight,
            leaf: leaf.map(str::to_owned),
        };
        let records = vec![
            record(1, -errno::EFAULT, 3, None),
            record(-errno::EEXIST, -errno::EFAULT, 2, None),
            record(1, -errno::EEXIST, 1, None),
            record(1, -errno::EFAULT, 4, Some("[sleeping]")),
        ];
        let stacks = HashMap::from([(1, vec![leaf, caller])]);
        let (folded, stats) = fold(&records, &stacks, &processes, &mut Symbolizer::new());
        assert_eq!(folded.total(), 10);
        assert_eq!(stats.weight, 10);
        assert_eq!(stats.lost_user, 2);
        assert_eq!(stats.lost_kernel, 1);
        // The fixture stack starts at outer_fixture_fn, not at an entry point.
        assert_eq!(stats.truncated_user, 8);
        let lines: Vec<String> = folded.lines().collect();
        let comm = processes.get(me).unwrap().comm.clone();
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{comm};"))
                && l.contains("outer_fixture_fn;")
                && l.contains("inner_fixture_fn")
                && l.ends_with(" 3")),
            "{lines:#?}"
        );
        assert!(lines.contains(&format!("{comm};[lost] 2")), "{lines:#?}");
        assert!(
            lines.iter().any(|l| l.ends_with(";[lost]_[k] 1")),
            "{lines:#?}"
        );
        let thread =
            std::fs::read_to_string(format!("/proc/{me}/task/{}/comm", nix::unistd::gettid()))
                .unwrap();
        let thread_frame = format!(
            "{comm};{} (tid {});",
            thread.trim_end(),
            nix::unistd::gettid()
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&thread_frame) && l.ends_with(";[sleeping] 4")),
            "{thread_frame}: {lines:#?}"
        );
    }

    #[test]
    fn tracing_frames_are_recognized() {
        for f in [
            "bpf_prog_6deef7357e7b4530_offcpu_switch",
            "bpf_trace_run4",
            "__traceiter_sched_switch",
            "x [bpf]",
        ] {
            assert!(is_tracing_frame(f), "{f}");
        }
        assert!(!is_tracing_frame("__schedule"));
    }
}
