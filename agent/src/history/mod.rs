//! Exec history: every command run on the host (time, pid, ppid, uid, cgroup, path and a
//! bounded argv), recorded by eBPF (`crate::bpf::exec`) into a bounded in-memory
//! [`ring`] that covers the last `[history] window_secs`, and bundled into every capture
//! the daemon takes, argv redacted with the capture's rules ([`record`]). The same
//! probes see processes die (fatal signals, non-zero exit codes) and hand those to the
//! abnormal-exit trigger (`crate::triggers`). [`staging`] is the `hindsight preserve`
//! area that the next capture includes.
//!
//! The recorder is a thread of the daemon. If the probes cannot be attached (missing
//! capability, no tracefs), the daemon logs why and runs without it; captures then say
//! so in a note.

pub mod record;
pub mod ring;
pub mod staging;

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::time::{ClockId, clock_gettime};
use serde::{Deserialize, Serialize};

use self::record::{Entry, Exec, ProcessEnd, rfc3339_ns};
use self::ring::Ring;
use crate::bpf::exec::{Event, ExecCounters, ExecProbes};
use crate::capture::ExtraMember;
use crate::capture::redact::Redactor;
use crate::config::RedactConfig;

/// `[history]`: the daemon's exec history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Record every command run on the host and bundle the history into captures.
    /// Default: true.
    pub enabled: bool,
    /// How far back the history reaches, in seconds. Default: 900 (15 minutes).
    pub window_secs: u64,
    /// Most entries kept; the oldest are dropped first. Default: 100000.
    pub max_events: usize,
    /// Most bytes of entries kept in memory (estimated); the oldest are dropped first.
    /// Default: 16 MiB.
    pub max_bytes: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_secs: 900,
            max_events: 100_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl HistoryConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("history.{k}"), m.to_owned()));
        if self.window_secs == 0 {
            return bad("window_secs", "must be greater than 0");
        }
        if self.max_events == 0 {
            return bad("max_events", "must be greater than 0");
        }
        if self.max_bytes < 64 * 1024 {
            return bad("max_bytes", "must be at least 65536");
        }
        Ok(())
    }
}

/// The recorder's state, shared by its thread, the capture worker and the triggers.
pub struct ExecHistory {
    state: Mutex<State>,
    /// Why there is no history (probes not attached), for the capture's note.
    unavailable: Mutex<Option<String>>,
    /// Wakes the recorder thread to stop (None: the thread was never started).
    stop: Option<EventFd>,
    /// The recorder thread, joined by [`ExecHistory::stop`] so that the probes are
    /// detached (and a tracefs we mounted unmounted) before the daemon exits.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    config: HistoryConfig,
}

struct State {
    ring: Ring<Entry>,
    counters: ExecCounters,
    /// When recording started (unix ns).
    since_ns: i128,
    exits: Option<Sender<ProcessEnd>>,
    /// Processes whose end was already reported, by tgid (ns): other threads of a dying
    /// process report it again (SIGKILL from the group exit).
    ended: HashMap<u32, u64>,
}

