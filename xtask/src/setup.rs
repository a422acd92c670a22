//! Installs, idempotently, everything the project needs that a fresh Debian 12 machine
//! lacks, and says what it installs and why.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, run_checked};

/// Debian packages the build and the tests need, and why.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "bpf-linker links against LLVM 22 to link the eBPF programs",
    ),
    (
        "libc6-dbg",
        "symbol names for glibc, whose binaries ship without .symtab",
    ),
    (
        "gcc",
        "the tests build their C fixture workloads from source",
    ),
    (
        "curl",
        "the daemon tests speak HTTP to the agent over its unix socket and mutual TLS",
    ),
    (
        "systemd",
        "the tests run `systemd-analyze verify` and `security` on the unit file",
    ),
    (
        "util-linux",
        "the tests run the daemon as the unit's user with its capabilities via setpriv",
    ),
    (
        "passwd",
        "the tests create the unit's kind of system user with useradd",
    ),
    (
        "dpkg-dev",
        "`cargo xtask package` builds the .deb with dpkg-deb",
    ),
    (
        "zstd",
        "the tests read MANIFEST.json out of archives with tar --zstd",
    ),
    (
        "minisign",
        "the tests check evidence signatures with the stock minisign tool",
    ),
    (
        "python3",
        "the capture tests run small fixture processes (a TCP listener, a log writer)",
    ),
    (
        "iproute2",
        "capture records interfaces and routes with `ip -j`",
    ),
    (
        "golang-go",
        "the tests read our pprof files with a real reader, `go tool pprof -top`",
    ),
];

/// Debian packages only the benchmarks need.
const BENCH_APT_PACKAGES: &[(&str, &str)] = &[
    (
        "linux-perf",
        "the benchmark compares Hindsight's profile with `perf record -F 99 -g`",
    ),
    (
        "bpftool",
        "the benchmark reads our BPF programs' run time (run_time_ns, run_cnt)",
    ),
    (
        "bpftrace",
        "the off-CPU benchmark compares Hindsight with an equivalent bpftrace script",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn setup(ws: &Workspace) -> Result<()> {
    let mut did = false;
    did |= ensure_apt(APT_PACKAGES)?;
    did |= ensure_toolchain(
        &ws.toolchain,
        &["clippy", "rustfmt"],
        "builds the agent and tests",
    )?;
    did |= ensure_toolchain(
        &ws.ebpf_toolchain,
        &["rust-src", "clippy"],
        "builds and lints the eBPF programs (-Z build-std=core needs rust-src)",
    )?;
    did |= ensure_bpf_linker(ws)?;
    if !did {
        println!("xtask: setup: everything is installed");
    }
    Ok(())
}

pub fn ensure_bench_tools() -> Result<()> {
    ensure_apt(BENCH_APT_PACKAGES).map(drop)
}

fn ensure_apt(packages: &[(&str, &str)]) -> Result<bool> {
    let missing: Vec<_> = packages
        .iter()
        .filter(|(name, _)| !dpkg_installed(name))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    for (name, why) in &missing {
        println!("xtask: setup: installing apt package {name}: {why}");
    }
    if !is_root() {
        bail!(
            "apt packages missing ({}); run `cargo +stable xtask setup` as root",
            missing
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing.iter().map(|(n, _)| *n))
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_checked(&mut install)?;
    Ok(true)
}

fn dpkg_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0")
        })
        .unwrap_or(false)
}

fn ensure_toolchain(name: &str, components: &[&str], why: &str) -> Result<bool> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", name])
        .output()
        .context("running rustup (is rustup installed?)")?;
    let listed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = if installed.status.success() {
        components
            .iter()
            .copied()
            .filter(|c| {
                !listed
                    .lines()
                    .any(|l| l == *c || l.starts_with(&format!("{c}-")))
            })
            .collect()
    } else {
        components.to_vec()
    };
    if installed.status.success() && missing.is_empty() {
        return Ok(false);
    }
    println!(
        "xtask: setup: installing Rust toolchain {name} with {}: {why}",
        components.join(", ")
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", name, "--profile", "minimal"]);
    for component in components {
        cmd.args(["--component", component]);
    }
    run_checked(&mut cmd)?;
    Ok(true)
}

fn ensure_bpf_linker(ws: &Workspace) -> Result<bool> {
    if let Ok(out) = Command::new("bpf-linker").arg("--version").output() {
        if String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(false);
        }
    }
    println!(
        "xtask: setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 \
         ({LLVM_PREFIX}): it links the eBPF programs (a few minutes)"
    );
    let mut cmd = ws.cargo_command();
    cmd.args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    // Without it, bpf-linker's build finds Debian's default LLVM 14 and fails.
    .env("LLVM_PREFIX", LLVM_PREFIX);
    run_checked(&mut cmd)?;
    Ok(true)
}
