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
    /// Off-CPU: a switch-out reused the thread's last kernel stack instead of walking it.
    OffCpuKernelStackReused,
    /// DWARF unwinding: a user stack was copied for user space to unwind.
    StackCopied,
    /// DWARF unwinding: the copy filled `STACK_COPY_BYTES` before the end of the stack
    /// (the outermost frames may be missing).
    StackCopyTruncated,
    /// DWARF unwinding: over the per-CPU copy budget, frame pointers used instead.
    StackCopyOverBudget,
    /// DWARF unwinding: the copy ring buffer was full; frame pointers used instead (on-CPU)
    /// or the user stack is lost (waits).
    StackCopyLost,
    /// DWARF unwinding: no user registers (kernel thread): frame-pointer path taken.
    StackCopyNoRegs,
    /// Off-CPU: a switch-out's frame chain was the same as the thread's last walked one,
    /// so its user stack id was reused instead of walked again.
    OffCpuUserStackReused,
}

impl Counter {
    pub const ALL: [Counter; 27] = [
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
        Counter::OffCpuKernelStackReused,
        Counter::StackCopied,
        Counter::StackCopyTruncated,
        Counter::StackCopyOverBudget,
        Counter::StackCopyLost,
        Counter::StackCopyNoRegs,
        Counter::OffCpuUserStackReused,
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

/// A thread's last switch-out. While it is off the CPU, `ts` is when it left
/// (`bpf_ktime_get_ns`, i.e. CLOCK_MONOTONIC) and `key` holds its stacks; user space adds
/// the waits still open when the profile ends, so a thread blocked at the end is not
/// missed. Once the thread runs again `ts` is 0 and `key` is kept, so that its next
/// switch-out from the same user stack, in the same state and system call, can reuse the
/// kernel stack (`reuses` counts the reuses since the kernel stack was last walked).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OffCpuStart {
    pub ts: u64,
    pub key: OffCpuKey,
    pub reuses: u32,
    /// The system call the thread was in (`orig_ax` of its user registers), -1 if none.
    pub syscall: i32,
    /// With `key.user_stack_id == stack_copy::COPIED`: the id of the [`StackCopy`] sent
    /// at switch-out; the wait's end is sent as a [`WaitDone`] with the same id.
    pub wait_id: u64,
    /// A hash of the user registers and of every frame-pointer frame read to the chain's
    /// end when `key.user_stack_id` was walked; 0: none. The same hash at the next
    /// switch-out means the kernel's walk would find the same frames.
    pub user_chain: u64,
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
    /// The user stack was to be copied for DWARF unwinding but the copy was lost.
    pub const ENODATA: i32 = 61;
}

/// Largest user-stack slice one event copies (`--unwind-stack` is at most this).
pub const STACK_COPY_MAX: usize = 16 * 1024;

/// Copies of user stacks for DWARF unwinding in user space (`--unwind dwarf|auto`).
pub mod stack_copy {
    /// `StackCopy::kind`: an on-CPU sample (`value`: 1).
    pub const ONCPU: u32 = 1;
    /// `StackCopy::kind`: an off-CPU switch-out (`value`: wait id; a `WaitDone` follows).
    pub const OFFCPU: u32 = 2;
    /// `StackCopy::kind`: a finished lock wait (`value`: ns waited).
    pub const LOCK: u32 = 3;
    /// `WaitDone::kind`: an off-CPU wait that began with a copy ended.
    pub const OFFCPU_DONE: u32 = 4;
    /// Stack id placeholder in a start record whose user stack was (or will be) copied.
    pub const COPIED: i32 = -1000;
}

/// One event whose user stack was copied: the user registers, the event's other fields
/// and the first `len` bytes of the stack from `sp` up. Sent on the `STACK_COPIES` ring
/// buffer with only `len` bytes of `stack` (the record is cut after them).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackCopy {
    /// One of the `stack_copy` kinds.
    pub kind: u32,
    pub tgid: u32,
    pub kernel_stack_id: i32,
    /// Off-CPU: the `offcpu_state`; locks: the `lock_flags`.
    pub extra: u32,
    /// User registers at the event: instruction, stack and frame pointer.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Locks: the lock's address.
    pub lock_addr: u64,
    /// See the kinds.
    pub value: u64,
    /// Bytes of `stack` filled.
    pub len: u32,
    /// `StackCopyTruncated`: the copy stopped at the size limit, not at the stack's end.
    pub truncated: u32,
    /// With `--per-thread` (on-CPU, off-CPU): the thread id; else 0.
    pub tid: u32,
    /// Off-CPU: the frame-pointer user stack id walked beside the copy (negative: none),
    /// so that waits over the copy budget with that stack can be attributed to what the
    /// copies unwound.
    pub fp_stack_id: i32,
    pub stack: [u8; STACK_COPY_MAX],
    /// Never filled: makes the record `SEND_MASK + 1` bytes, so that a size masked with
    /// `SEND_MASK` is provably inside it for the verifier, whatever the compiler did to
    /// the bounds check of `len`.
    pub _slack: [u8; StackCopy::SEND_MASK + 1 - StackCopy::HEADER - STACK_COPY_MAX],
}

impl StackCopy {
    /// Bytes before `stack`.
    pub const HEADER: usize = 72;
    /// The size sent is masked with this (a power of two minus one, above the largest
    /// real size, `HEADER + STACK_COPY_MAX`).
    pub const SEND_MASK: usize = 0x7fff;
}

