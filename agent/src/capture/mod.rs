//! Evidence capture: trigger -> collectors -> archive writer -> manifest -> signer.
//!
//! A [`CaptureRequest`] (from the CLI today; the daemon and the flight recorder later)
//! names the reason, the trigger and the config, and may carry extra members. [`run`]
//! locks the output directory, cleans up after crashed runs, streams every collector's
//! members into `.<name>.partial` (tar -> zstd, each member hashed), appends
//! MANIFEST.json and SHA256SUMS, fsyncs, signs (minisign), renames into place, fsyncs the
//! directory and applies retention. See ARCHITECTURE.md, "Evidence capture".

pub mod archive;
pub mod collect;
pub mod manifest;
pub mod redact;
pub mod sign;
pub mod store;
pub mod verify;

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use self::archive::{ArchiveError, ArchiveWriter};
use self::collect::{Collector, Context, Exclusions, MemberMeta, Sink as _};
use self::manifest::{AgentInfo, CollectorRun, ConfigInfo, HostIdentity, Manifest, Trigger};
use self::redact::Redactor;
use self::store::{ARCHIVE_SUFFIX, OutputDir, SIG_SUFFIX};
use crate::config::CaptureConfig;

/// Why a capture failed. Archive members already streamed are lost only with the
/// temporary file of a capture that cannot complete (a full disk); anything a collector
/// could not read is a recorded skip, never one of these.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "no signing key at {path}: create one with `hindsight keygen --secret-key {path} --public-key hindsight.pub`, or pass --unsigned to capture without a signature"
    )]
    NoSigningKey { path: PathBuf },
    #[error("signing key")]
    Key(#[source] sign::SignError),
    #[error("invalid capture settings")]
    Settings(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("output directory {path}")]
    OutputDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no space left on the device holding {dir}; the incomplete archive was removed")]
    DiskFull {
        dir: PathBuf,
        #[source]
        source: ArchiveError,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("syncing or renaming {path}")]
    Commit {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signing {path}")]
    Sign {
        path: PathBuf,
        #[source]
        source: sign::SignError,
    },
}

/// An extra member supplied by the caller (e.g. the flight recorder's ring buffer).
#[derive(Debug, Clone)]
pub struct ExtraMember {
    /// Path under `extra/` in the archive.
    pub name: String,
    pub data: Vec<u8>,
    pub notes: Vec<String>,
}

/// Who/how/why a capture was started.
#[derive(Debug, Clone)]
pub struct TriggerInfo {
    /// `cli`, `api`, `schedule`, `flight-recorder`, ...
    pub how: String,
    /// Overrides the user detected from the process credentials.
    pub who: Option<String>,
    pub details: BTreeMap<String, String>,
}

impl Default for TriggerInfo {
    fn default() -> Self {
        Self {
            how: "cli".into(),
            who: None,
            details: BTreeMap::new(),
        }
    }
}

/// Progress of a running capture, for a terminal display or a log.
#[derive(Debug, Clone)]
pub enum Progress {
    CollectorStarted {
        name: String,
        index: usize,
        total: usize,
    },
    CollectorFinished {
        name: String,
        members: usize,
        skipped: usize,
        millis: u64,
    },
    Signing,
}

/// Everything a capture needs.
pub struct CaptureRequest<'a> {
    pub reason: String,
    pub trigger: TriggerInfo,
    pub config: CaptureConfig,
    /// The config file the settings came from, for the manifest (None: defaults).
    pub config_path: Option<PathBuf>,
    /// No signature; must be asked for explicitly.
    pub unsigned: bool,
    pub extra_members: Vec<ExtraMember>,
    /// Replaces the standard collectors (tests, the flight recorder's lean capture).
    pub collectors: Option<Vec<Box<dyn Collector>>>,
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
}

impl CaptureRequest<'_> {
    pub fn new(reason: impl Into<String>, config: CaptureConfig) -> Self {
        Self {
            reason: reason.into(),
            trigger: TriggerInfo::default(),
            config,
            config_path: None,
            unsigned: false,
            extra_members: Vec::new(),
            collectors: None,
            progress: None,
        }
    }
}

/// What a finished capture produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureOutcome {
    pub id: String,
    pub archive: PathBuf,
    pub signature: Option<PathBuf>,
    pub sha256: String,
    pub size: u64,
    pub manifest_sha256: String,
    pub members: usize,
    pub skipped: usize,
    pub duration_ms: u64,
    /// Milliseconds from start to the end of the process and socket snapshot.
    pub volatile_snapshot_ms: u64,
    /// Old archives removed by retention, and leftovers of crashed runs.
    pub removed: Vec<PathBuf>,
}

