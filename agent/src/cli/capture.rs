//! `hindsight capture`: collect volatile state, configs and logs into a signed archive.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::capture::{CaptureRequest, Progress};
use crate::config::Config;
use crate::paths;

/// Preserve the crime scene: snapshot processes, sockets and system state (most volatile
/// first), then logs with their rotated siblings and configs (secrets redacted), into one
/// zstd-compressed tar with a MANIFEST.json, a SHA256SUMS member and a detached minisign
/// signature.
///
/// Prints the archive's path on stdout (a JSON object with --json); progress goes to
/// stderr when it is a terminal. The archive is OUTPUT_DIR/<host>-<UTC time>-<id>.tar.zst
/// with <archive>.minisig next to it. Check it without Hindsight:
///   minisign -Vm ARCHIVE -p hindsight.pub
///   tar --zstd -xf ARCHIVE && cd <archive name without .tar.zst> && sha256sum -c SHA256SUMS
///
/// Needs root to read every process and log. Without a signing key (create one with
/// `hindsight keygen`) capture refuses to run unless --unsigned is given.
///
/// Examples:
///   hindsight capture --reason "INC-2291 payment timeouts"
///   hindsight capture --reason drill --config ./hindsight.toml --output-dir /tmp/ev --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CaptureArgs {
    /// Why this capture is taken (an incident id, a symptom); recorded in the manifest.
    #[arg(long, short = 'r', value_name = "TEXT")]
    pub reason: String,

    /// Configuration file ([capture] section). Default: /etc/hindsight/hindsight.toml,
    /// or built-in defaults when that file does not exist.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Write the archive here instead of [capture] output_dir.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Sign with this minisign secret key instead of [capture] signing_key.
    #[arg(long, value_name = "FILE", conflicts_with = "unsigned")]
    pub signing_key: Option<PathBuf>,

    /// Capture without a signature. The archive's integrity can then only be checked
    /// against its own manifest, which anyone could rewrite.
    #[arg(long)]
    pub unsigned: bool,

    /// Print the result as one JSON object (archive, signature, id, sha256, size, ...).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CaptureArgs) -> Result<()> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(paths::DEFAULT_CONFIG), false),
    };
    let config = Config::load(&path, explicit)?;
    let config_path = (explicit || path.exists()).then_some(path);
    let mut capture = config.capture.clone();
    if let Some(dir) = args.output_dir {
        capture.output_dir = dir;
    }
    if let Some(key) = args.signing_key {
        capture.signing_key = key;
    }
    let tty = std::io::stderr().is_terminal();
    let mut show = |p: Progress| {
        let mut err = std::io::stderr().lock();
        let _ = match p {
            Progress::CollectorStarted { name, index, total } => {
                write!(err, "\r\x1b[K[{}/{total}] {name}...", index + 1)
            }
            Progress::CollectorFinished {
                name,
                members,
                skipped,
                millis,
            } => writeln!(
                err,
                "\r\x1b[K  {name}: {members} members, {skipped} skipped, {:.1}s",
                millis as f64 / 1000.0
            ),
            Progress::Signing => writeln!(err, "  signing..."),
        };
    };
    let mut request = CaptureRequest::new(args.reason, capture);
    request.config_path = config_path;
    request.unsigned = args.unsigned;
    let no_recorder = crate::recorder::Bundle::unavailable(
        "captured by `hindsight capture` without the daemon; \
         trigger through `hindsight agent` (`hindsight trigger`) to include its flight recorder",
    );
    request.extra_members = no_recorder.members;
    request.trigger.details.extend(no_recorder.details);
    request.extra_members.push(crate::history::cli_member());
    let staged = crate::history::staging::attach(&mut request, &config.preserve);
    if tty {
        request.progress = Some(&mut show);
    }
    let outcome = crate::capture::run(request).context("capture failed")?;
    if let Some(staged) = staged {
        staged.remove();
    }
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("{}", outcome.archive.display());
    }
    if tty {
        eprintln!(
            "captured {} members ({} skipped, see MANIFEST.json) in {:.1}s; {} bytes{}",
            outcome.members,
            outcome.skipped,
            outcome.duration_ms as f64 / 1000.0,
            outcome.size,
            if outcome.signature.is_some() {
                ", signed"
            } else {
                ", UNSIGNED"
            }
        );
    }
    Ok(())
}
