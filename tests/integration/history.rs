//! Exec history and preserved logs in captures: a daemon records every command run on
//! the host with eBPF, and a capture through it bundles the history (argv redacted) with
//! its time range; `hindsight preserve` stages a log that the next capture (daemon or
//! CLI) includes with a matching hash, even after the log was rotated away.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{hindsight, hindsight_bin, keygen, require_root, text, trigger_and_wait};

/// A test directory with a signing key and a small capture config.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Self {
        let s = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        keygen(s.dir.path());
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes hindsight.toml: a small, fast capture with paths in the test directory,
    /// followed by `extra` (more sections).
    pub fn config(&self, extra: &str) -> PathBuf {
        let d = self.dir.path().display();
        let text = format!(
            r#"
[capture]
output_dir = "{d}/out"
signing_key = "{d}/signing.key"
configs = []
logs = []
journal_seconds = 0
max_map_lines = 5
[api]
socket = "{d}/run/hindsight.sock"
audit_log = "{d}/log/audit.jsonl"
[preserve]
staging_dir = "{d}/staging"
{extra}
"#
        );
        let path = self.path("hindsight.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn socket(&self) -> String {
        self.path("run/hindsight.sock").display().to_string()
    }

    pub fn archives(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path("out"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }
}

/// The daemon, started as systemd would (waiting for READY=1); killed when dropped.
pub struct Daemon(Child);

impl Daemon {
    pub fn start(setup: &Setup, config: &Path) -> Self {
        let notify_path = setup.path("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let child = Command::new(hindsight_bin())
            .args(["agent", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("HINDSIGHT_LOG", "info")
            .stderr(std::fs::File::create(setup.path("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = notify.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no READY=1 from the daemon ({e}); its log:\n{}",
                setup.agent_log()
            )
        });
        assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
        Self(child)
    }
}

impl Drop for Daemon {
    /// SIGTERM, as systemd stops it, so that it detaches its probes and unmounts a
    /// tracefs it mounted; SIGKILL only if it does not exit within 20 s.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hindsight trigger --wait` over the daemon's socket; the archive it reports.
pub fn trigger_capture(setup: &Setup, reason: &str) -> PathBuf {
    let before = setup.archives();
    trigger_and_wait(&setup.socket(), reason, &[], || setup.agent_log());
    let new: Vec<PathBuf> = setup
        .archives()
        .into_iter()
        .filter(|a| !before.contains(a))
        .collect();
    assert_eq!(new.len(), 1, "one new archive: {new:?}");
    new[0].clone()
}

/// One member of an archive, by the end of its path.
pub fn member(archive: &Path, suffix: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--zstd", "-xOf"])
        .arg(archive)
        .args(["--wildcards", &format!("*/{suffix}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{suffix} in {}: {}",
        archive.display(),
        text(&out.stderr)
    );
    out.stdout
}

pub fn manifest(archive: &Path) -> Value {
    serde_json::from_slice(&member(archive, "MANIFEST.json")).unwrap()
}

/// The manifest entry of the member whose path ends with `suffix`.
pub fn manifest_member<'a>(manifest: &'a Value, suffix: &str) -> &'a Value {
    manifest["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
        .unwrap_or_else(|| panic!("no member ending with {suffix}: {manifest:#}"))
}

fn notes(member: &Value) -> String {
    member["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_default()
}

fn verify(setup: &Setup, archive: &Path) {
    let out = hindsight(&[
        "verify",
        &archive.display().to_string(),
        "--public-key",
        &setup.path("signing.pub").display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id())
    )
}

#[test]
fn daemon_capture_bundles_exec_history_with_the_password_redacted() {
    let Some(_guard) =
        require_root("daemon_capture_bundles_exec_history_with_the_password_redacted")
    else {
        return;
    };
    let setup = Setup::new();
    let config = setup.config("");
    let _daemon = Daemon::start(&setup, &config);

    let marker = format!("hs-history-{}", unique());
    let password = format!("hunter2-{marker}");
    let ran = Command::new("/bin/echo")
        .args([
            marker.as_str(),
            &format!("--password={password}"),
            "--token",
            "tok-SECRET",
        ])
        .output()
        .unwrap();
    assert!(ran.status.success());
    // A log preserved before rotation, also in this capture.
    std::fs::write(setup.path("app.log"), format!("{marker} before rotation\n")).unwrap();
    let out = hindsight(&[
        "preserve",
        "--config",
        &config.display().to_string(),
        &setup.path("app.log").display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::remove_file(setup.path("app.log")).unwrap();

    let archive = trigger_capture(&setup, "history test");
    verify(&setup, &archive);
    let history = text(&member(&archive, "extra/history/exec.jsonl"));
    let line = history
        .lines()
        .find(|l| l.contains(&marker) && l.contains("\"event\":\"exec\""))
        .unwrap_or_else(|| panic!("no exec of {marker} in the history:\n{history}"));
    let exec: Value = serde_json::from_str(line).unwrap();
    assert_eq!(exec["filename"], "/bin/echo", "{line}");
    assert_eq!(
        exec["argv"],
        serde_json::json!([
            "/bin/echo",
            marker,
            "--password=[REDACTED]",
            "--token",
            "[REDACTED]"
        ]),
        "{line}"
    );
    assert_eq!(exec["result"], "ok", "{line}");
    assert_eq!(
        exec["ppid"],
        std::process::id(),
        "the test forked it: {line}"
    );
    assert_eq!(exec["uid"], 0, "{line}");
    assert!(!history.contains("hunter2"), "password leaked:\n{history}");
    assert!(!history.contains("tok-SECRET"), "token leaked:\n{history}");

    // The time range: the exec lies inside it, and it ends before the capture started.
    let summary: Value =
        serde_json::from_slice(&member(&archive, "extra/history/summary.json")).unwrap();
    let (from, to, at) = (
        summary["covers_from"].as_str().unwrap(),
        summary["covers_to"].as_str().unwrap(),
        exec["time"].as_str().unwrap(),
    );
    let ts = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    };
    assert!(
        ts(from) <= ts(at) && ts(at) <= ts(to),
        "{from} <= {at} <= {to}"
    );
    let m = manifest(&archive);
    let created = ts(m["created"].as_str().unwrap());
    assert!(
        ts(to) <= created + time::Duration::seconds(1),
        "history ends at {to}, capture created {created}"
    );
    assert_eq!(summary["kernel"]["execs_lost"], 0, "{summary:#}");
    let note = notes(manifest_member(&m, "extra/history/exec.jsonl"));
    assert!(note.contains("exec history from"), "{note}");
    assert!(note.contains("redactions"), "{note}");

    // The preserved log, rotated away since, with its hash checked.
    let entry = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("preserved/") && p.ends_with("-app.log"))
        })
        .unwrap_or_else(|| panic!("no preserved app.log: {m:#}"));
    let note = notes(entry);
    assert!(note.contains("hash matches"), "{note}");
    assert!(
        std::fs::read_dir(setup.path("staging"))
            .unwrap()
            .next()
            .is_none(),
        "the staged copy is removed once captured"
    );
}

#[test]
fn preserved_log_rotated_away_is_in_the_next_cli_capture_with_its_hash() {
    use sha2::Digest as _;
    let setup = Setup::new();
    let config = setup.config("");
    let log = setup.path("app.log");
    let content = format!("{} the line rotation would lose\n", unique()).repeat(100);
    std::fs::write(&log, &content).unwrap();
    let want = hex::encode(sha2::Sha256::digest(content.as_bytes()));

    let cfg = config.display().to_string();
    let out = hindsight(&["preserve", "--config", &cfg, &log.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&want), "{}", text(&out.stdout));
    // logrotate moves it away, and the old copy is gone by the time anyone looks.
    std::fs::rename(&log, setup.path("app.log.1")).unwrap();
    std::fs::remove_file(setup.path("app.log.1")).unwrap();
    std::fs::write(&log, "new file after rotation\n").unwrap();

    let out = hindsight(&["capture", "--config", &cfg, "--reason", "after rotation"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let archive = PathBuf::from(text(&out.stdout).trim());
    verify(&setup, &archive);
    let m = manifest(&archive);
    let entry = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("preserved/") && p.ends_with("-app.log"))
        })
        .unwrap_or_else(|| panic!("no preserved app.log: {m:#}"));
    assert_eq!(entry["sha256"], want.as_str(), "{entry:#}");
    assert_eq!(entry["source"], log.display().to_string(), "{entry:#}");
    let note = notes(entry);
    assert!(
        note.contains(&format!("sha256 recorded at preservation {want}")),
        "{note}"
    );
    assert!(note.contains("hash matches"), "{note}");
    let path = entry["path"].as_str().unwrap();
    let name = path.strip_prefix("preserved/").unwrap();
    assert_eq!(
        text(&member(&archive, &format!("preserved/{name}"))),
        content
    );
    assert!(
        std::fs::read_dir(setup.path("staging"))
            .unwrap()
            .next()
            .is_none(),
        "the staged copy is removed once captured"
    );
    // Without the daemon there is no exec history, and the archive says so.
    let note = notes(manifest_member(&m, "extra/history/UNAVAILABLE.txt"));
    assert!(note.contains("without the daemon"), "{note}");

    // The next capture has nothing staged left.
    let out = hindsight(&["capture", "--config", &cfg, "--reason", "again"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = manifest(&PathBuf::from(text(&out.stdout).trim()));
    assert!(!m.to_string().contains("\"preserved/"), "{m:#}");
}

#[test]
fn preserve_refuses_a_missing_file_and_says_which() {
    let setup = Setup::new();
    let config = setup.config("");
    let missing = setup.path("nope.log").display().to_string();
    let out = hindsight(&[
        "preserve",
        "--config",
        &config.display().to_string(),
        &missing,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&missing) && err.contains("not preserved"),
        "{err}"
    );
}
