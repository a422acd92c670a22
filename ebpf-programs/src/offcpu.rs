//! Off-CPU time: a raw tracepoint on `sched_switch`. When a selected thread leaves the CPU
//! we record the time and its user and kernel stacks, keyed by its `task_struct` address
//! (so no task field needs to be read, and no CO-RE); when that task is switched back in,
//! the time it was away is added to `OFFCPU[(tgid, stacks, state)]`. User space drains
//! `OFFCPU` (agent/src/bpf/offcpu.rs).
//!
//! Cost: walking the kernel stack (ORC) is most of the program's time, and a thread that
//! blocks again and again (a server loop) does so from the same user stack, in the same
//! state, through the same system call and kernel path. So the entry of a thread stays in
//! `OFFCPU_START` while it runs, and a switch-out from the same user stack, in the same
//! state and system call, reuses the kernel stack id of the previous one, up to
//! `KERNEL_STACK_REUSES` times in a row; then the kernel stack is walked again. 0 walks it
//! every time. The system call number (from the task's user registers) costs far less
//! than a walk and tells apart, say, `read` and `nanosleep` made from one `syscall()` site.
//!
//! `sched_switch`'s arguments (include/trace/events/sched.h, v6.18):
//! `(bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)`;
//! the program runs as `prev`, before the switch.

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::BPF_ANY,
    bindings::pt_regs,
    helpers::{
        bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_task_pt_regs, generated::bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};
use hindsight_common::{
    Counter, OffCpuKey, OffCpuStart, WaitDone, WaitStats, offcpu_state, stack_copy,
};

use crate::shared::{
    Budget, STACK_COPIES, USER_STACK, add_wait, announce, copies_enabled, copy_ring_flags,
    copy_user_stack, count, selected, send_copy, stack_id, take_copy_budget, thread_of,
};

/// Waits shorter than this are not recorded (`--min-block`).
#[unsafe(no_mangle)]
static MIN_BLOCK_NS: Global<u64> = Global::new(0);

/// Bit `1 << state` set for each `offcpu_state` to record (`--state`).
#[unsafe(no_mangle)]
static STATE_MASK: Global<u32> = Global::new(u32::MAX);

/// How many switch-outs in a row may reuse a thread's last kernel stack
/// (`--offcpu-kstack-reuse`).
#[unsafe(no_mangle)]
static KERNEL_STACK_REUSES: Global<u32> = Global::new(0);

// Task states (include/linux/sched.h, v6.18).
const TASK_INTERRUPTIBLE: u64 = 0x1;
const TASK_UNINTERRUPTIBLE: u64 = 0x2;
const EXIT_DEAD: u64 = 0x10;
const EXIT_ZOMBIE: u64 = 0x20;
const TASK_DEAD: u64 = 0x80;
const TASK_NOLOAD: u64 = 0x400;

/// The last switch-out of each recorded thread, by `task_struct` address: its open wait
/// (`ts != 0`) or, while it runs, the stacks to reuse. Removed at the task's last switch;
/// LRU, so that entries missed there (none expected) are evicted rather than filling it.
#[map]
pub static OFFCPU_START: LruHashMap<u64, OffCpuStart> = LruHashMap::with_max_entries(32768, 0);

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

/// The current task's saved user registers (or a kernel thread's, whose `cs` says so).
#[inline(always)]
fn current_regs() -> Option<pt_regs> {
    // SAFETY: bpf_get_current_task_btf takes no arguments and returns the current task as
    // a trusted BTF pointer, which is what bpf_task_pt_regs requires; the registers are read
    // with bpf_probe_read_kernel, which checks the address.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        bpf_probe_read_kernel(regs).ok()
    }
}

/// The first page is never mapped (`vm.mmap_min_addr` is at least 4096; only a
/// CAP_SYS_RAWIO process can map below it, e.g. for DOS emulation).
const NEVER_MAPPED: u64 = 4096;

/// Frames read by `user_chain` before it gives up (the kernel walks up to 127).
const CHAIN_FRAMES: usize = 32;

