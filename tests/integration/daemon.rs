//! The agent daemon, end to end: the real `hindsight agent` process with certificates
//! made at test time (rcgen), driven by `hindsight trigger` and by curl over the unix
//! socket and mutual TLS on 127.0.0.1 (ephemeral ports). Roles, the audit log and the
//! manifest's chain of custody; queue and rate limits under 20 concurrent triggers; bad
//! input; SIGTERM and SIGKILL mid-capture; the unit's user and capabilities (setpriv);
//! the unit file itself (systemd-analyze).

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::Value;

use crate::support::{hindsight, hindsight_bin, keygen, require_root, text};

/// Certificates for one test: a CA, the daemon's server certificate, and clients.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// CA, server (127.0.0.1/localhost), and clients alice (trigger+read), reader
    /// (read), mallory (no role).
    fn new(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "hindsight test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, server: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p = if server {
                CertificateParams::new(vec!["localhost".to_owned()]).unwrap()
            } else {
                CertificateParams::new(Vec::<String>::new()).unwrap()
            };
            if server {
                p.subject_alt_names
                    .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            }
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        leaf("server", true);
        for client in ["alice", "reader", "mallory"] {
            leaf(client, false);
        }
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `hindsight trigger` TLS flags for `client`.
    fn client_args(&self, client: &str) -> Vec<String> {
        vec![
            "--ca".into(),
            self.path("ca.pem"),
            "--cert".into(),
            self.path(&format!("{client}.pem")),
            "--key".into(),
            self.path(&format!("{client}.key")),
        ]
    }
}

