//! `hindsight trigger`: start captures or profiles on one or many agents through the
//! API, wait, download, and print a per-host result table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use http::Method;
use serde::Serialize;
use serde_json::{Value, json};

use crate::daemon::client::{self, ClientError, Target};
use crate::paths;

/// Start a capture (or a profile) on this host's agent, via its unix socket, or on
/// remote agents over mutual TLS, several at once.
///
/// Prints the job id per agent; with --wait, follows each job until it is done (progress
/// on stderr) and prints a result table (HOST, JOB, STATUS, RESULT); --download DIR
/// saves each archive and its .minisig signature in DIR (profiles: DIR/<host>-<id>/,
/// with cpu.svg, cpu.folded, summary.txt). Verify an archive with
/// `hindsight verify DIR/<archive> --public-key <the agent's signing.pub>`.
///
/// The exit status is non-zero when any agent refused or failed. A 429 (queue full or
/// rate limit) is reported with the agent's Retry-After.
///
/// Fleets: for more than a handful of hosts, drive this from your fleet tooling, e.g.
///   ansible all -m command -a 'hindsight trigger --reason INC-2291 --wait'
///   for h in $(cat hosts); do echo "https://$h:7443"; done | xargs -n 20 sh -c \
///     'hindsight trigger --ca ca.pem --cert me.pem --key me.key --reason INC-2291 \
///        --download ./evidence $(printf -- "--agent %s " "$@")' _
///
/// Examples:
///   hindsight trigger --reason "INC-2291" --wait
///   hindsight trigger --agent https://db-7:7443 --agent https://db-8:7443 \
///       --ca ca.pem --cert alice.pem --key alice.key --reason "INC-2291" --wait --download ./evidence
///   hindsight trigger --agent https://db-7:7443 --ca ca.pem --cert alice.pem --key alice.key \
///       --profile cpu --duration 30 --pid 4242 --download ./prof
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TriggerArgs {
    /// Why (an incident id, a symptom): recorded in the manifest and the audit log.
    /// Required for a capture.
    #[arg(long, short = 'r', value_name = "TEXT")]
    pub reason: Option<String>,

    /// A remote agent, https://HOST[:PORT] (port 7443 by default). Repeatable; all are
    /// contacted concurrently. Without --agent, the local socket is used.
    #[arg(long = "agent", value_name = "URL")]
    pub agents: Vec<String>,

    /// The local agent's socket.
    #[arg(long, value_name = "PATH", default_value = paths::DEFAULT_SOCKET, conflicts_with = "agents")]
    pub socket: PathBuf,

    /// CA certificate (PEM) that the agents' server certificates chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Our client certificate (PEM); its CN or a SAN must be in the agents' [api.roles].
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Wait until each job is done or failed, showing progress.
    #[arg(long)]
    pub wait: bool,

    /// Save the results in DIR (created); implies --wait.
    #[arg(long, value_name = "DIR")]
    pub download: Option<PathBuf>,

    /// Take a profile instead of a capture, with these modes (comma-separated: cpu,
    /// offcpu, locks, all; see `hindsight profile --help`).
    #[arg(long, value_name = "MODES", value_delimiter = ',')]
    pub profile: Vec<String>,

    /// Profile length in seconds.
    #[arg(
        long,
        short = 'd',
        value_name = "SECONDS",
        default_value_t = 10.0,
        requires = "profile"
    )]
    pub duration: f64,

    /// Profile this process (repeatable). No --pid/--unit/--cgroup: the whole host.
    #[arg(long = "pid", value_name = "PID", requires = "profile")]
    pub pids: Vec<u32>,

    /// Profile this systemd unit (repeatable).
    #[arg(long = "unit", value_name = "NAME", requires = "profile")]
    pub units: Vec<String>,

    /// Profile this cgroup v2 (repeatable).
    #[arg(long = "cgroup", value_name = "PATH", requires = "profile")]
    pub cgroups: Vec<PathBuf>,

    /// Give up waiting after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    pub timeout: u64,

    /// Print the results as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What happened on one agent.
