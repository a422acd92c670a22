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
}

impl Counter {
    pub const ALL: [Counter; 12] = [
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
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;
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
}
