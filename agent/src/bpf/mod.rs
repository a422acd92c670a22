//! Loading Hindsight's eBPF programs into the kernel: the embedded object, privilege and
//! kernel-feature checks, and the errors a user sees when loading fails. [`session`] loads
//! the object once per profile; one module per probe family attaches and drains that
//! family's programs and maps: [`oncpu`], [`offcpu`], [`locks`]. [`window`] drains a
//! session that keeps running (the flight recorder).

pub mod exec;
pub mod locks;
pub mod offcpu;
pub mod oncpu;
mod privileges;
pub mod session;
pub mod stackcopy;
mod tracefs;
pub mod window;

pub use hindsight_common::Counter;
pub use privileges::check_privileges;
pub use session::{Counters, KernelFilter, MapSizes, RawProfile, Session, SessionConfig};
pub use stackcopy::{CopyEvent, UnwindMode, UnwindSettings};
pub use window::WindowDrain;

/// The eBPF object built by build.rs (ebpf-programs, with BTF).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hindsight-probes"));

/// Why the eBPF side of a profile failed. Loader errors keep aya's source, which carries
/// the verifier log when the kernel rejected a program.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "insufficient privileges for eBPF profiling: missing {missing} \
         (run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE)"
    )]
    Privileges { missing: String },
    #[error("loading the eBPF object failed")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF {kind} `{name}` is missing from the object (build mismatch)")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("the kernel refused eBPF program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching `{name}` to the cpu-clock perf event on CPU {cpu} failed \
         (is perf_event_open allowed? check kernel.perf_event_paranoid and CAP_PERFMON)"
    )]
    Attach {
        name: &'static str,
        cpu: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching `{name}` to tracepoint {tracepoint} failed (does this kernel have it?)")]
    AttachTracepoint {
        name: &'static str,
        tracepoint: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("mounting tracefs at /sys/kernel/tracing (needed for the futex tracepoints)")]
    Tracefs(#[source] std::io::Error),
    #[error("eBPF map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl BpfError {
    fn map(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| Self::Map { name, source }
    }
}
