//! Evidence capture, end to end: the real `hindsight` binary on a fixture tree (configs
//! with planted secrets, rotated and gzip'd logs, a FIFO, a symlink loop, an unreadable
//! file) and a fixture process listening on TCP; the result checked with stock tools
//! (minisign, tar --zstd, sha256sum) and `hindsight verify`; tampering, kill -9, a full
//! disk and a log rotated while it is captured. Needs root (mount, other processes' fds).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::hindsight_bin;

/// Secrets planted in the fixture; none may appear in any member.
const SECRETS: &[&str] = &[
    "PLANTED-ini-pw-7f3a",
    "PLANTED-yaml-apikey-19c2",
    "PLANTED-json-token-55d0",
    "PLANTED-env-aws-0b7e",
    "PLANTED-url-pw-c4f1",
    "PLANTEDPEMBODYa8e2",
    "AKIAPLANTED000000042",
    "PLANTED-environ-token-3d9b",
    "PLANTED-excluded-key-e001",
];

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Builds the fixture tree and a signing key.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        for d in ["etc/app/conf.d", "log/app", "out"] {
            std::fs::create_dir_all(f.path(d)).unwrap();
        }
        let w = |rel: &str, text: &str| std::fs::write(f.path(rel), text).unwrap();
        w(
            "etc/app/app.ini",
            "[db]\nhost = db.internal\npassword = PLANTED-ini-pw-7f3a\nport = 5432\n",
        );
        w(
            "etc/app/conf.d/api.yaml",
            "service: payments\napi_key: PLANTED-yaml-apikey-19c2\nretries: 3\n",
        );
        w(
            "etc/app/conf.d/auth.json",
            "{\n  \"issuer\": \"me\",\n  \"token\": \"PLANTED-json-token-55d0\"\n}\n",
        );
        w(
            "etc/app/conf.d/env.conf",
            "export AWS_SECRET_ACCESS_KEY=PLANTED-env-aws-0b7e\nDB_URL=postgres://app:PLANTED-url-pw-c4f1@db/pay\nkey_id AKIAPLANTED000000042\n",
        );
        w(
            "etc/app/conf.d/tls.conf",
            "cert = /x.pem\n-----BEGIN PRIVATE KEY-----\nPLANTEDPEMBODYa8e2\n-----END PRIVATE KEY-----\n",
        );
        w("etc/app/conf.d/server.key", "PLANTED-excluded-key-e001\n");
        // A FIFO, a symlink loop and an unreadable file (a write-only sysctl: even root
        // cannot read it).
        nix::unistd::mkfifo(
            &f.path("etc/app/conf.d/pipe.conf"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::os::unix::fs::symlink("loop-b.conf", f.path("etc/app/conf.d/loop-a.conf")).unwrap();
        std::os::unix::fs::symlink("loop-a.conf", f.path("etc/app/conf.d/loop-b.conf")).unwrap();
        std::os::unix::fs::symlink(
            "/proc/sys/vm/compact_memory",
            f.path("etc/app/conf.d/unreadable.conf"),
        )
        .unwrap();
        // A log with plain, gzip'd and dated rotations.
        w("log/app/app.log", "current line 1\ncurrent line 2\n");
        w("log/app/app.log.1", "rotated once\n");
        w("log/app/app.log-20261201", "dated rotation\n");
        w("log/app/app.log.3", "older plain\n");
        run_ok(Command::new("sh").arg("-c").arg(format!(
            "printf 'gzipped rotation\\n' > {0}/app.log.2 && gzip -n {0}/app.log.2",
            f.path("log/app").display()
        )));
        let out = run_ok(
            Command::new(hindsight_bin())
                .args(["keygen", "--secret-key"])
                .arg(f.path("signing.key"))
                .arg("--public-key")
                .arg(f.path("signing.pub")),
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("public key"));
        f
    }

    fn write_config(&self, extra: &str) -> PathBuf {
        let root = self.dir.path().display();
        let cfg = format!(
            "[capture]\noutput_dir = \"{root}/out\"\nsigning_key = \"{root}/signing.key\"\nconfigs = [\"{root}/etc/app/**/*\"]\nlogs = [\"{root}/log/app/*.log\"]\n{extra}"
        );
        let path = self.path("hindsight.toml");
        std::fs::write(&path, cfg).unwrap();
        path
    }

    fn capture(&self, config: &Path, extra_args: &[&str]) -> Output {
        Command::new(hindsight_bin())
            .args([
                "capture",
                "--reason",
                "INC-2291 payment timeouts",
                "--config",
            ])
            .arg(config)
            .args(extra_args)
            .output()
            .unwrap()
    }

    fn archives(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path("out"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
            .collect();
        v.sort();
        v
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Extracts `archive` into a new directory with stock tar; returns (tempdir, top dir).
fn extract(archive: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(dir.path()),
    );
    let name = archive.file_name().unwrap().to_string_lossy();
    let top = dir.path().join(name.trim_end_matches(".tar.zst"));
    assert!(top.is_dir(), "no top directory {}", top.display());
    (dir, top)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn manifest(top: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(top.join("MANIFEST.json")).unwrap()).unwrap()
}

/// A process with a known command line and environment, listening on a TCP port it
/// picks; returns it and the port.
fn spawn_listener() -> (Child, u16) {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\ntime.sleep(600)",
            "hindsight-fixture-listener",
        ])
        .env("FIXTURE_API_TOKEN", "PLANTED-environ-token-3d9b")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().parse().expect("port"))
}