/// Runs one capture. See the module docs for the steps.
pub fn run(mut req: CaptureRequest<'_>) -> Result<CaptureOutcome, CaptureError> {
    let started = Instant::now();
    let cfg = &req.config;
    // Fail fast on the key, before anything is collected.
    let secret_key = if req.unsigned {
        None
    } else if !cfg.signing_key.exists() {
        return Err(CaptureError::NoSigningKey {
            path: cfg.signing_key.clone(),
        });
    } else {
        Some(sign::load_secret_key(&cfg.signing_key).map_err(CaptureError::Key)?)
    };
    let redactor = Redactor::new(&cfg.redact).map_err(|e| CaptureError::Settings(Box::new(e)))?;
    let exclusions = Exclusions::new(cfg).map_err(|e| CaptureError::Settings(Box::new(e)))?;

    let out_err = |source| CaptureError::OutputDir {
        path: cfg.output_dir.clone(),
        source,
    };
    let out = OutputDir::open(&cfg.output_dir).map_err(out_err)?;
    let mut removed = out.clean_leftovers().map_err(out_err)?;

    let now = time::OffsetDateTime::now_utc();
    let id = new_id();
    let host = host_identity();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .expect("UTC time formats");
    let root = format!("{}-{stamp}-{}", sanitize(&host.hostname), &id[..8]);
    let archive_name = format!("{root}{ARCHIVE_SUFFIX}");
    let (tmp_path, file) = out.create_partial(&archive_name).map_err(out_err)?;

    let result = write_archive(
        &mut req,
        &out,
        &root,
        &archive_name,
        &id,
        host,
        now,
        file,
        &redactor,
        &exclusions,
    );
    let (finished, manifest, volatile_ms) = match result {
        Ok(r) => r,
        Err(err) => {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(match err {
                CaptureError::Archive(a) if a.io().raw_os_error() == Some(libc::ENOSPC) => {
                    CaptureError::DiskFull {
                        dir: out.dir.clone(),
                        source: a,
                    }
                }
                other => other,
            });
        }
    };
    let cfg = &req.config;
    let commit_err = |path: &Path| {
        let path = path.to_owned();
        move |source| CaptureError::Commit { path, source }
    };
    let cleanup = |e| {
        let _ = std::fs::remove_file(&tmp_path);
        e
    };
    finished
        .writer
        .sync_all()
        .map_err(commit_err(&tmp_path))
        .map_err(cleanup)?;
    drop(finished.writer);

    let mut signature = None;
    if let Some(sk) = &secret_key {
        if let Some(p) = req.progress.as_mut() {
            p(Progress::Signing);
        }
        let tc = sign::trusted_comment(&id, &manifest.host.hostname, &finished.manifest_sha256);
        let sig = sign::sign_file(sk, &tmp_path, &tc)
            .map_err(|source| CaptureError::Sign {
                path: tmp_path.clone(),
                source,
            })
            .map_err(cleanup)?;
        let sig_name = format!("{archive_name}{SIG_SUFFIX}");
        let sig_path = out
            .write_durably(&sig_name, sig.as_bytes())
            .map_err(commit_err(&out.dir.join(&sig_name)))
            .map_err(cleanup)?;
        signature = Some(sig_path);
    }
    let archive_path = out
        .commit(&tmp_path, &archive_name)
        .map_err(commit_err(&tmp_path))?;
    removed.extend(
        out.retain(cfg.keep_archives, cfg.keep_bytes, &archive_path)
            .unwrap_or_else(|err| {
                tracing::warn!("retention failed: {err}");
                Vec::new()
            }),
    );
    Ok(CaptureOutcome {
        id,
        archive: archive_path,
        signature,
        sha256: finished.sha256,
        size: finished.size,
        manifest_sha256: finished.manifest_sha256,
        members: manifest.members.len(),
        skipped: manifest.skipped.len(),
        duration_ms: started.elapsed().as_millis() as u64,
        volatile_snapshot_ms: volatile_ms,
        removed,
    })
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn write_archive(
    req: &mut CaptureRequest<'_>,
    out: &OutputDir,
    root: &str,
    archive_name: &str,
    id: &str,
    host: HostIdentity,
    now: time::OffsetDateTime,
    file: std::fs::File,
    redactor: &Redactor,
    exclusions: &Exclusions,
) -> Result<(archive::Finished<std::fs::File>, Manifest, u64), CaptureError> {
    let started = Instant::now();
    let cfg = &req.config;
    let label = out.partial_path(archive_name).display().to_string();
    let buffered = BufWriter::with_capacity(1 << 20, file);
    let mut writer =
        ArchiveWriter::new(buffered, root, &label, cfg.zstd_level, cfg.max_total_bytes)?;
    let ctx = Context {
        config: cfg,
        redactor,
        exclusions,
        proc: PathBuf::from(crate::paths::PROC),
        spool_dir: out.dir.clone(),
    };
    let collectors = req.collectors.take().unwrap_or_else(collect::standard);
    let mut runs = Vec::new();
    let mut volatile_ms = 0;
    let total = collectors.len() + usize::from(!req.extra_members.is_empty());
    for (index, c) in collectors.iter().enumerate() {
        let name = c.name();
        if let Some(p) = req.progress.as_mut() {
            p(Progress::CollectorStarted {
                name: name.into(),
                index,
                total,
            });
        }
        writer.set_collector(name);
        let (m0, s0) = (writer.members().len(), writer.skipped().len());
        let t0 = Instant::now();
        let start = rfc3339_now();
        c.collect(&ctx, &mut writer)?;
        let run = CollectorRun {
            name: name.into(),
            started: start,
            finished: rfc3339_now(),
            duration_ms: t0.elapsed().as_millis() as u64,
            members: writer.members().len() - m0,
            skipped: writer.skipped().len() - s0,
        };
        tracing::debug!(
            collector = name,
            ms = run.duration_ms,
            members = run.members,
            skipped = run.skipped,
            "collector done"
        );
        if let Some(p) = req.progress.as_mut() {
            p(Progress::CollectorFinished {
                name: name.into(),
                members: run.members,
                skipped: run.skipped,
                millis: run.duration_ms,
            });
        }
        if name == "processes" || name == "sockets" {
            volatile_ms = started.elapsed().as_millis() as u64;
        }
        runs.push(run);
    }
    if !req.extra_members.is_empty() {
        writer.set_collector("extra");
        let t0 = Instant::now();
        let start = rfc3339_now();
        for m in &req.extra_members {
            let meta = MemberMeta {
                notes: m.notes.clone(),
                ..MemberMeta::default()
            };
            writer.add_bytes(&format!("extra/{}", m.name), &m.data, meta)?;
        }
        runs.push(CollectorRun {
            name: "extra".into(),
            started: start,
            finished: rfc3339_now(),
            duration_ms: t0.elapsed().as_millis() as u64,
            members: req.extra_members.len(),
            skipped: 0,
        });
    }
    let config_toml = toml::to_string(cfg).unwrap_or_default();
    let mut manifest = Manifest {
        format: manifest::FORMAT.into(),
        id: id.into(),
        archive_name: archive_name.into(),
        root: root.into(),
        created: rfc3339(now),
        host,
        agent: AgentInfo {
            name: "hindsight".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        config: ConfigInfo {
            path: req.config_path.as_ref().map(|p| p.display().to_string()),
            sha256: hex::encode(Sha256::digest(config_toml.as_bytes())),
        },
        trigger: Trigger {
            who: req.trigger.who.clone().unwrap_or_else(who),
            how: req.trigger.how.clone(),
            why: req.reason.clone(),
            when: rfc3339(now),
            details: req.trigger.details.clone(),
        },
        collectors: runs,
        members: Vec::new(),
        skipped: Vec::new(),
    };
    let finished = writer.finish(&mut manifest)?;
    let file = finished
        .writer
        .into_inner()
        .map_err(|e| ArchiveError::Finish {
            archive: label.clone(),
            source: e.into_error(),
        })?;
    Ok((
        archive::Finished {
            writer: file,
            sha256: finished.sha256,
            size: finished.size,
            manifest_sha256: finished.manifest_sha256,
        },
        manifest,
        volatile_ms,
    ))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("UTC time formats")
}

fn rfc3339_now() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// A random UUID from the kernel (no extra dependency for one id per capture).
fn new_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| s.len() >= 8)
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{:032x}", nanos ^ u128::from(std::process::id()))
        })
}

/// Keeps a host name usable in a file name.
fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "host".into() } else { s }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

pub fn host_identity() -> HostIdentity {
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        });
    HostIdentity {
        hostname: read_trim("/proc/sys/kernel/hostname").unwrap_or_else(|| "localhost".into()),
        machine_id: read_trim("/etc/machine-id"),
        boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
        os,
    }
}

/// The user running the capture, and the one behind sudo if any.
fn who() -> String {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| "?".to_owned(), |u| u.name);
    match std::env::var("SUDO_USER") {
        Ok(sudo) if !sudo.is_empty() => format!("{name} (uid {uid}) via sudo from {sudo}"),
        _ => format!("{name} (uid {uid})"),
    }
}
