//! Maps and helpers every probe family uses: the in-kernel filters, the stack-trace map,
//! the counters, and the new-process notifications (with the exec hook that renews them).

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs},
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{RawTracePointContext, tracing::StackIdContext},
};
use hindsight_common::{
    CopyBudget, Counter, NewProcess, STACK_COPY_MAX, StackCopy, WaitStats, errno, filter,
};

/// Which filters are on (`hindsight_common::filter` bits); set by the loader.
#[unsafe(no_mangle)]
static FILTER_FLAGS: Global<u32> = Global::new(0);

/// The agent's own process: never profiled (its waits are not the host's).
#[unsafe(no_mangle)]
static AGENT_TGID: Global<u32> = Global::new(0);

/// 1 when samples and waits are keyed per thread too (`--per-thread`); set by the loader.
#[unsafe(no_mangle)]
static PER_THREAD: Global<u32> = Global::new(0);

/// Stack traces of every family, user and kernel. Its size is set by the loader.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Processes selected by `--pid` (value unused).
#[map]
static TARGET_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// cgroup v2 ids selected by `--cgroup`/`--unit`, with their descendants (value unused).
#[map]
static TARGET_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// What happened to each event, indexed by `hindsight_common::Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Processes already announced on `NEW_PROCESSES`; `process_exec` forgets a process that
/// execs, so that its next event announces it again and user space re-reads its maps.
#[map]
static SEEN_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// First event of each process, so user space snapshots its maps while it is alive.
#[map]
static NEW_PROCESSES: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array, and a CPU runs one
        // of our programs at a time (they cannot nest: tracing programs do not recurse).
        unsafe { *value += 1 };
    }
}

/// Whether the current task is one the user asked for (and not the agent itself).
#[inline(always)]
pub fn selected(tgid: u32) -> bool {
    if tgid == AGENT_TGID.load() {
        return false;
    }
    let flags = FILTER_FLAGS.load();
    if flags == 0 {
        return true;
    }
    // SAFETY: the values are never read, only the keys' presence.
    if flags & filter::TGIDS != 0 && unsafe { TARGET_TGIDS.get(&tgid) }.is_some() {
        return true;
    }
    if flags & filter::CGROUPS != 0 {
        // SAFETY: helper with no arguments, allowed in tracing programs.
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        // SAFETY: as above, presence only.
        if unsafe { TARGET_CGROUPS.get(&cgroup) }.is_some() {
            return true;
        }
    }
    false
}

/// User-stack flags for `bpf_get_stackid`.
pub const USER_STACK: u64 = aya_ebpf::bindings::BPF_F_USER_STACK as u64;

/// The current task's stack id, or the negated errno, counting failures.
#[inline(always)]
pub fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> i32 {
    let user = flags & USER_STACK != 0;
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            count(match (err, user) {
                (e, true) if e == -errno::EFAULT => Counter::UserStackFault,
                (e, true) if e == -errno::EEXIST => Counter::UserStackCollision,
                (_, true) => Counter::UserStackOther,
                (e, false) if e == -errno::EFAULT => Counter::KernelStackFault,
                (e, false) if e == -errno::EEXIST => Counter::KernelStackCollision,
                (_, false) => Counter::KernelStackOther,
            });
            err
        }
    }
}

/// The thread id for a key: the current task's when grouping per thread, else 0 (so that a
/// process's threads share keys and the count map stays small).
#[inline(always)]
pub fn thread_of<C: EbpfContext>(ctx: &C) -> u32 {
    if PER_THREAD.load() != 0 { ctx.pid() } else { 0 }
}

/// Tells user space about a process the first time one of its tasks is recorded.
#[inline(always)]
pub fn announce<C: EbpfContext>(ctx: &C, tgid: u32) {
    // SAFETY: presence only.
    if unsafe { SEEN_TGIDS.get(&tgid) }.is_some() {
        return;
    }
    if SEEN_TGIDS.insert(&tgid, &0, BPF_NOEXIST as u64).is_err() {
        // Another CPU announced it first.
        return;
    }
    let event = NewProcess {
        tgid,
        pid: ctx.pid(),
        comm: ctx.command().unwrap_or([0; 16]),
    };
    if NEW_PROCESSES.output(&event, 0).is_err() {
        count(Counter::NewProcessLost);
    }
}

/// A process called execve: its memory maps are new. Forget that it was announced, so its
/// next event announces it again. Raw tracepoint: needs neither tracefs nor kprobes.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(ctx: RawTracePointContext) -> i32 {
    let tgid = ctx.tgid();
    let _ = SEEN_TGIDS.remove(&tgid);
    let _ = STACK_ENDS.remove(&bpf_get_current_pid_tgid());
    // Its stacks are new too: no off-CPU stack reuse across the exec.
    // SAFETY: helper without arguments.
    let _ = crate::offcpu::OFFCPU_START.remove(&unsafe { bpf_get_current_task() });
    0
}

