//! MANIFEST.json, the archive's table of contents and chain-of-custody record, and
//! SHA256SUMS, the same hashes in the format `sha256sum -c` reads. Both are written last,
//! after every member has streamed, and [`super::verify`] reads them back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The manifest's format identifier; bump on incompatible changes.
pub const FORMAT: &str = "hindsight-evidence/1";
/// Member names of the two bookkeeping files, relative to the archive's top directory.
pub const MANIFEST_NAME: &str = "MANIFEST.json";
pub const SUMS_NAME: &str = "SHA256SUMS";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Archive id (a UUID); its first 8 hex digits are in the file name.
    pub id: String,
    /// The archive's file name, and the top directory every member sits under.
    pub archive_name: String,
    pub root: String,
    /// UTC, RFC 3339.
    pub created: String,
    pub host: HostIdentity,
    pub agent: AgentInfo,
    pub config: ConfigInfo,
    pub trigger: Trigger,
    /// One entry per collector, in the order they ran (most volatile first).
    pub collectors: Vec<CollectorRun>,
    /// Every member except MANIFEST.json and SHA256SUMS.
    pub members: Vec<Member>,
    /// Everything a collector wanted and did not capture, and why.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostIdentity {
    pub hostname: String,
    pub machine_id: Option<String>,
    pub boot_id: Option<String>,
    pub kernel: String,
    pub os: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigInfo {
    /// The config file read, or null when the defaults applied.
    pub path: Option<String>,
    /// SHA-256 of the effective configuration serialized as TOML.
    pub sha256: String,
}

/// Who, how, why and when a capture was started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// The user (and, under sudo, the user behind it).
    pub who: String,
    /// `cli`, `api`, `schedule`, `flight-recorder`, ...
    pub how: String,
    /// The free-text reason (`--reason`).
    pub why: String,
    /// UTC, RFC 3339.
    pub when: String,
    /// Anything else the trigger wants on record (e.g. an alert id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectorRun {
    pub name: String,
    pub started: String,
    pub finished: String,
    pub duration_ms: u64,
    pub members: usize,
    pub skipped: usize,
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Path relative to the archive's top directory.
    pub path: String,
    /// The file it was copied from, when it is a copy (null for generated reports).
    pub source: Option<String>,
    pub collector: String,
    pub size: u64,
    pub sha256: String,
    /// Source modification time, seconds since the epoch.
    pub mtime: u64,
    /// Secrets replaced by `[REDACTED]`.
    #[serde(default)]
    pub redactions: u32,
    /// Truncated, changed while read, stored compressed, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub source: String,
    pub collector: String,
    pub reason: String,
}

impl Manifest {
    /// The SHA256SUMS text for the members plus the manifest itself, with paths that
    /// start at the archive's top directory `root`, so that right after `tar -xf`,
    /// `sha256sum -c ROOT/SHA256SUMS` checks everything from where it was extracted.
    pub fn sha256sums(&self, root: &str, manifest_sha256: &str) -> String {
        let mut out = String::new();
        for m in &self.members {
            out.push_str(&sums_line(&m.sha256, &format!("{root}/{}", m.path)));
        }
        out.push_str(&sums_line(
            manifest_sha256,
            &format!("{root}/{MANIFEST_NAME}"),
        ));
        out
    }
}

fn sums_line(sha: &str, path: &str) -> String {
    // sha256sum escapes names with a backslash or newline and marks the line with a
    // leading backslash; do the same so `sha256sum -c` reads every name back.
    if path.contains('\\') || path.contains('\n') {
        let escaped = path.replace('\\', "\\\\").replace('\n', "\\n");
        format!("\\{sha}  {escaped}\n")
    } else {
        format!("{sha}  {path}\n")
    }
}

/// Parses SHA256SUMS text into path -> hash, paths relative to the top directory.
pub fn parse_sha256sums(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (escaped, line) = match line.strip_prefix('\\') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        if let Some((sha, path)) = line.split_once("  ") {
            let path = if escaped {
                path.replace("\\n", "\n").replace("\\\\", "\\")
            } else {
                path.to_string()
            };
            let path = path
                .split_once('/')
                .map_or(path.clone(), |(_, rel)| rel.to_owned());
            out.insert(path, sha.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_round_trip_with_odd_names() {
        let member = |path: &str, sha: &str| Member {
            path: path.into(),
            source: None,
            collector: "t".into(),
            size: 0,
            sha256: sha.into(),
            mtime: 0,
            redactions: 0,
            notes: vec![],
        };
        let m = Manifest {
            format: FORMAT.into(),
            id: "id".into(),
            archive_name: "a".into(),
            root: "a".into(),
            created: "now".into(),
            host: HostIdentity::default(),
            agent: AgentInfo {
                name: "hindsight".into(),
                version: "0".into(),
            },
            config: ConfigInfo {
                path: None,
                sha256: "c".into(),
            },
            trigger: Trigger {
                who: "root".into(),
                how: "cli".into(),
                why: "test".into(),
                when: "now".into(),
                details: BTreeMap::new(),
            },
            collectors: vec![],
            members: vec![member("a b", "11"), member("c\\d\ne", "22")],
            skipped: vec![],
        };
        let sums = m.sha256sums("top", "33");
        assert!(sums.contains("11  top/a b\n"));
        assert!(sums.contains("\\22  top/c\\\\d\\ne\n"));
        assert!(sums.contains("33  top/MANIFEST.json\n"));
        let parsed = parse_sha256sums(&sums);
        assert_eq!(parsed["a b"], "11");
        assert_eq!(parsed["c\\d\ne"], "22");
        assert_eq!(parsed[MANIFEST_NAME], "33");
        assert_eq!(parsed.len(), 3);
    }
}
