//! `hindsight profile`: sample stacks with eBPF and write folded stacks and flame graphs.

use std::path::PathBuf;

use std::{collections::BTreeSet, os::fd::AsFd as _};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::profile::{Format, Mode, TaskState, UnwindMode};
use nix::sys::{
    signal::{SigSet, Signal},
    signalfd::{SfdFlags, SignalFd},
};

/// Profile with eBPF: where CPU time goes, where threads wait, which locks they wait on.
///
/// Modes (--mode, a comma list; default cpu):
///   cpu     samples every online CPU at --frequency Hz (software cpu-clock) and keeps the
///           user and kernel stacks of the selected tasks: where CPU time is spent.
///   offcpu  records, at every context switch of a selected thread, its stacks when it
///           leaves the CPU and adds the time until it runs again: where threads wait
///           (I/O, sleep, locks, run queue). Weight = microseconds blocked; the task state
///           (sleeping, uninterruptible/D, runnable/preempted) is the top frame.
///   locks   kernel lock contention (lock:contention_begin/end: spinlocks, mutexes,
///           rwsems) and user-space futex waits (pthread mutexes, condition variables),
///           per waiter stack and lock. Weight = microseconds waited; a futex is named by
///           the global variable it lies in when the binary has symbols.
///   all     all of the above.
/// Each mode writes OUTPUT_DIR/<mode>.folded and OUTPUT_DIR/<mode>.svg (--format adds
/// <mode>.pb.gz, pprof); a summary (top functions, waits and contended locks; --top rows)
/// goes to stdout. Filters (--pid, --cgroup, --unit)
/// run in the kernel. Needs root, or CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE (to read
/// other processes' memory maps and binaries).
///
/// Known limit: stacks are walked with frame pointers, so code built without them
/// (Debian's glibc among it) cuts stacks short; the summary counts such stacks.
///
/// Examples:
///   hindsight profile --pid 4242 --duration 10 --output-dir ./prof
///   hindsight profile --pid 4242 --duration 10 --mode offcpu,locks --output-dir ./prof
///   hindsight profile --unit payments.service --duration 30 --mode all
///   hindsight profile --all --frequency 49 --duration 60
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ProfileArgs {
    /// Profile this process (all its threads). Repeatable. Processes it starts later are
    /// not included; use --unit or --cgroup for that.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Profile every process in this cgroup v2 and its descendants (also those created while
    /// sampling): an absolute path, or one relative to the cgroup v2 mount (/sys/fs/cgroup,
    /// or /sys/fs/cgroup/unified on hybrid hosts), e.g. system.slice/nginx.service.
    /// Repeatable.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,

    /// Profile a systemd unit by name (its cgroup, e.g. payments.service). Repeatable.
    #[arg(long = "unit", value_name = "NAME")]
    pub units: Vec<String>,

    /// Profile the whole system. The default when no --pid, --cgroup or --unit is given.
    #[arg(long, conflicts_with_all = ["pids", "cgroups", "units"])]
    pub all: bool,

    /// How long to sample, in seconds. Ctrl-C ends sampling early and still writes the
    /// profile.
    #[arg(long, short = 'd', default_value_t = 10.0, value_name = "SECONDS")]
    pub duration: f64,

    /// Samples per second per CPU. 99 (not 100) avoids lockstep with timers.
    #[arg(long, short = 'F', default_value_t = 99, value_name = "HZ",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,

    /// What to record: a comma list of cpu, offcpu, locks, or all.
    #[arg(
        long = "mode",
        short = 'm',
        value_delimiter = ',',
        default_value = "cpu",
        value_name = "MODES"
    )]
    pub mode: Vec<ModeArg>,

    /// Off-CPU: ignore waits shorter than this many microseconds (filtered in the kernel).
    #[arg(long, default_value_t = 1, value_name = "USEC")]
    pub min_block: u64,

    /// Off-CPU: record only waits in these task states (comma list; default: all).
    #[arg(long = "state", value_delimiter = ',', value_name = "STATES")]
    pub states: Vec<TaskState>,

    /// Off-CPU: when a thread blocks again from the same user stack in the same state,
    /// reuse its last kernel stack for up to N switch-outs in a row before walking it again.
    /// Walking the kernel stack is most of the cost per context switch; 0 walks it every
    /// time (exact kernel stacks, about 3x the cost on switch-heavy workloads).
    #[arg(
        long = "offcpu-kstack-reuse",
        value_name = "N",
        default_value_t = crate::profile::DEFAULT_KERNEL_STACK_REUSES
    )]
    pub kernel_stack_reuses: u32,
    /// How to walk user stacks. `fp`: frame pointers in the kernel, cheapest, but cut
    /// short by code built without them (most distro libraries, glibc included). `dwarf`:
    /// copy the user stack at each event and unwind it here with the binaries' .eh_frame
    /// tables. `auto`: like dwarf, but off-CPU and lock waits beyond --unwind-budget copies
    /// per second and CPU fall back to frame pointers (counted in the summary).
    #[arg(long, value_enum, default_value_t = UnwindMode::Auto, value_name = "HOW")]
    pub unwind: UnwindMode,

    /// dwarf/auto: bytes of user stack copied per event (512..=16384). Deeper stacks lose
    /// their outermost frames (counted).
    #[arg(long, default_value_t = 8192, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(512..=16384))]
    pub unwind_stack: u32,

    /// auto: stack copies per second and CPU for lock waits, and a quarter of it for
    /// off-CPU waits; beyond it they use frame pointers. Bounds the cost on hosts that
    /// switch tasks very often (a copy costs ~10 µs on our 2-CPU VMs).
    #[arg(long, default_value_t = 1000, value_name = "PER_SEC",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub unwind_budget: u64,

    /// Directory for the <mode>.folded, <mode>.svg and <mode>.pb.gz files (created if
    /// missing).
    #[arg(long, short = 'o', default_value = ".", value_name = "DIR")]
    pub output_dir: PathBuf,

    /// What to write per mode, a comma list: svg (flame graph), folded (folded stacks),
    /// pprof (<mode>.pb.gz, for go tool pprof, Pyroscope, Parca, speedscope; samples carry
    /// process, pid, cgroup and unit labels).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "svg,folded",
        value_name = "FORMATS"
    )]
    pub format: Vec<Format>,

    /// Draw icicle graphs: the root at the top, stacks growing down.
    #[arg(long)]
    pub icicle: bool,

    /// Reverse the stacks: leaf functions at the root with their callers above them, so a
    /// function called from many places is one wide frame.
    #[arg(long)]
    pub reversed: bool,

    /// Group by thread: a frame `NAME (tid N)` under each process frame (cpu and offcpu;
    /// the pprof samples get thread and tid labels). Keys the kernel maps by thread.
    #[arg(long)]
    pub per_thread: bool,

    /// Rows in the summary's lists of top functions (cpu) and waits (offcpu, locks).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub top: usize,
}

