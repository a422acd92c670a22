//! Captures and profiles requested through the API: their records (status, results) and
//! the two lanes that run them. Each lane is one dedicated worker thread, at low CPU and
//! I/O priority, fed by a bounded queue: one capture and one profile run at a time, a few
//! wait, and more are refused (429) rather than piling up. A capture may carry a
//! profile: the capture worker takes it first and adds its files to the archive.

use std::collections::VecDeque;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Shared;
use super::metrics::Metrics;
use crate::capture::{CaptureOutcome, CaptureRequest, ExtraMember, Progress, TriggerInfo};
use crate::profile::target::Targets;
use crate::profile::{Mode, OffCpuSettings, ProfileRequest, TaskState, UnwindMode, UnwindSettings};

/// Profile modes this agent can take. The API refuses others with a 400 naming these.
pub const SUPPORTED_MODES: &[&str] = &["cpu", "offcpu", "locks", "all"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Capture,
    Profile,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Capture => "capture",
            Kind::Profile => "profile",
        }
    }

    fn lane(self) -> usize {
        match self {
            Kind::Capture => 0,
            Kind::Profile => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Done,
    Failed,
}

/// What to profile: the body of `POST /v1/profiles`, and the optional `profile` of
/// `POST /v1/captures`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileSpec {
    /// Why (recorded in the audit log; a capture's own reason takes precedence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Profile modes; default `["cpu"]`.
    pub modes: Vec<String>,
    /// Seconds; default 10, at most `[daemon] max_profile_seconds`.
    pub duration: f64,
    /// Samples per second per CPU; default 99, 1..=1000.
    pub frequency: u64,
    /// Processes to profile (all threads). No pids, units or cgroups: the whole host.
    pub pids: Vec<u32>,
    /// systemd units to profile.
    pub units: Vec<String>,
    /// cgroup v2 paths to profile.
    pub cgroups: Vec<PathBuf>,
    /// How user stacks are walked: `fp`, `dwarf` or `auto` (default), as `--unwind`.
    pub unwind: UnwindMode,
}

impl Default for ProfileSpec {
    fn default() -> Self {
        Self {
            reason: None,
            modes: vec!["cpu".into()],
            duration: 10.0,
            frequency: 99,
            pids: Vec::new(),
            units: Vec::new(),
            cgroups: Vec::new(),
            unwind: UnwindMode::Auto,
        }
    }
}

impl ProfileSpec {
    /// Checks what can be checked before queueing; the message is the 400's.
    pub fn validate(&self, max_seconds: f64) -> Result<(), String> {
        if self.modes.is_empty() {
            return Err("`modes` is empty; this agent supports: cpu".into());
        }
        for mode in &self.modes {
            if !SUPPORTED_MODES.contains(&mode.as_str()) {
                return Err(format!(
                    "unsupported profile mode {mode:?}; this agent supports: {}",
                    SUPPORTED_MODES.join(", ")
                ));
            }
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= max_seconds) {
            return Err(format!(
                "`duration` must be a number of seconds in (0, {max_seconds}], not {}",
                self.duration
            ));
        }
        if !(1..=1000).contains(&self.frequency) {
            return Err(format!(
                "`frequency` must be in 1..=1000 Hz, not {}",
                self.frequency
            ));
        }
        for &pid in &self.pids {
            if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(format!("no process with pid {pid}"));
            }
        }
        if let Some(unit) = self.units.iter().find(|u| u.is_empty() || u.contains('/')) {
            return Err(format!("{unit:?} is not a systemd unit name"));
        }
        Ok(())
    }
}

/// The one place a [`ProfileRequest`] is built from an API request.
pub fn profile_request(spec: &ProfileSpec, output_dir: PathBuf) -> ProfileRequest {
    ProfileRequest {
        targets: Targets {
            pids: spec.pids.clone(),
            cgroups: spec.cgroups.clone(),
            units: spec.units.clone(),
        },
        duration: Duration::from_secs_f64(spec.duration),
        modes: spec
            .modes
            .iter()
            .flat_map(|m| match m.as_str() {
                "all" => Mode::ALL.to_vec(),
                name => Mode::from_name(name).into_iter().collect(),
            })
            .collect(),
        frequency: spec.frequency,
        offcpu: OffCpuSettings {
            // As the CLI's --min-block default.
            min_block: Duration::from_micros(1),
            states: TaskState::ALL.to_vec(),
            kernel_stack_reuses: crate::profile::DEFAULT_KERNEL_STACK_REUSES,
        },
        unwind: UnwindSettings {
            mode: spec.unwind,
            ..UnwindSettings::default()
        },
        output_dir,
        output: crate::profile::OutputOptions::default(),
        per_thread: false,
    }
}