#[derive(Debug, Serialize)]
struct HostResult {
    host: String,
    job: Option<String>,
    status: String,
    result: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    files: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Value>,
}

/// A request timeout for single exchanges (not for waiting).
const EXCHANGE: Duration = Duration::from_secs(60);

pub fn run(args: TriggerArgs) -> Result<()> {
    let profile = !args.profile.is_empty();
    if !profile && args.reason.is_none() {
        bail!("--reason is required for a capture (or use --profile MODES for a profile)");
    }
    let targets = targets(&args)?;
    let (path, body) = if profile {
        let mut body = json!({
            "modes": args.profile,
            "duration": args.duration,
            "pids": args.pids,
            "units": args.units,
            "cgroups": args.cgroups,
        });
        if let Some(reason) = &args.reason {
            body["reason"] = json!(reason);
        }
        ("/v1/profiles", body)
    } else {
        ("/v1/captures", json!({ "reason": args.reason }))
    };
    if let Some(dir) = &args.download {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let args = Arc::new(args);
    let results: Vec<HostResult> = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (index, target) in targets.into_iter().enumerate() {
            let args = Arc::clone(&args);
            let body = body.clone();
            tasks.spawn(async move { (index, one(target, path, body, &args).await) });
        }
        let mut results = Vec::new();
        while let Some(done) = tasks.join_next().await {
            results.push(done.expect("trigger task panicked"));
        }
        results.sort_by_key(|(index, _)| *index);
        results.into_iter().map(|(_, r)| r).collect()
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print_table(&results);
    }
    let failed = results
        .iter()
        .filter(|r| !matches!(r.status.as_str(), "done" | "queued" | "running"))
        .count();
    if failed > 0 {
        bail!("{failed} of {} agents did not succeed", results.len());
    }
    Ok(())
}

fn targets(args: &TriggerArgs) -> Result<Vec<Target>> {
    if args.agents.is_empty() {
        return Ok(vec![Target::Unix(args.socket.clone())]);
    }
    let (Some(ca), Some(cert), Some(key)) = (&args.ca, &args.cert, &args.key) else {
        bail!("--agent needs --ca, --cert and --key (mutual TLS)");
    };
    let tls = crate::daemon::tls::client_config(ca, cert, key).context("TLS client setup")?;
    args.agents
        .iter()
        .map(|url| Target::https(url, Arc::clone(&tls)).map_err(Into::into))
        .collect()
}

