//! Automatic triggers: `[[triggers]]` rules the daemon evaluates once a second, each with
//! a cooldown and a per-hour cap. A rule that fires starts a capture through the same job
//! path as an API capture (queue limits, audit record, exec history and flight-recorder
//! bundling all apply), with `how = "auto"` and the rule's name and observed values in
//! the manifest's trigger details.
//!
//! Kinds ([`TriggerKind`]):
//! - `psi`: /proc/pressure/{cpu,memory,io} `avg10` above `threshold` for `duration_secs`;
//! - `exit`: a watched process (by name) or unit (by cgroup) killed by a fatal signal or
//!   exiting non-zero, as the exec-history eBPF probes see it (`crate::history`);
//! - `log`: a new line of a followed file (rotation-aware) matching `pattern`;
//! - `disk`: free space below `min_free_percent` or `min_free_bytes` for `duration_secs`.
//!
//! The rules are re-read from the configuration in force at every tick, so SIGHUP
//! reloads them (a rule's state is kept while its name stays).

pub mod sources;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::sources::LogFollower;
use crate::capture::TriggerInfo;
use crate::daemon::Shared;
use crate::daemon::audit::Record;
use crate::daemon::jobs::{JobRecord, Kind, Work, now_rfc3339};
use crate::history::record::ProcessEnd;

const TICK: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
/// Units are resolved to cgroup ids again this often (a restarted unit gets a new one).
const UNIT_REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    Psi,
    Exit,
    Log,
    Disk,
}

/// One `[[triggers]]` rule. Keys that do not belong to its `kind` are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    /// Names the rule in logs, the audit log and the manifest. Required, unique.
    pub name: String,
    /// psi, exit, log or disk.
    pub kind: TriggerKind,
    /// psi: cpu, memory or io.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// psi: `some` (default) or `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// psi: avg10 percentage above which the rule holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// psi, disk: seconds the condition must hold before firing. Default: 0.
    #[serde(default)]
    pub duration_secs: u64,
    /// exit: process names (`comm`, first 15 bytes) to watch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// exit: systemd units whose processes to watch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<String>,
    /// exit: fire only on fatal signals, not on non-zero exit codes. Default: false.
    #[serde(default)]
    pub signals_only: bool,
    /// log: the file to follow; disk: a path on the filesystem to check (default "/").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// log: regular expression matched against each new line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// disk: fire when the available space is below this percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_percent: Option<f64>,
    /// disk: fire when the available space is below this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_bytes: Option<u64>,
    /// Seconds after firing during which the rule does not fire again. Default: 600.
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: u64,
    /// Most firings in any hour. Default: 3.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
}

fn default_cooldown() -> u64 {
    600
}

fn default_max_per_hour() -> u32 {
    3
}

