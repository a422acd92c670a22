//! User side of the lock-contention programs (ebpf-programs/src/locks.rs): attaching them
//! to the kernel's lock tracepoints and the futex syscall tracepoints, and draining the
//! waits.

use aya::{Ebpf, programs::TracePoint};
use hindsight_common::{LockKey, WaitStats, lock_flags};

use super::{
    BpfError,
    offcpu::drain_waits,
    session::{attach_raw_tracepoint, program_mut},
};

pub(super) fn attach(ebpf: &mut Ebpf) -> Result<(), BpfError> {
    attach_raw_tracepoint(ebpf, "lock_contention_begin", "contention_begin")?;
    attach_raw_tracepoint(ebpf, "lock_contention_end", "contention_end")?;
    attach_tracepoint(ebpf, "futex_enter", "sys_enter_futex", true)?;
    // futex_wait(2) is Linux 6.7+; older kernels simply lack the tracepoint.
    attach_tracepoint(ebpf, "futex_wait_enter", "sys_enter_futex_wait", false)?;
    let exit: &mut TracePoint = program_mut(ebpf, "futex_exit")?;
    exit.load().map_err(|source| BpfError::Program {
        name: "futex_exit",
        source,
    })?;
    for (tracepoint, required) in [("sys_exit_futex", true), ("sys_exit_futex_wait", false)] {
        if let Err(source) = exit.attach("syscalls", tracepoint) {
            if required {
                return Err(BpfError::AttachTracepoint {
                    name: "futex_exit",
                    tracepoint,
                    source,
                });
            }
            tracing::debug!("no {tracepoint} tracepoint: {source}");
        }
    }
    Ok(())
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &'static str,
    required: bool,
) -> Result<(), BpfError> {
    let prog: &mut TracePoint = program_mut(ebpf, program)?;
    prog.load().map_err(|source| BpfError::Program {
        name: program,
        source,
    })?;
    match prog.attach("syscalls", tracepoint) {
        Ok(_) => Ok(()),
        Err(source) if required => Err(BpfError::AttachTracepoint {
            name: program,
            tracepoint,
            source,
        }),
        Err(source) => {
            tracing::debug!("no {tracepoint} tracepoint: {source}");
            Ok(())
        }
    }
}

pub(super) fn drain(ebpf: &Ebpf) -> Result<Vec<(LockKey, WaitStats)>, BpfError> {
    drain_waits(ebpf, "LOCKS")
}

/// What kind of lock a key's flags say it is.
pub fn kind(flags: u32) -> &'static str {
    use lock_flags::*;
    if flags & FUTEX != 0 {
        "futex"
    } else if flags & SPIN != 0 {
        match (flags & READ != 0, flags & WRITE != 0) {
            (true, _) => "rwlock:read",
            (_, true) => "rwlock:write",
            _ => "spinlock",
        }
    } else if flags & MUTEX != 0 {
        if flags & RT != 0 { "rt-mutex" } else { "mutex" }
    } else if flags & PERCPU != 0 {
        if flags & WRITE != 0 {
            "percpu-rwsem:write"
        } else {
            "percpu-rwsem:read"
        }
    } else if flags & READ != 0 {
        "rwsem:read"
    } else if flags & WRITE != 0 {
        "rwsem:write"
    } else if flags & RT != 0 {
        "rt-mutex"
    } else {
        "lock"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_kinds_follow_the_kernel_flags() {
        use lock_flags::*;
        assert_eq!(kind(SPIN), "spinlock");
        assert_eq!(kind(SPIN | READ), "rwlock:read");
        assert_eq!(kind(MUTEX), "mutex");
        assert_eq!(kind(WRITE), "rwsem:write");
        assert_eq!(kind(READ), "rwsem:read");
        assert_eq!(kind(PERCPU | WRITE), "percpu-rwsem:write");
        assert_eq!(kind(FUTEX), "futex");
    }
}