async fn one(target: Target, path: &str, body: Value, args: &TriggerArgs) -> HostResult {
    let host = target.name();
    let mut result = HostResult {
        host: host.clone(),
        job: None,
        status: "refused".into(),
        result: String::new(),
        files: Vec::new(),
        details: None,
    };
    let created = match client::json(&target, Method::POST, path, Some(&body), EXCHANGE).await {
        Ok(v) => v,
        Err(err) => {
            result.result = describe(&err);
            if matches!(
                err,
                ClientError::Connect { .. }
                    | ClientError::Handshake { .. }
                    | ClientError::Timeout { .. }
            ) {
                result.status = "unreachable".into();
            }
            return result;
        }
    };
    let Some(id) = created["id"].as_str().map(str::to_owned) else {
        result.result = format!("unexpected answer: {created}");
        return result;
    };
    result.job = Some(id.clone());
    result.status = "queued".into();
    eprintln!("[{host}] {id}: queued");
    if !(args.wait || args.download.is_some()) {
        result.result = format!("{path}/{id}");
        return result;
    }
    let job_path = format!("{path}/{id}");
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut last = String::new();
    let job = loop {
        match client::json(&target, Method::GET, &job_path, None, EXCHANGE).await {
            Ok(job) => {
                let status = job["status"].as_str().unwrap_or("?").to_owned();
                let shown = match job["progress"].as_str() {
                    Some(p) => format!("{status}: {p}"),
                    None => status.clone(),
                };
                if shown != last {
                    eprintln!("[{host}] {id}: {shown}");
                    last = shown;
                }
                if matches!(status.as_str(), "done" | "failed") {
                    break job;
                }
            }
            Err(err) => {
                result.status = "lost".into();
                result.result = describe(&err);
                return result;
            }
        }
        if Instant::now() > deadline {
            result.status = "timeout".into();
            result.result = format!("not done after {} s", args.timeout);
            return result;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    result.status = job["status"].as_str().unwrap_or("?").to_owned();
    if result.status == "failed" {
        result.result = job["error"].as_str().unwrap_or("failed").to_owned();
        result.details = Some(job);
        return result;
    }
    result.result = match job.get("capture") {
        Some(c) => format!(
            "{} ({}, sha256 {}…)",
            c["archive"].as_str().unwrap_or("?"),
            human_bytes(c["size"].as_u64().unwrap_or(0)),
            c["sha256"]
                .as_str()
                .unwrap_or("?")
                .chars()
                .take(12)
                .collect::<String>()
        ),
        None => job["summary"]
            .as_str()
            .and_then(|s| s.lines().find(|l| l.starts_with("sampled")))
            .unwrap_or("profile done")
            .to_owned(),
    };
    if let Some(dir) = &args.download {
        match save(&target, &job_path, &job, dir).await {
            Ok(files) => result.files = files,
            Err(err) => {
                result.status = "download failed".into();
                result.result = describe(&err);
            }
        }
    }
    result.details = Some(job);
    result
}

async fn save(
    target: &Target,
    job_path: &str,
    job: &Value,
    dir: &Path,
) -> Result<Vec<PathBuf>, ClientError> {
    let mut files = Vec::new();
    if let Some(capture) = job.get("capture") {
        let mut wanted = vec![("archive", capture["archive"].as_str())];
        wanted.push(("signature", capture["signature"].as_str()));
        for (what, name) in wanted {
            let Some(name) = name else { continue };
            // A server-chosen name: keep only its last component.
            let name = Path::new(name).file_name().unwrap_or_default();
            let dest = dir.join(name);
            client::download(target, &format!("{job_path}/{what}"), &dest, EXCHANGE * 10).await?;
            files.push(dest);
        }
    } else {
        let id = job["id"].as_str().unwrap_or("profile");
        let host: String = target
            .name()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let sub = dir.join(format!("{}-{id}", host.trim_matches('-')));
        std::fs::create_dir_all(&sub).map_err(|source| ClientError::Write {
            path: sub.clone(),
            source,
        })?;
        for (what, name) in [
            ("svg", "cpu.svg"),
            ("folded", "cpu.folded"),
            ("summary", "summary.txt"),
        ] {
            let dest = sub.join(name);
            client::download(target, &format!("{job_path}/{what}"), &dest, EXCHANGE * 10).await?;
            files.push(dest);
        }
    }
    Ok(files)
}

fn describe(err: &ClientError) -> String {
    let mut text = crate::daemon::error_chain(err);
    if let ClientError::Status {
        retry_after: Some(secs),
        ..
    } = err
    {
        text.push_str(&format!(" (retry after {secs} s)"));
    }
    text
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn print_table(results: &[HostResult]) {
    let width = |f: fn(&HostResult) -> usize, title: &str| {
        results.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let host_w = width(|r| r.host.len(), "HOST");
    let job_w = width(|r| r.job.as_deref().unwrap_or("-").len(), "JOB");
    let status_w = width(|r| r.status.len(), "STATUS");
    println!(
        "{:host_w$}  {:job_w$}  {:status_w$}  RESULT",
        "HOST", "JOB", "STATUS"
    );
    for r in results {
        println!(
            "{:host_w$}  {:job_w$}  {:status_w$}  {}",
            r.host,
            r.job.as_deref().unwrap_or("-"),
            r.status,
            r.result
        );
        for file in &r.files {
            println!(
                "{:host_w$}  {:job_w$}  {:status_w$}  saved {}",
                "",
                "",
                "",
                file.display()
            );
        }
    }
}
