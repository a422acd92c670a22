//! Exec history and process deaths, for the daemon's flight recorder (user side:
//! agent/src/bpf/exec.rs, agent/src/history/).
//!
//! - `syscalls:sys_enter_execve`/`sys_enter_execveat`: the caller, its path and a bounded
//!   argv (`MAX_ARGS` × `ARG_LEN`, flagged when cut), written straight into a ring-buffer
//!   reservation (the event is too large for the 512-byte eBPF stack);
//! - `syscalls:sys_exit_execve`/`sys_exit_execveat`: the outcome (0 or -errno);
//! - `sched:sched_process_fork`: who forked whom, so an exec can name its parent without
//!   reading any kernel structure;
//! - `syscalls:sys_enter_exit_group` and `signal:signal_deliver` (a fatal signal whose
//!   action is the default one): processes ending, for the abnormal-exit trigger.
//!
//! Field offsets are those of the tracepoints' `format` files on v6.18 (common header 8
//! bytes; syscall arguments from offset 16; see include/trace/events/sched.h and
//! signal.h). Nothing here filters: the history is of the whole host.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use hindsight_common::history::{
    ARG_LEN, ExecEvent, ExecResult, ExitEvent, FILENAME_LEN, MAX_ARGS, counter, flags, kind,
};

/// Every history event, in order. 4 MiB holds ~1,700 execs with full argv while user
/// space is away; it drains continuously.
#[map]
static HISTORY_EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// `hindsight_common::history::counter` indexes, per CPU.
#[map]
static HISTORY_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Child pid -> the tgid that forked it. LRU: entries of processes that never exec age out.
#[map]
static PARENTS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(65536, 0);

#[inline(always)]
fn bump(index: u32) {
    if let Some(value) = HISTORY_COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array; one program per CPU at a time.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[tracepoint]
pub fn history_execve(ctx: TracePointContext) -> u32 {
    record_exec(&ctx, 16, 24, 0);
    0
}

#[tracepoint]
pub fn history_execveat(ctx: TracePointContext) -> u32 {
    record_exec(&ctx, 24, 32, flags::EXECVEAT);
    0
}

#[inline(always)]
fn record_exec(ctx: &TracePointContext, filename_at: usize, argv_at: usize, extra: u32) {
    bump(counter::EXECS);
    let Some(mut entry) = HISTORY_EVENTS.reserve::<ExecEvent>(0) else {
        bump(counter::EXECS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    let tgid = ctx.tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `event` points to a reservation of `size_of::<ExecEvent>()` bytes that this
    // program owns until it submits it; fields are written in place through raw pointers.
    // Tracepoint fields are read at the offsets of the format file (module docs), and
    // user memory only through the probe-read helpers, which fault safely.
    unsafe {
        (*event).kind = kind::EXEC;
        (*event).tgid = tgid;
        (*event).pid = ctx.pid();
        (*event).ppid = PARENTS.get(&tgid).copied().unwrap_or(0);
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).cgroup_id = bpf_get_current_cgroup_id();
        (*event).time_ns = now();
        (*event).comm = ctx.command().unwrap_or([0; 16]);
        let mut flag_bits = extra;

        let filename: *const u8 = ctx.read_at(filename_at).unwrap_or(core::ptr::null());
        let name = &mut *addr_of_mut!((*event).filename);
        match bpf_probe_read_user_str_bytes(filename, name) {
            Ok(read) if read.len() >= FILENAME_LEN - 1 => flag_bits |= flags::FILENAME_TRUNCATED,
            Ok(_) => {}
            Err(_) => name[0] = 0,
        }

        let argv: *const *const u8 = ctx.read_at(argv_at).unwrap_or(core::ptr::null());
        let mut argc = 0u32;
        let args = &mut *addr_of_mut!((*event).args);
        if argv.is_null() {
            flag_bits |= flags::ARGV_FAULT;
        } else {
            for (i, arg) in args.iter_mut().enumerate() {
                let Ok(ptr) = bpf_probe_read_user(argv.add(i)) else {
                    flag_bits |= flags::ARGV_FAULT;
                    break;
                };
                if ptr.is_null() {
                    break;
                }
                match bpf_probe_read_user_str_bytes(ptr, arg) {
                    Ok(read) if read.len() >= ARG_LEN - 1 => flag_bits |= flags::ARG_TRUNCATED,
                    Ok(_) => {}
                    Err(_) => arg[0] = 0,
                }
                argc += 1;
            }
            if argc as usize == MAX_ARGS
                && bpf_probe_read_user(argv.add(MAX_ARGS)).is_ok_and(|p: *const u8| !p.is_null())
            {
                flag_bits |= flags::ARGS_TRUNCATED;
            }
        }
        (*event).argc = argc;
        (*event).flags = flag_bits;
    }
    entry.submit(0);
}

#[tracepoint]
pub fn history_exec_exit(ctx: TracePointContext) -> u32 {
    let result = ExecResult {
        kind: kind::RESULT,
        pid: ctx.pid(),
        // SAFETY: `long ret` at offset 16 of sys_exit_* (format file).
        ret: unsafe { ctx.read_at::<i64>(16) }.unwrap_or(0),
        time_ns: now(),
    };
    if HISTORY_EVENTS.output(&result, 0).is_err() {
        bump(counter::RESULTS_LOST);
    }
    0
}

#[tracepoint]
pub fn history_fork(ctx: TracePointContext) -> u32 {
    // SAFETY: `pid_t child_pid` at offset 20 of sched_process_fork (format file).
    if let Ok(child) = unsafe { ctx.read_at::<u32>(20) } {
        let _ = PARENTS.insert(&child, &ctx.tgid(), BPF_ANY as u64);
    }
    0
}

#[tracepoint]
pub fn history_exit_group(ctx: TracePointContext) -> u32 {
    // SAFETY: `int error_code` at offset 16 of sys_enter_exit_group (format file).
    let code = unsafe { ctx.read_at::<i32>(16) }.unwrap_or(0);
    record_exit(&ctx, 0, code);
    0
}

// Signals whose default action is not to terminate (include/linux/signal.h, v6.18):
// SIGCHLD 17, SIGCONT 18, SIGSTOP 19, SIGTSTP 20, SIGTTIN 21, SIGTTOU 22, SIGURG 23,
// SIGWINCH 28.
const NOT_FATAL_MASK: u64 =
    (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20) | (1 << 21) | (1 << 22) | (1 << 23) | (1 << 28);

#[tracepoint]
pub fn history_signal(ctx: TracePointContext) -> u32 {
    // SAFETY: `int sig` at offset 8 and `unsigned long sa_handler` at offset 24 of
    // signal_deliver (format file).
    let (sig, handler) = unsafe {
        (
            ctx.read_at::<i32>(8).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(1),
        )
    };
    // SIG_DFL is 0: with a terminating signal, the task dies now (kernel/signal.c
    // get_signal). Caught and ignored signals are not deaths.
    if handler == 0 && (1..64).contains(&sig) && NOT_FATAL_MASK & (1u64 << sig) == 0 {
        record_exit(&ctx, sig as u32, 0);
    }
    0
}

#[inline(always)]
fn record_exit(ctx: &TracePointContext, signal: u32, code: i32) {
    bump(counter::EXITS);
    let event = ExitEvent {
        kind: kind::EXIT,
        tgid: ctx.tgid(),
        pid: ctx.pid(),
        signal,
        code,
        _pad: 0,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        time_ns: now(),
        comm: ctx.command().unwrap_or([0; 16]),
    };
    if HISTORY_EVENTS.output(&event, 0).is_err() {
        bump(counter::EXITS_LOST);
    }
}