/// Adds one wait of `ns` to `map[key]` (this CPU's slot). False when the map is full.
#[inline(always)]
pub fn add_wait<K>(map: &PerCpuHashMap<K, WaitStats>, key: &K, ns: u64) -> bool {
    for _ in 0..2 {
        if let Some(stats) = map.get_ptr_mut(key) {
            // SAFETY: this CPU's slot of a per-CPU hash value; one program per CPU at a time.
            let stats = unsafe { &mut *stats };
            stats.total_ns += ns;
            stats.count += 1;
            if ns > stats.max_ns {
                stats.max_ns = ns;
            }
            return true;
        }
        let first = WaitStats {
            total_ns: ns,
            count: 1,
            max_ns: ns,
        };
        match map.insert(key, &first, BPF_NOEXIST as u64) {
            Ok(()) => return true,
            // Another CPU created the key between our lookup and insert: add to our slot.
            Err(err) if err == -errno::EEXIST => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Bytes of user stack each copy takes (`--unwind-stack`); 0: no copies (`--unwind fp`).
#[unsafe(no_mangle)]
static STACK_COPY_BYTES: Global<u32> = Global::new(0);

/// Copies per second and CPU allowed for lock waits; 0: no limit.
#[unsafe(no_mangle)]
static COPY_BUDGET_PER_SEC: Global<u64> = Global::new(0);

/// The same for off-CPU waits: smaller (a quarter), because off-CPU waits over it are
/// attributed in user space to what copied waits with the same frame-pointer stack
/// unwound, and they come at every context switch.
#[unsafe(no_mangle)]
static OFFCPU_COPY_BUDGET_PER_SEC: Global<u64> = Global::new(0);

/// Which budget a wait copy is taken from (`COPY_BUDGET` index).
#[derive(Clone, Copy)]
pub enum Budget {
    Locks = 0,
    OffCpu = 1,
}

/// This CPU's record under construction (too big for the 512-byte BPF stack).
#[map]
static COPY_SCRATCH: PerCpuArray<StackCopy> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's budget windows for wait copies, by `Budget`.
#[map]
static COPY_BUDGET: PerCpuArray<CopyBudget> = PerCpuArray::with_max_entries(2, 0);

/// Copied user stacks (`StackCopy`, cut after the copied bytes) and off-CPU wait ends
/// (`WaitDone`), for user space to unwind. Its size is set by the loader.
#[map]
pub static STACK_COPIES: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Bytes waiting in `STACK_COPIES` from which a record wakes the reader; set by the loader
/// (a quarter of the ring). Below it records go in without a wake-up.
#[unsafe(no_mangle)]
static COPY_WAKEUP_BYTES: Global<u64> = Global::new(0);

/// Flags for an output to `STACK_COPIES`: no wake-up until `COPY_WAKEUP_BYTES` wait.
///
/// A wake-up per record (the default flag) costs the producing CPU an irq_work and, when
/// the reader sleeps on another CPU, an inter-processor interrupt (outside the program's
/// run time, so `bpf_stats` does not show it). The reader also drains the ring on a timer
/// (`crate::profile`'s loop), so records below the threshold are not left behind.
#[inline(always)]
pub fn copy_ring_flags() -> u64 {
    if STACK_COPIES.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64) >= COPY_WAKEUP_BYTES.load()
    {
        aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64
    } else {
        aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64
    }
}

/// Whether user stacks are copied for DWARF unwinding (`--unwind dwarf|auto`).
#[inline(always)]
pub fn copies_enabled() -> bool {
    STACK_COPY_BYTES.load() != 0
}

/// Takes one wait copy from this CPU's budget (`now`: the event's time, so that the check
/// costs no clock read of its own); false (counted) when it is spent.
#[inline(always)]
pub fn take_copy_budget(now: u64, which: Budget) -> bool {
    let per_sec = match which {
        Budget::Locks => COPY_BUDGET_PER_SEC.load(),
        Budget::OffCpu => OFFCPU_COPY_BUDGET_PER_SEC.load(),
    };
    if per_sec == 0 {
        return true;
    }
    let Some(budget) = COPY_BUDGET.get_ptr_mut(which as u32) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array; one program per CPU at a time.
    let budget = unsafe { &mut *budget };
    if now.saturating_sub(budget.window_start) >= 1_000_000_000 {
        budget.window_start = now;
        budget.used = 0;
    }
    if budget.used >= per_sec {
        count(Counter::StackCopyOverBudget);
        return false;
    }
    budget.used += 1;
    true
}

const CHUNK: usize = 512;

/// The end of each thread's stack (the first unreadable address above its stack pointer,
/// page-aligned), by `pid_tgid`, learned by the first copy that ran into it. Later copies
/// stop there instead of faulting on it: a faulting read costs a page fault each, and the
/// search for the end took several. A stale end beyond the stack (a thread id reused) is
/// corrected by the next copy, which faults; `process_exec` forgets the end of a thread
/// that execs (its stack is new). An end learned too low (a stack page swapped out when
/// it was found) is not corrected: that thread's copies stop there.
#[map]
pub static STACK_ENDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Fills this CPU's scratch record with the current task's user registers and the stack
/// from its `sp` up, in chunks until the size limit or the stack's end (known from
/// `STACK_ENDS`, or found at the first unreadable byte). `None` (counted) for a task
/// without user registers.
#[inline(always)]
pub fn copy_user_stack() -> Option<&'static mut StackCopy> {
    let record = COPY_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array; one program per CPU at a time.
    let record = unsafe { &mut *record };
    // SAFETY: helpers for the current task; the BTF task pointer goes straight to
    // bpf_task_pt_regs, whose result is only read through bpf_probe_read_kernel.
    let regs = unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        bpf_probe_read_kernel(regs).ok()?
    };
    // The saved registers are user ones only if the task entered the kernel from user mode
    // (CPL 3); a kernel thread has none.
    if regs.cs & 3 != 3 {
        count(Counter::StackCopyNoRegs);
        return None;
    }
    record.ip = regs.rip;
    record.sp = regs.rsp;
    record.bp = regs.rbp;
    let limit = STACK_COPY_BYTES.load() as u64;
    let thread = bpf_get_current_pid_tgid();
    let base = record.stack.as_mut_ptr();
    // SAFETY: the value is copied out at once.
    if let Some(end) = unsafe { STACK_ENDS.get(&thread) }.copied()
        && end > regs.rsp
    {
        // The end is known: one read, up to the limit or the end, whichever is nearer.
        let want = limit.min(end - regs.rsp);
        // 1..=STACK_COPY_MAX, in a form the verifier can bound (`want` is at least 1).
        let size = ((want - 1) & (STACK_COPY_MAX as u64 - 1)) + 1;
        // SAFETY: `size <= STACK_COPY_MAX`: inside `stack`; the helper checks the user
        // address.
        let ret = unsafe { bpf_probe_read_user(base.cast(), size as u32, regs.rsp as *const _) };
        if ret == 0 {
            let truncated = end - regs.rsp > limit;
            if truncated {
                count(Counter::StackCopyTruncated);
            }
            record.len = size as u32;
            record.truncated = u32::from(truncated);
            return Some(record);
        }
        // A stale end (the thread id was reused): search again.
    }
    let mut len = 0usize;
    let mut faulted = false;
    for i in 0..STACK_COPY_MAX / CHUNK {
        let off = i * CHUNK;
        if off as u64 + CHUNK as u64 > limit {
            break;
        }
        // SAFETY: `off + CHUNK <= STACK_COPY_MAX`: inside `stack`; the helper checks the
        // user address.
        let ret = unsafe {
            bpf_probe_read_user(
                base.add(off).cast(),
                CHUNK as u32,
                (regs.rsp + off as u64) as *const _,
            )
        };
        if ret != 0 {
            faulted = true;
            break;
        }
        len = off + CHUNK;
    }
    if faulted {
        // The stack ends inside this chunk: take what is readable of it, halving.
        let mut size = CHUNK / 2;
        while size >= 8 {
            if len + size <= STACK_COPY_MAX {
                // SAFETY: bounds checked just above.
                let ret = unsafe {
                    bpf_probe_read_user(
                        base.add(len).cast(),
                        size as u32,
                        (regs.rsp + len as u64) as *const _,
                    )
                };
                if ret == 0 {
                    len += size;
                }
            }
            size /= 2;
        }
        // `len` is within 8 bytes of the first unreadable byte; mappings end on pages.
        let end = (regs.rsp + len as u64 + 4095) & !4095;
        let _ = STACK_ENDS.insert(&thread, &end, 0);
    } else {
        count(Counter::StackCopyTruncated);
    }
    record.len = len as u32;
    record.truncated = u32::from(!faulted);
    Some(record)
}

/// Sends a filled record, cut after its copied bytes. False (counted) if the ring is full.
#[inline(always)]
pub fn send_copy(record: &StackCopy) -> bool {
    // `len <= STACK_COPY_MAX` by construction, so the mask changes nothing; it is there
    // for the verifier, which lost the bound of a compare-then-add here (the compiler
    // checked one copy of `len` and added to another).
    let size = (StackCopy::HEADER + record.len as usize) & StackCopy::SEND_MASK;
    // SAFETY: `size <= SEND_MASK < size_of::<StackCopy>()`; `StackCopy` is plain data.
    let bytes =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(record).cast::<u8>(), size) };
    if STACK_COPIES.output(bytes, copy_ring_flags()).is_ok() {
        count(Counter::StackCopied);
        true
    } else {
        count(Counter::StackCopyLost);
        false
    }
}
