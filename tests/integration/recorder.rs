//! The flight recorder, end to end: the real daemon records continuously with short
//! windows while a fixture with a known hot function runs; a capture triggered through
//! the socket holds the pre-trigger profile, naming that function with its true share
//! and time ranges that precede the trigger. With a small memory budget and the ring
//! full, the ring stays within the budget and the daemon's RSS stops growing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Workload, fixture, hindsight, hindsight_bin, keygen, require_root, text, trigger_and_wait,
};

/// A test directory: a signing key and the daemon's config with a `[recorder]` section.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(recorder: &str) -> Self {
        let s = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        keygen(s.dir.path());
        let d = s.dir.path().display();
        std::fs::write(
            s.path("hindsight.toml"),
            format!(
                r#"
[capture]
output_dir = "{d}/out"
signing_key = "{d}/signing.key"
configs = []
logs = []
journal_seconds = 0
max_map_lines = 20

[api]
socket = "{d}/hindsight.sock"
audit_log = "{d}/audit.jsonl"

[recorder]
{recorder}
"#
            ),
        )
        .unwrap();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn socket(&self) -> String {
        self.path("hindsight.sock").display().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }
}

/// The daemon, killed when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts it and waits until the flight recorder records.
    fn start(setup: &Setup) -> Self {
        let child = Command::new(hindsight_bin())
            .args(["agent", "--config"])
            .arg(setup.path("hindsight.toml"))
            .env("HINDSIGHT_LOG", "info")
            .stderr(std::fs::File::create(setup.path("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let daemon = Self { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !setup.log().contains("flight recorder: recording") {
            assert!(
                Instant::now() < deadline,
                "the flight recorder did not start; the daemon's log:\n{}",
                setup.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Captures through the socket, waits, returns the archive.
fn trigger_capture(setup: &Setup, reason: &str) -> PathBuf {
    trigger_and_wait(&setup.socket(), reason, &["--json"], || setup.log());
    let mut archives: Vec<PathBuf> = std::fs::read_dir(setup.path("out"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    archives.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    archives.pop().expect("an archive")
}

/// One member of an archive, by its path under the archive's root directory.
fn member(archive: &Path, rel: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--zstd", "-xOf"])
        .arg(archive)
        .args(["--wildcards", &format!("*/{rel}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{rel}: {}", text(&out.stderr));
    out.stdout
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", text(bytes)))
}

/// RFC 3339 UTC times as comparable keys (whole seconds, then nanoseconds).
fn instant(t: &str) -> (String, u64) {
    let t = t.trim_end_matches('Z');
    let (secs, frac) = t.split_once('.').unwrap_or((t, "0"));
    let nanos = format!("{frac:0<9}")[..9].parse().unwrap();
    (secs.to_owned(), nanos)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Weight of the folded lines of `process` whose leaf is `function`.
fn leaf_weight(folded: &str, process: &str, function: &str) -> u64 {
    folded
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(stack, _)| {
            stack.split(';').next() == Some(process) && stack.rsplit(';').next() == Some(function)
        })
        .map(|(_, n)| n.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn pre_trigger_profile_names_the_hot_function_with_its_share_and_time_ranges() {
    let Some(_guard) =
        require_root("pre_trigger_profile_names_the_hot_function_with_its_share_and_time_ranges")
    else {
        return;
    };
    // Default modes, 49 Hz (the top of the low range, for the statistics of a 20 s run);
    // short windows so 20 s make many of them, and a
    // short profile after the trigger.
    let setup = Setup::new("window_seconds = 2\npost_trigger_seconds = 3\nfrequency = 49\n");
    let _daemon = Daemon::start(&setup);
    let recording_since = now_rfc3339();
    // work_a does 3 units of work for each unit of work_b: 75% of the on-CPU samples.
    let split = Workload::start(fixture("split"), &["3", "1"]);
    std::thread::sleep(Duration::from_secs(20));
    let triggered = now_rfc3339();
    let archive = trigger_capture(&setup, "flight recorder test");
    drop(split);

    let manifest = json(&member(&archive, "MANIFEST.json"));
    let details = &manifest["trigger"]["details"];
    let from = details["flight_recorder.from"]
        .as_str()
        .expect("from in the manifest");
    let to = details["flight_recorder.to"]
        .as_str()
        .expect("to in the manifest");
    assert!(instant(from) < instant(to), "{from} .. {to}");
    // The ring covers the run, and ends when the capture ran, after the trigger request.
    assert!(
        instant(from) <= instant(&recording_since),
        "{from} > {recording_since}"
    );
    assert!(instant(to) >= instant(&triggered), "{to} < {triggered}");
    let created = manifest["created"].as_str().unwrap();
    assert!(instant(to) <= instant(created), "{to} > {created}");

    let windows = json(&member(&archive, "extra/flight-recorder/windows.json"));
    assert_eq!(windows["closed_at_trigger"], true, "{windows:#}");
    let pre = windows["pre_trigger"].as_array().unwrap();
    assert!(pre.len() >= 8, "20 s of 2 s windows: {windows:#}");
    for pair in pre.windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"], "windows are contiguous");
    }
    for w in pre {
        let (f, t) = (w["from"].as_str().unwrap(), w["to"].as_str().unwrap());
        assert!(instant(f) < instant(t) && instant(t) <= instant(to), "{w}");
    }
    assert_eq!(pre.first().unwrap()["from"].as_str(), Some(from));
    assert_eq!(pre.last().unwrap()["to"].as_str(), Some(to));

    let folded = text(&member(&archive, "extra/flight-recorder/cpu.folded"));
    let a = leaf_weight(&folded, "split", "work_a");
    let b = leaf_weight(&folded, "split", "work_b");
    let share = a as f64 / (a + b) as f64;
    eprintln!("flight recorder: work_a {a} samples, work_b {b}: share {share:.3} (truth 0.75)");
    // ~20 s of one busy thread at 49 Hz: ~980 samples, unless the machine is very busy.
    assert!(
        a + b >= 100,
        "too few samples of split: {a} + {b}\n{folded}"
    );
    assert!(
        (share - 0.75).abs() < 0.08,
        "work_a share {share:.3}, not ~0.75"
    );
    // The flame graph and the other modes are there too.
    let svg = text(&member(&archive, "extra/flight-recorder/cpu.svg"));
    assert!(
        svg.contains("work_a"),
        "the flame graph names the hot function"
    );
    for mode in ["offcpu", "locks"] {
        member(&archive, &format!("extra/flight-recorder/{mode}.folded"));
    }
    // The post-trigger profile follows the pre-trigger one, and the fixture ran through
    // its first seconds.
    let post_from = details["flight_recorder.post_trigger_from"]
        .as_str()
        .expect("post from");
    let post_to = details["flight_recorder.post_trigger_to"]
        .as_str()
        .expect("post to");
    assert_eq!(
        post_from, to,
        "the post-trigger profile starts at the trigger"
    );
    assert!(instant(post_to) > instant(post_from) && instant(post_to) <= instant(created));
    let post = windows["post_trigger"].as_array().unwrap();
    assert!(!post.is_empty(), "{windows:#}");
    let post_folded = text(&member(
        &archive,
        "extra/flight-recorder/post-trigger/cpu.folded",
    ));
    assert!(
        leaf_weight(&post_folded, "split", "work_a") > 0,
        "split ran after the trigger too:\n{post_folded}"
    );
    // Each member's notes carry its time range.
    let members = manifest["members"].as_array().unwrap();
    let cpu = members
        .iter()
        .find(|m| {
            m["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("extra/flight-recorder/cpu.folded"))
        })
        .expect("cpu.folded in the manifest");
    assert!(cpu.to_string().contains("before the trigger"), "{cpu}");
}

/// Prometheus value of an unlabelled metric.
fn metric(setup: &Setup, name: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket", &setup.socket()])
        .arg("http://localhost/metrics")
        .output()
        .expect("running curl");
    let body = text(&out.stdout);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[test]
fn full_ring_stays_within_its_memory_budget_and_rss_stops_growing() {
    let Some(_guard) =
        require_root("full_ring_stays_within_its_memory_budget_and_rss_stops_growing")
    else {
        return;
    };
    // Small enough that even a quiet host fills it within the deadline (~3 KiB a window).
    let budget_mib = 0.25;
    let setup = Setup::new(&format!(
        "window_seconds = 0.5\nmemory_budget_mib = {budget_mib}\nfrequency = 199\n"
    ));
    let daemon = Daemon::start(&setup);
    // Busy, varied stacks: CPU work and context switches.
    let _split = Workload::start(fixture("split"), &["3", "1"]);
    let _pingpong = Workload::start(fixture("pingpong"), &["1000000000", "2000"]);
    let budget = (budget_mib * 1024.0 * 1024.0) as u64;
    assert_eq!(metric(&setup, "hindsight_recorder_budget_bytes"), budget);
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(
        &setup,
        "hindsight_recorder_windows_dropped_for_budget_total",
    ) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the ring never filled its budget: {} bytes in {} windows",
            metric(&setup, "hindsight_recorder_ring_bytes"),
            metric(&setup, "hindsight_recorder_windows")
        );
        assert!(metric(&setup, "hindsight_recorder_ring_bytes") <= budget);
        std::thread::sleep(Duration::from_millis(500));
    }
    // RSS swings with each window's symbolization (files mapped, then released): sample
    // it over 30 windows, and compare the two halves for a trend.
    let mut rss = Vec::new();
    let mut ring_max = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(500));
        let ring = metric(&setup, "hindsight_recorder_ring_bytes");
        assert!(ring <= budget, "ring {ring} bytes > budget {budget}");
        ring_max = ring_max.max(ring);
        rss.push(daemon.rss_bytes());
    }
    let first = *rss[..15].iter().max().unwrap();
    let rss_max = *rss.iter().max().unwrap();
    let dropped = metric(
        &setup,
        "hindsight_recorder_windows_dropped_for_budget_total",
    );
    let windows = metric(&setup, "hindsight_recorder_windows");
    eprintln!(
        "flight recorder budget {budget} B: ring up to {ring_max} B in {windows} windows, \
         {dropped} dropped for the budget; daemon RSS with the ring full: up to {first} B, \
         then up to {rss_max} B"
    );
    assert!(
        dropped > 1 && windows >= 1,
        "{dropped} dropped, {windows} held"
    );
    // Once the ring is full the daemon does not keep growing: what the ring holds is
    // bounded, and the rest (maps of processes, symbol caches) is refreshed, not kept.
    assert!(
        rss_max <= first + 16 * 1024 * 1024,
        "RSS grew from {first} to {rss_max} with the ring full"
    );
    assert!(rss_max <= 64 * 1024 * 1024, "RSS {rss_max} > 64 MiB");
}

#[test]
fn capture_without_the_daemon_says_it_has_no_flight_recorder() {
    let setup = Setup::new("");
    let out = hindsight(&[
        "capture",
        "--reason",
        "no daemon",
        "--config",
        &setup.path("hindsight.toml").display().to_string(),
        "--unsigned",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let archive = PathBuf::from(text(&out.stdout).trim());
    let note = text(&member(&archive, "extra/flight-recorder/UNAVAILABLE.txt"));
    assert!(note.contains("without the daemon"), "{note}");
    let manifest = json(&member(&archive, "MANIFEST.json"));
    let details = manifest["trigger"]["details"]["flight_recorder"]
        .as_str()
        .unwrap_or_default();
    assert!(details.starts_with("unavailable: "), "{manifest:#}");
}
