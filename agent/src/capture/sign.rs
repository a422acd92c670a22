//! Signing keys and signatures, in minisign's format so stock `minisign -Vm` verifies
//! what Hindsight signs. The secret key is stored unencrypted (the agent signs unattended)
//! and so is written 0600 and never overwritten silently.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{path} already exists; refusing to overwrite a key (pass --force to replace it)")]
    Exists { path: PathBuf },
    #[error("cannot write key file {path}")]
    WriteKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read key file {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable minisign {what}: {message}")]
    BadKey {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    #[error("minisign: {0}")]
    Minisign(String),
}

fn m(err: minisign::PError) -> SignError {
    SignError::Minisign(err.to_string())
}

/// Generates a key pair; the secret key file is created 0600, the public one 0644.
pub fn keygen(secret: &Path, public: &Path, force: bool) -> Result<String, SignError> {
    for p in [secret, public] {
        if !force && p.exists() {
            return Err(SignError::Exists { path: p.to_owned() });
        }
    }
    let KeyPair { pk, sk } = KeyPair::generate_unencrypted_keypair().map_err(m)?;
    let sk_box = sk
        .to_box(Some("hindsight signing key (unencrypted; keep it 0600)"))
        .map_err(m)?;
    let pk_box = pk.to_box().map_err(m)?;
    write_key(secret, sk_box.to_string().as_bytes(), 0o600)?;
    write_key(public, pk_box.to_string().as_bytes(), 0o644)?;
    Ok(pk.to_base64())
}

fn write_key(path: &Path, data: &[u8], mode: u32) -> Result<(), SignError> {
    let wrap = |source| SignError::WriteKey {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(wrap)?;
    }
    // Replace via a temp file so the mode is right from the first byte and a crash never
    // leaves half a key.
    let tmp = path.with_extension("tmp-keygen");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(wrap)?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(wrap)?;
    std::fs::rename(&tmp, path).map_err(wrap)
}

pub fn load_secret_key(path: &Path) -> Result<SecretKey, SignError> {
    let text = std::fs::read_to_string(path).map_err(|source| SignError::ReadKey {
        path: path.to_owned(),
        source,
    })?;
    SecretKey::from_unencrypted_box(SecretKeyBox::from_string(&text).map_err(m)?).map_err(|e| {
        SignError::BadKey {
            path: path.to_owned(),
            what: "unencrypted secret key",
            message: e.to_string(),
        }
    })
}

pub fn load_public_key(path: &Path) -> Result<PublicKey, SignError> {
    let text = std::fs::read_to_string(path).map_err(|source| SignError::ReadKey {
        path: path.to_owned(),
        source,
    })?;
    let parsed = match PublicKeyBox::from_string(&text).and_then(|b| b.into_public_key()) {
        Ok(pk) => Ok(pk),
        // A bare base64 key (as `minisign -P` takes) works too.
        Err(_) => PublicKey::from_base64(text.trim()),
    };
    parsed.map_err(|e| SignError::BadKey {
        path: path.to_owned(),
        what: "public key",
        message: e.to_string(),
    })
}

/// The trusted comment: signed, shown by `minisign -V`, single line.
pub fn trusted_comment(id: &str, host: &str, manifest_sha256: &str) -> String {
    let host: String = host.chars().filter(|c| !c.is_whitespace()).collect();
    format!(
        "hindsight-evidence id:{id} host:{host} manifest-sha256:{manifest_sha256} timestamp:{}",
        super::archive::unix_now()
    )
}

/// Parses `key:value` pairs out of a trusted comment.
pub fn comment_field<'a>(comment: &'a str, key: &str) -> Option<&'a str> {
    comment
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix(':'))
}

/// Signs a file (streamed; minisign prehashes with BLAKE2b).
pub fn sign_file(sk: &SecretKey, file: &Path, trusted: &str) -> Result<String, SignError> {
    let f = std::fs::File::open(file).map_err(|source| SignError::ReadKey {
        path: file.to_owned(),
        source,
    })?;
    let sig = minisign::sign(
        None,
        sk,
        std::io::BufReader::new(f),
        Some(trusted),
        Some("signature from hindsight evidence capture"),
    )
    .map_err(m)?;
    Ok(sig.into_string())
}

/// Checks a signature; Ok(trusted comment) or the reason it does not verify.
pub fn verify_file(pk: &PublicKey, sig_text: &str, file: &Path) -> Result<String, String> {
    let sig =
        SignatureBox::from_string(sig_text).map_err(|e| format!("unreadable signature: {e}"))?;
    let f = std::fs::File::open(file).map_err(|e| format!("cannot open archive: {e}"))?;
    minisign::verify(pk, &sig, std::io::BufReader::new(f), true, false, false)
        .map_err(|e| e.to_string())?;
    sig.trusted_comment().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_sign_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (sk_path, pk_path) = (dir.path().join("k.key"), dir.path().join("k.pub"));
        keygen(&sk_path, &pk_path, false).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&sk_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            keygen(&sk_path, &pk_path, false),
            Err(SignError::Exists { .. })
        ));
        let data = dir.path().join("data");
        std::fs::write(&data, b"evidence").unwrap();
        let sk = load_secret_key(&sk_path).unwrap();
        let pk = load_public_key(&pk_path).unwrap();
        let tc = trusted_comment("abc", "my host", "ff00");
        let sig = sign_file(&sk, &data, &tc).unwrap();
        let got = verify_file(&pk, &sig, &data).unwrap();
        assert_eq!(comment_field(&got, "id"), Some("abc"));
        assert_eq!(comment_field(&got, "host"), Some("myhost"));
        assert_eq!(comment_field(&got, "manifest-sha256"), Some("ff00"));
        std::fs::write(&data, b"evidencE").unwrap();
        assert!(verify_file(&pk, &sig, &data).is_err());
    }
}
