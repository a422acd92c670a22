//! The staging area of `hindsight preserve`: logrotate's `prerotate` hook copies a log
//! that is about to be rotated away here, with its SHA-256 recorded at copy time, and the
//! next capture (CLI or daemon) includes every staged file under `preserved/`, re-hashing
//! it and noting in the manifest whether the hash still matches.
//!
//! Layout: `<staging_dir>/<UTC time>-<pid>-<name>` (the copy, mode 0600) and the same name
//! with `.json` appended (a [`Staged`] record). The record is written last, after the copy is synced
//! and renamed into place, so a copy without a record is an interrupted preserve and is
//! ignored (and removed by the next preserve).
//!
//! Retention: a staged file is removed once a capture that includes it is committed; it
//! stays if the capture fails or skipped it (total size cap). The area is bounded by
//! `[preserve] max_total_bytes`: preserving removes the oldest staged files to make room.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::capture::archive::ArchiveError;
use crate::capture::collect::{Collector, Context, MemberMeta, Sink};
use crate::paths;

/// `[preserve]`: the staging area of `hindsight preserve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreserveConfig {
    /// Where preserved logs wait for the next capture. Default: /var/lib/hindsight/staging.
    pub staging_dir: PathBuf,
    /// Largest part of one log kept (its newest end). Default: 64 MiB.
    pub max_file_bytes: u64,
    /// Most bytes kept in the staging area; the oldest staged files are removed to make
    /// room. Default: 256 MiB.
    pub max_total_bytes: u64,
}

impl Default for PreserveConfig {
    fn default() -> Self {
        Self {
            staging_dir: PathBuf::from(paths::DEFAULT_STAGING_DIR),
            max_file_bytes: 64 * 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
        }
    }
}

impl PreserveConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_file_bytes == 0 {
            return Err((
                "preserve.max_file_bytes".into(),
                "must be greater than 0".into(),
            ));
        }
        if self.max_total_bytes < self.max_file_bytes {
            return Err((
                "preserve.max_total_bytes".into(),
                format!("is less than max_file_bytes ({})", self.max_file_bytes),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PreserveError {
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The record kept next to each staged copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Staged {
    /// The log's path when it was preserved.
    pub source: String,
    /// UTC, RFC 3339.
    pub preserved_at: String,
    /// Bytes copied (the log's newest end when it was larger than the cap).
    pub size: u64,
    /// The log's size when it was preserved.
    pub source_size: u64,
    /// SHA-256 of the copy, computed while copying.
    pub sha256: String,
    /// Name of the copy in the staging directory.
    pub file: String,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PreserveError {
    let path = path.to_owned();
    move |source| PreserveError::Io { what, path, source }
}

/// Copies `source` into the staging area. Returns the record.
pub fn preserve(config: &PreserveConfig, source: &Path) -> Result<Staged, PreserveError> {
    let dir = &config.staging_dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating the staging directory", dir))?;
    // logrotate runs this as root, but the daemon (its own user under systemd) reads and
    // removes what is staged: hand everything to the owner of the state directory.
    let owner = dir.parent().and_then(|p| fs::metadata(p).ok());
    let give = |path: &Path| {
        if let Some(m) = &owner
            && let Err(err) = std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()))
        {
            tracing::debug!("chown {}: {err}", path.display());
        }
    };
    give(dir);
    remove_incomplete(dir);
    let mut input = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(source)
        .map_err(io("opening", source))?;
    let meta = input.metadata().map_err(io("reading", source))?;
    if !meta.is_file() {
        return Err(PreserveError::NotAFile {
            path: source.to_owned(),
        });
    }
    let source_size = meta.len();
    let size = source_size.min(config.max_file_bytes);
    input
        .seek(SeekFrom::Start(source_size - size))
        .map_err(io("reading", source))?;
    make_room(config, size);

    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
        ))
        .expect("UTC time formats");
    let base = source
        .file_name()
        .map(|n| n.to_string_lossy().replace(|c: char| c.is_control(), "_"))
        .unwrap_or_else(|| "log".into());
    let name = format!("{stamp}-{}-{base}", std::process::id());
    let tmp = dir.join(format!(".{name}.partial"));
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    let mut hasher = Sha256::new();
    let mut copied = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut reader = (&mut input).take(size);
    let result = (|| -> std::io::Result<()> {
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            copied += n as u64;
        }
        out.sync_all()
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io("copying", source)(err));
    }
    give(&tmp);
    let final_path = dir.join(&name);
    fs::rename(&tmp, &final_path).map_err(io("renaming", &final_path))?;
    let staged = Staged {
        source: source.display().to_string(),
        preserved_at: now
            .format(&time::format_description::well_known::Rfc3339)
            .expect("UTC time formats"),
        size: copied,
        source_size,
        sha256: hex::encode(hasher.finalize()),
        file: name.clone(),
    };
    write_record(dir, &name, &staged, give)?;
    Ok(staged)
}