impl ExecHistory {
    /// Starts the recorder thread. Never fails: without probes the history is empty and
    /// [`ExecHistory::members`] says why. `exits` receives abnormal process ends.
    pub fn start(config: &HistoryConfig, exits: Option<Sender<ProcessEnd>>) -> Arc<Self> {
        let window_ns = config.window_secs.saturating_mul(1_000_000_000);
        let history = Arc::new(Self {
            state: Mutex::new(State {
                ring: Ring::new(
                    window_ns,
                    config.max_events,
                    usize::try_from(config.max_bytes).unwrap_or(usize::MAX),
                ),
                counters: ExecCounters::default(),
                since_ns: unix_now_ns(),
                exits,
                ended: HashMap::new(),
            }),
            unavailable: Mutex::new(None),
            stop: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .ok(),
            thread: Mutex::new(None),
            config: config.clone(),
        });
        if history.stop.is_none() {
            *history
                .unavailable
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some("no eventfd for its thread".into());
            return history;
        }
        let probes = match ExecProbes::start() {
            Ok(p) => p,
            Err(err) => {
                let why = crate::daemon::error_chain(&err);
                tracing::warn!("exec history and the abnormal-exit trigger are off: {why}");
                *history
                    .unavailable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(why);
                return history;
            }
        };
        let h = Arc::clone(&history);
        let spawned = std::thread::Builder::new()
            .name("exec-history".into())
            .spawn(move || h.run(probes));
        match spawned {
            Err(err) => {
                tracing::warn!("exec history is off: cannot start its thread: {err}");
                *history
                    .unavailable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("cannot start its thread: {err}"));
            }
            Ok(handle) => {
                *history.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                tracing::info!(
                    window_secs = config.window_secs,
                    "exec history recording (eBPF)"
                );
            }
        }
        history
    }

    /// Stops the recorder thread and waits for it to detach the probes.
    pub fn stop(&self) {
        if let Some(stop) = &self.stop {
            let _ = stop.write(1);
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the exec-history thread panicked");
        }
    }

    fn run(&self, mut probes: ExecProbes) {
        let Some(stop) = &self.stop else { return };
        let mut last_counters = std::time::Instant::now();
        loop {
            let mut fds = [
                PollFd::new(probes.fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(err) => {
                    tracing::error!("exec history stopped: poll: {err}");
                    return;
                }
            }
            let stopping = fds[1].revents().is_some_and(|r| !r.is_empty());
            let offset = realtime_offset_ns();
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            probes.drain(|event| state.handle(event, offset));
            let mono = monotonic_ns();
            state.ring.age(mono);
            state
                .ended
                .retain(|_, t| mono.saturating_sub(*t) < 5_000_000_000);
            // Fresh enough for a capture's summary, without a syscall per event.
            if last_counters.elapsed() >= Duration::from_millis(200) || stopping {
                last_counters = std::time::Instant::now();
                match probes.counters() {
                    Ok(c) => state.counters = c,
                    Err(err) => tracing::debug!("history counters: {err}"),
                }
            }
            drop(state);
            if stopping {
                return;
            }
        }
    }

    /// The archive members for a capture taken now: `history/exec.jsonl` (argv redacted
    /// with `redact`) and `history/summary.json`, whose notes give the time range.
    pub fn members(&self, redact: &RedactConfig) -> Vec<ExtraMember> {
        if let Some(why) = self
            .unavailable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return vec![unavailable_member(&format!(
                "the daemon could not attach the exec-history probes: {why}"
            ))];
        }
        let redactor = match Redactor::new(redact) {
            Ok(r) => r,
            Err(err) => return vec![unavailable_member(&format!("redaction rules: {err}"))],
        };
        let taken_ns = unix_now_ns();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.ring.age(monotonic_ns());
        let mut jsonl = String::new();
        let mut redactions = 0;
        let (mut execs, mut ends) = (0, 0);
        for (_, entry) in state.ring.iter() {
            let (line, n) = entry.to_json_line(&redactor);
            jsonl.push_str(&line);
            jsonl.push('\n');
            redactions += n;
            match entry {
                Entry::Exec(_) => execs += 1,
                Entry::End(_) => ends += 1,
            }
        }
        let window_start =
            (taken_ns - i128::from(self.config.window_secs) * 1_000_000_000).max(state.since_ns);
        let first = state.ring.iter().next().map(|(_, e)| e.unix_ns());
        let last = state.ring.iter().last().map(|(_, e)| e.unix_ns());
        let summary = Summary {
            covers_from: rfc3339_ns(window_start),
            covers_to: rfc3339_ns(taken_ns),
            first_event: first.map(rfc3339_ns),
            last_event: last.map(rfc3339_ns),
            execs,
            abnormal_exits: ends,
            redactions,
            dropped_by_bounds: state.ring.dropped,
            kernel: state.counters,
            window_secs: self.config.window_secs,
            max_events: self.config.max_events,
            max_bytes: self.config.max_bytes,
        };
        drop(state);
        let range = format!(
            "exec history from {} to {} (the {} s before the capture, or since the daemon started)",
            summary.covers_from, summary.covers_to, summary.window_secs
        );
        let mut notes = vec![
            range.clone(),
            format!(
                "{execs} commands and {ends} abnormal exits; argv redacted with the [capture.redact] rules ({redactions} redactions)"
            ),
        ];
        let lost = summary.kernel.execs_lost + summary.kernel.exits_lost;
        if lost > 0 || summary.dropped_by_bounds > 0 {
            notes.push(format!(
                "incomplete: {lost} events lost in the kernel (ring buffer full), {} oldest dropped by the memory bounds",
                summary.dropped_by_bounds
            ));
        }
        vec![
            ExtraMember {
                name: "history/exec.jsonl".into(),
                data: jsonl.into_bytes(),
                notes,
            },
            ExtraMember {
                name: "history/summary.json".into(),
                data: serde_json::to_vec_pretty(&summary).expect("serializes"),
                notes: vec![range],
            },
        ]
    }
}

