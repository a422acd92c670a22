//! User side of the on-CPU sampler (ebpf-programs/src/oncpu.rs): loads it with its
//! in-kernel filters, attaches it to the cpu-clock event of every online CPU, hands out the
//! new-process notifications while it runs, and drains its maps into a [`RawProfile`] that
//! `profile::` symbolizes and folds.

use std::{
    collections::{BTreeSet, HashMap},
    os::fd::{AsFd, BorrowedFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::{
        PerfEvent, RawTracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
pub use hindsight_common::Counter;
use hindsight_common::{NewProcess, StackKey, filter};

use super::{BpfError, OBJECT};

const PROGRAM: &str = "oncpu_sample";
const EXEC_PROGRAM: &str = "oncpu_exec";

/// What the in-kernel filter selects. Empty sets with `all == true` sample everything.
#[derive(Debug, Clone, Default)]
pub struct KernelFilter {
    pub tgids: BTreeSet<u32>,
    pub cgroup_ids: BTreeSet<u64>,
}

impl KernelFilter {
    fn flags(&self) -> u32 {
        let mut flags = 0;
        if !self.tgids.is_empty() {
            flags |= filter::TGIDS;
        }
        if !self.cgroup_ids.is_empty() {
            flags |= filter::CGROUPS;
        }
        flags
    }
}

/// Sizes of the kernel maps.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    /// Distinct stacks (user and kernel share the map).
    pub stacks: u32,
    /// Distinct (process, user stack, kernel stack) keys.
    pub counts: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        // 16 Ki stacks of up to 127 frames is ~16 MiB of kernel memory: 10 s of all CPUs at
        // 99 Hz on a busy 64-core host is ~63 Ki samples, mostly repeating stacks.
        Self {
            stacks: 16 * 1024,
            counts: 16 * 1024,
        }
    }
}

/// The sampler, loaded and attached. Dropping it detaches and unloads everything.
pub struct OnCpuSampler {
    ebpf: Ebpf,
    new_processes: RingBuf<MapData>,
    cgroups: BpfHashMap<MapData, u64, u8>,
    attached_cpus: usize,
}

impl OnCpuSampler {
    /// Loads the program, fills the filter maps, and attaches to every online CPU.
    pub fn start(filter: &KernelFilter, frequency: u64, sizes: MapSizes) -> Result<Self, BpfError> {
        let flags = filter.flags();
        let mut ebpf = EbpfLoader::new()
            .override_global("FILTER_FLAGS", &flags, true)
            .map_max_entries("STACKS", sizes.stacks)
            .map_max_entries("CPU_COUNTS", sizes.counts)
            .load(OBJECT)?;

        let mut tgids: BpfHashMap<_, u32, u8> = take_map(&mut ebpf, "TARGET_TGIDS")?;
        for tgid in &filter.tgids {
            tgids
                .insert(tgid, &0, 0)
                .map_err(BpfError::map("TARGET_TGIDS"))?;
        }
        let mut cgroups: BpfHashMap<_, u64, u8> = take_map(&mut ebpf, "TARGET_CGROUPS")?;
        for id in &filter.cgroup_ids {
            cgroups
                .insert(id, &0, 0)
                .map_err(BpfError::map("TARGET_CGROUPS"))?;
        }
        let new_processes: RingBuf<MapData> = take_map(&mut ebpf, "NEW_PROCESSES")?;

        // The exec hook first: a process that execs while sampling starts is then caught.
        let exec: &mut RawTracePoint = ebpf
            .program_mut(EXEC_PROGRAM)
            .ok_or(BpfError::Missing {
                kind: "program",
                name: EXEC_PROGRAM,
            })?
            .try_into()
            .map_err(|source| BpfError::Program {
                name: EXEC_PROGRAM,
                source,
            })?;
        exec.load().map_err(|source| BpfError::Program {
            name: EXEC_PROGRAM,
            source,
        })?;
        exec.attach("sched_process_exec")
            .map_err(|source| BpfError::Program {
                name: EXEC_PROGRAM,
                source,
            })?;

        let program: &mut PerfEvent = ebpf
            .program_mut(PROGRAM)
            .ok_or(BpfError::Missing {
                kind: "program",
                name: PROGRAM,
            })?
            .try_into()
            .map_err(|source| BpfError::Program {
                name: PROGRAM,
                source,
            })?;
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
                    SamplePolicy::Frequency(frequency),
                    true,
                )
                .map_err(|source| BpfError::Attach {
                    name: PROGRAM,
                    cpu,
                    source,
                })?;
        }
        tracing::debug!(
            cpus = cpus.len(),
            frequency,
            flags,
            "on-CPU sampler attached"
        );
        Ok(Self {
            ebpf,
            new_processes,
            cgroups,
            attached_cpus: cpus.len(),
        })
    }

    pub fn attached_cpus(&self) -> usize {
        self.attached_cpus
    }

    /// Adds a cgroup to the filter while sampling (a new descendant of a selected cgroup).
    pub fn add_cgroup(&mut self, id: u64) -> Result<(), BpfError> {
        self.cgroups
            .insert(&id, &0, 0)
            .map_err(BpfError::map("TARGET_CGROUPS"))
    }

    /// Readable when new-process notifications are waiting.
    pub fn notifications_fd(&self) -> BorrowedFd<'_> {
        self.new_processes.as_fd()
    }

    /// Takes the pending notifications of processes sampled for the first time (or for
    /// the first time since they called execve).
    pub fn new_processes(&mut self) -> Vec<NewProcess> {
        let mut out = Vec::new();
        while let Some(item) = self.new_processes.next() {
            if item.len() >= size_of::<NewProcess>() {
                // SAFETY: the kernel wrote a whole `NewProcess` (checked length above); it is
                // `#[repr(C)]` plain data and read unaligned.
                out.push(unsafe { item.as_ptr().cast::<NewProcess>().read_unaligned() });
            }
        }
        out
    }

    /// Stops sampling: detaches from every CPU. The maps stay readable.
    pub fn stop(&mut self) -> Result<(), BpfError> {
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or(BpfError::Missing {
                kind: "program",
                name: PROGRAM,
            })?
            .try_into()
            .map_err(|source| BpfError::Program {
                name: PROGRAM,
                source,
            })?;
        // Unloading detaches every link; the maps are held by `self.ebpf`.
        program.unload().map_err(|source| BpfError::Program {
            name: PROGRAM,
            source,
        })
    }

    /// Reads the counts (summed over CPUs), the stacks they reference and the counters.
    pub fn drain(&mut self) -> Result<RawProfile, BpfError> {
        let counts: PerCpuHashMap<_, StackKey, u64> = map_ref(&self.ebpf, "CPU_COUNTS")?;
        let mut samples = Vec::new();
        for entry in counts.iter() {
            let (key, values) = entry.map_err(BpfError::map("CPU_COUNTS"))?;
            let count: u64 = values.iter().sum();
            if count > 0 {
                samples.push(RawSample { key, count });
            }
        }
        let stack_map: StackTraceMap<_> = map_ref(&self.ebpf, "STACKS")?;
        let mut stacks = HashMap::new();
        for sample in &samples {
            for id in [sample.key.user_stack_id, sample.key.kernel_stack_id] {
                if id < 0 || stacks.contains_key(&(id as u32)) {
                    continue;
                }
                match stack_map.get(&(id as u32), 0) {
                    Ok(trace) => {
                        stacks.insert(
                            id as u32,
                            trace.frames().iter().map(|f| f.ip).collect::<Vec<_>>(),
                        );
                    }
                    // Counted as a lost stack when the samples are folded.
                    Err(err) => tracing::debug!(id, "stack id unreadable: {err}"),
                }
            }
        }
        let counters_map: PerCpuArray<_, u64> = map_ref(&self.ebpf, "COUNTERS")?;
        let mut counters = Counters::default();
        for counter in Counter::ALL {
            let values = counters_map
                .get(&(counter as u32), 0)
                .map_err(BpfError::map("COUNTERS"))?;
            counters.0[counter as usize] = values.iter().sum();
        }
        Ok(RawProfile {
            samples,
            stacks,
            counters,
        })
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(BpfError::map(name))
}

fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(BpfError::map(name))
}

/// One count-map entry: `count` samples of `key`.
#[derive(Debug, Clone, Copy)]
pub struct RawSample {
    pub key: StackKey,
    pub count: u64,
}

/// Totals of the kernel-side [`Counter`]s over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

/// Everything the sampler recorded, before symbolization.
#[derive(Debug, Default)]
pub struct RawProfile {
    pub samples: Vec<RawSample>,
    /// Stack id -> instruction pointers, leaf first.
    pub stacks: HashMap<u32, Vec<u64>>,
    pub counters: Counters,
}
