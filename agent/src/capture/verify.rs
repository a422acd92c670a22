//! Verification of an evidence archive: the minisign signature (and its trusted comment's
//! manifest hash), then every member streamed out of the archive and hashed against
//! MANIFEST.json and SHA256SUMS. Every problem is named (missing, extra or altered
//! member, bad signature, corrupt stream); checking goes on after the first so the report
//! is complete.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use minisign::PublicKey;
use sha2::{Digest as _, Sha256};

use super::manifest::{MANIFEST_NAME, Manifest, SUMS_NAME, parse_sha256sums};
use super::sign;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot open archive {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One thing wrong with an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The signature file is missing, unreadable, or does not match.
    Signature {
        file: String,
        reason: String,
    },
    /// The trusted comment names another manifest than the one inside.
    ManifestHash {
        signed: String,
        actual: String,
    },
    /// The compressed stream or the tar inside is damaged.
    Corrupt {
        reason: String,
    },
    ManifestUnreadable {
        reason: String,
    },
    Missing {
        member: String,
    },
    Extra {
        member: String,
    },
    Altered {
        member: String,
        expected: String,
        actual: String,
    },
    /// SHA256SUMS disagrees with what is in the archive.
    Sums {
        member: String,
        reason: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signature { file, reason } => write!(f, "signature {file}: {reason}"),
            Self::ManifestHash { signed, actual } => write!(
                f,
                "altered: {MANIFEST_NAME} (sha256 {actual}, the signed comment says {signed})"
            ),
            Self::Corrupt { reason } => write!(f, "corrupt archive: {reason}"),
            Self::ManifestUnreadable { reason } => write!(f, "{MANIFEST_NAME}: {reason}"),
            Self::Missing { member } => write!(
                f,
                "missing: {member} (listed in the manifest, not in the archive)"
            ),
            Self::Extra { member } => {
                write!(f, "extra: {member} (in the archive, not in the manifest)")
            }
            Self::Altered {
                member,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "altered: {member} (sha256 {actual}, manifest says {expected})"
                )
            }
            Self::Sums { member, reason } => write!(f, "{SUMS_NAME}: {member}: {reason}"),
        }
    }
}

