//! `cargo xtask bench`: the on-CPU profiler's cost and fidelity, measured side by side in
//! one run, printed as a markdown report (and written to <out>/report.md).
//!
//! - overhead: a fixed CPU-bound workload on every CPU, timed without and with
//!   `hindsight profile --all` at 99 Hz, in interleaved pairs (ABBA order), reported as the
//!   median and range of the with/without ratio; beside it the direct accounting of the
//!   same runs: the agent's CPU time (/proc/PID/stat) plus our BPF programs' run time
//!   (kernel.bpf_stats_enabled, restored afterwards) over the CPU time available;
//! - latency and memory: `--all` for 10 s at 99 Hz with every CPU busy: the time from the
//!   end of sampling to the written SVG, and the agent's peak RSS;
//! - unwind: `--unwind dwarf` against `--unwind fp`: the CPU-bound overhead with a
//!   workload built without frame pointers, the cost per sample in the kernel and in the
//!   user-space unwinder, and the share of stacks that reach the application's functions
//!   on the fixtures built without frame pointers (and through glibc) before and after;
//! - fidelity: the 3:1 split fixture profiled by hindsight and by `perf record -e cpu-clock
//!   -F 99 -g` at the same time, perf's output folded with inferno; top-function shares;
//! - recorder: the daemon (`hindsight agent`) with its flight recorder at the defaults (all
//!   modes, 19 Hz, 10 s windows, 15 minutes): its CPU cost (agent CPU + BPF run time) on
//!   an idle host and under a CPU-bound + context-switch-heavy load, the load's throughput
//!   with and without the daemon (interleaved pairs), and the daemon's RSS at steady state;
//! - diff: the variant fixture (work_b 2x with --slow-b) in rounds of 3 normal, 3 slow and
//!   3 more normal profiles at 99 Hz: how often `hindsight diff` finds the regression and
//!   only it, how often it flags something between two sets of the same variant, the
//!   measured change, and the pprof file's size beside the folded one.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Args, ValueEnum};

use crate::{Workspace, describe, run_checked};

#[derive(Args)]
pub struct BenchArgs {
    /// Interleaved without/with pairs for the overhead measurement.
    #[arg(long, default_value_t = 12)]
    pairs: usize,
    /// Loop iterations per workload thread (one thread per CPU); ~2-3 s on these VMs.
    #[arg(long, default_value_t = 800_000_000)]
    iterations: u64,
    /// Repetitions of the latency/memory measurement.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Commands spawned for the exec-history measurement.
    #[arg(long, default_value_t = 5000)]
    spawns: usize,
    /// Which parts to run.
    #[arg(long, value_delimiter = ',', default_values = ["overhead", "latency", "fidelity", "offcpu", "unwind", "recorder", "history", "diff"])]
    only: Vec<Part>,
    /// `--unwind` of the agent in the overhead, latency and offcpu parts (the unwind part
    /// compares the modes itself).
    #[arg(long, default_value = "auto", value_parser = ["fp", "dwarf", "auto"])]
    unwind: String,
    /// Where the report, profiles and fixtures go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Overhead,
    Latency,
    Fidelity,
    /// Off-CPU and locks on a context-switch-heavy workload, beside bpftrace.
    Offcpu,
    /// DWARF unwinding against frame pointers: cost and whole stacks.
    Unwind,
    /// The daemon's always-on flight recorder: CPU idle and under load, throughput, RSS.
    Recorder,
    /// Exec history: spawn-rate cost and no lost events (xtask/src/bench_history.rs).
    History,
    /// Differential profiles: regressions found, false alarms, pprof size.
    Diff,
}

pub fn run(ws: &Workspace, args: &BenchArgs) -> Result<()> {
    let out = ws.root.join(&args.out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bin = ws.release_binary();
    let cpus = std::thread::available_parallelism()?.get();
    let mut report = format!(
        "# hindsight benchmark\n\nhost: {} CPUs, kernel {}\n\n",
        cpus,
        fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    if args.only.contains(&Part::Overhead) {
        report += &overhead(ws, &bin, &out, args, cpus)?;
    }
    if args.only.contains(&Part::Latency) {
        report += &latency(ws, &bin, &out, args, cpus)?;
    }
    if args.only.contains(&Part::Fidelity) {
        report += &fidelity(ws, &bin, &out)?;
    }
    if args.only.contains(&Part::Offcpu) {
        report += &offcpu(ws, &bin, &out, args, cpus)?;
    }
    if args.only.contains(&Part::Unwind) {
        report += &unwind(ws, &bin, &out, args, cpus)?;
    }
    if args.only.contains(&Part::Recorder) {
        report += &recorder(ws, &bin, &out, args, cpus)?;
    }
    if args.only.contains(&Part::History) {
        report += &crate::bench_history::history(&bin, &out, args.spawns)?;
    }
    if args.only.contains(&Part::Diff) {
        report += &diff(ws, &bin, &out, args)?;
    }
    println!("\n{report}");
    fs::write(out.join("report.md"), &report)?;
    println!(
        "xtask: report written to {}",
        out.join("report.md").display()
    );
    Ok(())
}

fn build_fixture(ws: &Workspace, out: &Path, name: &str, extra: &[&str]) -> Result<PathBuf> {
    let bin = out.join(name);
    let src = ws.root.join("tests/fixtures").join(format!("{name}.c"));
    run_checked(
        Command::new("cc")
            .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"])
            .args(extra)
            .arg("-o")
            .arg(&bin)
            .arg(&src),
    )?;
    Ok(bin)
}

/// A running `hindsight profile`, started and waited for until it samples.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(bin: &Path, args: &[&str], out: &Path) -> Result<Self> {
        let mut command = Command::new(bin);
        command
            .arg("profile")
            .args(args)
            .arg("--output-dir")
            .arg(out)
            .stdout(Stdio::piped());
        let child = spawn_until(&mut command, "recording ", "hindsight profile is recording")?;
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ctrl-C: stop sampling, write the profile; returns stdout and peak RSS (KiB).
    fn finish(mut self) -> Result<(String, u64)> {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.pid() as i32, libc::SIGINT) };
        self.wait()
    }

    fn wait(&mut self) -> Result<(String, u64)> {
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout)?;
        }
        let (status, max_rss) = wait4(self.pid())?;
        ensure!(
            status == 0,
            "hindsight failed (wait status {status}): {stdout}"
        );
        Ok((stdout, max_rss))
    }
}

