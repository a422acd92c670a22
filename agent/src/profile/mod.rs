//! The profiling pipeline: eBPF maps ([`crate::bpf::Session`]) -> records per mode
//! (`records`) -> processes seen ([`process`]) -> symbolization ([`symbolize`]) -> folded
//! stacks ([`fold`], [`stack`]) -> flame graphs ([`flamegraph`]) and the summary
//! ([`ProfileReport`]). [`run`] drives it for one `hindsight profile`.

pub mod baseline;
pub mod diff;
pub mod flamegraph;
pub mod fold;
pub mod pprof;
pub mod process;
mod records;
mod report;
pub mod stack;
pub mod symbolize;
pub mod target;
pub mod unwind;

pub use report::{LockSummary, ModeOutput, ProfileReport};

use std::{
    collections::BTreeSet,
    fs,
    io::{BufWriter, Write as _},
    os::fd::BorrowedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use inferno::flamegraph::color::{BasicPalette, Palette};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

pub use crate::bpf::offcpu::{DEFAULT_KERNEL_STACK_REUSES, OffCpuSettings, TaskState};
use crate::bpf::{self, BpfError, KernelFilter, MapSizes, Session, SessionConfig};
pub use crate::bpf::{UnwindMode, UnwindSettings};
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

/// What a profile records: on-CPU samples, off-CPU waits, lock waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Cpu,
    OffCpu,
    Locks,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Cpu, Mode::OffCpu, Mode::Locks];

    /// The mode of a name (`cpu`, `offcpu`, `locks`).
    pub fn from_name(name: &str) -> Option<Mode> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// File stem of its outputs and its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cpu => "cpu",
            Mode::OffCpu => "offcpu",
            Mode::Locks => "locks",
        }
    }

    /// Names of `modes`, comma-separated, for messages.
    pub fn list<'a>(modes: impl IntoIterator<Item = &'a Mode>) -> String {
        modes
            .into_iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Title, unit and colours of its flame graphs.
    pub fn labels(self, target: &str, host: &str) -> (String, &'static str, Palette) {
        match self {
            Mode::Cpu => (
                format!("On-CPU: {target} on {host}"),
                "samples",
                Palette::Basic(BasicPalette::Hot),
            ),
            Mode::OffCpu => (
                format!("Off-CPU time (µs blocked): {target} on {host}"),
                "µs",
                Palette::Basic(BasicPalette::Io),
            ),
            Mode::Locks => (
                format!("Lock contention (µs waited): {target} on {host}"),
                "µs",
                Palette::Basic(BasicPalette::Purple),
            ),
        }
    }
}

/// A file format a profile is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Format {
    /// `<mode>.svg`: an interactive flame graph.
    Svg,
    /// `<mode>.folded`: folded stacks, one `frame;frame;... weight` line per stack.
    Folded,
    /// `<mode>.pb.gz`: gzip'd pprof protobuf, with process/pid/cgroup/unit labels.
    Pprof,
}

/// What a profile writes and how its graphs and summary look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputOptions {
    pub formats: BTreeSet<Format>,
    pub graph: flamegraph::GraphStyle,
    /// Rows of the summary's top functions/waits.
    pub top: usize,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            // What `hindsight profile` always wrote.
            formats: BTreeSet::from([Format::Svg, Format::Folded]),
            graph: flamegraph::GraphStyle::default(),
            top: 5,
        }
    }
}

/// One profile to take.
#[derive(Debug, Clone)]
pub struct ProfileRequest {
    pub targets: Targets,
    pub duration: Duration,
    pub modes: BTreeSet<Mode>,
    /// On-CPU sampling frequency.
    pub frequency: u64,
    pub offcpu: OffCpuSettings,
    /// How user stacks are walked (`--unwind`).
    pub unwind: UnwindSettings,
    pub output_dir: PathBuf,
    pub output: OutputOptions,
    /// A thread frame (`name (tid N)`) under each process frame, for cpu and offcpu.
    pub per_thread: bool,
}

