//! Lock contention: how long tasks wait for locks, per waiter stack and lock.
//!
//! - Kernel locks: raw tracepoints `contention_begin(void *lock, unsigned int flags)` and
//!   `contention_end(void *lock, int ret)` (include/trace/events/lock.h, v6.18); the flags
//!   tell spinlock, mutex, rwsem read/write...
//! - User locks: the `syscalls:sys_enter_futex`/`sys_exit_futex` tracepoints (and the
//!   `futex_wait` syscall's) for the wait operations; the futex word's address is the lock.
//!
//! Each wait is added to `LOCKS[(lock, tgid, stacks, kind)]`; user space drains it
//! (agent/src/bpf/locks.rs) and names the lock from the process's symbols where it can.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_ANY,
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::{RawTracePointContext, TracePointContext},
};
use hindsight_common::{Counter, LockKey, WaitStats, errno, lock_flags, stack_copy};

use crate::shared::{
    Budget, USER_STACK, add_wait, announce, copies_enabled, copy_user_stack, count, selected,
    send_copy, stack_id, take_copy_budget,
};

#[repr(C)]
#[derive(Clone, Copy)]
struct WaitStart {
    ts: u64,
    key: LockKey,
}

/// Kernel lock waits in progress, by thread id.
#[map]
static KLOCK_START: HashMap<u32, WaitStart> = HashMap::with_max_entries(16384, 0);

/// Futex waits in progress, by thread id.
#[map]
static FUTEX_START: HashMap<u32, WaitStart> = HashMap::with_max_entries(16384, 0);

/// Wait time per (lock, process, stacks, kind), per CPU.
#[map]
static LOCKS: PerCpuHashMap<LockKey, WaitStats> = PerCpuHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn finish(starts: &HashMap<u32, WaitStart>, pid: u32, lock: Option<u64>) {
    // SAFETY: copied out before the entry is removed.
    let Some(start) = (unsafe { starts.get(&pid) }).copied() else {
        return;
    };
    if lock.is_some_and(|lock| lock != start.key.lock_addr) {
        return; // the end of another lock's wait: ours is still open
    }
    let _ = starts.remove(&pid);
    let waited = now().saturating_sub(start.ts);
    let mut key = start.key;
    if key.user_stack_id == stack_copy::COPIED {
        // The waiter is the current task, its user stack unchanged since the wait began:
        // copy it now, for user space to unwind.
        match copy_user_stack() {
            Some(record) => {
                record.kind = stack_copy::LOCK;
                record.tgid = key.tgid;
                record.tid = 0; // lock keys stay per process
                record.fp_stack_id = -1;
                record.kernel_stack_id = key.kernel_stack_id;
                record.extra = key.flags;
                record.lock_addr = key.lock_addr;
                record.value = waited;
                if send_copy(record) {
                    count(Counter::LockRecorded);
                    return;
                }
                key.user_stack_id = -errno::ENODATA; // shown as a lost stack
            }
            // A kernel thread: no user stack, as a frame-pointer walk would say.
            None => key.user_stack_id = -errno::EFAULT,
        }
    }
    if add_wait(&LOCKS, &key, waited) {
        count(Counter::LockRecorded);
    } else {
        count(Counter::LockMapFull);
    }
}

/// The waiter's user stack id, or `COPIED` when it is to be copied at the wait's end
/// (`--unwind dwarf|auto`, within the budget).
#[inline(always)]
fn user_stack<C: aya_ebpf::programs::tracing::StackIdContext>(ctx: &C) -> i32 {
    if copies_enabled() && take_copy_budget(now(), Budget::Locks) {
        stack_copy::COPIED
    } else {
        stack_id(ctx, USER_STACK)
    }
}

#[raw_tracepoint(tracepoint = "contention_begin")]
pub fn lock_contention_begin(ctx: RawTracePointContext) -> i32 {
    let pid = ctx.pid();
    let tgid = ctx.tgid();
    if pid == 0 || !selected(tgid) {
        return 0;
    }
    let lock: u64 = ctx.arg(0);
    let flags: u32 = ctx.arg(1);
    let start = WaitStart {
        ts: now(),
        key: LockKey {
            lock_addr: lock,
            tgid,
            user_stack_id: user_stack(&ctx),
            kernel_stack_id: stack_id(&ctx, 0),
            flags: flags & !lock_flags::FUTEX,
        },
    };
    announce(&ctx, tgid);
    count(Counter::LockContended);
    if KLOCK_START.insert(&pid, &start, BPF_ANY as u64).is_err() {
        count(Counter::LockMapFull);
    }
    0
}

#[raw_tracepoint(tracepoint = "contention_end")]
pub fn lock_contention_end(ctx: RawTracePointContext) -> i32 {
    let lock: u64 = ctx.arg(0);
    finish(&KLOCK_START, ctx.pid(), Some(lock));
    0
}

// futex(2) operations that wait (include/uapi/linux/futex.h).
const FUTEX_CMD_MASK: u64 = !(128 | 256); // ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
const FUTEX_WAIT: u64 = 0;
const FUTEX_LOCK_PI: u64 = 6;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAIT_REQUEUE_PI: u64 = 11;
const FUTEX_LOCK_PI2: u64 = 13;

// Field offsets in the syscall tracepoints' records
// (/sys/kernel/tracing/events/syscalls/sys_enter_futex/format): uaddr, then op.
const UADDR_OFFSET: usize = 16;
const OP_OFFSET: usize = 24;

#[inline(always)]
fn futex_wait_begins(ctx: &TracePointContext) {
    let pid = ctx.pid();
    let tgid = ctx.tgid();
    if !selected(tgid) {
        return;
    }
    // SAFETY: offset of the `uaddr` field of the record (see above); read with a helper.
    let Ok(uaddr) = (unsafe { ctx.read_at::<u64>(UADDR_OFFSET) }) else {
        return;
    };
    let start = WaitStart {
        ts: now(),
        key: LockKey {
            lock_addr: uaddr,
            tgid,
            user_stack_id: user_stack(ctx),
            // The kernel side of a futex wait is always the same syscall path.
            kernel_stack_id: -errno::EFAULT,
            flags: lock_flags::FUTEX,
        },
    };
    announce(ctx, tgid);
    count(Counter::FutexWait);
    if FUTEX_START.insert(&pid, &start, BPF_ANY as u64).is_err() {
        count(Counter::LockMapFull);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_futex")]
pub fn futex_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offset of the `op` field of the record; read with a helper.
    let Ok(op) = (unsafe { ctx.read_at::<u64>(OP_OFFSET) }) else {
        return 0;
    };
    if matches!(
        op & FUTEX_CMD_MASK,
        FUTEX_WAIT | FUTEX_LOCK_PI | FUTEX_WAIT_BITSET | FUTEX_WAIT_REQUEUE_PI | FUTEX_LOCK_PI2
    ) {
        futex_wait_begins(&ctx);
    }
    0
}

/// `futex_wait(2)` (Linux 6.7+): always a wait.
#[tracepoint(category = "syscalls", name = "sys_enter_futex_wait")]
pub fn futex_wait_enter(ctx: TracePointContext) -> u32 {
    futex_wait_begins(&ctx);
    0
}

/// Attached to `sys_exit_futex` and `sys_exit_futex_wait`.
#[tracepoint(category = "syscalls", name = "sys_exit_futex")]
pub fn futex_exit(ctx: TracePointContext) -> u32 {
    finish(&FUTEX_START, ctx.pid(), None);
    0
}

const _: usize = size_of::<WaitStats>();
