//! User side of the off-CPU program (ebpf-programs/src/offcpu.rs): its settings, attaching
//! it to `sched_switch`, and draining its waits.

use std::{collections::HashMap, time::Duration};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, PerCpuHashMap},
};
use hindsight_common::{OffCpuKey, OffCpuStart, WaitStats, offcpu_state, stack_copy};

use super::{
    BpfError,
    session::{attach_raw_tracepoint, map_ref},
};

/// A task state an off-CPU wait is classified into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum TaskState {
    /// Preempted while runnable: waiting for a CPU.
    Runnable,
    /// Voluntary sleep (TASK_INTERRUPTIBLE): I/O waits, poll, sleep, futex...
    Sleeping,
    /// Uninterruptible ("D"): usually disk I/O or kernel locks.
    Uninterruptible,
    /// Stopped, traced, parked, idle kernel threads.
    Other,
}

impl TaskState {
    pub const ALL: [TaskState; 4] = [
        TaskState::Runnable,
        TaskState::Sleeping,
        TaskState::Uninterruptible,
        TaskState::Other,
    ];

    fn code(self) -> u32 {
        match self {
            TaskState::Runnable => offcpu_state::RUNNABLE,
            TaskState::Sleeping => offcpu_state::SLEEPING,
            TaskState::Uninterruptible => offcpu_state::UNINTERRUPTIBLE,
            TaskState::Other => offcpu_state::OTHER,
        }
    }

    pub fn from_code(code: u32) -> Self {
        Self::ALL
            .into_iter()
            .find(|s| s.code() == code)
            .unwrap_or(TaskState::Other)
    }

    /// The frame that marks a wait's state at the top of its stack.
    pub fn frame(self) -> &'static str {
        match self {
            TaskState::Runnable => "[runnable: waiting for a CPU]",
            TaskState::Sleeping => "[sleeping]",
            TaskState::Uninterruptible => "[uninterruptible (D)]",
            TaskState::Other => "[stopped/parked/idle]",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OffCpuSettings {
    /// Shorter waits are dropped in the kernel.
    pub min_block: Duration,
    /// States to record.
    pub states: Vec<TaskState>,
    /// How many switch-outs in a row of a thread from the same user stack, in the same
    /// state, reuse its last kernel stack instead of walking it again (0: walk every time).
    pub kernel_stack_reuses: u32,
}

/// The default of `--offcpu-kstack-reuse`: the kernel stack is walked at least every 16th
/// switch-out of a thread that keeps blocking in the same place.
pub const DEFAULT_KERNEL_STACK_REUSES: u32 = 15;

impl Default for OffCpuSettings {
    fn default() -> Self {
        Self {
            min_block: Duration::ZERO,
            states: TaskState::ALL.to_vec(),
            kernel_stack_reuses: DEFAULT_KERNEL_STACK_REUSES,
        }
    }
}

impl OffCpuSettings {
    pub(super) fn state_mask(&self) -> u32 {
        self.states.iter().fold(0, |mask, s| mask | (1 << s.code()))
    }
}

pub(super) fn attach(ebpf: &mut Ebpf) -> Result<(), BpfError> {
    attach_raw_tracepoint(ebpf, "offcpu_switch", "sched_switch")
}

/// Off-CPU waits whose user stack was copied, still open at the end: (wait id, ns).
type OpenCopiedWaits = Vec<(u64, u64)>;

/// The completed waits, plus the waits still open at `stopped_ns` (CLOCK_MONOTONIC): a
/// thread blocked when the profile ends counts up to that moment. Open waits whose user
/// stack was copied are returned apart, for the unwinder to match with their copy.
pub(super) fn drain(
    ebpf: &Ebpf,
    settings: &OffCpuSettings,
    stopped_ns: u64,
) -> Result<(Vec<(OffCpuKey, WaitStats)>, OpenCopiedWaits), BpfError> {
    let mut waits: HashMap<OffCpuKey, WaitStats> =
        drain_waits(ebpf, "OFFCPU")?.into_iter().collect();
    let open: BpfHashMap<_, u64, OffCpuStart> = map_ref(ebpf, "OFFCPU_START")?;
    let min_block = settings.min_block.as_nanos() as u64;
    let mut open_copied = Vec::new();
    for entry in open.iter() {
        let (_, start) = entry.map_err(BpfError::map("OFFCPU_START"))?;
        if start.ts == 0 {
            continue; // the thread is running; the entry only keeps its last stacks
        }
        let waited = stopped_ns.saturating_sub(start.ts);
        if waited >= min_block && start.ts <= stopped_ns {
            if start.key.user_stack_id == stack_copy::COPIED {
                open_copied.push((start.wait_id, waited));
                continue;
            }
            let stats = waits.entry(start.key).or_default();
            stats.total_ns += waited;
            stats.count += 1;
            stats.max_ns = stats.max_ns.max(waited);
        }
    }
    Ok((waits.into_iter().collect(), open_copied))
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub(super) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Reads a per-CPU `K -> WaitStats` map: totals and counts summed, the largest maximum.
pub(super) fn drain_waits<K: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<Vec<(K, WaitStats)>, BpfError> {
    let map: PerCpuHashMap<_, K, WaitStats> = map_ref(ebpf, name)?;
    let mut out = Vec::new();
    for entry in map.iter() {
        let (key, values) = entry.map_err(BpfError::map(name))?;
        let mut total = WaitStats::default();
        for v in values.iter() {
            total.total_ns += v.total_ns;
            total.count += v.count;
            total.max_ns = total.max_ns.max(v.max_ns);
        }
        if total.count > 0 {
            out.push((key, total));
        }
    }
    Ok(out)
}
