//! The profiling pipeline: eBPF maps ([`crate::bpf::oncpu`]) -> processes seen
//! ([`process`]) -> symbolization ([`symbolize`]) -> folded stacks ([`fold`], [`stack`]) ->
//! flame graph ([`flamegraph`]). [`run`] drives it for one `hindsight profile`.

pub mod flamegraph;
pub mod fold;
pub mod process;
pub mod stack;
pub mod symbolize;
pub mod target;

use std::{
    fmt, fs,
    io::{BufWriter, Write as _},
    os::fd::BorrowedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::bpf::{
    self, BpfError,
    oncpu::{Counter, Counters, KernelFilter, MapSizes, OnCpuSampler},
};
use fold::FoldStats;
use stack::ratio;
use target::{ResolvedTargets, TargetError, Targets};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("--duration must be a positive number of seconds, not {0}")]
    Duration(f64),
    #[error("output directory {path}", path = .path.display())]
    OutputDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}", path = .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for events")]
    Poll(#[source] nix::Error),
}

/// One on-CPU profile to take.
#[derive(Debug, Clone)]
pub struct ProfileRequest {
    pub targets: Targets,
    pub duration: Duration,
    pub frequency: u64,
    pub output_dir: PathBuf,
}

impl ProfileRequest {
    pub fn from_cli(args: &crate::cli::profile::ProfileArgs) -> Result<Self, ProfileError> {
        if !(args.duration.is_finite() && args.duration > 0.0) {
            return Err(ProfileError::Duration(args.duration));
        }
        Ok(Self {
            targets: Targets {
                pids: args.pids.clone(),
                cgroups: args.cgroups.clone(),
                units: args.units.clone(),
            },
            duration: Duration::from_secs_f64(args.duration),
            frequency: args.frequency,
            output_dir: args.output_dir.clone(),
        })
    }
}

/// What a profile produced, printed at the end of `hindsight profile`.
#[derive(Debug)]
pub struct ProfileReport {
    pub folded_path: PathBuf,
    pub svg_path: PathBuf,
    pub target: String,
    pub cpus: usize,
    pub frequency: u64,
    pub sampled_for: Duration,
    pub stopped_early: Option<&'static str>,
    pub counters: Counters,
    pub fold: FoldStats,
    pub distinct_stacks: usize,
    pub unnamed_frames: u64,
    pub frames: u64,
    /// From the end of sampling to the SVG on disk.
    pub processing: Duration,
    pub top: Vec<(String, u64)>,
}

/// Takes one profile: resolves targets, samples, symbolizes, writes `cpu.folded` and
/// `cpu.svg` in the output directory. Sampling ends after the requested duration, or
/// early when `stop` becomes readable (the CLI passes a signalfd for Ctrl-C/SIGTERM, a
/// daemon an eventfd); the profile is written either way.
pub fn run(request: &ProfileRequest, stop: BorrowedFd<'_>) -> Result<ProfileReport, ProfileError> {
    let targets = request.targets.resolve()?;
    // Fail on an unusable output directory now, not after the whole sampling period.
    prepare_output_dir(&request.output_dir)?;
    bpf::check_privileges()?;

    let filter = KernelFilter {
        tgids: targets.tgids.clone(),
        cgroup_ids: targets.cgroup_ids(),
    };
    let mut known_cgroups = filter.cgroup_ids.clone();
    raise_fd_limit();

    let mut processes = process::ProcessTable::default();
    for &tgid in &targets.tgids {
        processes.observe(tgid, None);
    }
    let mut sampler = OnCpuSampler::start(&filter, request.frequency, MapSizes::default())?;
    let cpus = sampler.attached_cpus();
    tracing::info!(
        "sampling {} on {cpus} CPUs at {} Hz for {:.1} s (Ctrl-C stops early and still writes the profile)",
        targets.describe(),
        request.frequency,
        request.duration.as_secs_f64()
    );
    let started_at = SystemTime::now();
    let start = Instant::now();
    let deadline = start + request.duration;
    let mut next_housekeeping = start + Duration::from_secs(1);
    let mut stopped_early = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = (deadline - now).min(Duration::from_millis(250));
        let mut fds = [
            PollFd::new(sampler.notifications_fd(), PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
        ];
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(err) => return Err(ProfileError::Poll(err)),
        }
        if fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            stopped_early = Some("stop requested (signal)");
            break;
        }
        take_notifications(&mut sampler, &mut processes);
        if Instant::now() >= next_housekeeping {
            next_housekeeping += Duration::from_secs(1);
            for id in targets.cgroup_ids().difference(&known_cgroups.clone()) {
                sampler.add_cgroup(*id)?;
                known_cgroups.insert(*id);
            }
            if only_pids(&targets)
                && targets
                    .tgids
                    .iter()
                    .all(|t| !Path::new(&format!("/proc/{t}")).exists())
            {
                stopped_early = Some("every target process exited");
                break;
            }
        }
    }
    let sampled_for = start.elapsed();
    sampler.stop()?;
    let processing_start = Instant::now();

    take_notifications(&mut sampler, &mut processes);
    let raw = sampler.drain()?;
    drop(sampler);
    for sample in &raw.samples {
        processes.observe(sample.key.tgid, None);
    }
    processes.refresh();
    let mut symbolizer = symbolize::Symbolizer::new();
    let (folded, fold_stats) = fold::fold(&raw, &processes, &mut symbolizer);

    let folded_path = request.output_dir.join("cpu.folded");
    let svg_path = request.output_dir.join("cpu.svg");
    write_atomically(&folded_path, |out| folded.write_to(out))?;
    let labels = flamegraph::GraphLabels {
        title: format!(
            "On-CPU: {} on {}",
            targets.describe(),
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "this host".into())
        ),
        subtitle: format!(
            "{} UTC, {:.1} s, {} samples at {} Hz on {} CPUs; kernel frames _[k]; [lost] = stack not recorded",
            utc_seconds(started_at),
            sampled_for.as_secs_f64(),
            folded.total(),
            request.frequency,
            cpus,
        ),
        count_name: "samples".into(),
    };
    write_atomically(&svg_path, |out| {
        flamegraph::write_svg(&folded, &labels, out)
    })?;
    Ok(ProfileReport {
        folded_path,
        svg_path,
        target: targets.describe(),
        cpus,
        frequency: request.frequency,
        sampled_for,
        stopped_early,
        counters: raw.counters,
        fold: fold_stats,
        distinct_stacks: folded.len(),
        unnamed_frames: symbolizer.stats.unnamed,
        frames: symbolizer.stats.addresses,
        processing: processing_start.elapsed(),
        top: folded.top_self(5),
    })
}