/// Validates every rule; the error is (key, message).
pub fn validate(rules: &[TriggerRule]) -> Result<(), (String, String)> {
    let mut names = BTreeSet::new();
    for (i, r) in rules.iter().enumerate() {
        let key = |k: &str| format!("triggers[{i}].{k}");
        let bad = |k: &str, m: String| Err((key(k), m));
        if r.name.trim().is_empty() {
            return bad("name", "is required".into());
        }
        if !names.insert(r.name.as_str()) {
            return bad("name", format!("{:?} is used by another rule", r.name));
        }
        if r.max_per_hour == 0 {
            return bad("max_per_hour", "must be greater than 0".into());
        }
        // Keys of other kinds are mistakes: say so rather than ignore them.
        let present: Vec<&str> = [
            ("resource", r.resource.is_some()),
            ("level", r.level.is_some()),
            ("threshold", r.threshold.is_some()),
            ("processes", !r.processes.is_empty()),
            ("units", !r.units.is_empty()),
            ("signals_only", r.signals_only),
            ("path", r.path.is_some()),
            ("pattern", r.pattern.is_some()),
            ("min_free_percent", r.min_free_percent.is_some()),
            ("min_free_bytes", r.min_free_bytes.is_some()),
            ("duration_secs", r.duration_secs != 0),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        let allowed: &[&str] = match r.kind {
            TriggerKind::Psi => &["resource", "level", "threshold", "duration_secs"],
            TriggerKind::Exit => &["processes", "units", "signals_only"],
            TriggerKind::Log => &["path", "pattern"],
            TriggerKind::Disk => &[
                "path",
                "min_free_percent",
                "min_free_bytes",
                "duration_secs",
            ],
        };
        if let Some(k) = present.iter().find(|k| !allowed.contains(k)) {
            return bad(
                k,
                format!(
                    "does not apply to a {:?} rule (it takes: {})",
                    r.kind,
                    allowed.join(", ")
                )
                .to_lowercase(),
            );
        }
        match r.kind {
            TriggerKind::Psi => {
                match r.resource.as_deref() {
                    Some("cpu" | "memory" | "io") => {}
                    other => {
                        return bad(
                            "resource",
                            format!("must be cpu, memory or io, not {other:?}"),
                        );
                    }
                }
                if !matches!(r.level.as_deref(), None | Some("some" | "full")) {
                    return bad("level", "must be some or full".into());
                }
                match r.threshold {
                    Some(t) if (0.0..=100.0).contains(&t) => {}
                    _ => return bad("threshold", "a percentage in 0..=100 is required".into()),
                }
            }
            TriggerKind::Exit => {
                if r.processes.is_empty() && r.units.is_empty() {
                    return bad(
                        "processes",
                        "an exit rule needs `processes` or `units`".into(),
                    );
                }
            }
            TriggerKind::Log => {
                match &r.path {
                    Some(p) if p.is_absolute() => {}
                    _ => return bad("path", "an absolute path is required".into()),
                }
                match r.pattern.as_deref().map(regex::Regex::new) {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return bad("pattern", format!("bad regular expression: {e}")),
                    None => return bad("pattern", "is required".into()),
                }
            }
            TriggerKind::Disk => {
                if r.min_free_percent.is_none() && r.min_free_bytes.is_none() {
                    return bad(
                        "min_free_percent",
                        "a disk rule needs `min_free_percent` or `min_free_bytes`".into(),
                    );
                }
                if r.min_free_percent
                    .is_some_and(|p| !(0.0..=100.0).contains(&p))
                {
                    return bad("min_free_percent", "must be in 0..=100".into());
                }
            }
        }
    }
    Ok(())
}

/// Cooldown and per-hour cap of one rule.
#[derive(Debug, Default)]
pub struct Gate {
    fired: VecDeque<Instant>,
    /// Occurrences suppressed since the last firing.
    pub suppressed: u64,
}

impl Gate {
    /// Whether the rule may fire at `now`; records the firing when it may, and otherwise
    /// says why not.
    pub fn admit(
        &mut self,
        now: Instant,
        cooldown: Duration,
        max_per_hour: u32,
    ) -> Result<(), String> {
        while self
            .fired
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HOUR)
        {
            self.fired.pop_front();
        }
        if let Some(last) = self.fired.back()
            && now.duration_since(*last) < cooldown
        {
            self.suppressed += 1;
            return Err(format!(
                "cooldown: fired {}s ago, cooldown {}s",
                now.duration_since(*last).as_secs(),
                cooldown.as_secs()
            ));
        }
        if self.fired.len() >= max_per_hour as usize {
            self.suppressed += 1;
            return Err(format!(
                "cap: fired {} times in the last hour",
                self.fired.len()
            ));
        }
        self.fired.push_back(now);
        Ok(())
    }
}

#[derive(Default)]
struct RuleState {
    gate: Gate,
    /// When the psi/disk condition started holding.
    since: Option<Instant>,
    follower: Option<LogFollower>,
    regex: Option<regex::Regex>,
    cgroups: BTreeSet<u64>,
    cgroups_at: Option<Instant>,
}

/// Starts the evaluator thread when rules are configured (or could be, after a reload:
/// the thread always runs, and costs nothing without rules). `exits` comes from the exec
/// history's probes.
pub fn start(shared: &Arc<Shared>, exits: Receiver<ProcessEnd>) -> std::io::Result<()> {
    let config = shared.config();
    if !config.history.enabled && config.triggers.iter().any(|r| r.kind == TriggerKind::Exit) {
        tracing::warn!(
            "[[triggers]] exit rules need the exec-history probes: with [history] enabled = false they never fire"
        );
    }
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("triggers".into())
        .spawn(move || run(shared, exits))?;
    Ok(())
}

