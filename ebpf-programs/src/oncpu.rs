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
use hindsight_common::{Counter, StackKey, errno, stack_copy};

use crate::shared::{
    USER_STACK, announce, copies_enabled, copy_user_stack, count, selected, send_copy, stack_id,
    thread_of,
};

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
    let kernel_stack_id = stack_id(&ctx, 0);
    announce(&ctx, tgid);
    // `--unwind dwarf|auto`: the user stack goes to user space to be unwound; frame
    // pointers when it cannot (no user registers, ring buffer full).
    if copies_enabled()
        && let Some(record) = copy_user_stack()
    {
        record.kind = stack_copy::ONCPU;
        record.tgid = tgid;
        record.tid = thread_of(&ctx);
        record.fp_stack_id = -1;
        record.kernel_stack_id = kernel_stack_id;
        record.extra = 0;
        record.lock_addr = 0;
        record.value = 1;
        if send_copy(record) {
            count(Counter::Recorded);
            return 0;
        }
    }
    let key = StackKey {
        tgid,
        user_stack_id: stack_id(&ctx, USER_STACK),
        kernel_stack_id,
        pid: thread_of(&ctx),
    };
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