/// A `--mode` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// On-CPU stack samples.
    Cpu,
    /// Off-CPU time: where threads wait.
    Offcpu,
    /// Kernel lock contention and futex waits.
    Locks,
    /// cpu, offcpu and locks.
    All,
}

impl ProfileArgs {
    /// The modes asked for, `all` expanded.
    pub fn modes(&self) -> BTreeSet<Mode> {
        self.mode
            .iter()
            .flat_map(|m| match m {
                ModeArg::Cpu => vec![Mode::Cpu],
                ModeArg::Offcpu => vec![Mode::OffCpu],
                ModeArg::Locks => vec![Mode::Locks],
                ModeArg::All => Mode::ALL.to_vec(),
            })
            .collect()
    }
}

pub fn run(args: ProfileArgs) -> Result<()> {
    let request = crate::profile::ProfileRequest::from_cli(&args)?;
    println!("{}", run_request(&request)?);
    Ok(())
}

/// Takes one profile; Ctrl-C or SIGTERM end it early (it is still written).
pub fn run_request(
    request: &crate::profile::ProfileRequest,
) -> Result<crate::profile::ProfileReport> {
    // Ctrl-C and SIGTERM end sampling early; the profile is still written. Blocked here
    // and read through a signalfd, then unblocked, so a second Ctrl-C during symbolization
    // stops the program.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    let stop = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("creating a signalfd")?;
    let result = crate::profile::run(request, stop.as_fd());
    let _ = stop.read_signal();
    signals
        .thread_unblock()
        .context("unblocking SIGINT/SIGTERM")?;
    result.context("profiling failed")
}