/// A capture or profile, as `GET /v1/captures/{id}` and `GET /v1/profiles/{id}` show it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: Kind,
    pub status: Status,
    pub reason: String,
    pub requested_by: String,
    pub from: String,
    /// UTC, RFC 3339.
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// What a running job is doing (e.g. "logs (4/5)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileSpec>,
    /// Capture results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureResult>,
    /// Profile results: the summary text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip)]
    pub paths: JobPaths,
}

/// A finished capture, without its local paths.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureResult {
    pub capture_id: String,
    pub archive: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    pub size: u64,
    pub sha256: String,
    pub manifest_sha256: String,
    pub members: usize,
    pub skipped: usize,
    pub duration_ms: u64,
}

/// Where a job's files are on this host (never shown to clients).
#[derive(Debug, Clone, Default)]
pub struct JobPaths {
    pub archive: Option<PathBuf>,
    pub signature: Option<PathBuf>,
    pub profile_dir: Option<PathBuf>,
}

impl JobRecord {
    pub fn new(kind: Kind, reason: String, requested_by: String, from: String) -> Self {
        Self {
            id: new_id(),
            kind,
            status: Status::Queued,
            reason,
            requested_by,
            from,
            created: now_rfc3339(),
            started: None,
            finished: None,
            progress: None,
            error: None,
            profile: None,
            capture: None,
            summary: None,
            paths: JobPaths::default(),
        }
    }
}

/// What a worker runs.
pub enum Work {
    Capture {
        id: String,
        reason: String,
        trigger: TriggerInfo,
        profile: Option<ProfileSpec>,
    },
    Profile {
        id: String,
        spec: ProfileSpec,
    },
}

impl Work {
    fn id(&self) -> &str {
        match self {
            Work::Capture { id, .. } | Work::Profile { id, .. } => id,
        }
    }
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the {} queue is full (1 running, {queued} waiting); retry later", kind.name())]
    QueueFull { kind: Kind, queued: usize },
    #[error("the daemon is shutting down")]
    ShuttingDown,
}

/// Job records and the lanes that run them.
#[derive(Default)]
pub struct Jobs {
    records: Mutex<VecDeque<JobRecord>>,
    lanes: Mutex<Option<[SyncSender<Work>; 2]>>,
    queued: [AtomicUsize; 2],
    /// Admitted and not finished (queued or running), per lane: at most queue_size + 1.
    pending: [AtomicUsize; 2],
    queue_size: AtomicUsize,
    pub running: AtomicUsize,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Jobs {
    pub fn queued(&self, kind: Kind) -> usize {
        self.queued[kind.lane()].load(Ordering::Relaxed)
    }

    pub fn get(&self, id: &str) -> Option<JobRecord> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.iter().find(|r| r.id == id).cloned()
    }

