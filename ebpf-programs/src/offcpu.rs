//! Off-CPU time: a raw tracepoint on `sched_switch`. When a selected thread leaves the CPU
//! we record the time and its user and kernel stacks, keyed by its `task_struct` address
//! (so no task field needs to be read, and no CO-RE); when that task is switched back in,
//! the time it was away is added to `OFFCPU[(tgid, stacks, state)]`. User space drains
//! `OFFCPU` (agent/src/bpf/offcpu.rs).
//!
//! `sched_switch`'s arguments (include/trace/events/sched.h, v6.18):
//! `(bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)`;
//! the program runs as `prev`, before the switch.

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::BPF_ANY,
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};
use hindsight_common::{Counter, OffCpuKey, OffCpuStart, WaitStats, offcpu_state};

use crate::shared::{USER_STACK, add_wait, announce, count, selected, stack_id, thread_of};

/// Waits shorter than this are not recorded (`--min-block`).
#[unsafe(no_mangle)]
static MIN_BLOCK_NS: Global<u64> = Global::new(0);

/// Bit `1 << state` set for each `offcpu_state` to record (`--state`).
#[unsafe(no_mangle)]
static STATE_MASK: Global<u32> = Global::new(u32::MAX);

// Task states (include/linux/sched.h, v6.18).
const TASK_INTERRUPTIBLE: u64 = 0x1;
const TASK_UNINTERRUPTIBLE: u64 = 0x2;
const EXIT_DEAD: u64 = 0x10;
const EXIT_ZOMBIE: u64 = 0x20;
const TASK_DEAD: u64 = 0x80;
const TASK_NOLOAD: u64 = 0x400;

/// Threads off the CPU now, by `task_struct` address. LRU: a task that exits while off
/// the CPU (or a wait longer than the profile) is evicted rather than filling the map.
#[map]
static OFFCPU_START: LruHashMap<u64, OffCpuStart> = LruHashMap::with_max_entries(32768, 0);

/// Time off the CPU per (process, stacks, state), per CPU.
#[map]
static OFFCPU: PerCpuHashMap<OffCpuKey, WaitStats> = PerCpuHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn classify(preempt: u64, state: u64) -> u32 {
    if preempt != 0 || state == 0 {
        offcpu_state::RUNNABLE
    } else if state & TASK_NOLOAD != 0 {
        offcpu_state::OTHER
    } else if state & TASK_UNINTERRUPTIBLE != 0 {
        offcpu_state::UNINTERRUPTIBLE
    } else if state & TASK_INTERRUPTIBLE != 0 {
        offcpu_state::SLEEPING
    } else {
        offcpu_state::OTHER
    }
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn offcpu_switch(ctx: RawTracePointContext) -> i32 {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);

    // `next` comes back: close its wait.
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(out) = unsafe { OFFCPU_START.get(&next) }.copied() {
        let _ = OFFCPU_START.remove(&next);
        let waited = now.saturating_sub(out.ts);
        if waited < MIN_BLOCK_NS.load() {
            count(Counter::OffCpuSkipped);
        } else if add_wait(&OFFCPU, &out.key, waited) {
            count(Counter::OffCpuRecorded);
        } else {
            count(Counter::OffCpuMapFull);
        }
    }

    // `prev` (the current task) leaves: open its wait.
    if ctx.pid() == 0 || prev_state & (EXIT_DEAD | EXIT_ZOMBIE | TASK_DEAD) != 0 {
        return 0; // idle, or exiting for good
    }
    let tgid = ctx.tgid();
    if !selected(tgid) {
        return 0;
    }
    let state = classify(preempt, prev_state);
    if STATE_MASK.load() & (1 << state) == 0 {
        count(Counter::OffCpuSkipped);
        return 0; // before the stack walks, which are the cost
    }
    let out = OffCpuStart {
        ts: now,
        key: OffCpuKey {
            tgid,
            user_stack_id: stack_id(&ctx, USER_STACK),
            kernel_stack_id: stack_id(&ctx, 0),
            state,
            pid: thread_of(&ctx),
        },
    };
    announce(&ctx, tgid);
    count(Counter::OffCpuSwitchOut);
    if OFFCPU_START.insert(&prev, &out, BPF_ANY as u64).is_err() {
        count(Counter::OffCpuMapFull);
    }
    0
}

// Keeps `WaitStats` referenced for the map's BTF even if the optimizer inlines everything.
const _: usize = size_of::<WaitStats>();
