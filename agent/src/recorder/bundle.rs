//! What a capture takes from the flight recorder: per mode, the windows before the trigger
//! merged into one profile (`flight-recorder/<mode>.folded` and `.svg`), optionally a short
//! profile after the trigger (`flight-recorder/post-trigger/`), and `windows.json` with
//! every window's time range, weights and losses and the ring's memory use. Time ranges
//! also go into each member's notes and the trigger details of the manifest.

use std::{collections::BTreeMap, time::SystemTime};

use serde::Serialize;

use super::{Recorder, State, lock, ring, rss_bytes};
use crate::{
    capture::ExtraMember,
    profile::{self, Mode, flamegraph, stack::Folded},
};

/// Archive members (under `extra/`) and trigger details for the manifest.
#[derive(Debug, Default)]
pub struct Bundle {
    pub members: Vec<ExtraMember>,
    pub details: BTreeMap<String, String>,
}

/// Directory of the members in the archive's `extra/`.
const DIR: &str = "flight-recorder";

impl Bundle {
    /// No recorder profiles: one member that says why, so the archive shows the gap.
    pub fn unavailable(why: &str) -> Self {
        let text = format!("no flight-recorder profiles in this capture: {why}\n");
        let mut details = BTreeMap::new();
        details.insert("flight_recorder".into(), format!("unavailable: {why}"));
        Self {
            members: vec![ExtraMember {
                name: format!("{DIR}/UNAVAILABLE.txt"),
                data: text.into_bytes(),
                notes: vec![format!("no flight-recorder profiles: {why}")],
            }],
            details,
        }
    }
}

#[derive(Serialize)]
struct WindowsFile {
    trigger: String,
    window_seconds: f64,
    frequency_hz: u64,
    min_block_us: u64,
    target: String,
    modes: Vec<&'static str>,
    /// The current window was closed at the trigger (false: the recorder did not answer
    /// in time, and up to one window before the trigger is missing).
    closed_at_trigger: bool,
    pre_trigger: Vec<WindowEntry>,
    post_trigger: Vec<WindowEntry>,
    ring: ring::RingStats,
    daemon_rss_bytes: Option<u64>,
}

#[derive(Serialize)]
struct WindowEntry {
    from: String,
    to: String,
    /// Weight per mode (samples for cpu, µs for offcpu and locks).
    total: BTreeMap<&'static str, u64>,
    distinct_stacks: BTreeMap<&'static str, usize>,
    /// Samples or waits the kernel dropped because its maps were full.
    lost: BTreeMap<&'static str, u64>,
}

impl WindowEntry {
    fn of(w: &ring::Window) -> Self {
        let mut total = BTreeMap::new();
        let mut distinct = BTreeMap::new();
        for (mode, stacks) in &w.stacks {
            total.insert(mode.name(), stacks.iter().map(|(_, n)| n).sum());
            distinct.insert(mode.name(), stacks.len());
        }
        Self {
            from: rfc3339(w.from),
            to: rfc3339(w.to),
            total,
            distinct_stacks: distinct,
            lost: w.lost.iter().map(|(m, n)| (m.name(), *n)).collect(),
        }
    }
}

/// Windows of one period, merged per mode.
struct Period {
    from: SystemTime,
    to: SystemTime,
    entries: Vec<WindowEntry>,
    merged: Vec<(Mode, Folded)>,
}