    /// Newest first.
    pub fn list(&self, kind: Kind) -> Vec<JobRecord> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .iter()
            .rev()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut JobRecord)) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = records.iter_mut().find(|r| r.id == id) {
            f(r);
        }
    }

    /// Records `record` and queues `work`, or refuses without a trace of either.
    pub fn submit(&self, record: JobRecord, work: Work, keep: usize) -> Result<(), SubmitError> {
        let lane = record.kind.lane();
        let kind = record.kind;
        let id = record.id.clone();
        {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            records.push_back(record);
            // Forget the oldest finished jobs beyond `keep`.
            while records.len() > keep {
                match records
                    .iter()
                    .position(|r| matches!(r.status, Status::Done | Status::Failed))
                {
                    Some(i) => drop(records.remove(i)),
                    None => break,
                }
            }
        }
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let result = match lanes.as_ref() {
            None => Err(SubmitError::ShuttingDown),
            Some(lanes) => {
                // Admission is counted here, not left to the channel's capacity: a job
                // the worker has not yet taken off the channel must not make the queue
                // look full when nothing is running.
                let limit = self.queue_size.load(Ordering::Relaxed) + 1;
                let admitted = self.pending[lane]
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        (n < limit).then_some(n + 1)
                    })
                    .is_ok();
                if !admitted {
                    Err(SubmitError::QueueFull {
                        kind,
                        queued: self.queued[lane].load(Ordering::Relaxed),
                    })
                } else {
                    // Counted before sending, so the worker's decrement never underflows.
                    self.queued[lane].fetch_add(1, Ordering::Relaxed);
                    lanes[lane].try_send(work).map_err(|err| {
                        self.queued[lane].fetch_sub(1, Ordering::Relaxed);
                        self.pending[lane].fetch_sub(1, Ordering::Relaxed);
                        match err {
                            TrySendError::Full(_) => SubmitError::QueueFull {
                                kind,
                                queued: self.queued[lane].load(Ordering::Relaxed),
                            },
                            TrySendError::Disconnected(_) => SubmitError::ShuttingDown,
                        }
                    })
                }
            }
        };
        if result.is_err() {
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            records.retain(|r| r.id != id);
        }
        result
    }

    /// Starts one worker thread per lane.
    pub fn start(shared: &Arc<Shared>, queue_size: usize) -> std::io::Result<()> {
        shared.jobs.queue_size.store(queue_size, Ordering::Relaxed);
        let mut senders = Vec::new();
        let mut workers = shared
            .jobs
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for name in ["capture", "profile"] {
            let (tx, rx) = sync_channel(queue_size + 1);
            senders.push(tx);
            let shared = Arc::clone(shared);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("{name}-worker"))
                    .spawn(move || worker(shared, rx))?,
            );
        }
        let lanes: [SyncSender<Work>; 2] = senders.try_into().expect("two lanes");
        *shared.jobs.lanes.lock().unwrap_or_else(|p| p.into_inner()) = Some(lanes);
        Ok(())
    }

    /// Closes the queues; workers finish the running job, fail the queued ones and exit.
    /// Blocks until they have.
    pub fn close_and_join(&self) {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).take();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for worker in workers {
            if worker.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

fn worker(shared: Arc<Shared>, rx: Receiver<Work>) {
    lower_priority(shared.config().daemon.worker_nice);
    while let Ok(work) = rx.recv() {
        let id = work.id().to_owned();
        let kind = match work {
            Work::Capture { .. } => Kind::Capture,
            Work::Profile { .. } => Kind::Profile,
        };
        shared.jobs.queued[kind.lane()].fetch_sub(1, Ordering::Relaxed);
        if shared.is_shutting_down() {
            shared.jobs.update(&id, |r| {
                r.status = Status::Failed;
                r.error = Some("the daemon shut down before this job started".into());
                r.finished = Some(now_rfc3339());
            });
            shared.jobs.pending[kind.lane()].fetch_sub(1, Ordering::Relaxed);
            continue;
        }
        shared.jobs.running.fetch_add(1, Ordering::Relaxed);
        shared.jobs.update(&id, |r| {
            r.status = Status::Running;
            r.started = Some(now_rfc3339());
        });
        tracing::info!(job = %id, ?kind, "job started");
        let started = Instant::now();
        match work {
            Work::Capture {
                id,
                reason,
                trigger,
                profile,
            } => run_capture(&shared, &id, reason, trigger, profile, started),
            Work::Profile { id, spec } => {
                let result = run_profile(&shared, &id, &spec);
                let m = &shared.metrics;
                Metrics::add(&m.profile_millis, started.elapsed().as_millis() as u64);
                match result {
                    Ok(summary) => {
                        Metrics::add(&m.profiles_done, 1);
                        tracing::info!(job = %id, "profile done");
                        finish(&shared, &id, |r| r.summary = Some(summary));
                    }
                    Err(err) => {
                        Metrics::add(&m.profiles_failed, 1);
                        tracing::warn!(job = %id, "profile failed: {err}");
                        fail(&shared, &id, err);
                    }
                }
            }
        }
        shared.jobs.running.fetch_sub(1, Ordering::Relaxed);
        shared.jobs.pending[kind.lane()].fetch_sub(1, Ordering::Relaxed);
    }
}

fn finish(shared: &Shared, id: &str, f: impl FnOnce(&mut JobRecord)) {
    shared.jobs.update(id, |r| {
        f(r);
        r.status = Status::Done;
        r.progress = None;
        r.finished = Some(now_rfc3339());
    });
}

fn fail(shared: &Shared, id: &str, error: String) {
    shared.jobs.update(id, |r| {
        r.status = Status::Failed;
        r.error = Some(error);
        r.progress = None;
        r.finished = Some(now_rfc3339());
    });
}

fn run_capture(
    shared: &Arc<Shared>,
    id: &str,
    reason: String,
    trigger: TriggerInfo,
    profile: Option<ProfileSpec>,
    started: Instant,
) {
    let config = shared.config();
    let mut trigger = trigger;
    let mut extra = flight_recorder(shared, id, &mut trigger);
    if let Some(spec) = profile {
        shared
            .jobs
            .update(id, |r| r.progress = Some("profiling".into()));
        match run_profile(shared, id, &spec) {
            Ok(_) => extra.extend(profile_members(&config.daemon.profile_dir.join(id))),
            Err(err) => extra.push(ExtraMember {
                name: "profile/error.txt".into(),
                data: err.clone().into_bytes(),
                notes: vec![format!("the requested profile failed: {err}")],
            }),
        }
    }
    let mut progress = |p: Progress| {
        let text = match p {
            Progress::CollectorStarted { name, index, total } => {
                format!("{name} ({}/{total})", index + 1)
            }
            Progress::CollectorFinished { .. } => return,
            Progress::Signing => "signing".into(),
        };
        shared.jobs.update(id, |r| r.progress = Some(text));
    };
    extra.extend(crate::history::capture_members(
        shared.history.as_deref(),
        &config,
    ));
    let mut request = CaptureRequest::new(reason, config.capture.clone());
    request.trigger = trigger;
    request.config_path = Some(shared.config_path.clone());
    request.extra_members = extra;
    request.progress = Some(&mut progress);
    let staged = crate::history::staging::attach(&mut request, &config.preserve);
    let result = crate::capture::run(request);
    if let (Ok(_), Some(staged)) = (&result, staged) {
        staged.remove();
    }
    let m = &shared.metrics;
    Metrics::add(&m.capture_millis, started.elapsed().as_millis() as u64);
    match result {
        Ok(outcome) => {
            Metrics::add(&m.captures_done, 1);
            Metrics::add(&m.capture_bytes, outcome.size);
            tracing::info!(job = %id, archive = %outcome.archive.display(), size = outcome.size, "capture done");
            finish(shared, id, |r| record_outcome(r, outcome));
        }
        Err(err) => {
            Metrics::add(&m.captures_failed, 1);
            let err = super::error_chain(&err);
            tracing::warn!(job = %id, "capture failed: {err}");
            fail(shared, id, err);
        }
    }
}

/// The flight recorder's profiles up to now (the capture's trigger), as extra members;
/// their time ranges go into the trigger details.
fn flight_recorder(shared: &Shared, id: &str, trigger: &mut TriggerInfo) -> Vec<ExtraMember> {
    let at = std::time::SystemTime::now();
    let bundle = match &shared.recorder {
        Some(recorder) => {
            shared
                .jobs
                .update(id, |r| r.progress = Some("flight recorder".into()));
            recorder.bundle(at)
        }
        None => crate::recorder::Bundle::unavailable(
            "the flight recorder is disabled ([recorder] enabled = false) or could not start",
        ),
    };
    trigger.details.extend(bundle.details);
    bundle.members
}

fn record_outcome(r: &mut JobRecord, o: CaptureOutcome) {
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    r.capture = Some(CaptureResult {
        capture_id: o.id,
        archive: name(&o.archive),
        signature: o.signature.as_deref().map(name),
        size: o.size,
        sha256: o.sha256,
        manifest_sha256: o.manifest_sha256,
        members: o.members,
        skipped: o.skipped,
        duration_ms: o.duration_ms,
    });
    r.paths.archive = Some(o.archive);
    r.paths.signature = o.signature;
}

/// Runs one profile into `profile_dir/<id>`, applies retention, returns the summary.
fn run_profile(shared: &Shared, id: &str, spec: &ProfileSpec) -> Result<String, String> {
    let config = shared.config();
    let base = &config.daemon.profile_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(base)
        .map_err(|e| format!("profile directory {}: {e}", base.display()))?;
    let dir = base.join(id);
    shared.jobs.update(id, |r| {
        r.paths.profile_dir = Some(dir.clone());
        r.progress = Some("profiling".into());
    });
    let request = profile_request(spec, dir);
    let result = crate::profile::run(&request, shared.stop.as_fd());
    prune_profiles(base, config.daemon.keep_profiles);
    let report = result.map_err(|e| super::error_chain(&e))?;
    use crate::bpf::Counter;
    let lost = report
        .outputs
        .iter()
        .map(|o| o.fold.lost_user + o.fold.lost_kernel)
        .sum::<u64>()
        + [
            Counter::CountMapFull,
            Counter::OffCpuMapFull,
            Counter::LockMapFull,
            Counter::NewProcessLost,
        ]
        .into_iter()
        .map(|c| report.counters.get(c))
        .sum::<u64>();
    Metrics::add(&shared.metrics.lost_events, lost);
    Ok(report.to_string())
}

/// The files of a finished profile, as archive members under `extra/profile/`.
fn profile_members(dir: &Path) -> Vec<ExtraMember> {
    let mut members = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return members;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        match std::fs::read(entry.path()) {
            Ok(data) => members.push(ExtraMember {
                name: format!("profile/{name}"),
                data,
                notes: Vec::new(),
            }),
            Err(err) => tracing::warn!("cannot read {}: {err}", entry.path().display()),
        }
    }
    members
}