impl ProfileRequest {
    pub fn from_cli(args: &crate::cli::profile::ProfileArgs) -> Result<Self, ProfileError> {
        if !(args.duration.is_finite() && args.duration > 0.0) {
            return Err(ProfileError::Duration(args.duration));
        }
        let states = if args.states.is_empty() {
            TaskState::ALL.to_vec()
        } else {
            args.states.clone()
        };
        Ok(Self {
            targets: Targets {
                pids: args.pids.clone(),
                cgroups: args.cgroups.clone(),
                units: args.units.clone(),
            },
            duration: Duration::from_secs_f64(args.duration),
            modes: args.modes(),
            frequency: args.frequency,
            offcpu: OffCpuSettings {
                min_block: Duration::from_micros(args.min_block),
                states,
                kernel_stack_reuses: args.kernel_stack_reuses,
            },
            unwind: UnwindSettings {
                mode: args.unwind,
                stack_bytes: args.unwind_stack,
                wait_budget: args.unwind_budget,
                ..UnwindSettings::default()
            },
            output_dir: args.output_dir.clone(),
            per_thread: args.per_thread,
            output: OutputOptions {
                formats: args.format.iter().copied().collect(),
                graph: flamegraph::GraphStyle {
                    icicle: args.icicle,
                    reversed: args.reversed,
                },
                top: args.top,
            },
        })
    }
}

/// Takes one profile: resolves targets, records the requested modes, symbolizes, and
/// writes `<mode>.folded`, `<mode>.svg` and/or `<mode>.pb.gz` in the output directory. Recording ends after
/// the requested duration, or early when `stop` becomes readable (the CLI passes a
/// signalfd for Ctrl-C/SIGTERM, a daemon an eventfd); the profile is written either way.
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
    let modes = &request.modes;
    let mut session = Session::start(
        &filter,
        SessionConfig {
            oncpu_hz: modes.contains(&Mode::Cpu).then_some(request.frequency),
            offcpu: modes
                .contains(&Mode::OffCpu)
                .then(|| request.offcpu.clone()),
            locks: modes.contains(&Mode::Locks),
            per_thread: request.per_thread,
            sizes: MapSizes::default(),
            unwind: request.unwind,
        },
    )?;
    let mut unwinder = unwind::StackUnwinder::new();
    let cpus = session.attached_cpus();
    tracing::info!(
        "recording {} ({}) of {} for {:.1} s (Ctrl-C stops early and still writes the profile)",
        Mode::list(modes),
        if modes.contains(&Mode::Cpu) {
            format!("on-CPU sampling at {} Hz on {cpus} CPUs", request.frequency)
        } else {
            "event-driven".to_owned()
        },
        targets.describe(),
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
            PollFd::new(session.notifications_fd(), PollFlags::POLLIN),
            PollFd::new(stop, PollFlags::POLLIN),
            PollFd::new(session.stack_copies_fd(), PollFlags::POLLIN),
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
        take_notifications(&mut session, &mut processes);
        session.take_stack_copies(|record| unwinder.add(record, &mut processes));
        if Instant::now() >= next_housekeeping {
            next_housekeeping += Duration::from_secs(1);
            // Cgroups created since (a restarted service's new scope, say).
            let fresh: Vec<u64> = targets
                .cgroup_ids()
                .difference(&known_cgroups)
                .copied()
                .collect();
            for id in fresh {
                session.add_cgroup(id)?;
                known_cgroups.insert(id);
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
    session.stop()?;
    let processing_start = Instant::now();
    take_notifications(&mut session, &mut processes);
    session.take_stack_copies(|record| unwinder.add(record, &mut processes));
    let mut raw = session.drain()?;
    let unwind_stats = unwinder.finish(&mut raw);
    session.read_stacks(&mut raw)?; // the kernel stacks of the unwound records
    drop(session);
    for tgid in raw
        .oncpu
        .iter()
        .map(|s| s.key.tgid)
        .chain(raw.offcpu.iter().map(|(k, _)| k.tgid))
        .chain(raw.locks.iter().map(|(k, _)| k.tgid))
    {
        processes.observe(tgid, None);
    }
    processes.refresh();

    let mut symbolizer = symbolize::Symbolizer::new();
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "this host".into());
    let mut outputs = Vec::new();
    for &mode in modes {
        let (records, lock_table) = mode_records(mode, &raw, &processes, &mut symbolizer);
        let (stacks, fold_stats) =
            fold::fold_stacks(&records, &raw.stacks, &processes, &mut symbolizer);
        let folded = stack::Folded::from_stacks(&stacks);
        let formats = &request.output.formats;
        let mut files = Vec::new();
        let path = |ext: &str| request.output_dir.join(format!("{}.{ext}", mode.name()));
        if formats.contains(&Format::Folded) {
            let folded_path = path("folded");
            write_atomically(&folded_path, |out| folded.write_to(out))?;
            files.push(folded_path);
        }
        if formats.contains(&Format::Svg) {
            let (title, unit, palette) = mode.labels(&targets.describe(), &host);
            let labels = flamegraph::GraphLabels {
                title,
                subtitle: format!(
                    "{} UTC, {:.1} s, {} {unit}{}; kernel frames _[k]; [lost] = stack not recorded",
                    utc_seconds(started_at),
                    sampled_for.as_secs_f64(),
                    folded.total(),
                    if mode == Mode::Cpu {
                        format!(" at {} Hz on {cpus} CPUs", request.frequency)
                    } else {
                        String::new()
                    },
                ),
                count_name: unit.into(),
                palette,
                style: request.output.graph,
            };
            let svg_path = path("svg");
            write_atomically(&svg_path, |out| {
                flamegraph::write_svg(&folded, &labels, out)
            })?;
            files.push(svg_path);
        }
        if formats.contains(&Format::Pprof) {
            let pprof_path = path("pb.gz");
            let profile = pprof_of(
                mode,
                &stacks,
                &processes,
                &pprof::ExportMeta {
                    mode,
                    frequency: request.frequency,
                    time_nanos: started_at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i64),
                    duration_nanos: sampled_for.as_nanos() as i64,
                    comment: mode.labels(&targets.describe(), &host).0,
                    sources: symbolizer.sources.clone(),
                },
            );
            write_atomically(&pprof_path, |out| pprof::write_gz(&profile, out))?;
            files.push(pprof_path);
        }
        outputs.push(ModeOutput {
            mode,
            top: if mode == Mode::Cpu {
                folded.top_self(request.output.top)
            } else {
                folded.top_waits(request.output.top)
            },
            files,
            fold: fold_stats,
            distinct_stacks: folded.len(),
            locks: lock_table,
        });
    }
    Ok(ProfileReport {
        target: targets.describe(),
        cpus,
        frequency: request.frequency,
        sampled_for,
        stopped_early,
        counters: raw.counters,
        outputs,
        unnamed_frames: symbolizer.stats.unnamed,
        frames: symbolizer.stats.addresses,
        unwind_mode: request.unwind.mode,
        unwind: unwind_stats,
        processing: processing_start.elapsed(),
    })
}