/// Reads `output` until a line contains `needle`, then keeps draining it in a thread so
/// that the writer never blocks on a full pipe.
/// Spawns `command` with its stderr piped and waits until a line there contains `needle`
/// (`what` names that moment in the error if the child exits first).
fn spawn_until(command: &mut Command, needle: &str, what: &str) -> Result<Child> {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let stderr = child.stderr.take().context("no stderr")?;
    if let Err(err) = wait_for_line(stderr, needle) {
        let status = child.wait()?;
        bail!("exited ({status}) before {what}: {err:#}");
    }
    Ok(child)
}

fn wait_for_line(output: impl std::io::Read + Send + 'static, needle: &str) -> Result<()> {
    let mut lines = BufReader::new(output).lines();
    loop {
        let line = lines.next().context("the output ended")??;
        if line.contains(needle) {
            std::thread::spawn(move || for _ in lines {});
            return Ok(());
        }
    }
}

/// waitpid with resource usage: (status, peak RSS in KiB).
fn wait4(pid: u32) -> Result<(i32, u64)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value of a plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to our locals; pid is our child, not yet reaped.
    let ret = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    ensure!(
        ret == pid as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    Ok((status, usage.ru_maxrss as u64))
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; fields[0] here is field 3.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Sets kernel.bpf_stats_enabled=1 and puts back the old value when dropped (also on error
/// or panic), as the agent must leave no system setting changed.
struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let old = fs::read_to_string(BPF_STATS)?.trim().to_owned();
        Self::set(true)?;
        Ok(Self { old })
    }

    /// Turns the statistics on or off while a guard from `enable` is held (it restores
    /// the setting found).
    fn set(on: bool) -> Result<()> {
        fs::write(BPF_STATS, if on { "1" } else { "0" }).context("setting kernel.bpf_stats_enabled")
    }

    /// Sum of (run_time_ns, run_cnt) of hindsight's programs, from bpftool.
    fn read() -> Result<(u64, u64)> {
        Self::read_where(true)
    }

    /// The same, of every other program (e.g. bpftrace's, while it alone runs).
    fn read_others() -> Result<(u64, u64)> {
        Self::read_where(false)
    }

    fn read_where(ours: bool) -> Result<(u64, u64)> {
        let out = Command::new("bpftool")
            .args(["prog", "show", "--json"])
            .output()?;
        ensure!(out.status.success(), "bpftool prog show failed");
        let progs: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let mut totals = (0, 0);
        for prog in progs.as_array().into_iter().flatten() {
            let name = prog["name"].as_str().unwrap_or_default();
            // bpftool shows names cut to 15 characters.
            let is_ours = ["oncpu_", "offcpu_", "lock_conten", "futex_", "process_exec"]
                .iter()
                .any(|p| name.starts_with(p));
            if is_ours == ours {
                totals.0 += prog["run_time_ns"].as_u64().unwrap_or(0);
                totals.1 += prog["run_cnt"].as_u64().unwrap_or(0);
            }
        }
        Ok(totals)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.old);
    }
}

fn time_workload(burn: &Path, iterations: u64, threads: usize) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new(burn)
        .arg(iterations.to_string())
        .arg(threads.to_string())
        .status()?;
    ensure!(status.success(), "{} failed", burn.display());
    Ok(start.elapsed())
}

struct WithRun {
    wall: Duration,
    agent_cpu: Duration,
    bpf_ns: u64,
    bpf_runs: u64,
}

fn overhead(
    ws: &Workspace,
    bin: &Path,
    out: &Path,
    args: &BenchArgs,
    cpus: usize,
) -> Result<String> {
    let burn = build_fixture(ws, out, "burn", &[])?;
    let stats = BpfStats::enable()?;
    let profile_dir = out.join("overhead");
    fs::create_dir_all(&profile_dir)?;
    let mut ratios = Vec::new();
    let mut direct = Vec::new();
    let mut per_sample_ns = Vec::new();
    let with = || -> Result<WithRun> {
        let agent = Agent::start(
            bin,
            &[
                "--all",
                "--frequency",
                "99",
                "--duration",
                "3600",
                "--unwind",
                &args.unwind,
            ],
            &profile_dir,
        )?;
        let (cpu0, (ns0, cnt0)) = (cpu_time(agent.pid())?, BpfStats::read()?);
        let wall = time_workload(&burn, args.iterations, cpus)?;
        let (cpu1, (ns1, cnt1)) = (cpu_time(agent.pid())?, BpfStats::read()?);
        agent.finish()?;
        Ok(WithRun {
            wall,
            agent_cpu: cpu1 - cpu0,
            bpf_ns: ns1 - ns0,
            bpf_runs: cnt1 - cnt0,
        })
    };
    // Warm-up, not counted: page cache, CPU frequency.
    time_workload(&burn, args.iterations / 4, cpus)?;
    for pair in 0..args.pairs {
        let (base, w) = if pair % 2 == 0 {
            let base = time_workload(&burn, args.iterations, cpus)?;
            (base, with()?)
        } else {
            let w = with()?;
            (time_workload(&burn, args.iterations, cpus)?, w)
        };
        let ratio = w.wall.as_secs_f64() / base.as_secs_f64();
        let available = w.wall.as_secs_f64() * cpus as f64;
        let used = w.agent_cpu.as_secs_f64() + w.bpf_ns as f64 / 1e9;
        println!(
            "xtask: bench: pair {pair}: without {:.3} s, with {:.3} s (ratio {ratio:.4}); \
             agent {:.1} ms CPU, BPF {:.2} ms in {} runs",
            base.as_secs_f64(),
            w.wall.as_secs_f64(),
            w.agent_cpu.as_secs_f64() * 1e3,
            w.bpf_ns as f64 / 1e6,
            w.bpf_runs
        );
        ratios.push(ratio);
        direct.push(used / available);
        if w.bpf_runs > 0 {
            per_sample_ns.push(w.bpf_ns as f64 / w.bpf_runs as f64);
        }
    }
    drop(stats);
    let mut text =
        String::from("## Overhead: `--all` at 99 Hz, fixed CPU-bound work on every CPU\n\n");
    writeln!(text, "| measure | median | range | n |\n|---|---|---|---|")?;
    row(
        &mut text,
        "wall-clock ratio with/without (interleaved ABBA pairs)",
        &ratios,
        |x| format!("{:+.2}%", (x - 1.0) * 100.0),
    );
    row(
        &mut text,
        "direct: (agent CPU + BPF run time) / CPU time available",
        &direct,
        |x| format!("{:.3}%", x * 100.0),
    );
    row(
        &mut text,
        "BPF cost per sample (run_time_ns / run_cnt)",
        &per_sample_ns,
        |x| format!("{x:.0} ns"),
    );
    text.push('\n');
    Ok(text)
}

