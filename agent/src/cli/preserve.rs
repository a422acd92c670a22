//! `hindsight preserve`: copy logs that are about to be rotated into the staging area
//! that the next capture includes (see `crate::history::staging`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::config::Config;
use crate::history::staging;
use crate::paths;

/// Keep a log that is about to be rotated away for the next capture: copy it (its newest
/// [preserve] max_file_bytes) into the staging area with its SHA-256, so that rotation
/// during an incident loses nothing. The next capture, by `hindsight capture` or by the
/// daemon, includes every staged file under preserved/ in the archive, re-hashes it and
/// notes in MANIFEST.json whether the hash still matches; once that capture is committed
/// the staged copies are removed (a failed capture leaves them staged). The staging area
/// is bounded by [preserve] max_total_bytes: the oldest copies make room for new ones.
///
/// Meant for logrotate's prerotate hook. Do not use `sharedscripts` in that block, so
/// that the hook runs once per log with the log's path as $1:
///
///   /var/log/app/*.log {
///       daily
///       rotate 7
///       compress
///       delaycompress
///       prerotate
///           /usr/bin/hindsight preserve -- "$1"
///       endscript
///   }
///
/// If preserving fails (exit status 1), logrotate leaves that log in place rather than
/// rotate it, which is the safe side during an incident.
///
/// Examples:
///   hindsight preserve /var/log/app/app.log
///   hindsight preserve --staging-dir /tmp/staging /var/log/syslog /var/log/auth.log
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PreserveArgs {
    /// Logs to preserve (regular files; symlinks are refused).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Configuration file ([preserve] section). Default: /etc/hindsight/hindsight.toml,
    /// or built-in defaults when that file does not exist.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Stage here instead of [preserve] staging_dir (default /var/lib/hindsight/staging).
    #[arg(long, value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,
}

pub fn run(args: PreserveArgs) -> Result<()> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(paths::DEFAULT_CONFIG), false),
    };
    let mut config = Config::load(&path, explicit)?.preserve;
    if let Some(dir) = args.staging_dir {
        config.staging_dir = dir;
    }
    let mut failed = 0;
    for file in &args.files {
        match staging::preserve(&config, file) {
            Ok(s) => println!(
                "{} -> {} ({} bytes, sha256 {})",
                file.display(),
                config.staging_dir.join(&s.file).display(),
                s.size,
                s.sha256
            ),
            Err(err) => {
                failed += 1;
                eprintln!("hindsight: cannot preserve {}: {err:#}", file.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} files not preserved", args.files.len());
    }
    Ok(())
}