fn write_record(
    dir: &Path,
    name: &str,
    staged: &Staged,
    give: impl Fn(&Path),
) -> Result<(), PreserveError> {
    let tmp = dir.join(format!(".{name}.json.partial"));
    let path = dir.join(format!("{name}.json"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(&serde_json::to_vec_pretty(staged).expect("serializes"))
        .and_then(|()| f.sync_all())
        .map_err(io("writing", &tmp))?;
    give(&tmp);
    fs::rename(&tmp, &path).map_err(io("renaming", &path))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Every complete staged file, oldest first.
pub fn list(dir: &Path) -> Vec<Staged> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut staged: Vec<Staged> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".json") && !n.starts_with('.')
        })
        .filter_map(|e| serde_json::from_slice::<Staged>(&fs::read(e.path()).ok()?).ok())
        .filter(|s| !s.file.contains('/') && dir.join(&s.file).is_file())
        .collect();
    staged.sort_by(|a, b| a.file.cmp(&b.file));
    staged
}

/// Removes a staged copy and its record.
pub fn remove(dir: &Path, staged: &Staged) {
    for path in [
        dir.join(format!("{}.json", staged.file)),
        dir.join(&staged.file),
    ] {
        if let Err(err) = fs::remove_file(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove staged {}: {err}", path.display());
        }
    }
}

/// Removes copies without a record and temporary files (interrupted preserves).
fn remove_incomplete(dir: &Path) {
    let complete: Vec<String> = list(dir).into_iter().map(|s| s.file).collect();
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stem = name.strip_suffix(".json").unwrap_or(&name);
        let partial = name.starts_with('.') && name.ends_with(".partial");
        // A copy renamed in place whose record is being written right now is only
        // seconds old: leave anything younger than a minute.
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 60);
        if old && (partial || !complete.iter().any(|c| c == stem)) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Removes the oldest staged files until `incoming` more bytes fit.
fn make_room(config: &PreserveConfig, incoming: u64) {
    let staged = list(&config.staging_dir);
    let mut total: u64 = staged.iter().map(|s| s.size).sum();
    for s in staged {
        if total + incoming <= config.max_total_bytes {
            break;
        }
        tracing::warn!(
            "staging area full: removing {} (preserved from {} at {})",
            s.file,
            s.source,
            s.preserved_at
        );
        remove(&config.staging_dir, &s);
        total -= s.size;
    }
}

/// The staged files a capture included, removed once the capture is committed.
#[derive(Debug, Clone, Default)]
pub struct Included {
    dir: PathBuf,
    files: Arc<Mutex<Vec<Staged>>>,
}

impl Included {
    /// Call after the capture was committed.
    pub fn remove(&self) {
        let files = std::mem::take(&mut *self.files.lock().unwrap_or_else(|p| p.into_inner()));
        for s in &files {
            remove(&self.dir, s);
        }
        if !files.is_empty() {
            tracing::info!(
                "removed {} preserved logs from the staging area: they are in the capture",
                files.len()
            );
        }
    }
}

/// The collector that adds staged files to a capture (after the standard ones).
pub struct StagedCollector {
    dir: PathBuf,
    staged: Vec<Staged>,
    included: Included,
}