fn latency(
    ws: &Workspace,
    bin: &Path,
    out: &Path,
    args: &BenchArgs,
    cpus: usize,
) -> Result<String> {
    let burn = build_fixture(ws, out, "burn", &[])?;
    let profile_dir = out.join("latency");
    fs::create_dir_all(&profile_dir)?;
    let mut processing = Vec::new();
    let mut rss = Vec::new();
    let mut samples = Vec::new();
    for _ in 0..args.repeats {
        // Every CPU busy for the whole 10 s.
        let mut load = Command::new(&burn)
            .arg(u64::MAX.to_string())
            .arg(cpus.to_string())
            .spawn()?;
        let mut agent = Agent::start(
            bin,
            &[
                "--all",
                "--frequency",
                "99",
                "--duration",
                "10",
                "--unwind",
                &args.unwind,
            ],
            &profile_dir,
        )?;
        let result = agent.wait();
        let _ = load.kill();
        let _ = load.wait();
        let (stdout, max_rss) = result?;
        let ms: f64 = stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("processed in ")?
                    .strip_suffix(" ms")?
                    .parse()
                    .ok()
            })
            .with_context(|| format!("no processing time in:\n{stdout}"))?;
        // "  1980 samples at 99 Hz on 2 CPUs from ..."
        let n: f64 = stdout
            .lines()
            .find_map(|l| {
                l.contains(" samples at ")
                    .then(|| l.split_whitespace().next()?.parse().ok())?
            })
            .with_context(|| format!("no sample count in:\n{stdout}"))?;
        processing.push(ms);
        rss.push(max_rss as f64 / 1024.0);
        samples.push(n);
        println!(
            "xtask: bench: 10 s --all: processed in {ms} ms, peak RSS {:.1} MiB, {n} samples",
            max_rss as f64 / 1024.0
        );
    }
    let mut text =
        String::from("## Latency and memory: `--all`, 10 s at 99 Hz, every CPU busy\n\n");
    writeln!(text, "| measure | median | range | n |\n|---|---|---|---|")?;
    row(&mut text, "samples per profile", &samples, |x| {
        format!("{x:.0}")
    });
    row(
        &mut text,
        "end of sampling -> SVG written",
        &processing,
        |x| format!("{x:.0} ms"),
    );
    row(&mut text, "agent peak RSS", &rss, |x| format!("{x:.1} MiB"));
    text.push('\n');
    Ok(text)
}

fn fidelity(ws: &Workspace, bin: &Path, out: &Path) -> Result<String> {
    let split = build_fixture(ws, out, "split", &[])?;
    let dir = out.join("fidelity");
    fs::create_dir_all(&dir)?;
    let mut workload = Command::new(&split).spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = workload.id().to_string();
    let perf_data = dir.join("perf.data");
    let mut perf = Command::new("perf");
    perf.args([
        "record",
        "-e",
        "cpu-clock",
        "-F",
        "99",
        "-g",
        "-p",
        &pid,
        "-o",
    ])
    .arg(&perf_data)
    .args(["--", "sleep", "10"])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    println!("xtask: running {} beside hindsight", describe(&perf));
    let mut perf = perf
        .spawn()
        .context("starting perf (apt package linux-perf)")?;
    let mut agent = Agent::start(
        bin,
        &["--pid", &pid, "--frequency", "99", "--duration", "10"],
        &dir,
    )?;
    agent.wait()?;
    let perf_status = perf.wait()?;
    let _ = workload.kill();
    let _ = workload.wait();
    ensure!(perf_status.success(), "perf record failed: {perf_status}");
    let script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(&perf_data)
        .output()?;
    ensure!(script.status.success(), "perf script failed");
    let mut folded = Vec::new();
    use inferno::collapse::Collapse as _;
    inferno::collapse::perf::Folder::default()
        .collapse(&script.stdout[..], &mut folded)
        .map_err(|e| anyhow::anyhow!("inferno collapse: {e}"))?;
    fs::write(dir.join("perf.folded"), &folded)?;
    let ours = leaf_shares(&fs::read_to_string(dir.join("cpu.folded"))?);
    let theirs = leaf_shares(&String::from_utf8_lossy(&folded));
    let mut text = String::from(
        "## Fidelity: split fixture (work_a:work_b = 3:1), hindsight and `perf record -e cpu-clock -F 99 -g` at the same time\n\n",
    );
    writeln!(
        text,
        "| function (self) | hindsight | perf | difference |\n|---|---|---|---|"
    )?;
    for function in ["work_a", "work_b"] {
        let (a, b) = (
            ours.0.get(function).copied().unwrap_or(0.0),
            theirs.0.get(function).copied().unwrap_or(0.0),
        );
        writeln!(
            text,
            "| {function} | {:.1}% | {:.1}% | {:+.1} points |",
            a * 100.0,
            b * 100.0,
            (a - b) * 100.0
        )?;
    }
    writeln!(
        text,
        "| (total) | {} samples | {:.0} ms of cpu-clock | |\n",
        ours.1,
        theirs.1 as f64 / 1e6
    )?;
    Ok(text)
}