fn run(shared: Arc<Shared>, exits: Receiver<ProcessEnd>) {
    let mut states: HashMap<String, RuleState> = HashMap::new();
    let mut next_tick = Instant::now();
    let mut exits_open = true;
    loop {
        if shared.is_shutting_down() {
            return;
        }
        let wait = next_tick.saturating_duration_since(Instant::now());
        let end = if exits_open {
            match exits.recv_timeout(wait) {
                Ok(end) => Some(end),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    exits_open = false;
                    None
                }
            }
        } else {
            std::thread::sleep(wait);
            None
        };
        let config = shared.config();
        states.retain(|name, _| config.triggers.iter().any(|r| &r.name == name));
        if let Some(end) = end {
            for rule in config
                .triggers
                .iter()
                .filter(|r| r.kind == TriggerKind::Exit)
            {
                let state = states.entry(rule.name.clone()).or_default();
                if let Some(observed) = exit_matches(rule, state, &end) {
                    consider(&shared, rule, state, observed);
                }
            }
            continue;
        }
        next_tick = Instant::now() + TICK;
        for rule in &config.triggers {
            let state = states.entry(rule.name.clone()).or_default();
            let observed = match rule.kind {
                TriggerKind::Psi => psi(rule, state),
                TriggerKind::Disk => disk(rule, state),
                TriggerKind::Log => log(rule, state),
                TriggerKind::Exit => None,
            };
            if let Some(observed) = observed {
                consider(&shared, rule, state, observed);
            }
        }
    }
}

/// What a rule saw: a one-line summary and the values for the manifest.
struct Observed {
    summary: String,
    values: BTreeMap<String, String>,
}

