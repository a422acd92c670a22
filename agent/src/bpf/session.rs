//! One profiling session in the kernel: the eBPF object loaded once with its in-kernel
//! filters, the probe families the user asked for attached, the new-process notifications
//! handed out while it runs, and everything drained into a [`RawProfile`] at the end.

use std::{
    collections::{BTreeSet, HashMap},
    os::fd::{AsFd, BorrowedFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::RawTracePoint,
};
use hindsight_common::{Counter, NewProcess, filter};

use super::{
    BpfError, OBJECT, locks, offcpu, oncpu, stackcopy::UnwindSettings, tracefs::TracefsMount,
};

/// What the in-kernel filter selects. Both sets empty: every task but the agent's own.
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

/// Which probe families to attach, and their settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// On-CPU sampling frequency, when on-CPU profiling is wanted.
    pub oncpu_hz: Option<u64>,
    /// Off-CPU settings, when off-CPU profiling is wanted.
    pub offcpu: Option<offcpu::OffCpuSettings>,
    /// Lock contention (kernel locks and futexes).
    pub locks: bool,
    /// Key on-CPU samples and off-CPU waits by thread too.
    pub per_thread: bool,
    pub sizes: MapSizes,
    /// How user stacks are walked (`--unwind`).
    pub unwind: UnwindSettings,
}

/// Sizes of the kernel maps.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    /// Distinct stacks (user and kernel, every family, share the map).
    pub stacks: u32,
    /// Distinct keys of each family's aggregation map.
    pub keys: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        // 16 Ki stacks of up to 127 frames is ~16 MiB of kernel memory: 10 s of all CPUs at
        // 99 Hz on a busy 64-core host is ~63 Ki samples, mostly repeating stacks.
        Self {
            stacks: 16 * 1024,
            keys: 16 * 1024,
        }
    }
}

/// Attached programs and their maps. Dropping it detaches and unloads everything (and
/// unmounts tracefs if the session mounted it).
pub struct Session {
    ebpf: Ebpf,
    new_processes: RingBuf<MapData>,
    stack_copies: RingBuf<MapData>,
    cgroups: BpfHashMap<MapData, u64, u8>,
    attached_cpus: usize,
    config: SessionConfig,
    /// CLOCK_MONOTONIC when recording stopped: the end of waits still open then.
    stopped_ns: Option<u64>,
    // Declared last: dropped after the programs are detached.
    _tracefs: Option<TracefsMount>,
}