/// The end of an off-CPU wait whose user stack was copied at switch-out.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WaitDone {
    /// `stack_copy::OFFCPU_DONE`.
    pub kind: u32,
    pub _pad: u32,
    pub wait_id: u64,
    /// Time off the CPU; 0 when shorter than `--min-block` (dropped).
    pub ns: u64,
}

/// Per-CPU budget state of stack copies for waits (`--unwind auto`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyBudget {
    /// Start of the current one-second window (`bpf_ktime_get_ns`).
    pub window_start: u64,
    /// Copies made in the window.
    pub used: u64,
}

const _: () = assert!(core::mem::offset_of!(StackCopy, stack) == StackCopy::HEADER);

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
    // SAFETY: `#[repr(C)]`, a u64, a 16-byte struct of u32s, a u64: no padding, every
    // bit pattern valid.
    unsafe impl aya::Pod for super::OffCpuStart {}
    // SAFETY: `#[repr(C)]`, two u64s: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::CopyBudget {}
    // SAFETY: `#[repr(C)]`, three u64s: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::WaitStats {}
    // SAFETY: `#[repr(C)]`, a u64 then four 4-byte fields (24 bytes, 8-aligned): no
    // padding, every bit pattern valid.
    unsafe impl aya::Pod for super::LockKey {}
}

/// Exec history and process deaths (ebpf-programs/src/exec.rs → agent/src/bpf/exec.rs).
/// Every event on the `HISTORY_EVENTS` ring buffer starts with a `u32` kind, so user
/// space can tell them apart; they share one ring so that an exec's result is always read
/// after the exec itself.
pub mod history {
    /// Arguments read per exec; more set [`flags::ARGS_TRUNCATED`].
    pub const MAX_ARGS: usize = 16;
    /// Bytes kept per argument, NUL included; longer ones set [`flags::ARG_TRUNCATED`].
    pub const ARG_LEN: usize = 128;
    /// Bytes kept of the executed path, NUL included.
    pub const FILENAME_LEN: usize = 256;

    /// The first `u32` of every event.
    pub mod kind {
        /// An [`ExecEvent`](super::ExecEvent): `execve`/`execveat` entered.
        pub const EXEC: u32 = 1;
        /// An [`ExecResult`](super::ExecResult): `execve`/`execveat` returned.
        pub const RESULT: u32 = 2;
        /// An [`ExitEvent`](super::ExitEvent): `exit_group` or a fatal signal.
        pub const EXIT: u32 = 3;
    }

    /// Bits of [`ExecEvent::flags`].
    pub mod flags {
        /// argv had more than `MAX_ARGS` entries.
        pub const ARGS_TRUNCATED: u32 = 1 << 0;
        /// At least one argument was longer than `ARG_LEN - 1` bytes.
        pub const ARG_TRUNCATED: u32 = 1 << 1;
        /// The path was longer than `FILENAME_LEN - 1` bytes.
        pub const FILENAME_TRUNCATED: u32 = 1 << 2;
        /// `execveat` rather than `execve` (the path may be relative to a descriptor).
        pub const EXECVEAT: u32 = 1 << 3;
        /// argv could not be read (a fault in the caller's memory).
        pub const ARGV_FAULT: u32 = 1 << 4;
    }

    /// Indexes of the per-CPU `HISTORY_COUNTERS` array.
    pub mod counter {
        pub const EXECS: u32 = 0;
        /// Exec events lost: the ring buffer was full.
        pub const EXECS_LOST: u32 = 1;
        pub const RESULTS_LOST: u32 = 2;
        pub const EXITS: u32 = 3;
        pub const EXITS_LOST: u32 = 4;
        pub const COUNT: u32 = 5;
    }

    /// One `execve`/`execveat` call, as entered (its outcome follows as an [`ExecResult`]).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct ExecEvent {
        pub kind: u32,
        pub tgid: u32,
        /// Thread id of the caller.
        pub pid: u32,
        /// Process that forked the caller, when the fork was seen (0: not seen).
        pub ppid: u32,
        pub uid: u32,
        pub gid: u32,
        /// cgroup v2 id of the caller.
        pub cgroup_id: u64,
        /// CLOCK_MONOTONIC (`bpf_ktime_get_ns`).
        pub time_ns: u64,
        /// Arguments read (≤ `MAX_ARGS`).
        pub argc: u32,
        pub flags: u32,
        /// `comm` of the caller (the name before the exec).
        pub comm: [u8; 16],
        pub filename: [u8; FILENAME_LEN],
        /// Each NUL-terminated.
        pub args: [[u8; ARG_LEN]; MAX_ARGS],
    }

    /// What an `execve`/`execveat` returned: 0, or a negated errno.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct ExecResult {
        pub kind: u32,
        /// Thread id (the same as the exec's, except when a non-leader thread execs).
        pub pid: u32,
        pub ret: i64,
        pub time_ns: u64,
    }

    /// A process ending: `exit_group(code)` entered (`signal == 0`), or a fatal signal
    /// delivered with its default action (`signal != 0`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct ExitEvent {
        pub kind: u32,
        pub tgid: u32,
        pub pid: u32,
        pub signal: u32,
        /// `exit_group`'s argument (only with `signal == 0`).
        pub code: i32,
        pub _pad: u32,
        pub cgroup_id: u64,
        pub time_ns: u64,
        pub comm: [u8; 16],
    }
}