fn observed(summary: String, values: &[(&str, String)]) -> Observed {
    Observed {
        summary,
        values: values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

/// A condition that must hold for `duration_secs`: Some(held for) once it has.
fn held(state: &mut RuleState, holds: bool, duration: u64) -> Option<Duration> {
    if !holds {
        state.since = None;
        return None;
    }
    let since = *state.since.get_or_insert_with(Instant::now);
    let held = since.elapsed();
    (held.as_secs() >= duration).then_some(held)
}

fn psi(rule: &TriggerRule, state: &mut RuleState) -> Option<Observed> {
    let resource = rule.resource.as_deref()?;
    let level = rule.level.as_deref().unwrap_or("some");
    let threshold = rule.threshold?;
    let value = match sources::psi_avg10(std::path::Path::new("/proc/pressure"), resource, level) {
        Ok(v) => v,
        Err(err) => {
            tracing::debug!(rule = %rule.name, "PSI unavailable: {err}");
            return None;
        }
    };
    let held = held(state, value > threshold, rule.duration_secs)?;
    Some(observed(
        format!(
            "{resource} pressure ({level} avg10) {value:.2}% > {threshold}% for {}s",
            held.as_secs()
        ),
        &[
            ("resource", resource.to_owned()),
            ("level", level.to_owned()),
            ("avg10", format!("{value:.2}")),
            ("threshold", threshold.to_string()),
            ("held_secs", held.as_secs().to_string()),
        ],
    ))
}

fn disk(rule: &TriggerRule, state: &mut RuleState) -> Option<Observed> {
    let path = rule.path.clone().unwrap_or_else(|| PathBuf::from("/"));
    let (free, percent) = match sources::disk_free(&path) {
        Ok(v) => v,
        Err(err) => {
            tracing::debug!(rule = %rule.name, "statvfs {}: {err}", path.display());
            return None;
        }
    };
    let low = rule.min_free_percent.is_some_and(|p| percent < p)
        || rule.min_free_bytes.is_some_and(|b| free < b);
    let held = held(state, low, rule.duration_secs)?;
    let mut values = vec![
        ("path", path.display().to_string()),
        ("free_bytes", free.to_string()),
        ("free_percent", format!("{percent:.2}")),
        ("held_secs", held.as_secs().to_string()),
    ];
    if let Some(p) = rule.min_free_percent {
        values.push(("min_free_percent", p.to_string()));
    }
    if let Some(b) = rule.min_free_bytes {
        values.push(("min_free_bytes", b.to_string()));
    }
    Some(observed(
        format!("{} has {free} bytes ({percent:.2}%) free", path.display()),
        &values,
    ))
}

fn log(rule: &TriggerRule, state: &mut RuleState) -> Option<Observed> {
    let path = rule.path.as_ref()?;
    if state.regex.is_none() {
        state.regex = regex::Regex::new(rule.pattern.as_deref()?).ok();
    }
    let follower = state.follower.get_or_insert_with(|| LogFollower::new(path));
    let lines = follower.poll();
    let regex = state.regex.as_ref()?;
    let mut matching = lines.iter().filter(|l| regex.is_match(l));
    let first = matching.next()?;
    let more = matching.count();
    let shown: String = first.chars().take(512).collect();
    Some(observed(
        format!(
            "{} logged a line matching /{}/",
            path.display(),
            regex.as_str()
        ),
        &[
            ("path", path.display().to_string()),
            ("pattern", regex.as_str().to_owned()),
            ("line", shown),
            ("more_matching_lines", more.to_string()),
        ],
    ))
}

fn exit_matches(rule: &TriggerRule, state: &mut RuleState, end: &ProcessEnd) -> Option<Observed> {
    if rule.signals_only && end.signal == 0 {
        return None;
    }
    if !rule.units.is_empty() && state.cgroups_at.is_none_or(|t| t.elapsed() >= UNIT_REFRESH) {
        state.cgroups_at = Some(Instant::now());
        state.cgroups.clear();
        for unit in &rule.units {
            let targets = crate::profile::target::Targets {
                units: vec![unit.clone()],
                ..Default::default()
            };
            match targets.resolve() {
                Ok(resolved) => state.cgroups.extend(resolved.cgroup_ids()),
                Err(err) => tracing::debug!(rule = %rule.name, "unit {unit}: {err}"),
            }
        }
    }
    let by_name = rule.processes.iter().any(|p| {
        let p = p.as_bytes();
        end.comm.as_bytes() == &p[..p.len().min(15)]
    });
    let by_unit = state.cgroups.contains(&end.cgroup_id);
    if !by_name && !by_unit {
        return None;
    }
    let mut values = vec![
        ("pid", end.tgid.to_string()),
        ("comm", end.comm.clone()),
        ("cgroup_id", end.cgroup_id.to_string()),
        ("time", crate::history::record::rfc3339_ns(end.unix_ns)),
    ];
    if end.signal != 0 {
        values.push(("signal", crate::history::record::signal_name(end.signal)));
    } else {
        values.push(("exit_status", end.code.to_string()));
    }
    values.push((
        "matched",
        if by_name { "process name" } else { "unit" }.into(),
    ));
    Some(observed(
        format!("{} (pid {}) {}", end.comm, end.tgid, end.describe()),
        &values,
    ))
}

/// Fires the rule unless its cooldown or cap holds it back.
fn consider(shared: &Arc<Shared>, rule: &TriggerRule, state: &mut RuleState, obs: Observed) {
    let gate = &mut state.gate;
    if let Err(why) = gate.admit(
        Instant::now(),
        Duration::from_secs(rule.cooldown_secs),
        rule.max_per_hour,
    ) {
        // A condition that keeps holding (pressure, a full disk) would log every second:
        // the first suppression after a firing is logged, the rest only at debug level.
        if gate.suppressed == 1 {
            tracing::info!(rule = %rule.name, "trigger suppressed ({why}): {}", obs.summary);
        } else {
            tracing::debug!(rule = %rule.name, "trigger suppressed ({why}): {}", obs.summary);
        }
        return;
    }
    let suppressed = std::mem::take(&mut gate.suppressed);
    fire(shared, rule, obs, suppressed);
}

fn fire(shared: &Arc<Shared>, rule: &TriggerRule, obs: Observed, suppressed: u64) {
    let config = shared.config();
    let identity = format!("trigger:{}", rule.name);
    let reason = format!("automatic trigger {:?}: {}", rule.name, obs.summary);
    let job = JobRecord::new(
        Kind::Capture,
        reason.clone(),
        identity.clone(),
        "daemon".into(),
    );
    let id = job.id.clone();
    let mut audit = Record {
        time: now_rfc3339(),
        identity: identity.clone(),
        from: "daemon".into(),
        transport: "internal",
        action: format!("TRIGGER {}", rule.name),
        status: 202,
        job: Some(id.clone()),
        detail: Some(reason.clone()),
    };
    let mut details = obs.values;
    details.insert("rule".into(), rule.name.clone());
    details.insert("kind".into(), format!("{:?}", rule.kind).to_lowercase());
    details.insert("job".into(), id.clone());
    details.insert("cooldown_secs".into(), rule.cooldown_secs.to_string());
    details.insert("max_per_hour".into(), rule.max_per_hour.to_string());
    details.insert("suppressed_since_last".into(), suppressed.to_string());
    details.insert("audit".into(), audit.to_json());
    let trigger = TriggerInfo {
        how: "auto".into(),
        who: Some(format!("hindsight agent, trigger rule {:?}", rule.name)),
        details,
    };
    let work = Work::Capture {
        id: id.clone(),
        reason: reason.clone(),
        trigger,
        profile: None,
    };
    match shared.jobs.submit(job, work, config.daemon.keep_jobs) {
        Ok(()) => tracing::info!(rule = %rule.name, job = %id, "{reason}: capture queued"),
        Err(err) => {
            audit.status = 429;
            audit.detail = Some(format!("{reason}: not queued: {err}"));
            tracing::warn!(rule = %rule.name, "{reason}: capture not queued: {err}");
        }
    }
    shared.audit.write(&audit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_enforces_cooldown_then_hourly_cap() {
        let mut g = Gate::default();
        let t0 = Instant::now();
        let cool = Duration::from_secs(60);
        g.admit(t0, cool, 2).unwrap();
        let err = g.admit(t0 + Duration::from_secs(30), cool, 2).unwrap_err();
        assert!(err.contains("cooldown"), "{err}");
        g.admit(t0 + Duration::from_secs(61), cool, 2).unwrap();
        let err = g.admit(t0 + Duration::from_secs(200), cool, 2).unwrap_err();
        assert!(err.contains("cap"), "{err}");
        assert_eq!(g.suppressed, 2);
        // An hour after the first firing, one slot is free again.
        g.admit(t0 + Duration::from_secs(3601), cool, 2).unwrap();
    }

    fn rules(toml_text: &str) -> Result<(), (String, String)> {
        #[derive(Deserialize)]
        struct F {
            triggers: Vec<TriggerRule>,
        }
        let f: F = toml::from_str(toml_text).unwrap();
        validate(&f.triggers)
    }

    #[test]
    fn packaged_config_examples_parse_when_uncommented() {
        let text = include_str!("../../../packaging/hindsight.toml");
        let start = text.find("# [[triggers]]").unwrap();
        let uncommented: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let config = crate::config::Config::parse(&uncommented, std::path::Path::new("x")).unwrap();
        assert_eq!(config.triggers.len(), 4);
    }

    #[test]
    fn rules_validate_and_name_the_bad_key() {
        rules(
            r#"
            [[triggers]]
            name = "mem"
            kind = "psi"
            resource = "memory"
            threshold = 20.0
            duration_secs = 30
            [[triggers]]
            name = "crash"
            kind = "exit"
            processes = ["nginx"]
            [[triggers]]
            name = "oops"
            kind = "log"
            path = "/var/log/app.log"
            pattern = "panic|FATAL"
            [[triggers]]
            name = "full"
            kind = "disk"
            min_free_percent = 5.0
            "#,
        )
        .unwrap();
        let err = |t: &str| rules(t).unwrap_err();
        assert_eq!(
            err("[[triggers]]\nname='a'\nkind='psi'\nresource='gpu'\nthreshold=1.0\n").0,
            "triggers[0].resource"
        );
        assert_eq!(
            err("[[triggers]]\nname='a'\nkind='log'\npath='/x'\npattern='('\n").0,
            "triggers[0].pattern"
        );
        assert_eq!(
            err("[[triggers]]\nname='a'\nkind='disk'\nmin_free_percent=1.0\npattern='x'\n").0,
            "triggers[0].pattern"
        );
        assert_eq!(
            err("[[triggers]]\nname='a'\nkind='exit'\n").0,
            "triggers[0].processes"
        );
        let (key, msg) = err(
            "[[triggers]]\nname='a'\nkind='disk'\nmin_free_bytes=1\n[[triggers]]\nname='a'\nkind='disk'\nmin_free_bytes=1\n",
        );
        assert_eq!(key, "triggers[1].name");
        assert!(msg.contains("another rule"), "{msg}");
    }
}
