//! Types shared by Hindsight's eBPF programs (`ebpf-programs/src`) and the user-space agent
//! (`agent/src/bpf`).
//!
//! Every type is `#[repr(C)]` with no implicit padding, so the kernel and user space agree
//! on its bytes. User space enables the `user` feature to get `aya::Pod` impls.
#![no_std]

/// Key of the on-CPU count map: one entry per distinct (process, user stack, kernel stack).
///
/// A stack id is the id returned by `bpf_get_stackid` into the `STACKS` map, or, when that
/// call failed, the negative errno it returned (`-EFAULT`: no stack to walk, e.g. a kernel
/// thread's user stack or a sample taken in user mode for the kernel stack; `-EEXIST`: hash
/// collision in the stack map; `-ENOMEM`...). User space turns errors into visible frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    /// Process id (thread-group id) of the sampled task.
    pub tgid: u32,
    /// `bpf_get_stackid(.., BPF_F_USER_STACK)` result.
    pub user_stack_id: i32,
    /// `bpf_get_stackid(.., 0)` result.
    pub kernel_stack_id: i32,
    /// Thread id of the sampled task when samples are grouped per thread (the
    /// `PER_THREAD` global), else 0.
    pub pid: u32,
}

/// Sent on the `NEW_PROCESSES` ring buffer the first time a process is sampled, so that user
/// space can snapshot its memory maps while it is still alive.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NewProcess {
    pub tgid: u32,
    /// Thread id of the sampled task.
    pub pid: u32,
    /// `comm` of the sampled thread (NUL padded): the fallback name for a process that is
    /// gone before user space can read `/proc/PID/comm`.
    pub comm: [u8; 16],
}

/// Bits of the `FILTER_FLAGS` global: which in-kernel filters are on. With no bit set every
/// task is sampled; with several, a task is sampled when it matches any of them.
pub mod filter {
    /// Sample only processes whose tgid is a key of `TARGET_TGIDS`.
    pub const TGIDS: u32 = 1 << 0;
    /// Sample only tasks whose cgroup v2 id is a key of `TARGET_CGROUPS`.
    pub const CGROUPS: u32 = 1 << 1;
}

/// Indexes into the per-CPU `COUNTERS` array: what happened to each sample. Nothing a
/// program drops goes uncounted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every time the sampling program ran.
    Samples = 0,
    /// Samples of the idle task (pid 0), not recorded.
    Idle,
    /// Samples of tasks that the filters excluded.
    FilteredOut,
    /// Samples added to the count map.
    Recorded,
    /// User stack could not be walked (`-EFAULT`): kernel threads, or a broken frame chain.
    UserStackFault,
    /// User stack lost to a hash collision in the stack map (`-EEXIST`).
    UserStackCollision,
    /// User stack lost for another reason (e.g. `-ENOMEM`: stack map full).
    UserStackOther,
    /// No kernel stack (`-EFAULT`): the sample interrupted user mode.
    KernelStackFault,
    /// Kernel stack lost to a hash collision in the stack map (`-EEXIST`).
    KernelStackCollision,
    /// Kernel stack lost for another reason.
    KernelStackOther,
    /// Sample lost because the count map was full.
    CountMapFull,
    /// A new-process notification was lost because the ring buffer was full.
    NewProcessLost,
    /// Off-CPU: a selected thread left the CPU (its stacks were recorded).
    OffCpuSwitchOut,
    /// Off-CPU: a recorded thread came back and its wait was added.
    OffCpuRecorded,
    /// Off-CPU: a wait shorter than `--min-block`, or in a state not selected.
    OffCpuSkipped,
    /// Off-CPU: lost because the wait map or the start map was full.
    OffCpuMapFull,
    /// Locks: a kernel lock contention (`contention_begin`) of a selected task.
    LockContended,
    /// Locks: a futex wait of a selected task.
    FutexWait,
    /// Locks: a wait was added to the lock map.
    LockRecorded,
    /// Locks: lost because the lock map or a start map was full.
    LockMapFull,
}