/// `history/summary.json`.
#[derive(Serialize)]
struct Summary {
    /// The time range the history covers (RFC 3339).
    covers_from: String,
    covers_to: String,
    first_event: Option<String>,
    last_event: Option<String>,
    execs: usize,
    abnormal_exits: usize,
    redactions: u32,
    dropped_by_bounds: u64,
    /// What the eBPF programs counted since the daemon started.
    kernel: ExecCounters,
    window_secs: u64,
    max_events: usize,
    max_bytes: u64,
}

/// What a daemon capture bundles from the exec history (or a note saying why nothing).
pub fn capture_members(
    history: Option<&ExecHistory>,
    config: &crate::config::Config,
) -> Vec<ExtraMember> {
    match history {
        Some(h) => h.members(&config.capture.redact),
        None => vec![unavailable_member(
            "the daemon runs with [history] enabled = false",
        )],
    }
}

/// The note of a capture taken by `hindsight capture` on its own.
pub fn cli_member() -> ExtraMember {
    unavailable_member(
        "taken by `hindsight capture` without the daemon; the exec history is recorded by \
         `hindsight agent` (capture through it with `hindsight trigger --reason ...`)",
    )
}

/// A note member saying why a capture has no exec history.
pub fn unavailable_member(why: &str) -> ExtraMember {
    ExtraMember {
        name: "history/UNAVAILABLE.txt".into(),
        data: format!("No exec history in this capture: {why}\n").into_bytes(),
        notes: vec![format!("no exec history: {why}")],
    }
}

impl State {
    fn handle(&mut self, event: Event, offset: i128) {
        match event {
            Event::Exec(e) => {
                let mut exec = Exec::from_event(&e, i128::from(e.time_ns) + offset);
                if exec.ppid == 0 {
                    exec.ppid = parent_of(exec.tgid).unwrap_or(0);
                }
                self.ring.push(e.time_ns, Entry::Exec(exec));
            }
            Event::Result(r) => {
                // The newest exec of this thread still waiting for its result.
                for entry in self.ring.iter_mut_rev().take(4096) {
                    if let Entry::Exec(exec) = entry
                        && exec.pid == r.pid
                        && exec.result.is_none()
                    {
                        exec.result = Some(r.ret);
                        break;
                    }
                }
            }
            Event::Exit(e) => {
                if self.ended.insert(e.tgid, e.time_ns).is_some() {
                    return; // another thread of a process already seen ending
                }
                let end = ProcessEnd::from_event(&e, i128::from(e.time_ns) + offset);
                if !end.is_abnormal() {
                    return;
                }
                if let Some(tx) = &self.exits
                    && tx.send(end.clone()).is_err()
                {
                    self.exits = None;
                }
                self.ring.push(e.time_ns, Entry::End(end));
            }
        }
    }
}

/// The parent of a live process, from /proc (for processes forked before we started).
fn parent_of(tgid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn unix_now_ns() -> i128 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos()
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC: added to `bpf_ktime_get_ns` stamps.
fn realtime_offset_ns() -> i128 {
    let mono = monotonic_ns();
    unix_now_ns() - i128::from(mono)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_this_process_is_found() {
        let me = std::process::id();
        assert_eq!(
            parent_of(me),
            Some(std::os::unix::process::parent_id()),
            "parsing /proc/{me}/stat"
        );
    }

    #[test]
    fn bad_history_values_are_named() {
        let c = HistoryConfig {
            window_secs: 0,
            ..HistoryConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "history.window_secs");
        HistoryConfig::default().validate().unwrap();
    }
}