/// Self share of each user-space leaf function, and the total weight (samples for
/// hindsight; nanoseconds for perf's cpu-clock, which inferno weights by period).
fn leaf_shares(folded: &str) -> (BTreeMap<String, f64>, u64) {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0;
    for line in folded.lines() {
        let Some((stack, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        // The user-space leaf: the last frame before any kernel frame.
        let leaf = stack
            .split(';')
            .take_while(|f| !f.ends_with("_[k]"))
            .last()
            .unwrap_or_default();
        *counts.entry(leaf.to_owned()).or_default() += n;
        total += n;
    }
    let shares = counts
        .into_iter()
        .map(|(f, n)| (f, n as f64 / total.max(1) as f64))
        .collect();
    (shares, total)
}

/// Appends `| label | median | min .. max | n |`, each value shown by `show`.
fn row(text: &mut String, label: &str, values: &[f64], show: impl Fn(f64) -> String) {
    let (m, lo, hi) = summary(values);
    text.push_str(&format!(
        "| {label} | {} | {} .. {} | {} |\n",
        show(m),
        show(lo),
        show(hi),
        values.len()
    ));
}

/// (median, min, max).
fn summary(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[0], v[v.len() - 1])
}

/// bpftrace doing what `--mode offcpu` does: stacks at every switch-out, time summed per
/// stack at switch-in. The maps are cleared at exit so that printing them costs nothing.
const BPFTRACE_OFFCPU: &str = r#"
tracepoint:sched:sched_switch
{
  if (args->prev_pid != 0) {
    @start[args->prev_pid] = nsecs;
    @kst[args->prev_pid] = kstack;
    @ust[args->prev_pid] = ustack;
  }
  $s = @start[args->next_pid];
  if ($s != 0) {
    @off[@kst[args->next_pid], @ust[args->next_pid]] = sum(nsecs - $s);
    delete(@start[args->next_pid]);
  }
}
END { clear(@start); clear(@kst); clear(@ust); clear(@off); }
"#;

/// One hindsight run of the off-CPU benchmark.
struct OffCpuRun {
    wall: f64,
    /// (agent CPU + BPF run time) / CPU available.
    direct: f64,
    /// BPF nanoseconds per program run.
    per_event: f64,
    rss_mib: f64,
    /// Events handled per second during the workload: our BPF programs' runs.
    rate: f64,
    lost: u64,
}

/// The ping-pong workload of the off-CPU part.
struct PingPong<'a> {
    bin: &'a Path,
    args: Vec<String>,
    /// What it is, for the report.
    what: &'static str,
}

/// The issue's context-switch rate.
const SWITCH_RATE_TARGET: f64 = 100_000.0;

impl PingPong<'_> {
    fn time(&self) -> Result<Duration> {
        let start = Instant::now();
        let out = Command::new(self.bin).args(&self.args).output()?;
        ensure!(out.status.success(), "pingpong {:?} failed", self.args);
        Ok(start.elapsed())
    }

    /// Context switches per second (every CPU, /proc/stat) during one run.
    fn switch_rate(&self) -> Result<f64> {
        let ctxt0 = context_switches()?;
        let wall = self.time()?;
        Ok((context_switches()? - ctxt0) as f64 / wall.as_secs_f64())
    }

    /// Both threads on CPU 0, with the computation per message calibrated to
    /// `SWITCH_RATE_TARGET` and enough round trips for ~3 s.
    fn pinned(bin: &Path) -> Result<PingPong<'_>> {
        let probe = |work: f64, roundtrips: f64| PingPong {
            bin,
            args: vec![
                format!("{roundtrips:.0}"),
                format!("{work:.0}"),
                "0".to_owned(),
            ],
            what: "both threads on CPU 0",
        };
        let mut work = 3500.0;
        let mut rate = probe(work, 20_000.0).switch_rate()?;
        for _ in 0..6 {
            if (rate / SWITCH_RATE_TARGET - 1.0).abs() < 0.05
                || (work == 0.0 && rate < SWITCH_RATE_TARGET)
            {
                break;
            }
            // Time per round trip = fixed cost + work: scaling the work by the rate's
            // error over-corrects by the fixed part, and converges in a few steps.
            work = (work * rate / SWITCH_RATE_TARGET).floor().max(0.0);
            rate = probe(work, 20_000.0).switch_rate()?;
        }
        // Two switches per round trip.
        Ok(probe(work, (3.0 * rate / 2.0).max(10_000.0)))
    }

    /// Unpinned, as before: each message wakes the other thread, often on the other,
    /// idle CPU, which in this VM is slow and sets the rate.
    fn unpinned(bin: &Path) -> PingPong<'_> {
        PingPong {
            bin,
            args: vec!["60000".to_owned(), "3500".to_owned()],
            what: "threads free to run on either CPU",
        }
    }
}

fn context_switches() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    stat.lines()
        .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
        .context("no ctxt in /proc/stat")
}

fn offcpu(ws: &Workspace, bin: &Path, out: &Path, args: &BenchArgs, cpus: usize) -> Result<String> {
    let fixture = build_fixture(ws, out, "pingpong", &[])?;
    let dir = out.join("offcpu");
    fs::create_dir_all(&dir)?;
    // bpftrace needs tracefs for tracepoint:; hindsight mounts it itself when missing.
    let tracefs_was_mounted = Path::new("/sys/kernel/tracing/events").exists();
    if !tracefs_was_mounted {
        run_checked(Command::new("mount").args([
            "-t",
            "tracefs",
            "tracefs",
            "/sys/kernel/tracing",
        ]))?;
    }
    let result = (|| -> Result<String> {
        let stats = BpfStats::enable()?;
        let mut text = format!(
            "## Off-CPU and locks: `--all --mode offcpu,locks --unwind {}` on a pipe ping-pong\n\n\
             Slowdown = wall time with / without, per interleaved pair, with the kernel's BPF\n\
             statistics off; the direct accounting and costs per program run come from one more\n\
             run of each per pair with them on. On one CPU every switch goes straight from one\n\
             thread to the other (the issue's ~100k/s); on two, most wake an idle CPU, which is\n\
             slow in this VM and sets a lower rate.\n\n",
            args.unwind
        );
        for pingpong in [PingPong::pinned(&fixture)?, PingPong::unpinned(&fixture)] {
            text += &offcpu_workload(bin, &dir, args, cpus, &pingpong)?;
        }
        drop(stats);
        Ok(text)
    })();
    if !tracefs_was_mounted {
        let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
    }
    result
}