/// A test directory with a signing key and a small capture config.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let s = Self { dir };
        std::fs::create_dir_all(s.path("etc")).unwrap();
        std::fs::write(s.path("etc/app.conf"), "port = 8080\npassword = hunter2\n").unwrap();
        std::fs::write(s.path("app.log"), "started\n").unwrap();
        keygen(s.dir.path());
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes hindsight.toml: a small capture, paths in the test directory, plus `extra`.
    fn config(&self, extra: &str) -> PathBuf {
        let d = self.dir.path().display();
        let text = format!(
            r#"
[capture]
output_dir = "{d}/out"
signing_key = "{d}/signing.key"
configs = ["{d}/etc/*.conf"]
logs = ["{d}/*.log"]
journal_seconds = 0
max_map_lines = 20
{extra}
[api]
socket = "{d}/run/hindsight.sock"
audit_log = "{d}/log/audit.jsonl"
"#
        );
        // [api] keys given in `extra` under their own heading are merged by the caller.
        let path = self.path("hindsight.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn socket(&self) -> String {
        self.path("run/hindsight.sock").display().to_string()
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.path("log/audit.jsonl")).unwrap_or_default()
    }

    fn archives(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path("out"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The daemon under test, started with NOTIFY_SOCKET pointing at us so that we wait for
/// its READY=1 exactly as systemd does; killed when dropped.
struct Daemon {
    child: Child,
    /// The STATUS= line of the readiness message (names the listen address).
    status: String,
}

impl Daemon {
    fn start(config: &Path, wrapper: &[&str]) -> Self {
        let dir = config.parent().unwrap();
        let notify_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut cmd = if wrapper.is_empty() {
            Command::new(hindsight_bin())
        } else {
            let mut c = Command::new(wrapper[0]);
            c.args(&wrapper[1..]).arg(hindsight_bin());
            c
        };
        let child = cmd
            .args(["agent", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("HINDSIGHT_LOG", "info")
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        // Make the notify socket writable for a daemon running as another user.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut buf = [0u8; 4096];
        let n = notify.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no READY=1 from the daemon ({e}); its log:\n{}",
                std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
            )
        });
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(msg.contains("READY=1"), "{msg}");
        let status = msg
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap_or("")
            .to_owned();
        Self { child, status }
    }

    /// `https://127.0.0.1:PORT` from the readiness status.
    fn url(&self) -> String {
        let start = self.status.find("https://").expect("a TLS listener");
        self.status[start..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl over the unix socket: (status, body).
fn curl_unix(socket: &str, args: &[&str], path: &str) -> (u16, String) {
    curl(
        &[&["--unix-socket", socket][..], args].concat(),
        &format!("http://localhost{path}"),
    )
}

fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("running curl (apt-get install curl)");
    let stdout = text(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn trigger(args: &[String]) -> Output {
    Command::new(hindsight_bin())
        .arg("trigger")
        .args(args)
        .output()
        .unwrap()
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn verify(archive: &Path, public_key: &Path) {
    let out = hindsight(&[
        "verify",
        &archive.display().to_string(),
        "--public-key",
        &public_key.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "verify {}: {}{}",
        archive.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn manifest(archive: &Path) -> Value {
    let out = Command::new("tar")
        .args(["--zstd", "-xOf"])
        .arg(archive)
        .args(["--wildcards", "*/MANIFEST.json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls a job over the socket until it is done or failed.
fn wait_job(socket: &str, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, body) = curl_unix(socket, &[], path);
        assert_eq!(code, 200, "{body}");
        let job = json(&body);
        if matches!(job["status"].as_str(), Some("done" | "failed")) {
            return job;
        }
        assert!(Instant::now() < deadline, "{path} not done: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mtls_roles_download_verify_and_audit() {
    let Some(_guard) = require_root("mtls_roles_download_verify_and_audit") else {
        return;
    };
    let s = Setup::new();
    let pki = Pki::new(s.dir.path());
    let config = s.config("");
    let mut text_cfg = std::fs::read_to_string(&config).unwrap();
    text_cfg.push_str(&format!(
        r#"listen = "127.0.0.1:0"
ca = "{}"
cert = "{}"
key = "{}"
rate_burst = 2
rate_per_minute = 1
[api.roles]
alice = ["trigger", "read"]
reader = ["read"]
"#,
        pki.path("ca.pem"),
        pki.path("server.pem"),
        pki.path("server.key")
    ));
    std::fs::write(&config, text_cfg).unwrap();
    let daemon = Daemon::start(&config, &[]);
    let url = daemon.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // The authorized client triggers, waits, downloads; the archive verifies.
    let evidence = s.path("evidence");
    let mut args = vec!["--agent".to_owned(), url.clone()];
    args.extend(pki.client_args("alice"));
    args.extend(
        ["--reason", "INC-2291 test", "--download"]
            .map(String::from)
            .into_iter()
            .chain([evidence.display().to_string()]),
    );
    let out = trigger(&args);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    assert!(table.contains("HOST") && table.contains("done"), "{table}");
    let archive = std::fs::read_dir(&evidence)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .expect("downloaded archive");
    assert!(PathBuf::from(format!("{}.minisig", archive.display())).exists());
    verify(&archive, &s.path("signing.pub"));
    // Chain of custody in the manifest.
    let m = manifest(&archive);
    let t = &m["trigger"];
    assert_eq!(t["who"], "alice", "{t}");
    assert_eq!(t["how"], "api");
    assert_eq!(t["why"], "INC-2291 test");
    assert!(
        t["details"]["from"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{t}"
    );
    assert!(
        t["details"]["audit"]
            .as_str()
            .unwrap()
            .contains("\"identity\":\"alice\""),
        "{t}"
    );

    // Unknown identity: 403. Read-only: cannot trigger.
    for (client, want) in [("mallory", "403"), ("reader", "lacks the `trigger` role")] {
        let mut args = vec!["--agent".to_owned(), url.clone()];
        args.extend(pki.client_args(client));
        args.extend(["--reason".to_owned(), "nope".to_owned()]);
        let out = trigger(&args);
        assert!(!out.status.success());
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(all.contains(want), "{client}: {all}");
    }
    // The reader can read.
    let tls = |client: &str| {
        vec![
            "--cacert".to_owned(),
            pki.path("ca.pem"),
            "--cert".to_owned(),
            pki.path(&format!("{client}.pem")),
            "--key".to_owned(),
            pki.path(&format!("{client}.key")),
        ]
    };
    let reader = tls("reader");
    let reader: Vec<&str> = reader.iter().map(String::as_str).collect();
    let (code, body) = curl(&reader, &format!("{url}/v1/captures"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["items"].as_array().unwrap().len(), 1);
    let (code, body) = curl(&reader, &format!("{url}/metrics"));
    assert_eq!(code, 200);
    assert!(
        body.contains("hindsight_captures_total{result=\"done\"} 1"),
        "{body}"
    );
    // No client certificate: the handshake fails, no HTTP answer at all.
    let ca = pki.path("ca.pem");
    let (code, body) = curl(&["--cacert", &ca], &format!("{url}/v1/health"));
    assert_eq!(code, 0, "answered without a client certificate: {body}");

    // Rate limit: alice's bucket holds 2; she used 1.
    let alice = tls("alice");
    let mut alice: Vec<&str> = alice.iter().map(String::as_str).collect();
    alice.extend(["-X", "POST", "-d", r#"{"reason":"again"}"#, "-D", "-"]);
    let (code, _) = curl(&alice, &format!("{url}/v1/captures"));
    assert_eq!(code, 202);
    let (code, body) = curl(&alice, &format!("{url}/v1/captures"));
    assert_eq!(code, 429, "{body}");
    assert!(body.to_lowercase().contains("retry-after:"), "{body}");
    assert!(body.contains("rate limit"), "{body}");

    // The audit log names every identity and result.
    let audit = s.audit();
    let records: Vec<Value> = audit.lines().map(json).collect();
    let has = |who: &str, action: &str, status: u64| {
        records.iter().any(|r| {
            r["identity"].as_str().unwrap().starts_with(who)
                && r["action"] == action
                && r["status"] == status
        })
    };
    assert!(has("alice", "POST /v1/captures", 202), "{audit}");
    assert!(has("alice", "POST /v1/captures", 429), "{audit}");
    assert!(has("unknown:mallory", "POST /v1/captures", 403), "{audit}");
    assert!(has("reader", "POST /v1/captures", 403), "{audit}");
    assert!(has("reader", "GET /v1/captures", 200), "{audit}");
    drop(daemon);
}

#[test]
fn concurrent_triggers_queue_then_429_and_all_accepted_verify() {
    let Some(_guard) = require_root("concurrent_triggers_queue_then_429_and_all_accepted_verify")
    else {
        return;
    };
    let s = Setup::new();
    let config = s.config("");
    let mut cfg = std::fs::read_to_string(&config).unwrap();
    cfg.push_str("rate_burst = 100\n[daemon]\nqueue_size = 2\n");
    std::fs::write(&config, cfg).unwrap();
    let daemon = Daemon::start(&config, &[]);
    let socket = s.socket();
    let results: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let socket = &socket;
                scope.spawn(move || {
                    let body = format!(r#"{{"reason":"burst {i}"}}"#);
                    curl_unix(
                        socket,
                        &["-X", "POST", "-d", &body, "-D", "-"],
                        "/v1/captures",
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: Vec<String> = results
        .iter()
        .filter(|(code, _)| *code == 202)
        .map(|(_, body)| {
            let json_part = &body[body.find('{').unwrap()..];
            json(json_part)["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let refused: Vec<&String> = results
        .iter()
        .filter(|(code, _)| *code == 429)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(accepted.len() + refused.len(), 20, "{results:?}");
    assert!(
        accepted.len() >= 3,
        "one running + a queue of 2: {results:?}"
    );
    assert!(!refused.is_empty(), "{results:?}");
    for body in &refused {
        assert!(body.to_lowercase().contains("retry-after:"), "{body}");
        assert!(body.contains("capture queue is full"), "{body}");
    }
    for id in &accepted {
        let job = wait_job(&socket, &format!("/v1/captures/{id}"));
        assert_eq!(job["status"], "done", "{job}");
    }
    let archives: Vec<PathBuf> = s
        .archives()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    assert_eq!(archives.len(), accepted.len());
    for a in &archives {
        verify(a, &s.path("signing.pub"));
    }
    let (code, body) = curl_unix(&socket, &[], "/v1/health");
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = curl_unix(&socket, &[], "/metrics");
    assert!(
        metrics.contains(&format!(
            "hindsight_rejected_total{{reason=\"queue_full\"}} {}",
            refused.len()
        )),
        "{metrics}"
    );
    drop(daemon);
}

#[test]
fn bad_input_gets_4xx_with_a_clear_message() {
    let Some(_guard) = require_root("bad_input_gets_4xx_with_a_clear_message") else {
        return;
    };
    let s = Setup::new();
    let config = s.config("");
    let mut cfg = std::fs::read_to_string(&config).unwrap();
    cfg.push_str("max_body_bytes = 1024\nrate_burst = 100\n");
    std::fs::write(&config, cfg).unwrap();
    let daemon = Daemon::start(&config, &[]);
    let socket = s.socket();
    let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(5000));
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "POST",
            "/v1/captures",
            r#"{"reason": "#,
            400,
            "invalid request body",
        ),
        ("POST", "/v1/captures", "", 400, "empty request body"),
        ("POST", "/v1/captures", &big, 413, "larger than 1024 bytes"),
        (
            "POST",
            "/v1/captures",
            r#"{"reason":"x","color":1}"#,
            400,
            "unknown field `color`",
        ),
        (
            "POST",
            "/v1/captures",
            r#"{"reason":"  "}"#,
            400,
            "`reason`",
        ),
        (
            "POST",
            "/v1/captures",
            r#"{"reason":5}"#,
            400,
            "invalid type",
        ),
        (
            "POST",
            "/v1/profiles",
            r#"{"duration":-1}"#,
            400,
            "`duration`",
        ),
        (
            "POST",
            "/v1/profiles",
            r#"{"duration":"ten"}"#,
            400,
            "invalid type",
        ),
        (
            "POST",
            "/v1/profiles",
            r#"{"duration":1e9}"#,
            400,
            "`duration`",
        ),
        (
            "POST",
            "/v1/profiles",
            r#"{"modes":["gpu"]}"#,
            400,
            "supports: cpu",
        ),
        (
            "POST",
            "/v1/profiles",
            r#"{"pids":[4000000000]}"#,
            400,
            "no process",
        ),
        (
            "POST",
            "/v1/captures",
            r#"{"reason":"x","profile":{"duration":0}}"#,
            400,
            "profile: `duration`",
        ),
        ("GET", "/v1/captures/nope", "", 404, "no capture with id"),
        ("GET", "/v2/captures", "", 404, "no such route"),
        ("DELETE", "/v1/captures", "", 405, "not allowed"),
    ];
    for (method, path, body, want, message) in cases {
        let mut args = vec!["-X", method];
        if !body.is_empty() || *method == "POST" {
            args.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ]);
        }
        let (code, answer) = curl_unix(&socket, &args, path);
        assert_eq!(code, *want, "{method} {path} {body:.60}: {answer}");
        let error = json(&answer)["error"].as_str().unwrap().to_owned();
        assert!(error.contains(message), "{method} {path}: {error}");
    }
    // A body that never arrives does not hold a worker: the request times out.
    let (code, body) = curl_unix(&socket, &[], "/v1/health");
    assert_eq!(code, 200, "{body}");
    assert!(
        s.archives()
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".tar.zst"))
    );
    drop(daemon);
}

/// A capture slow enough to be interrupted: a 24 MiB log compressed at zstd level 19.
fn slow_capture_setup() -> (Setup, PathBuf) {
    let s = Setup::new();
    let mut f = std::io::BufWriter::new(std::fs::File::create(s.path("big.log")).unwrap());
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..400_000u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        writeln!(
            f,
            "{i:08} request id={x:016x} took {} ms status=200 path=/api/v1/items/{}",
            x % 997,
            x % 65536
        )
        .unwrap();
    }
    drop(f);
    let config = s.config("zstd_level = 19");
    (s, config)
}

fn start_capture_and_wait_running(socket: &str) -> String {
    let (code, body) = curl_unix(
        socket,
        &["-X", "POST", "-d", r#"{"reason":"interrupted"}"#],
        "/v1/captures",
    );
    assert_eq!(code, 202, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = curl_unix(socket, &[], &format!("/v1/captures/{id}"));
        if json(&body)["progress"]
            .as_str()
            .is_some_and(|p| p.starts_with("logs"))
        {
            return id;
        }
        assert!(Instant::now() < deadline, "never reached the logs: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_sigkill_mid_capture_leave_no_partial_archive() {
    let Some(_guard) = require_root("sigterm_and_sigkill_mid_capture_leave_no_partial_archive")
    else {
        return;
    };
    let (s, config) = slow_capture_setup();
    let socket = s.socket();

    // SIGTERM: the running capture completes, then the daemon exits 0.
    let mut daemon = Daemon::start(&config, &[]);
    start_capture_and_wait_running(&socket);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "{status}");
    let files = s.archives();
    assert!(
        !files
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".partial")),
        "{files:?}"
    );
    let archives: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    assert_eq!(archives.len(), 1, "{files:?}");
    verify(archives[0], &s.path("signing.pub"));
    assert!(!Path::new(&socket).exists(), "socket left behind");

    // SIGKILL: only a .partial is left, never a final name; a restart removes it.
    let daemon = Daemon::start(&config, &[]);
    start_capture_and_wait_running(&socket);
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    let mut daemon = daemon;
    daemon.wait_exit(Duration::from_secs(10));
    let files = s.archives();
    let finals = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .count();
    assert_eq!(
        finals, 1,
        "a killed capture must not leave a final name: {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".partial")),
        "{files:?}"
    );
    drop(daemon);
    let daemon = Daemon::start(&config, &[]);
    let files = s.archives();
    assert!(
        !files
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".partial")),
        "restart did not clean: {files:?}"
    );
    drop(daemon);
}

/// The capabilities the unit grants (systemd/hindsight.service).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/hindsight.service"
    ))
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities in the unit");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

#[test]
fn works_as_the_units_user_with_only_the_units_capabilities() {
    let Some(_guard) = require_root("works_as_the_units_user_with_only_the_units_capabilities")
    else {
        return;
    };
    // A dedicated unprivileged user, as the package creates.
    let user = "hindsight-test";
    if nix::unistd::User::from_name(user).unwrap().is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {}", text(&out.stderr));
    }
    let u = nix::unistd::User::from_name(user).unwrap().unwrap();
    let s = Setup::new();
    // Evidence only root can read: proves CAP_DAC_READ_SEARCH.
    std::fs::write(s.path("secret-owner.log"), "root-only log line\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        s.path("secret-owner.log"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let config = s.config("");
    let mut cfg = std::fs::read_to_string(&config).unwrap();
    cfg.push_str(&format!(
        "[daemon]\nprofile_dir = \"{}/profiles\"\n",
        s.dir.path().display()
    ));
    std::fs::write(&config, cfg).unwrap();
    // The daemon's directories belong to its user (systemd's State/Runtime/LogsDirectory).
    for d in ["out", "run", "log", "profiles"] {
        std::fs::create_dir_all(s.path(d)).unwrap();
        nix::unistd::chown(&s.path(d), Some(u.uid), Some(u.gid)).unwrap();
    }
    nix::unistd::chown(&s.path("signing.key"), Some(u.uid), Some(u.gid)).unwrap();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let caps = unit_capabilities()
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let uid = format!("--reuid={}", u.uid);
    let gid = format!("--regid={}", u.gid);
    let inh = format!("--inh-caps=-all,{caps}");
    let amb = format!("--ambient-caps=-all,{caps}");
    let bnd = format!("--bounding-set=-all,{caps}");
    let wrapper = [
        "setpriv",
        &uid,
        &gid,
        "--clear-groups",
        &inh,
        &amb,
        &bnd,
        "--no-new-privs",
    ];
    let daemon = Daemon::start(&config, &wrapper);
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&u.uid.to_string())),
        "{status}"
    );
    let socket = s.socket();

    // A profile of a root-owned process, symbolized.
    let work = crate::support::Workload::start(crate::support::split_c(), &[]);
    let body = format!(
        r#"{{"modes":["cpu"],"duration":2,"pids":[{}]}}"#,
        work.pid()
    );
    let (code, answer) = curl_unix(&socket, &["-X", "POST", "-d", &body], "/v1/profiles");
    assert_eq!(code, 202, "{answer}");
    let id = json(&answer)["id"].as_str().unwrap().to_owned();
    let job = wait_job(&socket, &format!("/v1/profiles/{id}"));
    assert_eq!(job["status"], "done", "{job}");
    let (code, folded) = curl_unix(&socket, &[], &format!("/v1/profiles/{id}/folded"));
    assert_eq!(code, 200);
    assert!(
        folded.contains("work_a"),
        "not symbolized as the unit's user:\n{folded}"
    );
    let (code, svg) = curl_unix(&socket, &[], &format!("/v1/profiles/{id}/svg"));
    assert_eq!(code, 200);
    assert!(svg.contains("<svg"), "{svg:.200}");
    drop(work);

    // A capture: sees root's processes' details, dmesg and a root-only log.
    let (code, answer) = curl_unix(
        &socket,
        &["-X", "POST", "-d", r#"{"reason":"caps"}"#],
        "/v1/captures",
    );
    assert_eq!(code, 202, "{answer}");
    let id = json(&answer)["id"].as_str().unwrap().to_owned();
    let job = wait_job(&socket, &format!("/v1/captures/{id}"));
    assert_eq!(job["status"], "done", "{job}");
    let archive = s
        .path("out")
        .join(job["capture"]["archive"].as_str().unwrap());
    verify(&archive, &s.path("signing.pub"));
    let m = manifest(&archive);
    let members: Vec<&str> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap_or(""))
        .collect();
    let skipped = m["skipped"].to_string();
    assert!(
        members.iter().any(|p| p.ends_with("secret-owner.log")),
        "root-only log not captured: {skipped}"
    );
    assert!(
        members.iter().any(|p| p.contains("dmesg")),
        "no dmesg: {skipped}"
    );
    drop(daemon);
}

#[test]
fn unit_file_verifies_and_is_well_confined() {
    let unit = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/hindsight.service"
    ));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIPPED unit_file_verifies_and_is_well_confined: systemd-analyze is not installed (apt-get install systemd)"
        );
        return;
    }
    // ExecStart must name an existing binary for `verify`: point it at the one under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("hindsight.service");
    let text = std::fs::read_to_string(unit)
        .unwrap()
        .replace("/usr/bin/hindsight", &hindsight_bin().display().to_string());
    std::fs::write(&copy, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}{}",
        crate::support::text(&out.stdout),
        crate::support::text(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = crate::support::text(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for hindsight.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure in:\n{report}{}",
                crate::support::text(&out.stderr)
            )
        });
    eprintln!("systemd-analyze security exposure: {exposure}");
    assert!(exposure <= 3.5, "exposure {exposure} > 3.5:\n{report}");
}
