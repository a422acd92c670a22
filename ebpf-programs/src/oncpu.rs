//! On-CPU sampling: a `perf_event` program attached to the software cpu-clock event of every
//! online CPU. Each sample walks the user and kernel stacks into `STACKS` and adds one to
//! `CPU_COUNTS[(tgid, user stack id, kernel stack id)]`. User space drains both maps when
//! the profile ends (agent/src/bpf/oncpu.rs).

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::bpf_get_current_cgroup_id,
    macros::{map, perf_event},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{PerfEventContext, tracing::StackIdContext as _},
};
use hindsight_common::{Counter, NewProcess, StackKey, errno, filter};

/// Which filters are on (`hindsight_common::filter` bits); set by the loader.
#[unsafe(no_mangle)]
static FILTER_FLAGS: Global<u32> = Global::new(0);

/// Stack traces, shared by user and kernel stacks. Its size is set by the loader.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Sample counts, per CPU: there is no atomic add for the BPF target in Rust, and a per-CPU
/// value needs none since a CPU runs one sample at a time. User space sums the CPUs.
#[map]
static CPU_COUNTS: PerCpuHashMap<StackKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Processes selected by `--pid` (value unused).
#[map]
static TARGET_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// cgroup v2 ids selected by `--cgroup`/`--unit`, with their descendants (value unused).
#[map]
static TARGET_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// What happened to each sample, indexed by `hindsight_common::Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Processes already announced on `NEW_PROCESSES`.
#[map]
static SEEN_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// First sample of each process, so user space snapshots its maps while it is alive.
#[map]
static NEW_PROCESSES: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is to this CPU's slot of a per-CPU array, and a CPU runs one
        // perf_event program at a time.
        unsafe { *value += 1 };
    }
}

#[inline(always)]
fn selected(tgid: u32) -> bool {
    let flags = FILTER_FLAGS.load();
    if flags == 0 {
        return true;
    }
    // SAFETY: the values are never read, only the keys' presence.
    if flags & filter::TGIDS != 0 && unsafe { TARGET_TGIDS.get(&tgid) }.is_some() {
        return true;
    }
    if flags & filter::CGROUPS != 0 {
        // SAFETY: helper with no arguments, allowed in perf_event programs.
        let cgroup = unsafe { bpf_get_current_cgroup_id() };
        // SAFETY: as above, presence only.
        if unsafe { TARGET_CGROUPS.get(&cgroup) }.is_some() {
            return true;
        }
    }
    false
}

#[inline(always)]
fn stack_id(
    ctx: &PerfEventContext,
    flags: u64,
    fault: Counter,
    collision: Counter,
    other: Counter,
) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            count(if err == -errno::EFAULT {
                fault
            } else if err == -errno::EEXIST {
                collision
            } else {
                other
            });
            err
        }
    }
}

#[inline(always)]
fn announce(ctx: &PerfEventContext, tgid: u32) {
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

#[perf_event]
pub fn oncpu_sample(ctx: PerfEventContext) -> u32 {
    count(Counter::Samples);
    if ctx.pid() == 0 {
        count(Counter::Idle);
        return 0;
    }
    let tgid = ctx.tgid();
    if !selected(tgid) {
        count(Counter::FilteredOut);
        return 0;
    }
    let key = StackKey {
        tgid,
        user_stack_id: stack_id(
            &ctx,
            BPF_F_USER_STACK as u64,
            Counter::UserStackFault,
            Counter::UserStackCollision,
            Counter::UserStackOther,
        ),
        kernel_stack_id: stack_id(
            &ctx,
            0,
            Counter::KernelStackFault,
            Counter::KernelStackCollision,
            Counter::KernelStackOther,
        ),
    };
    announce(&ctx, tgid);
    add_sample(&key);
    0
}

#[inline(always)]
fn add_sample(key: &StackKey) {
    if let Some(value) = CPU_COUNTS.get_ptr_mut(key) {
        // SAFETY: this CPU's slot of a per-CPU hash value; one program per CPU at a time.
        unsafe { *value += 1 };
        count(Counter::Recorded);
        return;
    }
    match CPU_COUNTS.insert(key, &1, BPF_NOEXIST as u64) {
        Ok(()) => count(Counter::Recorded),
        // Another CPU created the key between our lookup and insert: our slot is zero.
        Err(err) if err == -errno::EEXIST => {
            if let Some(value) = CPU_COUNTS.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe { *value += 1 };
                count(Counter::Recorded);
            } else {
                count(Counter::CountMapFull);
            }
        }
        Err(_) => count(Counter::CountMapFull),
    }
}
