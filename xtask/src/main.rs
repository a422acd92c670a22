//! `cargo xtask`: the project's own set-up, build, test and bench commands.
//!
//! It is built by whatever toolchain runs it (the machine's stock stable on a fresh
//! machine: `cargo +stable xtask ...`), installs what the project pins, then drives the
//! pinned toolchain explicitly (`cargo +<pinned>`), so it never depends on rustup
//! auto-installing anything (`RUSTUP_AUTO_INSTALL=0` here).

mod bench;
mod bench_history;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Hindsight developer tasks", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: apt packages (llvm-22-dev, libc6-dbg), the pinned rustup
    /// toolchains with their components, and bpf-linker built against LLVM 22. Idempotent.
    Setup,
    /// Set up, then build the release agent (eBPF included) at target/release/hindsight.
    Build,
    /// Set up, build, then run target/release/hindsight with the given arguments.
    Run {
        /// Arguments for hindsight, after `--` (e.g. `-- profile --pid 4242 --duration 10`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then check formatting and clippy and run the whole test suite (needs root
    /// for the eBPF tests; without it they fail with a message saying so).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test-name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run the benchmarks and print their report.
    Bench(bench::BenchArgs),
    /// Set up, build, then make a Debian package: target/package/hindsight_VERSION_ARCH.deb
    /// (binary, systemd unit, default config, man pages, shell completions).
    Package,
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let ws = Workspace::locate()?;
    match cli.command {
        Task::Setup => setup::setup(&ws),
        Task::Build => {
            setup::setup(&ws)?;
            ws.build_release()
        }
        Task::Run { args } => {
            setup::setup(&ws)?;
            ws.build_release()?;
            let status = Command::new(ws.release_binary())
                .args(&args)
                .status()
                .context("running target/release/hindsight")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => {
            setup::setup(&ws)?;
            ws.cargo(&["fmt", "--all", "--check"])?;
            ws.cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "hindsight-ebpf",
                "--all-targets",
                "--release",
                "--",
                "-D",
                "warnings",
            ])?;
            // The eBPF crate only builds for the BPF target, with its own toolchain.
            let mut ebpf_clippy = ws.cargo_command_with(&ws.ebpf_toolchain);
            ebpf_clippy.args([
                "clippy",
                "--package",
                "hindsight-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ]);
            run_checked(&mut ebpf_clippy)?;
            // Release, so the tests reuse the artifacts of `cargo xtask build` and the
            // profiler under test runs at the speed users see.
            let mut test = vec![
                "test",
                "--workspace",
                "--exclude",
                "hindsight-ebpf",
                "--release",
            ];
            test.extend(args.iter().map(String::as_str));
            run_tests(&ws, &test)
        }
        Task::Package => {
            setup::setup(&ws)?;
            ws.build_release()?;
            package::package(&ws)
        }
        Task::Bench(args) => {
            setup::setup(&ws)?;
            setup::ensure_bench_tools()?;
            ws.build_release()?;
            bench::run(&ws, &args)
        }
    }
}

/// The repository and the toolchains it pins.
pub struct Workspace {
    pub root: PathBuf,
    /// From rust-toolchain.toml: builds the agent and the tests.
    pub toolchain: String,
    /// From `[workspace.metadata.hindsight] ebpf-toolchain`: builds the eBPF programs.
    pub ebpf_toolchain: String,
}

impl Workspace {
    fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let toolchain_file = root.join("rust-toolchain.toml");
        let text = std::fs::read_to_string(&toolchain_file)
            .with_context(|| format!("reading {}", toolchain_file.display()))?;
        let value: toml::Table = toml::from_str(&text)
            .with_context(|| format!("parsing {}", toolchain_file.display()))?;
        let toolchain = value["toolchain"]["channel"]
            .as_str()
            .context("rust-toolchain.toml: [toolchain] channel missing")?
            .to_owned();
        let manifest = root.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let value: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
        let ebpf_toolchain = value["workspace"]["metadata"]["hindsight"]["ebpf-toolchain"]
            .as_str()
            .context("Cargo.toml: [workspace.metadata.hindsight] ebpf-toolchain missing")?
            .to_owned();
        Ok(Self {
            root,
            toolchain,
            ebpf_toolchain,
        })
    }

    pub fn release_binary(&self) -> PathBuf {
        self.root.join("target/release/hindsight")
    }

    fn build_release(&self) -> Result<()> {
        self.cargo(&["build", "--release", "--package", "hindsight"])?;
        println!("xtask: built {}", self.release_binary().display());
        Ok(())
    }

    /// Runs `cargo +<pinned> ARGS` in the workspace root.
    pub fn cargo(&self, args: &[&str]) -> Result<()> {
        let mut cmd = self.cargo_command();
        cmd.args(args);
        run_checked(&mut cmd)
    }

    pub fn cargo_command(&self) -> Command {
        self.cargo_command_with(&self.toolchain)
    }

    /// `cargo +<toolchain>` in the workspace root.
    pub fn cargo_command_with(&self, toolchain: &str) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.arg(format!("+{toolchain}")).current_dir(&self.root);
        // The outer `cargo +stable xtask` sets these for us; they must not leak into the
        // pinned toolchain's build.
        for var in ["RUSTUP_TOOLCHAIN", "CARGO", "RUSTC", "RUSTDOC"] {
            cmd.env_remove(var);
        }
        cmd
    }
}

/// Runs `cargo test`, passing its output through, and ends with one line that totals
/// every test binary's result (cargo's own last line is that of the last binary, often
/// a doc-test run of 0 tests).
fn run_tests(ws: &Workspace, args: &[&str]) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut cmd = ws.cargo_command();
    cmd.args(args).stdout(std::process::Stdio::piped());
    println!("xtask: running {}", describe(&cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", describe(&cmd)))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        // "test result: ok. 42 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("summary: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("{} failed: {status}", describe(&cmd));
    }
    Ok(())
}

/// Runs a command, echoing it, and fails with its exit status.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    println!("xtask: running {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}