/// Keeps the `keep` newest profile directories (0: all).
fn prune_profiles(base: &Path, keep: usize) {
    if keep == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for (_, dir) in dirs.into_iter().take(excess) {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), "removed old profile (retention)"),
            Err(err) => tracing::warn!(dir = %dir.display(), "cannot remove old profile: {err}"),
        }
    }
}

/// Lowers the calling thread's CPU priority by `nice` and puts its I/O in the
/// best-effort class at the lowest priority (7). Threads it starts (zstd's workers)
/// inherit both. On Linux both are per thread, so the API keeps its priority.
fn lower_priority(nice: i32) {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: getpriority/setpriority take plain integers; with PRIO_PROCESS and a thread
    // id they read and change only this thread's niceness.
    let changed = unsafe {
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(
            libc::PRIO_PROCESS,
            tid as libc::id_t,
            (current + nice).clamp(-20, 19),
        )
    };
    if changed != 0 {
        tracing::warn!(
            "cannot lower the worker's CPU priority: {}",
            std::io::Error::last_os_error()
        );
    }
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: ioprio_set takes three integers and touches no memory of ours; with
    // IOPRIO_WHO_PROCESS and a thread id it sets this thread's I/O priority.
    let changed = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            libc::c_long::from(tid),
            (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 7,
        )
    };
    if changed != 0 {
        tracing::warn!(
            "cannot lower the worker's I/O priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("UTC time formats")
}

/// 16 hex digits from the kernel's random source.
fn new_id() -> String {
    let mut bytes = [0u8; 8];
    if let Err(err) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
    {
        // Unique enough for job ids; never used for secrets.
        tracing::warn!("/dev/urandom: {err}");
        let t = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
        bytes = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_spec_validation_names_the_problem() {
        let ok = ProfileSpec::default();
        ok.validate(300.0).unwrap();
        let bad = |f: fn(&mut ProfileSpec), want: &str| {
            let mut s = ProfileSpec::default();
            f(&mut s);
            let err = s.validate(300.0).unwrap_err();
            assert!(err.contains(want), "{err}");
        };
        bad(|s| s.duration = 0.0, "duration");
        bad(|s| s.duration = f64::NAN, "duration");
        bad(|s| s.duration = 301.0, "duration");
        bad(|s| s.modes = vec!["gpu".into()], "supports: cpu");
        bad(|s| s.frequency = 0, "frequency");
        bad(|s| s.pids = vec![u32::MAX], "no process");
        bad(|s| s.units = vec!["../x".into()], "unit");
    }

    #[test]
    fn profile_spec_takes_the_unwind_mode() {
        assert_eq!(ProfileSpec::default().unwind, UnwindMode::Auto);
        let spec: ProfileSpec = serde_json::from_str(r#"{"unwind": "dwarf"}"#).unwrap();
        let request = profile_request(&spec, PathBuf::from("/tmp/x"));
        assert_eq!(request.unwind.mode, UnwindMode::Dwarf);
        let err = serde_json::from_str::<ProfileSpec>(r#"{"unwind": "lbr"}"#).unwrap_err();
        assert!(err.to_string().contains("fp"), "names the choices: {err}");
    }

    #[test]
    fn profile_spec_rejects_unknown_fields() {
        let err = serde_json::from_str::<ProfileSpec>(r#"{"duraton": 3}"#).unwrap_err();
        assert!(err.to_string().contains("duraton"), "{err}");
    }
}
