//! The flight recorder: continuous low-overhead profiling in the daemon, so that a capture
//! already holds the minutes that led up to its trigger. One long-running eBPF session
//! ([`crate::bpf::Session`], every mode by default, 19 Hz on-CPU, off-CPU waits of 1 ms or
//! more) is drained once per rolling window ([`crate::bpf::WindowDrain`]); each window is
//! symbolized and folded per mode with the profiling pipeline ([`crate::profile`]) and kept
//! in a [`ring::Ring`] bounded by age and by a memory budget. At a capture, [`Recorder::bundle`]
//! closes the current window early, merges the windows before the trigger per mode and
//! hands back folded stacks and flame graphs as archive members, with their time ranges.
//!
//! The recorder runs on its own thread; a failure to start (missing capabilities, a kernel
//! without a tracepoint) is logged, retried without the lock probes, and otherwise leaves
//! the daemon running without a recorder: captures then say so in their manifest.

mod bundle;
pub mod config;
pub mod ring;

pub use bundle::Bundle;
pub use config::RecorderConfig;

use std::{
    os::fd::AsFd as _,
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::eventfd::{EfdFlags, EventFd},
};

use crate::{
    bpf::{self, Counter, KernelFilter, MapSizes, Session, SessionConfig, WindowDrain},
    profile::{
        self, Mode, OffCpuSettings, TaskState, process::ProcessTable, symbolize::Symbolizer,
        target::ResolvedTargets,
    },
};
use ring::{Limits, Ring, RingStats};

/// Windows between two refreshes of the process table (maps of running processes re-read,
/// exited processes forgotten).
const REFRESH_EVERY: u64 = 6;
/// How long a capture waits for the recorder to close the current window.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the recorder is doing, for captures and logs.
#[derive(Debug, Clone)]
pub enum State {
    Starting,
    Recording {
        modes: Vec<Mode>,
        target: String,
        cpus: usize,
        since: SystemTime,
    },
    /// It could not start or stopped on an error: the message says why.
    Failed(String),
    Stopped,
}

struct Inner {
    config: RecorderConfig,
    ring: Mutex<Ring>,
    state: Mutex<State>,
    /// Written to close the current window now (a capture wants it).
    flush: EventFd,
    stop: EventFd,
    /// Count of windows closed on request, and its condition variable.
    flushes: (Mutex<u64>, Condvar),
}

/// The running flight recorder. Dropping it stops the thread and detaches the probes.
pub struct Recorder {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Recorder {
    /// Starts the recorder thread when `[recorder] enabled`; None when disabled or when
    /// the thread cannot be created (logged).
    pub fn start(config: &RecorderConfig) -> Option<Recorder> {
        if !config.enabled {
            tracing::info!("flight recorder disabled ([recorder] enabled = false)");
            return None;
        }
        let eventfd =
            || EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK);
        let (flush, stop) = match (eventfd(), eventfd()) {
            (Ok(f), Ok(s)) => (f, s),
            (Err(err), _) | (_, Err(err)) => {
                tracing::error!("flight recorder not started: eventfd: {err}");
                return None;
            }
        };
        let inner = Arc::new(Inner {
            config: config.clone(),
            ring: Mutex::new(Ring::new(Limits {
                max_age: config.keep(),
                budget: config.budget_bytes(),
            })),
            state: Mutex::new(State::Starting),
            flush,
            stop,
            flushes: (Mutex::new(0), Condvar::new()),
        });
        let worker = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("flight-recorder".into())
            .spawn(move || {
                let state = match record(&worker) {
                    Ok(()) => State::Stopped,
                    Err(err) => {
                        tracing::error!("flight recorder stopped: {err:#}");
                        State::Failed(format!("{err:#}"))
                    }
                };
                *lock(&worker.state) = state;
                // Wake any capture waiting for a flush: there will be none.
                worker.flushes.1.notify_all();
            });
        match thread {
            Ok(thread) => Some(Recorder {
                inner,
                thread: Mutex::new(Some(thread)),
            }),
            Err(err) => {
                tracing::error!("flight recorder not started: thread: {err}");
                None
            }
        }
    }

    pub fn state(&self) -> State {
        lock(&self.inner.state).clone()
    }

    pub fn stats(&self) -> RingStats {
        lock(&self.inner.ring).stats()
    }