impl Recorder {
    /// The profiles of the windows before `trigger` (the current window closed now), and
    /// the post-trigger profile when `post_trigger_seconds` is set (this waits for it).
    pub fn bundle(&self, trigger: SystemTime) -> Bundle {
        let (modes, target) = match self.state() {
            State::Recording { modes, target, .. } => (modes, target),
            State::Starting => return Bundle::unavailable("the flight recorder is still starting"),
            State::Failed(why) => {
                return Bundle::unavailable(&format!("the flight recorder failed: {why}"));
            }
            State::Stopped => return Bundle::unavailable("the flight recorder has stopped"),
        };
        let started = std::time::Instant::now();
        let closed = self.flush();
        let flushed_in = started.elapsed();
        let cut = SystemTime::now();
        let Some(pre) = self.period(&modes, SystemTime::UNIX_EPOCH, cut) else {
            return Bundle::unavailable(
                "the flight recorder has not completed a window yet (it started moments ago)",
            );
        };
        let post_wanted = !self.config().post_trigger().is_zero();
        let post = if post_wanted {
            std::thread::sleep(self.config().post_trigger());
            self.flush();
            // From the end of the last window before the trigger: the window the flush
            // opened starts there.
            self.period(&modes, pre.to, SystemTime::now())
        } else {
            None
        };

        let config = self.config();
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "this host".into());
        let mut bundle = Bundle::default();
        let add = |bundle: &mut Bundle, period: &Period, dir: &str, when: &str| {
            let range = format!(
                "{} to {} UTC",
                profile::utc_seconds(period.from),
                profile::utc_seconds(period.to)
            );
            for (mode, folded) in &period.merged {
                let notes = vec![format!(
                    "flight recorder, {} {when}: {range} ({} windows of {} s{})",
                    mode.name(),
                    period.entries.len(),
                    config.window_seconds,
                    if mode == &Mode::Cpu {
                        format!(", {} Hz", config.frequency)
                    } else {
                        String::new()
                    }
                )];
                let mut text = Vec::new();
                let _ = folded.write_to(&mut text);
                bundle.members.push(ExtraMember {
                    name: format!("{dir}/{}.folded", mode.name()),
                    data: text,
                    notes: notes.clone(),
                });
                let (title, unit, palette) = mode.labels(&target, &host);
                let labels = flamegraph::GraphLabels {
                    title: format!("Flight recorder, {when}: {title}"),
                    subtitle: format!(
                        "{range}, {} {unit}; kernel frames _[k]; [lost] = stack not recorded",
                        folded.total()
                    ),
                    count_name: unit.into(),
                    palette,
                    style: flamegraph::GraphStyle::default(),
                };
                let mut svg = Vec::new();
                match flamegraph::write_svg(folded, &labels, &mut svg) {
                    Ok(()) => bundle.members.push(ExtraMember {
                        name: format!("{dir}/{}.svg", mode.name()),
                        data: svg,
                        notes,
                    }),
                    Err(err) => {
                        tracing::warn!("flight recorder: {} flame graph: {err}", mode.name())
                    }
                }
            }
        };
        add(&mut bundle, &pre, DIR, "before the trigger");
        bundle
            .details
            .insert("flight_recorder.from".into(), rfc3339(pre.from));
        bundle
            .details
            .insert("flight_recorder.to".into(), rfc3339(pre.to));
        if let Some(post) = &post {
            add(
                &mut bundle,
                post,
                &format!("{DIR}/post-trigger"),
                "after the trigger",
            );
            bundle.details.insert(
                "flight_recorder.post_trigger_from".into(),
                rfc3339(post.from),
            );
            bundle
                .details
                .insert("flight_recorder.post_trigger_to".into(), rfc3339(post.to));
        }
        let file = WindowsFile {
            trigger: rfc3339(trigger),
            window_seconds: config.window_seconds,
            frequency_hz: config.frequency,
            min_block_us: config.min_block_us,
            target,
            modes: modes.iter().map(|m| m.name()).collect(),
            closed_at_trigger: closed,
            pre_trigger: pre.entries,
            post_trigger: post.map(|p| p.entries).unwrap_or_default(),
            ring: self.stats(),
            daemon_rss_bytes: rss_bytes(),
        };
        let mut notes = vec![format!(
            "flight-recorder windows: {} to {} UTC before the trigger",
            profile::utc_seconds(pre.from),
            profile::utc_seconds(pre.to)
        )];
        if !closed {
            notes.push(
                "the recorder did not close its current window in time: up to one window before the trigger is missing"
                    .into(),
            );
        }
        if post_wanted && file.post_trigger.is_empty() {
            notes.push("the post-trigger profile could not be taken".into());
        }
        tracing::info!(
            "flight recorder: {} windows bundled in {} ms (closing the current one: {} ms)",
            file.pre_trigger.len() + file.post_trigger.len(),
            started.elapsed().as_millis(),
            flushed_in.as_millis()
        );
        bundle.members.push(ExtraMember {
            name: format!("{DIR}/windows.json"),
            data: serde_json::to_vec_pretty(&file).unwrap_or_default(),
            notes,
        });
        bundle
    }

    /// The windows that started in `[after, before)`, merged per mode; None without any.
    fn period(&self, modes: &[Mode], after: SystemTime, before: SystemTime) -> Option<Period> {
        let ring = lock(&self.inner.ring);
        let windows: Vec<&ring::Window> = ring
            .windows()
            .filter(|w| w.from >= after && w.from < before)
            .collect();
        let from = windows.first()?.from;
        let to = windows.last()?.to;
        Some(Period {
            from,
            to,
            entries: windows.iter().map(|w| WindowEntry::of(w)).collect(),
            merged: modes
                .iter()
                .map(|&m| (m, ring::merge(&windows, m)))
                .collect(),
        })
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
