//! `cargo xtask bench --only history`: the exec history's cost and completeness. A loop
//! spawns `/bin/true` with a unique argv, timed without and with `hindsight agent`
//! recording; then a capture through the daemon must list every one of those commands,
//! with no event lost in the kernel or dropped by the ring's bounds. Reported: spawn rate
//! both ways, events recorded/lost, and the daemon's RSS.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

/// Spawns `n` `/bin/true hs-bench-<tag>-<i>`; returns the elapsed time.
fn spawn_loop(n: usize, tag: &str) -> Result<Duration> {
    let start = Instant::now();
    for i in 0..n {
        let status = Command::new("/bin/true")
            .arg(format!("hs-bench-{tag}-{i}"))
            .status()
            .context("running /bin/true")?;
        ensure!(status.success(), "/bin/true failed");
    }
    Ok(start.elapsed())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

pub fn history(bin: &Path, out: &Path, spawns: usize) -> Result<String> {
    let dir = out.join("history");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let d = dir.display();
    let keygen = Command::new(bin)
        .args(["keygen", "--secret-key"])
        .arg(dir.join("k.key"))
        .arg("--public-key")
        .arg(dir.join("k.pub"))
        .output()?;
    ensure!(keygen.status.success(), "keygen failed");
    let config = dir.join("hindsight.toml");
    fs::write(
        &config,
        format!(
            "[capture]\noutput_dir = \"{d}/out\"\nsigning_key = \"{d}/k.key\"\nconfigs = []\n\
             logs = []\njournal_seconds = 0\nmax_map_lines = 5\n\
             [api]\nsocket = \"{d}/s.sock\"\naudit_log = \"{d}/audit.jsonl\"\n"
        ),
    )?;

    let baseline = spawn_loop(spawns, "warmup").and_then(|_| spawn_loop(spawns, "without"))?;
    let mut agent = Command::new(bin)
        .args(["agent", "--config"])
        .arg(&config)
        .env("HINDSIGHT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .context("starting hindsight agent")?;
    let stderr = agent.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let Some(line) = lines.next() else {
            bail!("the daemon exited before it was listening");
        };
        let line = line?;
        if line.contains("exec history and the abnormal-exit trigger are off") {
            bail!("the daemon could not record: {line}");
        }
        if line.contains("listening on") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let result = (|| -> Result<String> {
        let with = spawn_loop(spawns, "with")?;
        let rss = rss_kib(agent.id())?;
        let trigger = Command::new(bin)
            .args(["trigger", "--socket"])
            .arg(dir.join("s.sock"))
            .args(["--reason", "bench", "--wait"])
            .output()?;
        ensure!(
            trigger.status.success(),
            "capture failed: {}",
            String::from_utf8_lossy(&trigger.stderr)
        );
        let archive = fs::read_dir(dir.join("out"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".tar.zst"))
            .context("no archive")?;
        let member = |name: &str| -> Result<Vec<u8>> {
            let o = Command::new("tar")
                .args(["--zstd", "-xOf"])
                .arg(&archive)
                .args(["--wildcards", &format!("*/extra/history/{name}")])
                .output()?;
            ensure!(o.status.success(), "extracting {name}");
            Ok(o.stdout)
        };
        let history = String::from_utf8(member("exec.jsonl")?)?;
        let recorded = history
            .lines()
            .filter(|l| l.contains("\"hs-bench-with-"))
            .count();
        let summary: serde_json::Value = serde_json::from_slice(&member("summary.json")?)?;
        let lost = summary["kernel"]["execs_lost"].as_u64().unwrap_or(u64::MAX);
        let dropped = summary["dropped_by_bounds"].as_u64().unwrap_or(u64::MAX);
        let rate = |d: Duration| spawns as f64 / d.as_secs_f64();
        let mut text = String::from("## Exec history\n\n");
        text += &format!(
            "{spawns} × `/bin/true ARG` spawned in a loop (one at a time), without and with \
             `hindsight agent` recording; then one capture through the daemon.\n\n\
             | | value |\n|---|---|\n\
             | spawn rate without the daemon | {:.0} /s |\n\
             | spawn rate with the daemon | {:.0} /s ({:+.1}%) |\n\
             | commands in the capture's history | {recorded} of {spawns} |\n\
             | lost in the kernel (ring buffer full) | {lost} |\n\
             | dropped by the ring's bounds | {dropped} |\n\
             | daemon RSS after the loop | {:.1} MiB |\n\n",
            rate(baseline),
            rate(with),
            (rate(with) / rate(baseline) - 1.0) * 100.0,
            rss as f64 / 1024.0,
        );
        ensure!(
            recorded == spawns && lost == 0 && dropped == 0,
            "the history is incomplete:\n{text}"
        );
        Ok(text)
    })();
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    result
}