impl Counter {
    pub const ALL: [Counter; 20] = [
        Counter::Samples,
        Counter::Idle,
        Counter::FilteredOut,
        Counter::Recorded,
        Counter::UserStackFault,
        Counter::UserStackCollision,
        Counter::UserStackOther,
        Counter::KernelStackFault,
        Counter::KernelStackCollision,
        Counter::KernelStackOther,
        Counter::CountMapFull,
        Counter::NewProcessLost,
        Counter::OffCpuSwitchOut,
        Counter::OffCpuRecorded,
        Counter::OffCpuSkipped,
        Counter::OffCpuMapFull,
        Counter::LockContended,
        Counter::FutexWait,
        Counter::LockRecorded,
        Counter::LockMapFull,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;
}

/// Key of the off-CPU map: where a thread waited (its stacks when it left the CPU) and in
/// which state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OffCpuKey {
    pub tgid: u32,
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
    /// One of [`offcpu_state`].
    pub state: u32,
    /// Thread id when waits are grouped per thread (the `PER_THREAD` global), else 0.
    pub pid: u32,
}

/// A wait in progress: the thread left the CPU at `ts` (`bpf_ktime_get_ns`, i.e.
/// CLOCK_MONOTONIC) with these stacks. User space adds the ones still open when the
/// profile ends, so a thread blocked at the end is not missed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffCpuStart {
    pub ts: u64,
    pub key: OffCpuKey,
}

/// Task states an off-CPU wait is classified into (from `prev_state` and `preempt` of
/// `sched_switch`; include/linux/sched.h).
pub mod offcpu_state {
    /// Preempted or yielded while runnable: waiting for a CPU.
    pub const RUNNABLE: u32 = 0;
    /// TASK_INTERRUPTIBLE: a voluntary sleep (I/O wait, poll, sleep, futex...).
    pub const SLEEPING: u32 = 1;
    /// TASK_UNINTERRUPTIBLE ("D"): typically disk I/O or a kernel lock.
    pub const UNINTERRUPTIBLE: u32 = 2;
    /// Stopped, traced, parked, idle kernel threads.
    pub const OTHER: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Total, count and maximum of waits, per CPU (user space sums totals and counts and takes
/// the largest maximum).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitStats {
    pub total_ns: u64,
    pub count: u64,
    pub max_ns: u64,
}

/// Key of the lock map: who waited (stacks), on which lock, of which kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey {
    /// Kernel address of the lock, or the user address of the futex word.
    pub lock_addr: u64,
    pub tgid: u32,
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
    /// `contention_begin` flags ([`lock_flags`]) for a kernel lock, or [`lock_flags::FUTEX`].
    pub flags: u32,
}

/// Lock kinds: `LCB_F_*` of include/trace/events/lock.h (v6.18), plus our futex marker.
pub mod lock_flags {
    pub const SPIN: u32 = 1 << 0;
    pub const READ: u32 = 1 << 1;
    pub const WRITE: u32 = 1 << 2;
    pub const RT: u32 = 1 << 3;
    pub const PERCPU: u32 = 1 << 4;
    pub const MUTEX: u32 = 1 << 5;
    /// Not a kernel flag: a user-space futex wait.
    pub const FUTEX: u32 = 1 << 31;
}

/// Errno values the programs store in a stack id (negated).
pub mod errno {
    pub const EFAULT: i32 = 14;
    pub const EEXIST: i32 = 17;
    pub const ENOMEM: i32 = 12;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, only integer fields of 4-byte alignment: no padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for super::StackKey {}
    // SAFETY: `#[repr(C)]`, u32s then a byte array ending on a 4-byte boundary: no padding,
    // every bit pattern valid.
    unsafe impl aya::Pod for super::NewProcess {}
    // SAFETY: `#[repr(C)]`, four u32-sized fields: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::OffCpuKey {}
    // SAFETY: `#[repr(C)]`, a u64 then a 16-byte struct of u32s: no padding, every bit
    // pattern valid.
    unsafe impl aya::Pod for super::OffCpuStart {}
    // SAFETY: `#[repr(C)]`, three u64s: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::WaitStats {}
    // SAFETY: `#[repr(C)]`, a u64 then four 4-byte fields (24 bytes, 8-aligned): no
    // padding, every bit pattern valid.
    unsafe impl aya::Pod for super::LockKey {}
}