impl Session {
    /// Loads the object, fills the filter maps and attaches the requested families.
    pub fn start(filter: &KernelFilter, config: SessionConfig) -> Result<Self, BpfError> {
        let flags = filter.flags();
        let agent = std::process::id();
        let offcpu = config.offcpu.clone().unwrap_or_default();
        let min_block_ns = offcpu.min_block.as_nanos() as u64;
        let state_mask = offcpu.state_mask();
        let kernel_stack_reuses = offcpu.kernel_stack_reuses;
        let copy_bytes = config.unwind.copy_bytes();
        let copy_budget = config.unwind.budget();
        let offcpu_copy_budget = config.unwind.offcpu_budget();
        let copy_wakeup = config.unwind.wakeup_bytes();
        let per_thread = u32::from(config.per_thread);
        let mut ebpf = EbpfLoader::new()
            .override_global("FILTER_FLAGS", &flags, true)
            .override_global("AGENT_TGID", &agent, true)
            .override_global("MIN_BLOCK_NS", &min_block_ns, true)
            .override_global("STATE_MASK", &state_mask, true)
            .override_global("KERNEL_STACK_REUSES", &kernel_stack_reuses, true)
            .override_global("STACK_COPY_BYTES", &copy_bytes, true)
            .override_global("COPY_BUDGET_PER_SEC", &copy_budget, true)
            .override_global("OFFCPU_COPY_BUDGET_PER_SEC", &offcpu_copy_budget, true)
            .override_global("COPY_WAKEUP_BYTES", &copy_wakeup, true)
            .map_max_entries("STACK_COPIES", config.unwind.ring_size())
            .override_global("PER_THREAD", &per_thread, true)
            .map_max_entries("STACKS", config.sizes.stacks)
            .map_max_entries("CPU_COUNTS", config.sizes.keys)
            .map_max_entries("OFFCPU", config.sizes.keys)
            .map_max_entries("LOCKS", config.sizes.keys)
            // The exec-history maps (bpf/exec.rs) are created with the object but unused
            // by a profile: the smallest sizes allowed.
            .map_max_entries("HISTORY_EVENTS", 4096)
            .map_max_entries("PARENTS", 1)
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
        let stack_copies: RingBuf<MapData> = take_map(&mut ebpf, "STACK_COPIES")?;

        // The exec hook first: a process that execs while the session starts is caught.
        attach_raw_tracepoint(&mut ebpf, "process_exec", "sched_process_exec")?;
        // Futex waits use syscall tracepoints, which need tracefs.
        let tracefs = if config.locks {
            TracefsMount::ensure()?
        } else {
            None
        };
        if config.offcpu.is_some() {
            // Its settings went in as globals above.
            offcpu::attach(&mut ebpf)?;
        }
        if config.locks {
            locks::attach(&mut ebpf)?;
        }
        let mut attached_cpus = 0;
        if let Some(hz) = config.oncpu_hz {
            attached_cpus = oncpu::attach(&mut ebpf, hz)?;
        }
        tracing::debug!(flags, ?config, "eBPF session attached");
        Ok(Self {
            ebpf,
            new_processes,
            stack_copies,
            cgroups,
            attached_cpus,
            config,
            stopped_ns: None,
            _tracefs: tracefs,
        })
    }

    /// The families attached and their settings.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The loaded object, for draining a running session ([`super::window`]).
    pub(super) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// CPUs the on-CPU sampler is attached to (0 without on-CPU profiling).
    pub fn attached_cpus(&self) -> usize {
        self.attached_cpus
    }

    /// Adds a cgroup to the filter while running (a new descendant of a selected cgroup).
    pub fn add_cgroup(&mut self, id: u64) -> Result<(), BpfError> {
        self.cgroups
            .insert(&id, &0, 0)
            .map_err(BpfError::map("TARGET_CGROUPS"))
    }

