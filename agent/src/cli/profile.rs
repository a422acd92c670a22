//! `hindsight profile`: sample stacks with eBPF and write folded stacks and flame graphs.

use std::path::PathBuf;

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result};
use clap::Args;
use nix::sys::{
    signal::{SigSet, Signal},
    signalfd::{SfdFlags, SignalFd},
};

/// Sample on-CPU stacks with eBPF and write folded stacks and a flame graph.
///
/// Samples every online CPU at --frequency Hz (software cpu-clock), keeps the user and
/// kernel stacks of the selected tasks (filtered in the kernel), symbolizes them and writes
/// OUTPUT_DIR/cpu.folded and OUTPUT_DIR/cpu.svg. Needs root, or CAP_BPF + CAP_PERFMON +
/// CAP_SYS_PTRACE (to read other processes' memory maps and binaries).
///
/// Examples:
///   hindsight profile --pid 4242 --duration 10 --output-dir ./prof
///   hindsight profile --unit nginx.service --duration 30
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

    /// Directory for cpu.folded and cpu.svg (created if missing).
    #[arg(long, short = 'o', default_value = ".", value_name = "DIR")]
    pub output_dir: PathBuf,
}

pub fn run(args: ProfileArgs) -> Result<()> {
    let request = crate::profile::ProfileRequest::from_cli(&args)?;
    // Ctrl-C and SIGTERM end sampling early; the profile is still written. Blocked here
    // and read through a signalfd, then unblocked, so a second Ctrl-C during symbolization
    // stops the program.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    let stop = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("creating a signalfd")?;
    let result = crate::profile::run(&request, stop.as_fd());
    let _ = stop.read_signal();
    signals
        .thread_unblock()
        .context("unblocking SIGINT/SIGTERM")?;
    println!("{}", result.context("profiling failed")?);
    Ok(())
}
