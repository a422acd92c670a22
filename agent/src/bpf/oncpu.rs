//! User side of the on-CPU sampler (ebpf-programs/src/oncpu.rs): attaches it to the
//! cpu-clock event of every online CPU and drains its per-CPU counts.

use aya::{
    Ebpf,
    maps::PerCpuHashMap,
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use hindsight_common::StackKey;

use super::{
    BpfError,
    session::{map_ref, program_mut},
};

const PROGRAM: &str = "oncpu_sample";

/// Attaches the sampler at `hz` to every online CPU; returns how many.
pub(super) fn attach(ebpf: &mut Ebpf, hz: u64) -> Result<usize, BpfError> {
    let program: &mut PerfEvent = program_mut(ebpf, PROGRAM)?;
    program.load().map_err(|source| BpfError::Program {
        name: PROGRAM,
        source,
    })?;
    let cpus = aya::util::online_cpus().map_err(|(_, source)| BpfError::Io {
        what: "/sys/devices/system/cpu/online",
        source,
    })?;
    for &cpu in &cpus {
        program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(hz),
                true,
            )
            .map_err(|source| BpfError::Attach {
                name: PROGRAM,
                cpu,
                source,
            })?;
    }
    Ok(cpus.len())
}

/// One count-map entry: `count` samples of `key`.
#[derive(Debug, Clone, Copy)]
pub struct RawSample {
    pub key: StackKey,
    pub count: u64,
}

pub(super) fn drain(ebpf: &Ebpf) -> Result<Vec<RawSample>, BpfError> {
    let counts: PerCpuHashMap<_, StackKey, u64> = map_ref(ebpf, "CPU_COUNTS")?;
    let mut samples = Vec::new();
    for entry in counts.iter() {
        let (key, values) = entry.map_err(BpfError::map("CPU_COUNTS"))?;
        let count: u64 = values.iter().sum();
        if count > 0 {
            samples.push(RawSample { key, count });
        }
    }
    Ok(samples)
}