/// One mode of a raw profile, symbolized and folded; for locks, the per-lock table too.
pub fn fold_mode(
    mode: Mode,
    raw: &bpf::RawProfile,
    processes: &process::ProcessTable,
    symbolizer: &mut symbolize::Symbolizer,
) -> (stack::Folded, fold::FoldStats, Vec<LockSummary>) {
    let (records, lock_table) = mode_records(mode, raw, processes, symbolizer);
    let (folded, stats) = fold::fold(&records, &raw.stacks, processes, symbolizer);
    (folded, stats, lock_table)
}

/// One mode's records; for locks, the per-lock table too.
fn mode_records(
    mode: Mode,
    raw: &bpf::RawProfile,
    processes: &process::ProcessTable,
    symbolizer: &mut symbolize::Symbolizer,
) -> (Vec<fold::Record>, Vec<LockSummary>) {
    match mode {
        Mode::Cpu => (records::oncpu(raw), Vec::new()),
        Mode::OffCpu => (records::offcpu(raw), Vec::new()),
        Mode::Locks => records::locks(raw, processes, symbolizer),
    }
}

/// The pprof profile of one mode's stacks, labelled by process.
fn pprof_of(
    mode: Mode,
    stacks: &[fold::ProcessStack],
    processes: &process::ProcessTable,
    meta: &pprof::ExportMeta,
) -> pprof::Profile {
    debug_assert_eq!(mode, meta.mode);
    let mut labels = std::collections::HashMap::new();
    for s in stacks {
        labels.entry((s.tgid, s.tid)).or_insert_with(|| {
            let info = processes.get(s.tgid);
            pprof::SampleLabels {
                // As the root frame of the folded stack.
                process: s.frames.first().cloned().unwrap_or_default(),
                pid: s.tgid,
                tid: (s.tid != 0).then_some(s.tid),
                cgroup: info.and_then(|p| p.cgroup.clone()),
            }
        });
    }
    let samples: Vec<pprof::ExportSample<'_>> = stacks
        .iter()
        .map(|s| pprof::ExportSample {
            frames: s.frames.get(1..).unwrap_or_default(),
            weight: s.weight,
            count: s.count,
            labels: &labels[&(s.tgid, s.tid)],
        })
        .collect();
    pprof::build(&samples, meta)
}

/// `2026-12-04 15:43:13`, in UTC.
pub fn utc_seconds(at: SystemTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from(at)
        .format(&format)
        .unwrap_or_default()
}

/// Snapshots processes the kernel saw for the first time, or again after an exec.
pub fn take_notifications(session: &mut Session, processes: &mut process::ProcessTable) {
    for event in session.new_processes() {
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
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