/// The result of [`verify`].
#[derive(Debug)]
pub struct Report {
    pub archive: PathBuf,
    /// The signed trusted comment, when the signature verified.
    pub trusted_comment: Option<String>,
    pub signature_checked: bool,
    pub manifest: Option<Manifest>,
    pub members_checked: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies `archive`. With `public_key`, the signature `sig` (default
/// `<archive>.minisig`) must verify; without, only the contents are checked.
pub fn verify(
    archive: &Path,
    sig: Option<&Path>,
    public_key: Option<&PublicKey>,
) -> Result<Report, VerifyError> {
    let mut problems = Vec::new();
    let mut trusted_comment = None;
    let mut unverified_comment = None;
    if let Some(pk) = public_key {
        let sig_path = sig.map_or_else(
            || PathBuf::from(format!("{}.minisig", archive.display())),
            Path::to_owned,
        );
        let file = sig_path.display().to_string();
        match std::fs::read_to_string(&sig_path) {
            Err(err) => problems.push(Problem::Signature {
                file,
                reason: format!("cannot read: {err}"),
            }),
            Ok(text) => match sign::verify_file(pk, &text, archive) {
                Ok(tc) => trusted_comment = Some(tc),
                Err(reason) => {
                    problems.push(Problem::Signature { file, reason });
                    // Still compare the manifest with the hash the (unverified) comment
                    // names, to say whether the manifest is what was signed.
                    unverified_comment = minisign::SignatureBox::from_string(&text)
                        .and_then(|b| b.trusted_comment())
                        .ok();
                }
            },
        }
    }

    let file = std::fs::File::open(archive).map_err(|source| VerifyError::Open {
        path: archive.to_owned(),
        source,
    })?;
    let mut actual: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut manifest_bytes = None;
    let mut sums_text = None;
    let scan = || -> Result<(), String> {
        let zstd = zstd::stream::read::Decoder::new(file).map_err(|e| e.to_string())?;
        let mut tar = tar::Archive::new(zstd);
        for entry in tar.entries().map_err(|e| e.to_string())? {
            let mut entry = entry.map_err(|e| e.to_string())?;
            let path = entry
                .path()
                .map_err(|e| e.to_string())?
                .to_string_lossy()
                .into_owned();
            // Strip the top directory.
            let rel = path
                .split_once('/')
                .map_or(path.clone(), |(_, r)| r.to_owned());
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut size = 0u64;
            let mut keep = Vec::new();
            let bookkeeping = rel == MANIFEST_NAME || rel == SUMS_NAME;
            loop {
                let n = entry
                    .read(&mut buf)
                    .map_err(|e| format!("reading {rel}: {e}"))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                if bookkeeping {
                    keep.extend_from_slice(&buf[..n]);
                }
            }
            if rel == MANIFEST_NAME {
                manifest_bytes = Some(keep);
            } else if rel == SUMS_NAME {
                sums_text = Some(String::from_utf8_lossy(&keep).into_owned());
            }
            actual.insert(rel, (hex::encode(hasher.finalize()), size));
        }
        Ok(())
    };
    if let Err(reason) = scan() {
        problems.push(Problem::Corrupt { reason });
    }

    let mut manifest = None;
    match &manifest_bytes {
        None => problems.push(Problem::Missing {
            member: MANIFEST_NAME.into(),
        }),
        Some(bytes) => match serde_json::from_slice::<Manifest>(bytes) {
            Err(err) => problems.push(Problem::ManifestUnreadable {
                reason: format!("not a valid manifest: {err}"),
            }),
            Ok(m) => manifest = Some(m),
        },
    }
    let manifest_actual = actual.get(MANIFEST_NAME).map(|(h, _)| h.clone());
    if let (Some(tc), Some(actual_hash)) = (
        trusted_comment.as_ref().or(unverified_comment.as_ref()),
        &manifest_actual,
    ) {
        match sign::comment_field(tc, "manifest-sha256") {
            Some(signed) if signed == actual_hash => {}
            signed => problems.push(Problem::ManifestHash {
                signed: signed.unwrap_or("(none)").into(),
                actual: actual_hash.clone(),
            }),
        }
    }
    if let Some(m) = &manifest {
        let mut listed = std::collections::HashSet::new();
        for member in &m.members {
            listed.insert(member.path.as_str());
            match actual.get(&member.path) {
                None => problems.push(Problem::Missing {
                    member: member.path.clone(),
                }),
                Some((hash, size)) if *hash != member.sha256 || *size != member.size => problems
                    .push(Problem::Altered {
                        member: member.path.clone(),
                        expected: member.sha256.clone(),
                        actual: hash.clone(),
                    }),
                Some(_) => {}
            }
        }
        for name in actual.keys() {
            if name != MANIFEST_NAME && name != SUMS_NAME && !listed.contains(name.as_str()) {
                problems.push(Problem::Extra {
                    member: name.clone(),
                });
            }
        }
    }
    match &sums_text {
        None => problems.push(Problem::Missing {
            member: SUMS_NAME.into(),
        }),
        Some(text) => {
            let sums = parse_sha256sums(text);
            for (name, (hash, _)) in &actual {
                if name == SUMS_NAME {
                    continue;
                }
                match sums.get(name) {
                    None => problems.push(Problem::Sums {
                        member: name.clone(),
                        reason: "not listed".into(),
                    }),
                    Some(h) if h != hash => problems.push(Problem::Sums {
                        member: name.clone(),
                        reason: format!("lists sha256 {h}, the member's is {hash}"),
                    }),
                    Some(_) => {}
                }
            }
            for name in sums.keys() {
                if !actual.contains_key(name) {
                    problems.push(Problem::Sums {
                        member: name.clone(),
                        reason: "listed but not in the archive".into(),
                    });
                }
            }
        }
    }
    Ok(Report {
        archive: archive.to_owned(),
        trusted_comment,
        signature_checked: public_key.is_some(),
        manifest,
        members_checked: actual.len(),
        problems,
    })
}