#[test]
fn capture_fixture_tree_and_check_with_stock_tools() {
    let f = Fixture::new();
    let (mut listener, port) = spawn_listener();
    let cfg = f.write_config("");
    let out = f.capture(&cfg, &[]);
    listener.kill().unwrap();
    listener.wait().unwrap();
    assert!(out.status.success(), "capture failed: {}", stderr(&out));
    let archive = PathBuf::from(stdout(&out).trim());
    assert_eq!(f.archives(), vec![archive.clone()]);
    let name = archive.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.ends_with(".tar.zst") && name.contains('T') && name.contains("Z-"),
        "{name}"
    );

    // Stock minisign accepts the signature; the trusted comment carries id and host.
    let sig = format!("{}.minisig", archive.display());
    let v = run_ok(
        Command::new("minisign")
            .arg("-Vm")
            .arg(&archive)
            .arg("-x")
            .arg(&sig)
            .arg("-p")
            .arg(f.path("signing.pub")),
    );
    assert!(stdout(&v).contains("manifest-sha256:"), "{}", stdout(&v));

    let (_tmp, top) = extract(&archive);
    sha256sum_check(&top);
    let m = manifest(&top);
    assert_eq!(m["trigger"]["why"], "INC-2291 payment timeouts");
    assert!(stdout(&v).contains(m["id"].as_str().unwrap()));

    // The fixture process, with its command line, and its socket mapped to its pid.
    let procs: Value =
        serde_json::from_slice(&std::fs::read(top.join("processes/processes.json")).unwrap())
            .unwrap();
    let me = procs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == listener.id())
        .expect("fixture process captured");
    assert!(
        me["cmdline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "hindsight-fixture-listener")
    );
    let tree = std::fs::read_to_string(top.join("processes/ps-tree.txt")).unwrap();
    assert!(tree.contains("hindsight-fixture-listener"));
    let sockets: Value =
        serde_json::from_slice(&std::fs::read(top.join("sockets/sockets.json")).unwrap()).unwrap();
    let local = format!("127.0.0.1:{port}");
    let sock = sockets
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["local"] == local.as_str() && s["state"] == "LISTEN")
        .unwrap_or_else(|| panic!("no LISTEN socket on {local}"));
    assert!(
        sock["owners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["pid"] == listener.id()),
        "{sock}"
    );
    let ss = std::fs::read_to_string(top.join("sockets/ss.txt")).unwrap();
    assert!(ss.contains(&format!("pid={}", listener.id())));

    // Every rotated log; the gzip'd one stored as it is.
    let logdir = f.path("log/app");
    let rel = |p: &Path| top.join("logs").join(p.strip_prefix("/").unwrap());
    for n in [
        "app.log",
        "app.log.1",
        "app.log.2.gz",
        "app.log.3",
        "app.log-20261201",
    ] {
        let orig = std::fs::read(logdir.join(n)).unwrap();
        assert_eq!(std::fs::read(rel(&logdir.join(n))).unwrap(), orig, "{n}");
    }
    // Configs, redacted; the manifest counts the redactions.
    let ini = std::fs::read_to_string(
        rel(&f.path("etc/app/app.ini"))
            .to_string_lossy()
            .replace("/logs/", "/configs/"),
    )
    .unwrap();
    assert!(
        ini.contains("host = db.internal") && ini.contains("password = [REDACTED]"),
        "{ini}"
    );
    let members = m["members"].as_array().unwrap();
    let ini_member = members
        .iter()
        .find(|x| x["path"].as_str().unwrap().ends_with("etc/app/app.ini"))
        .unwrap();
    assert_eq!(ini_member["redactions"], 1);

    // No planted secret in any member.
    let mut files = Vec::new();
    walk(&top, &mut files);
    assert!(files.len() > 20);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for s in SECRETS {
            assert!(!text.contains(s), "secret {s} in {}", file.display());
        }
    }

    // Skipped items with reasons.
    let skipped = m["skipped"].as_array().unwrap();
    let reason = |suffix: &str| -> String {
        skipped
            .iter()
            .find(|s| s["source"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} not in skipped: {skipped:#?}"))["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(reason("pipe.conf").contains("FIFO"));
    assert!(reason("loop-a.conf").contains("symlink loop"));
    assert!(reason("unreadable.conf").contains("unreadable"));
    assert!(reason("server.key").contains("exclusion rule"));

    // hindsight verify agrees.
    let v = run_ok(
        Command::new(hindsight_bin())
            .arg("verify")
            .arg(&archive)
            .arg("--public-key")
            .arg(f.path("signing.pub")),
    );
    assert!(stdout(&v).contains("OK:"), "{}", stdout(&v));
}

#[test]
fn json_output_and_unsigned_needs_flag() {
    let f = Fixture::new();
    let cfg = f.write_config("");
    std::fs::remove_file(f.path("signing.key")).unwrap();
    let out = f.capture(&cfg, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no signing key") && err.contains("--unsigned"),
        "{err}"
    );
    assert!(f.archives().is_empty());

    let out = f.capture(&cfg, &["--unsigned", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let archive = PathBuf::from(v["archive"].as_str().unwrap());
    assert!(archive.exists());
    assert!(v["signature"].is_null());
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    assert!(!Path::new(&format!("{}.minisig", archive.display())).exists());
    run_ok(
        Command::new(hindsight_bin())
            .arg("verify")
            .arg(&archive)
            .arg("--no-signature"),
    );
}

#[test]
fn bad_config_names_the_key() {
    let f = Fixture::new();
    let cfg = f.write_config("max_file_bytez = 10\n");
    let out = f.capture(&cfg, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("max_file_bytez"), "{}", stderr(&out));
    let cfg = f.write_config("zstd_level = 99\n");
    let out = f.capture(&cfg, &[]);
    assert!(
        stderr(&out).contains("capture.zstd_level"),
        "{}",
        stderr(&out)
    );
    assert!(f.archives().is_empty());
}

/// Repacks an extracted top directory into `archive` with stock tar.
fn repack(top: &Path, archive: &Path) {
    let parent = top.parent().unwrap();
    run_ok(
        Command::new("tar")
            .arg("--zstd")
            .arg("-cf")
            .arg(archive)
            .arg("-C")
            .arg(parent)
            .arg(top.file_name().unwrap()),
    );
}

fn verify(f: &Fixture, archive: &Path, sig: &Path) -> Output {
    Command::new(hindsight_bin())
        .arg("verify")
        .arg(archive)
        .arg("--public-key")
        .arg(f.path("signing.pub"))
        .arg("--signature")
        .arg(sig)
        .output()
        .unwrap()
}

#[test]
fn tampering_is_detected_and_named() {
    let f = Fixture::new();
    let cfg = f.write_config("journal_seconds = 0\n");
    let out = f.capture(&cfg, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let archive = PathBuf::from(stdout(&out).trim());
    let sig = PathBuf::from(format!("{}.minisig", archive.display()));
    assert!(verify(&f, &archive, &sig).status.success());

    // A byte flipped in one member.
    let (tmp, top) = extract(&archive);
    let member = top
        .join("logs")
        .join(f.path("log/app/app.log.1").strip_prefix("/").unwrap());
    let mut bytes = std::fs::read(&member).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&member, bytes).unwrap();
    let bad = tmp.path().join("member.tar.zst");
    repack(&top, &bad);
    let out = verify(&f, &bad, &sig);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("altered: logs/") && text.contains("app.log.1"),
        "{text}"
    );
    assert!(text.contains("FAIL signature"), "{text}");

    // A byte changed in the manifest (the recorded reason).
    let (tmp, top) = extract(&archive);
    let mpath = top.join("MANIFEST.json");
    let text = std::fs::read_to_string(&mpath)
        .unwrap()
        .replace("INC-2291", "INC-2292");
    std::fs::write(&mpath, text).unwrap();
    let bad = tmp.path().join("manifest.tar.zst");
    repack(&top, &bad);
    let out = verify(&f, &bad, &sig);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("altered: MANIFEST.json"),
        "{}",
        stdout(&out)
    );

    // A member added.
    let (tmp, top) = extract(&archive);
    std::fs::write(top.join("planted.txt"), "not from the capture").unwrap();
    let bad = tmp.path().join("extra.tar.zst");
    repack(&top, &bad);
    let out = verify(&f, &bad, &sig);
    assert!(
        stdout(&out).contains("extra: planted.txt"),
        "{}",
        stdout(&out)
    );

    // A member removed.
    let (tmp, top) = extract(&archive);
    std::fs::remove_file(top.join("system/loadavg")).unwrap();
    let bad = tmp.path().join("missing.tar.zst");
    repack(&top, &bad);
    let out = verify(&f, &bad, &sig);
    assert!(
        stdout(&out).contains("missing: system/loadavg"),
        "{}",
        stdout(&out)
    );

    // A byte flipped in the signature.
    let text = std::fs::read_to_string(&sig).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut chars: Vec<char> = lines[1].chars().collect();
    chars[20] = if chars[20] == 'A' { 'B' } else { 'A' };
    lines[1] = chars.into_iter().collect();
    let bad_sig = f.path("bad.minisig");
    std::fs::write(&bad_sig, lines.join("\n") + "\n").unwrap();
    let out = verify(&f, &archive, &bad_sig);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("FAIL signature") && text.contains("bad.minisig"),
        "{text}"
    );
}

/// Makes a file of `mib` MiB of incompressible data.
fn random_file(path: &Path, mib: usize) {
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "head -c {}M /dev/urandom > {}",
        mib,
        path.display()
    )));
}

