//! On-CPU sampling: a `perf_event` program attached to the software cpu-clock event of every
//! online CPU. Each sample walks the user and kernel stacks into `STACKS` and adds one to
//! `CPU_COUNTS[(tgid, user stack id, kernel stack id)]`. User space drains the maps when
//! the profile ends (agent/src/bpf/oncpu.rs).

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    macros::{map, perf_event},
    maps::PerCpuHashMap,
    programs::PerfEventContext,
};
use hindsight_common::{Counter, StackKey, errno};

use crate::shared::{USER_STACK, announce, count, selected, stack_id, thread_of};

/// Sample counts, per CPU: there is no atomic add for the BPF target in Rust, and a per-CPU
/// value needs none since a CPU runs one sample at a time. User space sums the CPUs.
#[map]
static CPU_COUNTS: PerCpuHashMap<StackKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

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
        user_stack_id: stack_id(&ctx, USER_STACK),
        kernel_stack_id: stack_id(&ctx, 0),
        pid: thread_of(&ctx),
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