/// The interleaved runs of one ping-pong workload: without, hindsight (default and every
/// kernel stack walked) and bpftrace; its table.
fn offcpu_workload(
    bin: &Path,
    dir: &Path,
    args: &BenchArgs,
    cpus: usize,
    pingpong: &PingPong,
) -> Result<String> {
    let (mut base, mut ours, mut exact, mut theirs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut their_per_event = Vec::new();
    let (mut direct, mut per_event, mut exact_per_event, mut rates, mut rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut lost = 0u64;
    pingpong.time()?; // warm-up
    let switch_rate = pingpong.switch_rate()?;
    let run_ours = |extra: &[&str]| -> Result<OffCpuRun> {
        let mut agent_args = vec![
            "--all",
            "--mode",
            "offcpu,locks",
            "--duration",
            "3600",
            "--unwind",
            &args.unwind,
        ];
        agent_args.extend_from_slice(extra);
        let agent = Agent::start(bin, &agent_args, dir)?;
        let (cpu0, (ns0, cnt0)) = (cpu_time(agent.pid())?, BpfStats::read()?);
        let wall = pingpong.time()?;
        let (cpu1, (ns1, cnt1)) = (cpu_time(agent.pid())?, BpfStats::read()?);
        let (stdout, max_rss) = agent.finish()?;
        let used = (cpu1 - cpu0).as_secs_f64() + (ns1 - ns0) as f64 / 1e9;
        let lost = stdout
            .lines()
            .filter_map(|l| {
                l.split(", ")
                    .last()?
                    .split(" lost to full maps")
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>();
        Ok(OffCpuRun {
            wall: wall.as_secs_f64(),
            direct: used / (wall.as_secs_f64() * cpus as f64),
            per_event: (ns1 - ns0) as f64 / (cnt1 - cnt0).max(1) as f64,
            rss_mib: max_rss as f64 / 1024.0,
            rate: (cnt1 - cnt0) as f64 / wall.as_secs_f64(),
            lost,
        })
    };
    // bpftrace's run: (wall time, BPF ns per program run).
    let run_bpftrace = || -> Result<(f64, f64)> {
        let mut bt = Command::new("bpftrace")
            .args(["-e", BPFTRACE_OFFCPU])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace (apt package bpftrace)")?;
        let stdout = bt.stdout.take().context("no stdout")?;
        wait_for_line(stdout, "Attaching").context("bpftrace did not attach")?;
        // Attached once it printed that and the probes are in place.
        std::thread::sleep(Duration::from_millis(500));
        let (ns0, cnt0) = BpfStats::read_others()?;
        let wall = pingpong.time()?.as_secs_f64();
        let (ns1, cnt1) = BpfStats::read_others()?;
        // SAFETY: kill(2) on our own child; no memory is involved.
        unsafe { libc::kill(bt.id() as i32, libc::SIGINT) };
        bt.wait()?;
        Ok((wall, (ns1 - ns0) as f64 / (cnt1 - cnt0).max(1) as f64))
    };
    for pair in 0..args.pairs {
        // Timed runs with the kernel's BPF statistics off: they add two clock reads to
        // every program run, ours and bpftrace's, which at ~100k runs/s is visible.
        BpfStats::set(false)?;
        // Rotate the order of the four runs so none always goes first.
        for slot in 0..4 {
            match (pair + slot) % 4 {
                0 => base.push(pingpong.time()?.as_secs_f64()),
                1 => {
                    let run = run_ours(&[])?;
                    ours.push(run.wall);
                    rss.push(run.rss_mib);
                    lost += run.lost;
                }
                // Exact kernel stacks: walked at every switch-out.
                2 => exact.push(run_ours(&["--offcpu-kstack-reuse", "0"])?.wall),
                _ => theirs.push(run_bpftrace()?.0),
            }
        }
        // Then the same three with the statistics on, for the direct accounting and the
        // cost per program run (their wall times are not used).
        BpfStats::set(true)?;
        let run = run_ours(&[])?;
        direct.push(run.direct);
        per_event.push(run.per_event);
        rates.push(run.rate);
        lost += run.lost;
        let run = run_ours(&["--offcpu-kstack-reuse", "0"])?;
        exact_per_event.push(run.per_event);
        lost += run.lost;
        their_per_event.push(run_bpftrace()?.1);
        println!(
            "xtask: bench: offcpu ({}) pair {pair}: without {:.3} s, hindsight {:.3} s, \
                 hindsight exact kernel stacks {:.3} s, bpftrace {:.3} s",
            pingpong.what, base[pair], ours[pair], exact[pair], theirs[pair]
        );
    }
    let ratio = |with: &[f64]| -> Vec<f64> { with.iter().zip(&base).map(|(w, b)| w / b).collect() };
    let mut text = format!(
        "### Pipe ping-pong, {}: ~{:.0}k context switches/s (`pingpong {}`)\n\n",
        pingpong.what,
        switch_rate / 1e3,
        pingpong.args.join(" ")
    );
    writeln!(text, "| measure | median | range | n |\n|---|---|---|---|")?;
    for (name, r) in [
        (
            "hindsight (default: kernel stacks reused, walked every 16th)",
            ratio(&ours),
        ),
        (
            "hindsight --offcpu-kstack-reuse 0 (every kernel stack walked)",
            ratio(&exact),
        ),
        ("bpftrace (equivalent sched_switch script)", ratio(&theirs)),
    ] {
        row(&mut text, &format!("slowdown with {name}"), &r, |x| {
            format!("{:+.1}%", (x - 1.0) * 100.0)
        });
    }
    row(
        &mut text,
        "hindsight direct: (agent CPU + BPF run time) / CPU available",
        &direct,
        |x| format!("{:.2}%", x * 100.0),
    );
    row(&mut text, "BPF cost per program run", &per_event, |x| {
        format!("{x:.0} ns")
    });
    row(
        &mut text,
        "BPF cost per program run, every kernel stack walked",
        &exact_per_event,
        |x| format!("{x:.0} ns"),
    );
    row(
        &mut text,
        "BPF cost per program run, bpftrace's script",
        &their_per_event,
        |x| format!("{x:.0} ns"),
    );
    row(
        &mut text,
        "events handled per second (BPF program runs)",
        &rates,
        |x| format!("{x:.0}"),
    );
    writeln!(text, "| events lost to full maps (all runs) | {lost} | | |")?;
    row(&mut text, "agent peak RSS", &rss, |x| format!("{x:.1} MiB"));
    text.push('\n');
    Ok(text)
}

/// The user-space unwinder's time per stack from the summary's `unwinding (...)` line.
fn unwind_micros(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("unwinding ("))?;
    line.split(" µs each")
        .next()?
        .rsplit(", ")
        .next()?
        .parse()
        .ok()
}

/// Share of the weight of `comm`'s folded stacks that pass through `function`.
fn folded_share(path: &Path, comm: &str, function: &str) -> Result<f64> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (mut total, mut hit) = (0u64, 0u64);
    for line in text.lines() {
        let Some((stack, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let mut frames = stack.split(';');
        if frames.next() != Some(comm) {
            continue;
        }
        let n: u64 = n.parse()?;
        total += n;
        if frames.any(|f| f == function) {
            hit += n;
        }
    }
    ensure!(total > 0, "no stacks of {comm} in {}", path.display());
    Ok(hit as f64 / total as f64)
}

fn unwind(ws: &Workspace, bin: &Path, out: &Path, args: &BenchArgs, cpus: usize) -> Result<String> {
    let dir = out.join("unwind");
    fs::create_dir_all(&dir)?;
    let nofp = ["-fomit-frame-pointer"];
    // Distinct names: build_fixture names the binary after its source.
    let burn = build_fixture(ws, &dir, "burn", &nofp)?;
    let stats = BpfStats::enable()?;
    let mut ratios = Vec::new();
    let (mut fp_ns, mut dwarf_ns, mut user_us) = (Vec::new(), Vec::new(), Vec::new());
    let run = |mode: &str| -> Result<(Duration, f64, Option<f64>)> {
        let agent = Agent::start(
            bin,
            &[
                "--all",
                "--frequency",
                "99",
                "--duration",
                "3600",
                "--unwind",
                mode,
            ],
            &dir,
        )?;
        let (ns0, cnt0) = BpfStats::read()?;
        let wall = time_workload(&burn, args.iterations, cpus)?;
        let (ns1, cnt1) = BpfStats::read()?;
        let (stdout, _) = agent.finish()?;
        Ok((
            wall,
            (ns1 - ns0) as f64 / (cnt1 - cnt0).max(1) as f64,
            unwind_micros(&stdout),
        ))
    };
    time_workload(&burn, args.iterations / 4, cpus)?; // warm-up
    for pair in 0..args.pairs.div_ceil(2) {
        let order = if pair % 2 == 0 {
            ["fp", "dwarf"]
        } else {
            ["dwarf", "fp"]
        };
        let mut walls = [Duration::ZERO; 2];
        for mode in order {
            let (wall, per_run, micros) = run(mode)?;
            if mode == "fp" {
                walls[0] = wall;
                fp_ns.push(per_run);
            } else {
                walls[1] = wall;
                dwarf_ns.push(per_run);
                user_us.extend(micros);
            }
        }
        let ratio = walls[1].as_secs_f64() / walls[0].as_secs_f64();
        println!(
            "xtask: bench: unwind pair {pair}: fp {:.3} s, dwarf {:.3} s (ratio {ratio:.4})",
            walls[0].as_secs_f64(),
            walls[1].as_secs_f64()
        );
        ratios.push(ratio);
    }
    drop(stats);

    // Whole stacks: fixtures built without frame pointers, and glibc (the mutex fixture).
    let split = build_fixture(ws, &dir, "split", &nofp)?;
    let nap = build_fixture(ws, &dir, "nap", &nofp)?;
    let mutex = build_fixture(ws, &dir, "mutex", &[])?;
    let cases: [(&Path, &[&str], &str, &str, &str); 4] = [
        (&split, &[], "cpu", "split", "main"),
        (&nap, &[], "offcpu", "nap", "nap_loop"),
        (&mutex, &["4"], "locks", "mutex", "post_to_ledger"),
        (&mutex, &["4"], "offcpu", "mutex", "post_to_ledger"),
    ];
    let mut text = String::from(
        "## Unwinding: `--unwind dwarf` against `--unwind fp`\n\n\
         CPU-bound: `--all` at 99 Hz, the overhead workload built with -fomit-frame-pointer.\n\n",
    );
    writeln!(text, "| measure | median | range | n |\n|---|---|---|---|")?;
    row(&mut text, "wall-clock ratio dwarf/fp", &ratios, |x| {
        format!("{:+.2}%", (x - 1.0) * 100.0)
    });
    row(&mut text, "BPF cost per sample, fp", &fp_ns, |x| {
        format!("{x:.0} ns")
    });
    row(
        &mut text,
        "BPF cost per sample, dwarf (stack copy)",
        &dwarf_ns,
        |x| format!("{x:.0} ns"),
    );
    row(
        &mut text,
        "user-space unwinder per stack, dwarf",
        &user_us,
        |x| format!("{x:.1} µs"),
    );
    writeln!(
        text,
        "\n| fixture (mode) | stacks through | fp | dwarf | auto |\n|---|---|---|---|---|"
    )?;
    for (binary, fixture_args, mode, comm, function) in cases {
        let mut workload = Command::new(binary)
            .args(fixture_args)
            .stdout(Stdio::null())
            .spawn()?;
        let pid = workload.id().to_string();
        let mut shares = Vec::new();
        for unwind in ["fp", "dwarf", "auto"] {
            let profile_dir = dir.join(format!("{comm}-{mode}-{unwind}"));
            run_checked(
                Command::new(bin)
                    .args(["profile", "--pid", &pid, "--duration", "3", "--mode", mode])
                    .args(["--unwind", unwind, "--output-dir"])
                    .arg(&profile_dir),
            )?;
            shares.push(folded_share(
                &profile_dir.join(format!("{mode}.folded")),
                comm,
                function,
            )?);
        }
        workload.kill()?;
        workload.wait()?;
        writeln!(
            text,
            "| {comm} ({mode}) | {function} | {:.1}% | {:.1}% | {:.1}% |",
            shares[0] * 100.0,
            shares[1] * 100.0,
            shares[2] * 100.0
        )?;
    }
    text.push('\n');
    Ok(text)
}

/// A running `hindsight agent` with the flight recorder at its defaults, in its own
/// directory; stopped with SIGTERM when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(bin: &Path, dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let d = dir.display();
        let config = dir.join("hindsight.toml");
        fs::write(
            &config,
            format!(
                "[capture]\noutput_dir = \"{d}/out\"\n\n[api]\nsocket = \"{d}/hindsight.sock\"\n\
                 audit_log = \"{d}/audit.jsonl\"\n\n[daemon]\nprofile_dir = \"{d}/profiles\"\n"
            ),
        )?;
        let mut command = Command::new(bin);
        command
            .args(["agent", "--config"])
            .arg(&config)
            .env("HINDSIGHT_LOG", "info")
            .stdout(Stdio::null());
        let child = spawn_until(
            &mut command,
            "flight recorder: recording",
            "the daemon's flight recorder is recording",
        )?;
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS in bytes.
    fn rss(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        Ok(kib * 1024)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The recorder benchmark's load: burn on every CPU and pipe ping-pong at the same time.
/// Returns the wall time of each (their throughputs are fixed work over these).
fn mixed_load(burn: &Path, pingpong: &Path, iterations: u64, cpus: usize) -> Result<(f64, f64)> {
    let start = Instant::now();
    let mut pp = Command::new(pingpong)
        .args(&PingPong::unpinned(pingpong).args)
        .stdout(Stdio::null())
        .spawn()?;
    let burn_wall = time_workload(burn, iterations, cpus)?.as_secs_f64();
    ensure!(pp.wait()?.success(), "pingpong failed");
    Ok((burn_wall, start.elapsed().as_secs_f64()))
}

/// (agent CPU + BPF run time) over `f` / CPU time available, and what `f` returned.
fn daemon_share<T>(
    daemon: &Daemon,
    cpus: usize,
    f: impl FnOnce() -> Result<T>,
) -> Result<(f64, T)> {
    let (cpu0, (ns0, _)) = (cpu_time(daemon.pid())?, BpfStats::read()?);
    let t0 = Instant::now();
    let value = f()?;
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, (ns1, _)) = (cpu_time(daemon.pid())?, BpfStats::read()?);
    let used = (cpu1 - cpu0).as_secs_f64() + (ns1 - ns0) as f64 / 1e9;
    Ok((used / (wall * cpus as f64), value))
}

/// The recorder benchmark's runs with the daemon.
struct RecorderRun {
    /// (agent CPU + BPF run time) / CPU available, under the mixed load.
    share: f64,
    /// Wall times of burn and ping-pong in the mixed load.
    walls: (f64, f64),
    rss_mib: f64,
    /// The same share and the wall time with the CPU-bound load alone.
    alone_share: f64,
    alone: f64,
}

fn recorder(
    ws: &Workspace,
    bin: &Path,
    out: &Path,
    args: &BenchArgs,
    cpus: usize,
) -> Result<String> {
    let burn = build_fixture(ws, out, "burn", &[])?;
    let pingpong = build_fixture(ws, out, "pingpong", &[])?;
    let dir = out.join("recorder");
    let stats = BpfStats::enable()?;
    // A window is 10 s: measure over several so each includes drains and symbolization.
    let settle = Duration::from_secs(12);
    let idle_period = Duration::from_secs(30);

    let daemon = Daemon::start(bin, &dir)?;
    std::thread::sleep(settle);
    let (idle, ()) = daemon_share(&daemon, cpus, || {
        std::thread::sleep(idle_period);
        Ok(())
    })?;
    let idle_rss = daemon.rss()? as f64 / (1024.0 * 1024.0);
    println!(
        "xtask: bench: recorder idle: {:.3}% of the CPU, RSS {idle_rss:.1} MiB",
        idle * 100.0
    );
    drop(daemon);

    mixed_load(&burn, &pingpong, args.iterations / 4, cpus)?; // warm-up
    let (mut burn_ratio, mut pp_ratio, mut loaded, mut rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_only_ratio, mut cpu_only_share) = (Vec::new(), Vec::new());
    for pair in 0..args.pairs {
        // The mixed load, then the CPU-bound load alone.
        let without = || -> Result<((f64, f64), f64)> {
            let mixed = mixed_load(&burn, &pingpong, args.iterations, cpus)?;
            let alone = time_workload(&burn, args.iterations, cpus)?.as_secs_f64();
            Ok((mixed, alone))
        };
        let with = || -> Result<RecorderRun> {
            let daemon = Daemon::start(bin, &dir)?;
            std::thread::sleep(settle);
            let (share, walls) = daemon_share(&daemon, cpus, || {
                mixed_load(&burn, &pingpong, args.iterations, cpus)
            })?;
            let rss_mib = daemon.rss()? as f64 / (1024.0 * 1024.0);
            let (alone_share, alone) = daemon_share(&daemon, cpus, || {
                Ok(time_workload(&burn, args.iterations, cpus)?.as_secs_f64())
            })?;
            Ok(RecorderRun {
                share,
                walls,
                rss_mib,
                alone_share,
                alone,
            })
        };
        let (
            (base, base_alone),
            RecorderRun {
                share,
                walls: w,
                rss_mib: r,
                alone_share,
                alone,
            },
        ) = if pair % 2 == 0 {
            let base = without()?;
            (base, with()?)
        } else {
            let w = with()?;
            (without()?, w)
        };
        cpu_only_ratio.push(base_alone / alone);
        cpu_only_share.push(alone_share);
        println!(
            "xtask: bench: recorder pair {pair}: burn {:.3} s without, {:.3} s with; \
             pingpong {:.3} s / {:.3} s; daemon {:.3}% of the CPU, RSS {r:.1} MiB",
            base.0,
            w.0,
            base.1,
            w.1,
            share * 100.0
        );
        // Throughput with / without = time without / time with.
        burn_ratio.push(base.0 / w.0);
        pp_ratio.push(base.1 / w.1);
        loaded.push(share);
        rss.push(r);
    }
    drop(stats);
    let mut text = String::from(
        "## Flight recorder: the daemon at its defaults (all modes, 19 Hz, 10 s windows, 15 min)\n\n",
    );
    writeln!(text, "| measure | median | range | n |\n|---|---|---|---|")?;
    row(
        &mut text,
        "idle host: (agent CPU + BPF run time) / CPU available",
        &[idle],
        |x| format!("{:.3}%", x * 100.0),
    );
    row(
        &mut text,
        "CPU-bound + context-switch load: (agent CPU + BPF run time) / CPU available",
        &loaded,
        |x| format!("{:.3}%", x * 100.0),
    );
    row(
        &mut text,
        "CPU-bound load alone: (agent CPU + BPF run time) / CPU available",
        &cpu_only_share,
        |x| format!("{:.3}%", x * 100.0),
    );
    row(
        &mut text,
        "CPU-bound load alone: throughput with/without the daemon (target >= 99%)",
        &cpu_only_ratio,
        |x| format!("{:.2}%", x * 100.0),
    );
    row(
        &mut text,
        "CPU-bound + context-switch load: burn throughput with/without the daemon",
        &burn_ratio,
        |x| format!("{:.2}%", x * 100.0),
    );
    row(
        &mut text,
        "ping-pong throughput with/without the daemon",
        &pp_ratio,
        |x| format!("{:.2}%", x * 100.0),
    );
    row(
        &mut text,
        "daemon RSS idle at steady state (target <= 64 MiB)",
        &[idle_rss],
        |x| format!("{x:.1} MiB"),
    );
    row(&mut text, "daemon RSS under load", &rss, |x| {
        format!("{x:.1} MiB")
    });
    text.push('\n');
    Ok(text)
}

/// `hindsight profile --pid PID` for 3 s at 99 Hz into `dir`, as folded and pprof.
fn profile_variant(bin: &Path, pid: u32, dir: &Path) -> Result<()> {
    run_checked(
        Command::new(bin)
            .args(["profile", "--pid", &pid.to_string(), "-d", "3", "-F", "99"])
            .args(["--format", "folded,pprof", "-o"])
            .arg(dir)
            .stdout(Stdio::null()),
    )
}

/// Regression detection and false alarms of `hindsight diff` on the variant fixture.
fn diff(ws: &Workspace, bin: &Path, out: &Path, args: &BenchArgs) -> Result<String> {
    let variant = build_fixture(ws, out, "variant", &[])?;
    let dir = out.join("diff");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let (mut found, mut false_alarms, mut changes, mut diff_ms) = (0, 0, Vec::new(), Vec::new());
    let (mut pprof_bytes, mut folded_bytes) = (Vec::new(), Vec::new());
    for round in 0..args.repeats {
        let mut sets: Vec<Vec<String>> = Vec::new();
        for (set, flag) in [
            ("normal", None),
            ("slow", Some("--slow-b")),
            ("again", None),
        ] {
            let mut workload = Command::new(&variant).args(flag).spawn()?;
            std::thread::sleep(Duration::from_millis(300));
            let mut files = Vec::new();
            for n in 0..3 {
                let run = dir.join(format!("r{round}-{set}-{n}"));
                let result = profile_variant(bin, workload.id(), &run);
                if result.is_err() {
                    let _ = workload.kill();
                    let _ = workload.wait();
                }
                result?;
                pprof_bytes.push(fs::metadata(run.join("cpu.pb.gz"))?.len() as f64);
                folded_bytes.push(fs::metadata(run.join("cpu.folded"))?.len() as f64);
                files.push(run.join("cpu.folded").to_string_lossy().into_owned());
            }
            let _ = workload.kill();
            let _ = workload.wait();
            sets.push(files);
        }
        for (against, is_slow) in [(1, true), (2, false)] {
            let report_dir = dir.join(format!("r{round}-diff{against}"));
            let start = Instant::now();
            let output = Command::new(bin)
                .arg("diff")
                .arg(sets[0].join(","))
                .arg(sets[against].join(","))
                .arg("-o")
                .arg(&report_dir)
                .output()?;
            diff_ms.push(start.elapsed().as_secs_f64() * 1e3);
            ensure!(
                output.status.success(),
                "hindsight diff failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let report: serde_json::Value =
                serde_json::from_slice(&fs::read(report_dir.join("diff.json"))?)?;
            let functions = report["functions"].as_array().cloned().unwrap_or_default();
            let flagged: Vec<&str> = functions
                .iter()
                .filter(|f| f["significant"] == true)
                .filter_map(|f| f["function"].as_str())
                .collect();
            if is_slow {
                found += usize::from(flagged == ["work_b"]);
                if let Some(b) = functions.iter().find(|f| f["function"] == "work_b") {
                    changes.push(b["change"].as_f64().unwrap_or(f64::NAN));
                }
            } else {
                false_alarms += usize::from(!flagged.is_empty());
            }
        }
    }
    let mut text = format!(
        "## Differential profiles: variant fixture (work_b 2x), 3 vs 3 replicates of 3 s at 99 Hz, {} rounds\n\n\
         normal vs slow: work_b alone flagged in {found} of {} rounds; normal vs normal: \
         something flagged in {false_alarms} of {} rounds\n\n\
         | measure | median | range | n |\n|---|---|---|---|\n",
        args.repeats, args.repeats, args.repeats
    );
    row(&mut text, "work_b change (×)", &changes, |v| {
        format!("{v:.2}")
    });
    row(&mut text, "hindsight diff time (ms)", &diff_ms, |v| {
        format!("{v:.0}")
    });
    row(&mut text, "cpu.pb.gz size (bytes)", &pprof_bytes, |v| {
        format!("{v:.0}")
    });
    row(&mut text, "cpu.folded size (bytes)", &folded_bytes, |v| {
        format!("{v:.0}")
    });
    text.push('\n');
    Ok(text)
}