impl StagedCollector {
    /// `None` when nothing is staged.
    pub fn new(config: &PreserveConfig) -> Option<(Self, Included)> {
        let staged = list(&config.staging_dir);
        if staged.is_empty() {
            return None;
        }
        let included = Included {
            dir: config.staging_dir.clone(),
            files: Arc::default(),
        };
        Some((
            Self {
                dir: config.staging_dir.clone(),
                staged,
                included: included.clone(),
            },
            included,
        ))
    }
}

impl Collector for StagedCollector {
    fn name(&self) -> &'static str {
        "preserved"
    }

    fn collect(&self, _ctx: &Context<'_>, sink: &mut dyn Sink) -> Result<(), ArchiveError> {
        for s in &self.staged {
            let path = self.dir.join(&s.file);
            let label = path.display().to_string();
            let now = match sha256_file(&path) {
                Ok(h) => h,
                Err(err) => {
                    sink.skip(&label, &format!("unreadable: {err}"));
                    continue;
                }
            };
            let Ok(mut file) = File::open(&path) else {
                sink.skip(&label, "vanished");
                continue;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len > sink.budget_left() {
                sink.skip(
                    &label,
                    "the archive's total size cap is reached; kept staged",
                );
                continue;
            }
            let verdict = if now == s.sha256 {
                "matches".to_owned()
            } else {
                format!("DOES NOT MATCH (now {now}): the staged copy changed")
            };
            let mut notes = vec![
                format!(
                    "preserved from {} at {} by `hindsight preserve` (before log rotation)",
                    s.source, s.preserved_at
                ),
                format!(
                    "sha256 recorded at preservation {}; staged copy's hash {verdict}",
                    s.sha256
                ),
            ];
            if s.size < s.source_size {
                notes.push(format!(
                    "newest {} of {} bytes ([preserve] max_file_bytes)",
                    s.size, s.source_size
                ));
            }
            let meta = MemberMeta {
                source: Some(s.source.clone()),
                notes,
                ..MemberMeta::default()
            };
            sink.add_reader(&format!("preserved/{}", s.file), &mut file, len, meta)?;
            self.included
                .files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(s.clone());
        }
        Ok(())
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Adds the staged files to `request` (after the standard collectors, or the ones it
/// already has). Returns what to remove once the capture is committed.
pub fn attach(
    request: &mut crate::capture::CaptureRequest<'_>,
    config: &PreserveConfig,
) -> Option<Included> {
    let (collector, included) = StagedCollector::new(config)?;
    let mut collectors = request
        .collectors
        .take()
        .unwrap_or_else(crate::capture::collect::standard);
    collectors.push(Box::new(collector));
    request.collectors = Some(collectors);
    Some(included)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preserve_copies_hashes_and_keeps_the_newest_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        fs::write(&log, "0123456789abcdef").unwrap();
        let config = PreserveConfig {
            staging_dir: dir.path().join("staging"),
            max_file_bytes: 6,
            max_total_bytes: 12,
        };
        let s = preserve(&config, &log).unwrap();
        assert_eq!(s.size, 6);
        assert_eq!(s.source_size, 16);
        let copy = fs::read(config.staging_dir.join(&s.file)).unwrap();
        assert_eq!(copy, b"abcdef");
        assert_eq!(s.sha256, hex::encode(Sha256::digest(b"abcdef")));
        assert_eq!(list(&config.staging_dir), std::slice::from_ref(&s));

        // Three copies of 6 bytes do not fit in 12: the oldest goes.
        let s2 = preserve(&config, &log).unwrap();
        let s3 = preserve(&config, &log).unwrap();
        let names: Vec<String> = list(&config.staging_dir)
            .into_iter()
            .map(|s| s.file)
            .collect();
        assert_eq!(names, [s2.file, s3.file]);
    }

    #[test]
    fn preserve_refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = PreserveConfig {
            staging_dir: dir.path().join("staging"),
            ..PreserveConfig::default()
        };
        let err = preserve(&config, dir.path()).unwrap_err();
        assert!(matches!(err, PreserveError::NotAFile { .. }), "{err}");
        let err = preserve(&config, &dir.path().join("missing.log")).unwrap_err();
        assert!(err.to_string().contains("missing.log"), "{err}");
    }
}
