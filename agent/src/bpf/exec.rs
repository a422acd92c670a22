//! User side of the exec-history programs (ebpf-programs/src/exec.rs): a long-lived load
//! of the object with only those programs attached (the other families' maps shrunk to
//! one entry, since they are created with the object but never used here), and the
//! events read back from its ring buffer. `crate::history` keeps them.

use std::os::fd::{AsFd, BorrowedFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use hindsight_common::history::{ExecEvent, ExecResult, ExitEvent, counter, kind};

use super::{
    BpfError, OBJECT,
    session::{map_ref, program_mut},
    tracefs::TracefsMount,
};

/// Maps of the profiling families: created with the object, unused by this load.
const UNUSED_MAPS: &[&str] = &[
    "STACKS",
    "TARGET_TGIDS",
    "TARGET_CGROUPS",
    "SEEN_TGIDS",
    "CPU_COUNTS",
    "OFFCPU_START",
    "OFFCPU",
    "KLOCK_START",
    "FUTEX_START",
    "LOCKS",
];

/// (program, category, tracepoint, required)
const ATTACH: &[(&str, &str, &str, bool)] = &[
    ("history_fork", "sched", "sched_process_fork", true),
    ("history_execve", "syscalls", "sys_enter_execve", true),
    ("history_execveat", "syscalls", "sys_enter_execveat", false),
    ("history_exec_exit", "syscalls", "sys_exit_execve", true),
    ("history_exec_exit", "syscalls", "sys_exit_execveat", false),
    (
        "history_exit_group",
        "syscalls",
        "sys_enter_exit_group",
        true,
    ),
    ("history_signal", "signal", "signal_deliver", true),
];

/// One event off the ring buffer.
pub enum Event {
    Exec(Box<ExecEvent>),
    Result(ExecResult),
    Exit(ExitEvent),
}

/// What the programs counted (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExecCounters {
    pub execs: u64,
    pub execs_lost: u64,
    pub results_lost: u64,
    pub exits: u64,
    pub exits_lost: u64,
}

/// The attached programs; dropping it detaches them (and unmounts a tracefs it mounted).
pub struct ExecProbes {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    _tracefs: Option<TracefsMount>,
}

impl ExecProbes {
    /// Loads the object and attaches the history programs. Needs CAP_BPF and CAP_PERFMON
    /// (tracepoint perf events), and tracefs mounted or mountable (CAP_SYS_ADMIN).
    pub fn start() -> Result<Self, BpfError> {
        let tracefs = TracefsMount::ensure()?;
        let mut loader = EbpfLoader::new();
        for name in UNUSED_MAPS {
            loader.map_max_entries(name, 1);
        }
        // A ring buffer's size must be a power-of-two number of pages.
        loader.map_max_entries("NEW_PROCESSES", 4096);
        loader.map_max_entries("STACK_COPIES", 4096);
        let mut ebpf = loader.load(OBJECT)?;
        let mut loaded = std::collections::BTreeSet::new();
        for &(program, category, tracepoint, required) in ATTACH {
            let prog: &mut TracePoint = program_mut(&mut ebpf, program)?;
            if loaded.insert(program) {
                prog.load().map_err(|source| BpfError::Program {
                    name: program,
                    source,
                })?;
            }
            match prog.attach(category, tracepoint) {
                Ok(_) => {}
                Err(source) if required => {
                    return Err(BpfError::AttachTracepoint {
                        name: program,
                        tracepoint,
                        source,
                    });
                }
                Err(source) => tracing::debug!("no {tracepoint} tracepoint: {source}"),
            }
        }
        let events =
            RingBuf::try_from(ebpf.take_map("HISTORY_EVENTS").ok_or(BpfError::Missing {
                kind: "map",
                name: "HISTORY_EVENTS",
            })?)
            .map_err(BpfError::map("HISTORY_EVENTS"))?;
        Ok(Self {
            ebpf,
            events,
            _tracefs: tracefs,
        })
    }

    /// Readable when events are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    /// Hands every waiting event to `f`, oldest first.
    pub fn drain(&mut self, mut f: impl FnMut(Event)) {
        while let Some(item) = self.events.next() {
            if let Some(event) = parse(&item) {
                f(event);
            }
        }
    }

    pub fn counters(&self) -> Result<ExecCounters, BpfError> {
        let map: PerCpuArray<_, u64> = map_ref(&self.ebpf, "HISTORY_COUNTERS")?;
        let get = |index: u32| -> Result<u64, BpfError> {
            Ok(map
                .get(&index, 0)
                .map_err(BpfError::map("HISTORY_COUNTERS"))?
                .iter()
                .sum())
        };
        Ok(ExecCounters {
            execs: get(counter::EXECS)?,
            execs_lost: get(counter::EXECS_LOST)?,
            results_lost: get(counter::RESULTS_LOST)?,
            exits: get(counter::EXITS)?,
            exits_lost: get(counter::EXITS_LOST)?,
        })
    }
}

fn parse(bytes: &[u8]) -> Option<Event> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    // SAFETY (each arm): the kernel wrote a whole event of this kind (length checked);
    // the types are `#[repr(C)]` plain integers and byte arrays, read unaligned.
    match kind {
        kind::EXEC if bytes.len() >= size_of::<ExecEvent>() => {
            Some(Event::Exec(Box::new(unsafe {
                bytes.as_ptr().cast::<ExecEvent>().read_unaligned()
            })))
        }
        kind::RESULT if bytes.len() >= size_of::<ExecResult>() => Some(Event::Result(unsafe {
            bytes.as_ptr().cast::<ExecResult>().read_unaligned()
        })),
        kind::EXIT if bytes.len() >= size_of::<ExitEvent>() => Some(Event::Exit(unsafe {
            bytes.as_ptr().cast::<ExitEvent>().read_unaligned()
        })),
        _ => None,
    }
}
