//! `[recorder]`: the daemon's flight recorder (continuous low-overhead profiling kept in
//! memory for the captures).

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::profile::{Mode, target::Targets};

/// `[recorder]`: what the daemon records continuously, and how much of it it keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecorderConfig {
    /// Run the flight recorder in `hindsight agent`. Default: true.
    pub enabled: bool,
    /// Modes recorded: "cpu", "offcpu", "locks". Default: all three.
    pub modes: Vec<String>,
    /// On-CPU sampling frequency in Hz, per CPU. Low, and not a multiple of common timer
    /// frequencies, so samples do not lock step with periodic work. Default: 19.
    pub frequency: u64,
    /// Off-CPU waits shorter than this (microseconds) are dropped in the kernel: they are
    /// most context switches and cost the most to record. Default: 1000 (1 ms).
    pub min_block_us: u64,
    /// Length of a rolling window in seconds: the kernel maps are drained, symbolized and
    /// folded once per window. Default: 10.
    pub window_seconds: f64,
    /// Minutes of windows kept. Default: 15.
    pub keep_minutes: f64,
    /// Most memory the windows may take, in MiB (measured from what is held); the oldest
    /// windows are dropped first to stay under it. Default: 24.
    pub memory_budget_mib: f64,
    /// After a trigger, keep recording this many seconds and add that profile to the
    /// capture too (0: none). The capture waits for it. Default: 0.
    pub post_trigger_seconds: f64,
    /// Record only these processes (PIDs). Default: none; with `cgroups` and `units`
    /// all empty, the whole host.
    pub pids: Vec<u32>,
    /// Record only these cgroup v2 directories (and their descendants). Default: none.
    pub cgroups: Vec<PathBuf>,
    /// Record only these systemd units (their cgroups). Default: none.
    pub units: Vec<String>,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            modes: Mode::ALL.iter().map(|m| m.name().to_owned()).collect(),
            frequency: 19,
            min_block_us: 1000,
            window_seconds: 10.0,
            keep_minutes: 15.0,
            memory_budget_mib: 24.0,
            post_trigger_seconds: 0.0,
            pids: Vec::new(),
            cgroups: Vec::new(),
            units: Vec::new(),
        }
    }
}

/// Longest post-trigger profile: the capture waits for it.
const MAX_POST_TRIGGER_SECONDS: f64 = 300.0;

impl RecorderConfig {
    /// Checks the values; the error names the key (without the `recorder.` prefix).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for name in &self.modes {
            if Mode::from_name(name).is_none() {
                return Err((
                    "modes",
                    format!("{name:?} is not a mode (cpu, offcpu, locks)"),
                ));
            }
        }
        if self.enabled && self.modes.is_empty() {
            return Err((
                "modes",
                "is empty; set enabled = false to turn the recorder off".into(),
            ));
        }
        if !(1..=1000).contains(&self.frequency) {
            return Err((
                "frequency",
                format!("{} is not in 1..=1000", self.frequency),
            ));
        }
        if !(self.window_seconds.is_finite() && (0.5..=600.0).contains(&self.window_seconds)) {
            return Err((
                "window_seconds",
                format!("{} is not in 0.5..=600", self.window_seconds),
            ));
        }
        if !(self.keep_minutes.is_finite()
            && self.keep_minutes * 60.0 >= self.window_seconds
            && self.keep_minutes <= 24.0 * 60.0)
        {
            return Err((
                "keep_minutes",
                format!(
                    "{} must cover at least one window and at most a day",
                    self.keep_minutes
                ),
            ));
        }
        if !(self.memory_budget_mib.is_finite() && self.memory_budget_mib > 0.0) {
            return Err(("memory_budget_mib", "must be a positive number".into()));
        }
        if !(self.post_trigger_seconds.is_finite()
            && (0.0..=MAX_POST_TRIGGER_SECONDS).contains(&self.post_trigger_seconds))
        {
            return Err((
                "post_trigger_seconds",
                format!(
                    "{} is not in 0..={MAX_POST_TRIGGER_SECONDS}",
                    self.post_trigger_seconds
                ),
            ));
        }
        Ok(())
    }

    pub fn modes(&self) -> Vec<Mode> {
        let mut modes: Vec<Mode> = self
            .modes
            .iter()
            .filter_map(|m| Mode::from_name(m))
            .collect();
        modes.sort();
        modes.dedup();
        modes
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.window_seconds)
    }

    pub fn keep(&self) -> Duration {
        Duration::from_secs_f64(self.keep_minutes * 60.0)
    }

    pub fn budget_bytes(&self) -> usize {
        (self.memory_budget_mib * 1024.0 * 1024.0) as usize
    }

    pub fn post_trigger(&self) -> Duration {
        Duration::from_secs_f64(self.post_trigger_seconds)
    }

    pub fn targets(&self) -> Targets {
        Targets {
            pids: self.pids.clone(),
            cgroups: self.cgroups.clone(),
            units: self.units.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_low_overhead() {
        let c = RecorderConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(c.enabled);
        assert_eq!(c.modes(), Mode::ALL.to_vec());
        assert!(c.frequency < 50);
        assert_eq!(c.keep(), Duration::from_secs(15 * 60));
        assert_eq!(c.window(), Duration::from_secs(10));
    }

    #[test]
    fn bad_values_name_their_key() {
        type Spoil = fn(&mut RecorderConfig);
        let cases: [(Spoil, &str); 6] = [
            (|c| c.modes = vec!["gpu".into()], "modes"),
            (|c| c.frequency = 0, "frequency"),
            (|c| c.window_seconds = 0.0, "window_seconds"),
            (|c| c.keep_minutes = 0.1, "keep_minutes"),
            (|c| c.memory_budget_mib = -1.0, "memory_budget_mib"),
            (
                |c| c.post_trigger_seconds = f64::NAN,
                "post_trigger_seconds",
            ),
        ];
        for (spoil, key) in cases {
            let mut c = RecorderConfig::default();
            spoil(&mut c);
            assert_eq!(c.validate().map_err(|(k, _)| k), Err(key));
        }
    }
}