#[inline(always)]
fn mix(h: u64, v: u64) -> u64 {
    let h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// A hash of what the kernel's frame-pointer walk of the current user stack reads: the
/// registers, then each frame's (next frame, return address) up to the end of the chain.
/// Equal hashes mean the walk would give the same stack, so its stack id can be reused;
/// 0 when that cannot be vouched for (more than `CHAIN_FRAMES` frames, or a frame pointer
/// that does not go up the stack: garbage the kernel would follow further than we do).
///
/// Cheaper than the walk because the walk ends by reading at the chain's last frame
/// pointer, 0 at the outermost frame (or a small number left by code without frame
/// pointers), which faults: a page fault per walk, most of its cost. Here those end the
/// chain without a read.
#[inline(always)]
fn user_chain(regs: &pt_regs) -> u64 {
    if regs.cs & 3 != 3 {
        return 0; // no user registers: a kernel thread
    }
    let mut h = mix(
        mix(mix(0x6a09_e667_f3bc_c908, regs.rip), regs.rsp),
        regs.rbp,
    );
    let mut fp = regs.rbp;
    let mut floor = regs.rsp;
    for _ in 0..CHAIN_FRAMES {
        if fp < NEVER_MAPPED {
            // 0 at the outermost frame, or a small number that code without frame
            // pointers left in the register: the kernel's read there faults and its walk
            // stops, so this is where it ends too.
            return h | 1;
        }
        if fp < floor || fp - regs.rsp > 8 << 20 {
            return 0;
        }
        let mut frame = [0u64; 2];
        // SAFETY: 16 bytes into a local array; the helper checks the user address.
        let ret = unsafe {
            bpf_probe_read_user(
                frame.as_mut_ptr().cast(),
                16,
                fp as *const core::ffi::c_void,
            )
        };
        if ret != 0 {
            return mix(h, 1) | 1; // unreadable: the kernel's walk stops here too
        }
        h = mix(mix(h, frame[0]), frame[1]);
        floor = fp + 16;
        fp = frame[0];
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn offcpu_switch(ctx: RawTracePointContext) -> i32 {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);

    // `next` comes back: close its wait, keep its stacks.
    if let Some(out) = OFFCPU_START.get_ptr_mut(&next) {
        // SAFETY: a valid map value; `next` is not running, so no other program instance
        // writes this entry now (its switch-out ran before, on whichever CPU).
        let out = unsafe { &mut *out };
        if out.ts != 0 {
            let waited = now.saturating_sub(out.ts);
            out.ts = 0;
            if out.key.user_stack_id == stack_copy::COPIED {
                // Its stack went to user space at switch-out: so does its end (0: too short).
                let done = WaitDone {
                    kind: stack_copy::OFFCPU_DONE,
                    _pad: 0,
                    wait_id: out.wait_id,
                    ns: if waited < MIN_BLOCK_NS.load() {
                        0
                    } else {
                        waited
                    },
                };
                if STACK_COPIES.output(&done, copy_ring_flags()).is_err() {
                    count(Counter::StackCopyLost);
                } else if done.ns == 0 {
                    count(Counter::OffCpuSkipped);
                } else {
                    count(Counter::OffCpuRecorded);
                }
            } else if waited < MIN_BLOCK_NS.load() {
                count(Counter::OffCpuSkipped);
            } else if add_wait(&OFFCPU, &out.key, waited) {
                count(Counter::OffCpuRecorded);
            } else {
                count(Counter::OffCpuMapFull);
            }
        }
    }

    // `prev` (the current task) leaves: open its wait.
    if ctx.pid() == 0 {
        return 0; // idle
    }
    if prev_state & (EXIT_DEAD | EXIT_ZOMBIE | TASK_DEAD) != 0 {
        // Exiting for good: its entry goes now rather than when the LRU evicts it.
        let _ = OFFCPU_START.remove(&prev);
        return 0;
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
    let regs = current_regs();
    let syscall = regs.map_or(-1, |r| r.orig_rax as i32);
    count(Counter::OffCpuSwitchOut);
    // `--unwind dwarf|auto`: the user stack goes to user space now, while it is the
    // current task's; frame pointers when over budget or when it cannot be sent.
    let mut walked_kernel = None;
    let mut walked_user = None;
    if copies_enabled() && take_copy_budget(now, Budget::OffCpu) {
        announce(&ctx, tgid);
        let kernel_stack_id = stack_id(&ctx, 0);
        walked_kernel = Some(kernel_stack_id);
        let fp_stack_id = stack_id(&ctx, USER_STACK);
        walked_user = Some(fp_stack_id);
        // Unique per CPU and switch: the switch-out time and the CPU.
        // SAFETY: helper without arguments.
        let wait_id = (now << 8) | u64::from(unsafe { bpf_get_smp_processor_id() } & 0xff);
        let copied = copy_user_stack().is_some_and(|record| {
            record.kind = stack_copy::OFFCPU;
            record.tgid = tgid;
            record.tid = thread_of(&ctx);
            record.kernel_stack_id = kernel_stack_id;
            record.extra = state;
            record.lock_addr = 0;
            record.value = wait_id;
            record.fp_stack_id = fp_stack_id;
            send_copy(record)
        });
        if copied {
            let key = OffCpuKey {
                tgid,
                user_stack_id: stack_copy::COPIED,
                kernel_stack_id,
                state,
                pid: thread_of(&ctx),
            };
            // SAFETY: a valid map value; only this task's own switches write its entry.
            let last = OFFCPU_START.get_ptr_mut(&prev).map(|p| unsafe { &mut *p });
            open_wait(last, prev, now, key, syscall, wait_id, 0);
            return 0;
        }
    }
    // Frame pointers: the user stack is walked unless its frame chain is the one walked
    // last time (exact: `user_chain`); the kernel stack may be reused.
    let chain = regs.map_or(0, |r| user_chain(&r));
    // SAFETY: a valid map value; `prev` is the current task, and only its own switch-out
    // (here) and switch-in (after this) write its entry.
    let mut last = OFFCPU_START.get_ptr_mut(&prev).map(|p| unsafe { &mut *p });
    let user_stack_id = match (walked_user, &last) {
        (Some(id), _) => id,
        (None, Some(last))
            if chain != 0
                && last.user_chain == chain
                && last.key.user_stack_id >= 0
                && last.key.tgid == tgid =>
        {
            count(Counter::OffCpuUserStackReused);
            last.key.user_stack_id
        }
        _ => stack_id(&ctx, USER_STACK),
    };
    if let Some(last) = last.as_deref_mut() {
        let same_place = last.key.tgid == tgid
            && last.key.state == state
            && last.syscall == syscall
            && user_stack_id >= 0
            && last.key.user_stack_id == user_stack_id
            && last.key.kernel_stack_id >= 0;
        if walked_kernel.is_none() && same_place && last.reuses < KERNEL_STACK_REUSES.load() {
            last.reuses += 1;
            last.user_chain = chain;
            last.ts = now;
            count(Counter::OffCpuKernelStackReused);
            // No announcement either: this task's earlier switch-out made it, and
            // `process_exec` drops the entry of a task that execs.
            return 0;
        }
    }
    announce(&ctx, tgid);
    let key = OffCpuKey {
        tgid,
        user_stack_id,
        kernel_stack_id: walked_kernel.unwrap_or_else(|| stack_id(&ctx, 0)),
        state,
        pid: thread_of(&ctx),
    };
    open_wait(last, prev, now, key, syscall, 0, chain);
    0
}

/// Opens the wait of the task `prev` (the current one) with freshly walked stacks: its
/// entry `last` (looked up by the caller) is rewritten in place, or one is inserted.
#[inline(always)]
fn open_wait(
    last: Option<&mut OffCpuStart>,
    prev: u64,
    now: u64,
    key: OffCpuKey,
    syscall: i32,
    wait_id: u64,
    user_chain: u64,
) {
    if let Some(last) = last {
        last.key = key;
        last.reuses = 0;
        last.syscall = syscall;
        last.wait_id = wait_id;
        last.user_chain = user_chain;
        last.ts = now;
        return;
    }
    let out = OffCpuStart {
        ts: now,
        key,
        reuses: 0,
        syscall,
        wait_id,
        user_chain,
    };
    if OFFCPU_START.insert(&prev, &out, BPF_ANY as u64).is_err() {
        count(Counter::OffCpuMapFull);
    }
}

// Keeps `WaitStats` referenced for the map's BTF even if the optimizer inlines everything.
const _: usize = size_of::<WaitStats>();
