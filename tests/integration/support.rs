//! Helpers shared by the suites: the binary under test, fixture builds, root checks.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    time::Duration,
};

/// `hindsight keygen` into `dir/signing.key` and `dir/signing.pub`.
pub fn keygen(dir: &Path) {
    let out = hindsight(&[
        "keygen",
        "--secret-key",
        &dir.join("signing.key").display().to_string(),
        "--public-key",
        &dir.join("signing.pub").display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `hindsight trigger --socket SOCKET --reason REASON --wait EXTRA...`, which must succeed;
/// `daemon_log` is shown when it does not.
pub fn trigger_and_wait(
    socket: &str,
    reason: &str,
    extra: &[&str],
    daemon_log: impl FnOnce() -> String,
) -> Output {
    let out = Command::new(hindsight_bin())
        .args(["trigger", "--socket", socket, "--reason", reason, "--wait"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trigger: {}{}\ndaemon log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        daemon_log()
    );
    out
}

/// The `hindsight` binary built for this test run.
pub fn hindsight_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hindsight"))
}

/// Runs `hindsight ARGS` to completion.
pub fn hindsight(args: &[&str]) -> Output {
    Command::new(hindsight_bin())
        .args(args)
        .output()
        .expect("running hindsight")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// For a test that loads eBPF and profiles CPU-bound fixtures: `Some(guard)` when it can
/// run. The guard runs such tests one at a time, since on a 2-core machine concurrent
/// fixtures would steal each other's CPU time and appear in each other's `--all` profiles.
///
/// These tests need root (CI runs as root); elsewhere they fail with this message, unless
/// HINDSIGHT_SKIP_ROOT_TESTS=1 says to skip them, which is printed so that a skip is never
/// mistaken for a pass.
pub fn require_root(test: &str) -> Option<MutexGuard<'static, ()>> {
    static SERIAL: Mutex<()> = Mutex::new(());
    if nix::unistd::geteuid().is_root() {
        return Some(
            SERIAL
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }
    if std::env::var_os("HINDSIGHT_SKIP_ROOT_TESTS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: needs root (HINDSIGHT_SKIP_ROOT_TESTS=1)");
        return None;
    }
    panic!(
        "{test} needs root to load eBPF; run the suite as root (set HINDSIGHT_SKIP_ROOT_TESTS=1 to skip)"
    );
}

/// Where fixtures are built: cargo's scratch directory for integration tests.
fn fixture_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn run_build(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        text(&out.stderr)
    );
}

/// tests/fixtures/split.c built with frame pointers: burns CPU in `work_a` and `work_b`.
pub fn split_c() -> &'static Path {
    fixture("split")
}

/// tests/fixtures/NAME.c built once per test run, with frame pointers and debug info.
pub fn fixture(name: &str) -> &'static Path {
    fixture_built(name, "", "-fno-omit-frame-pointer")
}

/// tests/fixtures/NAME.c built without frame pointers (`NAME-nofp`), as distro binaries
/// are: only DWARF unwinding (.eh_frame) walks through it.
pub fn fixture_nofp(name: &str) -> &'static Path {
    fixture_built(name, "-nofp", "-fomit-frame-pointer")
}

fn fixture_built(name: &str, suffix: &str, frame_pointers: &str) -> &'static Path {
    static BUILT: Mutex<Vec<(String, &'static Path)>> = Mutex::new(Vec::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let binary = format!("{name}{suffix}");
    if let Some((_, path)) = built.iter().find(|(n, _)| *n == binary) {
        return path;
    }
    let out = fixture_dir().join(&binary);
    run_build(
        Command::new("cc")
            .args(["-O2", "-g", frame_pointers, "-pthread", "-o"])
            .arg(&out)
            .arg(source(&format!("{name}.c"))),
    );
    let path: &'static Path = Box::leak(out.into_boxed_path());
    built.push((binary, path));
    path
}

/// tests/fixtures/split.rs built with frame pointers: `rust_work_a` and `rust_work_b`.
pub fn split_rust() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_split_rust("split-rs", "force-frame-pointers=yes"))
}

/// tests/fixtures/split.rs built without frame pointers (rustc's default on x86-64).
pub fn split_rust_nofp() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_split_rust("split-rs-nofp", "force-frame-pointers=no"))
}

fn build_split_rust(binary: &str, frame_pointers: &str) -> PathBuf {
    let out = fixture_dir().join(binary);
    // The toolchain that builds this test builds the fixture too (rust-toolchain.toml).
    run_build(
        Command::new("rustc")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["-O", "-g", "-C", frame_pointers, "-o"])
            .arg(&out)
            .arg(source("split.rs")),
    );
    out
}

/// A fixture process, killed when dropped.
pub struct Workload {
    pub child: Child,
}

impl Workload {
    pub fn start(program: &Path, args: &[&str]) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        // Let it get past exec and into its loop.
        std::thread::sleep(Duration::from_millis(200));
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