    /// Readable when new-process notifications are waiting.
    pub fn notifications_fd(&self) -> BorrowedFd<'_> {
        self.new_processes.as_fd()
    }

    /// Takes the pending notifications of processes recorded for the first time (or for
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

    /// Readable when copied user stacks are waiting (`--unwind dwarf|auto`).
    pub fn stack_copies_fd(&self) -> BorrowedFd<'_> {
        self.stack_copies.as_fd()
    }

    /// Hands each pending record of the copy ring to `f`, in the order they were sent.
    pub fn take_stack_copies(&mut self, mut f: impl FnMut(&[u8])) {
        while let Some(item) = self.stack_copies.next() {
            f(&item);
        }
    }

    /// Stops recording: unloads every probe program (which detaches them). The maps stay
    /// readable until the session is dropped.
    pub fn stop(&mut self) -> Result<(), BpfError> {
        use aya::programs::Program;
        self.stopped_ns = Some(offcpu::monotonic_ns());
        for (name, program) in self.ebpf.programs_mut() {
            let result = match program {
                Program::PerfEvent(p) => p.unload(),
                Program::RawTracePoint(p) => p.unload(),
                Program::TracePoint(p) => p.unload(),
                _ => Ok(()),
            };
            // Programs of families not requested were never loaded: nothing to unload.
            if let Err(err) = result {
                tracing::debug!("unloading {name}: {err}");
            }
        }
        Ok(())
    }

    /// Reads what each attached family recorded, the stacks it references and the
    /// counters.
    pub fn drain(&mut self) -> Result<RawProfile, BpfError> {
        let mut raw = RawProfile::default();
        if self.config.oncpu_hz.is_some() {
            raw.oncpu = oncpu::drain(&self.ebpf)?;
        }
        if let Some(settings) = &self.config.offcpu {
            let stopped_ns = self.stopped_ns.unwrap_or_else(offcpu::monotonic_ns);
            (raw.offcpu, raw.open_copied_waits) = offcpu::drain(&self.ebpf, settings, stopped_ns)?;
        }
        if self.config.locks {
            raw.locks = locks::drain(&self.ebpf)?;
        }
        self.read_stacks(&mut raw)?;
        let counters_map: PerCpuArray<_, u64> = map_ref(&self.ebpf, "COUNTERS")?;
        for counter in Counter::ALL {
            let values = counters_map
                .get(&(counter as u32), 0)
                .map_err(BpfError::map("COUNTERS"))?;
            raw.counters.0[counter as usize] = values.iter().sum();
        }
        Ok(raw)
    }

    /// Reads the stacks `raw`'s records reference that it does not hold yet (`drain` does;
    /// call it again after adding records, e.g. the unwound ones with their kernel stacks).
    pub fn read_stacks(&self, raw: &mut RawProfile) -> Result<(), BpfError> {
        let stack_map: StackTraceMap<_> = map_ref(&self.ebpf, "STACKS")?;
        let ids = raw
            .oncpu
            .iter()
            .flat_map(|s| [s.key.user_stack_id, s.key.kernel_stack_id])
            .chain(
                raw.offcpu
                    .iter()
                    .flat_map(|(k, _)| [k.user_stack_id, k.kernel_stack_id]),
            )
            .chain(
                raw.locks
                    .iter()
                    .flat_map(|(k, _)| [k.user_stack_id, k.kernel_stack_id]),
            );
        for id in ids {
            if id < 0 || raw.stacks.contains_key(&(id as u32)) {
                continue;
            }
            match stack_map.get(&(id as u32), 0) {
                Ok(trace) => {
                    raw.stacks
                        .insert(id as u32, trace.frames().iter().map(|f| f.ip).collect());
                }
                // Counted as a lost stack when the samples are folded.
                Err(err) => tracing::debug!(id, "stack id unreadable: {err}"),
            }
        }
        Ok(())
    }
}

pub(super) fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &'static str,
) -> Result<(), BpfError> {
    let prog: &mut RawTracePoint = program_mut(ebpf, program)?;
    prog.load().map_err(|source| BpfError::Program {
        name: program,
        source,
    })?;
    prog.attach(tracepoint)
        .map_err(|source| BpfError::AttachTracepoint {
            name: program,
            tracepoint,
            source,
        })?;
    Ok(())
}

pub(super) fn program_mut<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(BpfError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| BpfError::Program { name, source })
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

pub(super) fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(BpfError::map(name))
}

pub(super) fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(BpfError::map(name))
}

/// Totals of the kernel-side [`Counter`]s over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

/// Everything a session recorded, before symbolization.
#[derive(Debug, Default)]
pub struct RawProfile {
    pub oncpu: Vec<oncpu::RawSample>,
    pub offcpu: Vec<(hindsight_common::OffCpuKey, hindsight_common::WaitStats)>,
    pub locks: Vec<(hindsight_common::LockKey, hindsight_common::WaitStats)>,
    /// Off-CPU waits still open at the end whose user stack was copied: (wait id, ns).
    pub open_copied_waits: Vec<(u64, u64)>,
    /// Stack id -> instruction pointers, leaf first. Ids from
    /// `crate::profile::unwind::UNWOUND_ID_BASE` up are stacks unwound in user space.
    pub stacks: HashMap<u32, Vec<u64>>,
    pub counters: Counters,
}