#[test]
fn kill_9_leaves_no_final_archive_and_next_run_cleans_up() {
    let f = Fixture::new();
    random_file(&f.path("log/app/big.log"), 512);
    let cfg = f.write_config("journal_seconds = 0\nmax_file_bytes = 1073741824\n");
    let mut child = Command::new(hindsight_bin())
        .args(["capture", "--reason", "kill test", "--unsigned", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the archive is being written, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(30);
    let partial = loop {
        let found = std::fs::read_dir(f.path("out"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".partial"));
        if let Some(p) = found
            && std::fs::metadata(&p).map_or(0, |m| m.len()) > 1 << 20
        {
            break p;
        }
        assert!(Instant::now() < deadline, "capture never started writing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "capture finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert!(
        f.archives().is_empty(),
        "a final-named archive after kill -9: {:?}",
        f.archives()
    );
    assert!(partial.exists());

    // The next run removes the leftover.
    std::fs::remove_file(f.path("log/app/big.log")).unwrap();
    let out = f.capture(&cfg, &["--unsigned"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!partial.exists(), "leftover not cleaned");
    assert_eq!(f.archives().len(), 1);
}

/// A size-limited tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_is_a_clear_error_and_leaves_nothing() {
    let f = Fixture::new();
    random_file(&f.path("log/app/big.log"), 16);
    let mnt = f.path("small");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&mnt),
    );
    let _guard = Tmpfs(mnt.clone());
    let cfg = f.write_config("journal_seconds = 0\n");
    let out = f.capture(&cfg, &["--output-dir", mnt.to_str().unwrap()]);
    assert!(!out.status.success(), "capture into a full disk succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("no space left") && err.contains("No space left on device"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".hindsight-capture.lock"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn log_appended_and_rotated_while_captured() {
    let f = Fixture::new();
    let log = f.path("log/app/busy.log");
    // A large start so the capture is still reading while the writer goes on.
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        for i in 0..1_500_000u64 {
            writeln!(w, "seq {i} lorem ipsum dolor sit amet").unwrap();
        }
    }
    // Appends a numbered line every few microseconds and rotates every 20000 lines
    // (busy.log -> busy.log.<line number>), until killed.
    let mut writer = Command::new("python3")
        .args([
            "-c",
            r#"
import os, sys
p = sys.argv[1]
i = 1_500_000
f = open(p, "a", buffering=1)
while True:
    f.write(f"seq {i} lorem ipsum dolor sit amet\n")
    i += 1
    if i % 20000 == 0:
        f.close()
        os.replace(p, f"{p}.{i}")
        f = open(p, "a", buffering=1)
"#,
        ])
        .arg(&log)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let cfg = f.write_config("journal_seconds = 0\n");
    let out = f.capture(&cfg, &[]);
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let archive = PathBuf::from(stdout(&out).trim());
    run_ok(
        Command::new(hindsight_bin())
            .arg("verify")
            .arg(&archive)
            .arg("--public-key")
            .arg(f.path("signing.pub")),
    );
    let (_tmp, top) = extract(&archive);
    sha256sum_check(&top);
    let m = manifest(&top);
    let busy: Vec<&Value> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["path"].as_str().unwrap().contains("busy.log"))
        .collect();
    assert!(!busy.is_empty(), "no busy.log member");
    let mut lines_total = 0;
    for member in busy {
        // Each member is a consistent prefix of what it was: consecutive lines, the last
        // one possibly cut where the file ended at that instant (a write that straddles a
        // page boundary grows the size in two steps), but never garbled.
        let text = std::fs::read_to_string(top.join(member["path"].as_str().unwrap())).unwrap();
        let (whole, partial) = match text.rfind('\n') {
            Some(end) => text.split_at(end + 1),
            None => ("", text.as_str()),
        };
        let mut prev: Option<u64> = None;
        for line in whole.lines() {
            let n: u64 = line
                .strip_prefix("seq ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("garbled line {line:?} in {}", member["path"]));
            if let Some(p) = prev {
                assert_eq!(n, p + 1, "gap or reorder in {}", member["path"]);
            }
            prev = Some(n);
            lines_total += 1;
        }
        if let (false, Some(p)) = (partial.is_empty(), prev) {
            let next = format!("seq {} lorem ipsum dolor sit amet", p + 1);
            assert!(
                next.starts_with(partial),
                "{}: cut line {partial:?} is not the start of {next:?}",
                member["path"]
            );
        }
    }
    assert!(
        lines_total >= 1_500_000,
        "captured only {lines_total} lines"
    );
}

/// Stock `sha256sum -c TOP/SHA256SUMS`, run where the archive was extracted, as a
/// responder would right after `tar -xf`.
fn sha256sum_check(top: &Path) {
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "--quiet"])
            .arg(Path::new(top.file_name().unwrap()).join("SHA256SUMS"))
            .current_dir(top.parent().unwrap()),
    );
}
