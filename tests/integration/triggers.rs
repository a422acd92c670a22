//! Automatic triggers: each `[[triggers]]` kind fires a capture on a fixture (a process
//! that dies by SIGSEGV, a log line, CPU pressure above a threshold set so low that real
//! pressure crosses it, free disk below a threshold set so high that it always is), the
//! manifest names the rule and the observed values, and a second occurrence inside the
//! cooldown, or beyond the hourly cap, does not fire.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::history::{Daemon, Setup, manifest, member};
use crate::support::{Workload, fixture, require_root};

fn append(path: &std::path::Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

#[test]
fn each_rule_fires_once_per_cooldown_and_respects_the_hourly_cap() {
    let Some(_guard) =
        require_root("each_rule_fires_once_per_cooldown_and_respects_the_hourly_cap")
    else {
        return;
    };
    let setup = Setup::new();
    let d = setup.dir.path().display().to_string();
    let marker = format!("m{}", std::process::id());
    let watched = setup.path("watched.log");
    let capped = setup.path("capped.log");
    std::fs::write(&watched, "FATAL before the daemon started: not new\n").unwrap();
    std::fs::write(&capped, "").unwrap();
    let config = setup.config(&format!(
        r#"
[daemon]
queue_size = 10

[[triggers]]
name = "crash"
kind = "exit"
processes = ["segv"]
cooldown_secs = 3600

[[triggers]]
name = "oops"
kind = "log"
path = "{d}/watched.log"
pattern = "FATAL .*{marker}"
cooldown_secs = 3600

[[triggers]]
name = "cpu-pressure"
kind = "psi"
resource = "cpu"
threshold = 0.0
duration_secs = 1
cooldown_secs = 3600

[[triggers]]
name = "disk-full"
kind = "disk"
path = "{d}"
min_free_percent = 100.0
cooldown_secs = 3600

[[triggers]]
name = "log-capped"
kind = "log"
path = "{d}/capped.log"
pattern = "ERROR"
cooldown_secs = 0
max_per_hour = 2
"#
    ));
    let segv = fixture("segv");
    let _daemon = Daemon::start(&setup, &config);
    // More runnable threads than CPUs: real CPU pressure for the psi rule.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _burn = Workload::start(
        fixture("burn"),
        &["100000000000", &(2 * cpus + 1).to_string()],
    );

    for _ in 0..2 {
        let status = Command::new(segv).status().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGSEGV)
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    for i in 0..2 {
        append(&watched, &format!("FATAL disk gone {marker} #{i}"));
        append(&watched, "INFO unrelated");
        std::thread::sleep(Duration::from_millis(1500));
    }
    for i in 0..3 {
        append(&capped, &format!("ERROR number {i}"));
        std::thread::sleep(Duration::from_millis(1500));
    }

    // crash 1, oops 1, cpu-pressure 1, disk-full 1, log-capped 2.
    let deadline = Instant::now() + Duration::from_secs(90);
    while setup.archives().len() < 6 {
        assert!(
            Instant::now() < deadline,
            "{} captures; agent log:\n{}",
            setup.archives().len(),
            setup.agent_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3));
    let archives = setup.archives();
    let mut by_rule: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in &archives {
        let m = manifest(a);
        assert_eq!(m["trigger"]["how"], "auto", "{m:#}");
        let rule = m["trigger"]["details"]["rule"].as_str().unwrap().to_owned();
        assert!(
            m["trigger"]["why"].as_str().unwrap().contains(&rule),
            "the reason names the rule: {m:#}"
        );
        by_rule.entry(rule).or_default().push(m["trigger"].clone());
    }
    let counts: BTreeMap<&str, usize> =
        by_rule.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("cpu-pressure", 1),
            ("crash", 1),
            ("disk-full", 1),
            ("log-capped", 2),
            ("oops", 1)
        ]),
        "agent log:\n{}",
        setup.agent_log()
    );

    let crash = &by_rule["crash"][0]["details"];
    assert_eq!(crash["signal"], "SIGSEGV", "{crash:#}");
    assert_eq!(crash["comm"], "segv", "{crash:#}");
    let oops = &by_rule["oops"][0]["details"];
    assert_eq!(
        oops["line"],
        format!("FATAL disk gone {marker} #0"),
        "{oops:#}"
    );
    let psi = &by_rule["cpu-pressure"][0]["details"];
    let avg10: f64 = psi["avg10"].as_str().unwrap().parse().unwrap();
    assert!(avg10 > 0.0, "{psi:#}");
    assert_eq!(psi["threshold"], "0", "{psi:#}");
    let disk = &by_rule["disk-full"][0]["details"];
    let free: f64 = disk["free_percent"].as_str().unwrap().parse().unwrap();
    assert!(free < 100.0, "{disk:#}");
    let capped_lines: Vec<&str> = by_rule["log-capped"]
        .iter()
        .map(|t| t["details"]["line"].as_str().unwrap())
        .collect();
    assert_eq!(capped_lines.len(), 2);
    assert!(capped_lines.contains(&"ERROR number 0"), "{capped_lines:?}");

    let log = setup.agent_log();
    for (rule, why) in [
        ("crash", "cooldown"),
        ("oops", "cooldown"),
        ("log-capped", "cap"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("trigger suppressed") && l.contains(rule) && l.contains(why)),
            "no {why} suppression of {rule}:\n{log}"
        );
    }
    let audit = std::fs::read_to_string(setup.path("log/audit.jsonl")).unwrap();
    assert_eq!(
        audit.lines().filter(|l| l.contains("\"TRIGGER ")).count(),
        6,
        "{audit}"
    );

    // The crash capture's exec history shows the crash.
    let crash_archive = archives
        .iter()
        .find(|a| manifest(a)["trigger"]["details"]["rule"] == "crash")
        .unwrap();
    let history = String::from_utf8(member(crash_archive, "extra/history/exec.jsonl")).unwrap();
    assert!(
        history.lines().any(|l| l.contains("abnormal_exit")
            && l.contains("\"comm\":\"segv\"")
            && l.contains("SIGSEGV")),
        "{history}"
    );
}
