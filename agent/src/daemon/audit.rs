//! The append-only audit log: one JSON object per line for every API request (time,
//! identity, from where, action, result). Opened with O_APPEND and written with one
//! `write` per record, so concurrent records never interleave and nothing is rewritten.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("opening the audit log {path}")]
pub struct AuditError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// One request, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// UTC, RFC 3339.
    pub time: String,
    pub identity: String,
    pub from: String,
    pub transport: &'static str,
    /// `METHOD /path`.
    pub action: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// The capture or profile the request created or read, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Why it was refused or failed, or the capture's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("audit records serialize")
    }
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating, mode 0640) `path` for appending; creates its directory.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let err = |source| AuditError {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record. A failing audit log is logged loudly but does not take the
    /// API down.
    pub fn write(&self, record: &Record) {
        let mut line = record.to_json();
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = file.write_all(line.as_bytes()) {
            tracing::error!(path = %self.path.display(), "cannot write the audit log: {err}");
        }
    }
}