/// `2026-12-04 15:43:13`, in UTC.
fn utc_seconds(at: SystemTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from(at)
        .format(&format)
        .unwrap_or_default()
}

/// Snapshots processes the kernel saw for the first time, or again after an exec.
fn take_notifications(sampler: &mut OnCpuSampler, processes: &mut process::ProcessTable) {
    for event in sampler.new_processes() {
        let len = event
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(event.comm.len());
        processes.reobserve(
            event.tgid,
            Some(&String::from_utf8_lossy(&event.comm[..len])),
        );
    }
}

fn only_pids(targets: &ResolvedTargets) -> bool {
    !targets.tgids.is_empty() && targets.cgroups.is_empty()
}

fn prepare_output_dir(dir: &Path) -> Result<(), ProfileError> {
    let err = |source| ProfileError::OutputDir {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".hindsight-write-test-{}", std::process::id()));
    fs::write(&probe, b"").map_err(err)?;
    fs::remove_file(&probe).map_err(err)
}

/// Writes through a temporary file and renames it, so a file under the final name is
/// always complete.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<(), ProfileError> {
    let err = |source| ProfileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut out = BufWriter::new(fs::File::create(&tmp)?);
        write(&mut out)?;
        out.flush()?;
        out.get_ref().sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Each mapped binary is held open for symbolization: allow as many as the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

impl fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |counter| self.counters.get(counter);
        writeln!(
            f,
            "wrote {} ({} distinct stacks) and {}",
            self.folded_path.display(),
            self.distinct_stacks,
            self.svg_path.display()
        )?;
        writeln!(
            f,
            "sampled {} for {:.1} s at {} Hz on {} CPUs{}: {} samples from {} processes ({} exited during the profile)",
            self.target,
            self.sampled_for.as_secs_f64(),
            self.frequency,
            self.cpus,
            self.stopped_early
                .map(|r| format!(" (stopped early: {r})"))
                .unwrap_or_default(),
            self.fold.samples,
            self.fold.processes,
            self.fold.exited,
        )?;
        writeln!(
            f,
            "kernel: {} samples taken, {} idle, {} of other tasks, {} recorded, {} lost to a full count map",
            c(Counter::Samples),
            c(Counter::Idle),
            c(Counter::FilteredOut),
            c(Counter::Recorded),
            c(Counter::CountMapFull),
        )?;
        writeln!(
            f,
            "stacks: {} user and {} kernel lost (stack-map collisions {}/{}, other {}/{}), {} user stacks not walkable; \
             {} of {} frames unnamed ({:.1}%)",
            self.fold.lost_user,
            self.fold.lost_kernel,
            c(Counter::UserStackCollision),
            c(Counter::KernelStackCollision),
            c(Counter::UserStackOther),
            c(Counter::KernelStackOther),
            self.fold.unwalkable_user,
            self.unnamed_frames,
            self.frames,
            100.0 * ratio(self.unnamed_frames, self.frames),
        )?;
        if c(Counter::NewProcessLost) > 0 {
            writeln!(
                f,
                "warning: {} new-process notifications lost: some exited processes may be unsymbolized",
                c(Counter::NewProcessLost)
            )?;
        }
        writeln!(f, "processed in {} ms", self.processing.as_millis())?;
        if self.fold.samples == 0 {
            writeln!(
                f,
                "no samples: the target did not run on a CPU while sampling"
            )?;
        } else {
            writeln!(f, "top functions (self):")?;
            for (name, n) in &self.top {
                writeln!(f, "  {:5.1}%  {name}", 100.0 * ratio(*n, self.fold.samples))?;
            }
        }
        Ok(())
    }
}