    /// The ring's gauges and counters in the Prometheus text format, for `/metrics`.
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let s = self.stats();
        let recording = matches!(self.state(), State::Recording { .. });
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "hindsight_recorder_recording",
                "gauge",
                "1 while the flight recorder records, 0 when it failed or stopped.",
                u64::from(recording),
            ),
            (
                "hindsight_recorder_ring_bytes",
                "gauge",
                "Bytes the flight recorder's windows hold (measured).",
                s.bytes as u64,
            ),
            (
                "hindsight_recorder_budget_bytes",
                "gauge",
                "The flight recorder's memory budget ([recorder] memory_budget_mib).",
                s.budget as u64,
            ),
            (
                "hindsight_recorder_windows",
                "gauge",
                "Windows the flight recorder holds.",
                s.windows as u64,
            ),
            (
                "hindsight_recorder_windows_dropped_for_budget_total",
                "counter",
                "Oldest windows dropped to stay within the memory budget.",
                s.dropped_for_budget,
            ),
            (
                "hindsight_recorder_windows_dropped_for_age_total",
                "counter",
                "Windows dropped for being older than [recorder] keep_minutes.",
                s.dropped_for_age,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }

    pub fn config(&self) -> &RecorderConfig {
        &self.inner.config
    }

    /// Closes the current window now, so that what was recorded up to this moment is in
    /// the ring; false when the recorder is not running or did not answer in time.
    pub fn flush(&self) -> bool {
        if !matches!(self.state(), State::Recording { .. }) {
            return false;
        }
        let (count, cond) = &self.inner.flushes;
        let mut done = lock(count);
        let before = *done;
        if self.inner.flush.write(1).is_err() {
            return false;
        }
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while *done == before {
            let now = Instant::now();
            if now >= deadline || !matches!(self.state(), State::Recording { .. }) {
                return false;
            }
            done = cond
                .wait_timeout(done, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Stops recording and waits for the thread (the probes are detached when it ends).
    pub fn stop(&self) {
        let _ = self.inner.stop.write(1);
        if let Some(thread) = lock(&self.thread).take()
            && thread.join().is_err()
        {
            tracing::error!("the flight recorder thread panicked");
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the recorder stopped.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error(transparent)]
    Target(#[from] profile::target::TargetError),
    #[error(transparent)]
    Bpf(#[from] bpf::BpfError),
    #[error("waiting for events")]
    Poll(#[source] nix::Error),
}

/// The recorder thread: starts the session, then closes a window every
/// `window_seconds` (or when a capture asks) until stopped.
fn record(inner: &Inner) -> Result<(), RecorderError> {
    let config = &inner.config;
    let targets = config.targets().resolve()?;
    bpf::check_privileges()?;
    profile::raise_fd_limit();
    let filter = KernelFilter {
        tgids: targets.tgids.clone(),
        cgroup_ids: targets.cgroup_ids(),
    };
    let mut modes = config.modes();
    let mut session = match start_session(&filter, config, &modes) {
        Ok(session) => session,
        Err(err) if modes.contains(&Mode::Locks) && modes.len() > 1 => {
            tracing::warn!(
                "flight recorder: cannot record lock contention ({:#}); recording {} without it",
                err,
                Mode::list(modes.iter().filter(|m| **m != Mode::Locks))
            );
            modes.retain(|m| *m != Mode::Locks);
            start_session(&filter, config, &modes)?
        }
        Err(err) => return Err(err.into()),
    };
    let cpus = session.attached_cpus();
    tracing::info!(
        "flight recorder: recording {} of {} ({} Hz on-CPU on {cpus} CPUs, off-CPU waits >= {} µs) in {} s windows, keeping {} min within {} MiB",
        Mode::list(&modes),
        targets.describe(),
        config.frequency,
        config.min_block_us,
        config.window_seconds,
        config.keep_minutes,
        config.memory_budget_mib,
    );
    *lock(&inner.state) = State::Recording {
        modes: modes.clone(),
        target: targets.describe(),
        cpus,
        since: SystemTime::now(),
    };

    let mut windows = Windows {
        modes,
        targets,
        drain: WindowDrain::default(),
        processes: ProcessTable::default(),
        known_cgroups: filter.cgroup_ids.clone(),
        closed: 0,
    };
    for &tgid in &windows.targets.tgids {
        windows.processes.observe(tgid, None);
    }
    let mut from = SystemTime::now();
    let mut deadline = Instant::now() + config.window();
    let mut next_housekeeping = Instant::now() + Duration::from_secs(1);
    loop {
        let wait = deadline
            .min(next_housekeeping)
            .saturating_duration_since(Instant::now());
        let (stop, flush) = wait_for(&session, inner, wait)?;
        if stop {
            return Ok(());
        }
        profile::take_notifications(&mut session, &mut windows.processes);
        let now = Instant::now();
        if now >= next_housekeeping {
            next_housekeeping = now + Duration::from_secs(1);
            windows.add_new_cgroups(&mut session);
        }
        if flush || now >= deadline {
            let to = SystemTime::now();
            if let Err(err) = windows.close(&mut session, inner, from, to) {
                tracing::warn!("flight recorder: window {} lost: {err:#}", windows.closed);
            }
            from = to;
            deadline = Instant::now() + config.window();
            if flush {
                *lock(&inner.flushes.0) += 1;
                inner.flushes.1.notify_all();
            }
        }
    }
}

fn start_session(
    filter: &KernelFilter,
    config: &RecorderConfig,
    modes: &[Mode],
) -> Result<Session, bpf::BpfError> {
    Session::start(
        filter,
        SessionConfig {
            oncpu_hz: modes.contains(&Mode::Cpu).then_some(config.frequency),
            offcpu: modes.contains(&Mode::OffCpu).then(|| OffCpuSettings {
                min_block: Duration::from_micros(config.min_block_us),
                states: TaskState::ALL.to_vec(),
                kernel_stack_reuses: crate::profile::DEFAULT_KERNEL_STACK_REUSES,
            }),
            locks: modes.contains(&Mode::Locks),
            sizes: MapSizes::default(),
            per_thread: false,
            // Frame pointers: the window drain reads the kernel's aggregates, not the ring
            // of copied stacks, and an always-on recorder must stay cheap.
            unwind: crate::bpf::UnwindSettings {
                mode: crate::bpf::UnwindMode::Fp,
                ..Default::default()
            },
        },
    )
}

/// Waits up to `wait` for new-process notifications, a stop or a flush; returns (stop,
/// flush).
fn wait_for(
    session: &Session,
    inner: &Inner,
    wait: Duration,
) -> Result<(bool, bool), RecorderError> {
    let readable = |fd: &PollFd| fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
    let mut fds = [
        PollFd::new(session.notifications_fd(), PollFlags::POLLIN),
        PollFd::new(inner.stop.as_fd(), PollFlags::POLLIN),
        PollFd::new(inner.flush.as_fd(), PollFlags::POLLIN),
    ];
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::Error::EINTR) => {}
        Err(err) => return Err(RecorderError::Poll(err)),
    }
    let stop = readable(&fds[1]);
    let flush = readable(&fds[2]);
    if flush {
        // Reset the counter: one window closes for every flush request waiting now.
        let _ = inner.flush.read();
    }
    Ok((stop, flush))
}

/// The state carried from window to window.
struct Windows {
    modes: Vec<Mode>,
    targets: ResolvedTargets,
    drain: WindowDrain,
    processes: ProcessTable,
    known_cgroups: std::collections::BTreeSet<u64>,
    closed: u64,
}

impl Windows {
    /// Cgroups created under the selected ones since the last look (a restarted unit).
    fn add_new_cgroups(&mut self, session: &mut Session) {
        if self.targets.cgroups.is_empty() {
            return;
        }
        let fresh: Vec<u64> = self
            .targets
            .cgroup_ids()
            .difference(&self.known_cgroups)
            .copied()
            .collect();
        for id in fresh {
            match session.add_cgroup(id) {
                Ok(()) => {
                    self.known_cgroups.insert(id);
                }
                Err(err) => tracing::warn!("flight recorder: cgroup {id} not added: {err:#}"),
            }
        }
    }

    /// Drains what the kernel recorded since the last window, folds it per mode and adds
    /// it to the ring.
    fn close(
        &mut self,
        session: &mut Session,
        inner: &Inner,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<(), bpf::BpfError> {
        let raw = self.drain.drain(session)?;
        for tgid in raw
            .oncpu
            .iter()
            .map(|s| s.key.tgid)
            .chain(raw.offcpu.iter().map(|(k, _)| k.tgid))
            .chain(raw.locks.iter().map(|(k, _)| k.tgid))
        {
            self.processes.observe(tgid, None);
        }
        // A fresh symbolizer per window: it maps the files it reads, and a kept one would
        // hold every big binary the host ran (a compiler's) in the daemon's RSS. Re-reading
        // ELF symbol tables and kallsyms once per window costs less than that memory.
        let mut symbolizer = Symbolizer::symbols_only();
        let folded = self
            .modes
            .iter()
            .map(|&mode| {
                let (folded, _, _) =
                    profile::fold_mode(mode, &raw, &self.processes, &mut symbolizer);
                let lost = raw.counters.get(match mode {
                    Mode::Cpu => Counter::CountMapFull,
                    Mode::OffCpu => Counter::OffCpuMapFull,
                    Mode::Locks => Counter::LockMapFull,
                });
                (mode, folded, lost)
            })
            .collect();
        lock(&inner.ring).push(from, to, folded, SystemTime::now());
        self.closed += 1;
        if self.closed.is_multiple_of(REFRESH_EVERY) {
            self.processes.refresh();
            self.processes.forget_exited();
        }
        drop(symbolizer);
        release_free_memory();
        tracing::debug!(window = self.closed, stats = ?lock(&inner.ring).stats(), "flight recorder window closed");
        Ok(())
    }
}

/// Hands the memory freed by the window's processing (symbolization batches, folded
/// strings not kept) back to the kernel: glibc keeps freed heap otherwise, and the
/// daemon's RSS would show the peak of the busiest window forever.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own arenas; 0 keeps no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The recorder's process memory now (VmRSS), for the bundle's summary.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
