//! Logs: every `[capture] logs` glob match plus its rotated siblings (`x.log.1`,
//! `x.log.2.gz`, `x.log-20261201`, `x.log-20261201.zst`, ...), under `logs/<absolute
//! path>`. Live files over the cap keep their newest end; compressed siblings are stored
//! as they are. Then the systemd journal of the last `journal_seconds`, when journalctl
//! exists.

use std::collections::HashSet;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use regex::Regex;

use super::{Collector, Context, FileOpts, Keep, MemberMeta, Sink, expand_glob, member_for};
use crate::capture::archive::ArchiveError;

pub struct Logs;

/// Suffixes of compressed rotations.
const COMPRESSED: &[&str] = &["gz", "xz", "zst", "bz2", "lz4", "zip", "lzma"];

pub fn is_compressed(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| COMPRESSED.contains(&e))
}

/// The rotated siblings of `log` in its directory, newest first (by mtime), without
/// `log` itself. Recognizes logrotate's numeric (`x.log.1`, `x.log.2.gz`) and date
/// (`x.log-20261201`, `x-20261201.log`) schemes and `.old`.
pub fn rotated_siblings(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let comp = COMPRESSED.join("|");
    let mut patterns = vec![format!(
        r"^{}(?:[.\-_]\d+(?:[.\-_]\d+)*|\.old)(?:\.(?:{comp}))?$",
        regex::escape(name)
    )];
    // `extension` logrotate option: the date or number goes before the extension.
    if let Some((stem, ext)) = name.rsplit_once('.')
        && !stem.is_empty()
    {
        patterns.push(format!(
            r"^{}[.\-_]\d+(?:[.\-_]\d+)*\.{}(?:\.(?:{comp}))?$",
            regex::escape(stem),
            regex::escape(ext)
        ));
    }
    let res: Vec<Regex> = patterns.iter().filter_map(|p| Regex::new(p).ok()).collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(i64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let n = n.to_str()?;
            if n == name || !res.iter().any(|re| re.is_match(n)) {
                return None;
            }
            let mtime = e.path().symlink_metadata().map(|m| m.mtime()).unwrap_or(0);
            Some((mtime, e.path()))
        })
        .collect();
    found.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| natural_key(&a.1).cmp(&natural_key(&b.1)))
    });
    found.into_iter().map(|(_, p)| p).collect()
}

/// Orders `x.log.2` before `x.log.10` when mtimes tie.
fn natural_key(p: &Path) -> (usize, String) {
    let s = p.to_string_lossy().into_owned();
    (s.len(), s)
}

impl Collector for Logs {
    fn name(&self) -> &'static str {
        "logs"
    }

    fn collect(&self, ctx: &Context<'_>, sink: &mut dyn Sink) -> Result<(), ArchiveError> {
        let mut seen = HashSet::new();
        for pattern in &ctx.config.logs {
            for path in expand_glob(pattern, sink) {
                let siblings = rotated_siblings(&path);
                for p in std::iter::once(path).chain(siblings) {
                    if !seen.insert(p.clone()) {
                        continue;
                    }
                    if let Some(rule) = ctx.exclusions.matches(&p) {
                        sink.skip(&p.display().to_string(), &format!("excluded by {rule}"));
                        continue;
                    }
                    let opts = FileOpts {
                        cap: ctx.config.max_file_bytes,
                        keep: Keep::Tail,
                        redact: None,
                        compressed: is_compressed(&p),
                    };
                    sink.add_file(&member_for("logs", &p), &p, &opts)?;
                }
            }
        }
        journal(ctx, sink)
    }
}

/// `journalctl --since -Ns`, spooled to an unnamed file (the journal of a busy hour can be
/// large), keeping the newest end when over the cap.
fn journal(ctx: &Context<'_>, sink: &mut dyn Sink) -> Result<(), ArchiveError> {
    const MEMBER: &str = "logs/journal.txt";
    let secs = ctx.config.journal_seconds;
    if secs == 0 {
        sink.skip("journal", "capture.journal_seconds is 0");
        return Ok(());
    }
    let since = format!("-{secs}s");
    let source = format!("command: journalctl --since {since} --no-pager -o short-iso-precise");
    let mut spool = match ctx.spool() {
        Ok(f) => f,
        Err(err) => {
            sink.skip(&source, &format!("cannot create spool file: {err}"));
            return Ok(());
        }
    };
    let child = Command::new("journalctl")
        .args([
            "--since",
            &since,
            "--no-pager",
            "-q",
            "-o",
            "short-iso-precise",
        ])
        .stdin(Stdio::null())
        .stdout(match spool.try_clone() {
            Ok(f) => Stdio::from(f),
            Err(err) => {
                sink.skip(&source, &format!("cannot clone spool file: {err}"));
                return Ok(());
            }
        })
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            sink.skip(
                "journal",
                "journalctl is not installed (no systemd journal on this host)",
            );
            return Ok(());
        }
        Err(err) => {
            sink.skip(&source, &format!("cannot run journalctl: {err}"));
            return Ok(());
        }
    };
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(err) => {
            sink.skip(&source, &format!("journalctl failed: {err}"));
            return Ok(());
        }
    };
    let mut meta = MemberMeta::from_source(&source);
    if !out.status.success() {
        meta.notes.push(format!(
            "journalctl {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let size = spool.seek(SeekFrom::End(0)).unwrap_or(0);
    let cap = ctx.config.max_file_bytes.min(sink.budget_left());
    let start = size.saturating_sub(cap);
    if start > 0 {
        meta.notes
            .push(format!("truncated: kept the newest {cap} of {size} bytes"));
    }
    if spool.seek(SeekFrom::Start(start)).is_err() {
        sink.skip(&source, "spool file could not be rewound");
        return Ok(());
    }
    let len = size - start;
    sink.add_reader(MEMBER, &mut (&mut spool).take(len), len, meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rotated_siblings_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let names = [
            "app.log",
            "app.log.1",
            "app.log.2.gz",
            "app.log.10.gz",
            "app.log-20261201",
            "app.log-20261130.zst",
            "app-20261129.log",
            "app.log.old",
            // Not siblings:
            "app.logger",
            "app.log.bak",
            "other.log.1",
            "myapp.log.1",
            "app.log.1.swp",
        ];
        for n in names {
            std::fs::write(d.join(n), n).unwrap();
        }
        let got: HashSet<String> = rotated_siblings(&d.join("app.log"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let want: HashSet<String> = [
            "app.log.1",
            "app.log.2.gz",
            "app.log.10.gz",
            "app.log-20261201",
            "app.log-20261130.zst",
            "app-20261129.log",
            "app.log.old",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn siblings_are_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (n, age) in [("x.log.1", 10), ("x.log.2.gz", 20), ("x.log.3.gz", 30)] {
            let p = d.join(n);
            std::fs::write(&p, n).unwrap();
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age * 60);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let got = rotated_siblings(&d.join("x.log"));
        let names: Vec<_> = got
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["x.log.1", "x.log.2.gz", "x.log.3.gz"]);
    }

    #[test]
    fn compressed_suffixes() {
        assert!(is_compressed(Path::new("/v/x.log.2.gz")));
        assert!(is_compressed(Path::new("/v/x.log-1.zst")));
        assert!(!is_compressed(Path::new("/v/x.log.1")));
    }
}
