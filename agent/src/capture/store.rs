//! The output directory: archive names, the lock that keeps two captures apart, crash
//! safety (temporary names, fsync, rename, fsync of the directory), cleanup of what a
//! crashed run left behind, and retention.
//!
//! Invariant: a file under a final archive name (`*.tar.zst`) is always complete. The
//! archive is written as `.<name>.partial`; its signature is renamed into place first and
//! the archive last, so the final archive name is the commit point.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

pub const ARCHIVE_SUFFIX: &str = ".tar.zst";
pub const SIG_SUFFIX: &str = ".minisig";
const PARTIAL_SUFFIX: &str = ".partial";
const LOCK_NAME: &str = ".hindsight-capture.lock";

/// The output directory, locked for this capture.
pub struct OutputDir {
    pub dir: PathBuf,
    /// Held (flock) until dropped; the kernel releases it if we die.
    _lock: File,
}

impl OutputDir {
    /// Creates the directory (0700: evidence is sensitive) and takes the lock; waits if
    /// another capture holds it.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK_NAME))?;
        lock.lock()?;
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Removes what an interrupted capture left: `.*.partial` files and signatures whose
    /// archive never got its final name. Safe because we hold the lock.
    pub fn clean_leftovers(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let orphan_sig = name.strip_suffix(SIG_SUFFIX).is_some_and(|archive| {
                archive.ends_with(ARCHIVE_SUFFIX) && !self.dir.join(archive).exists()
            });
            if (name.starts_with('.') && name.ends_with(PARTIAL_SUFFIX)) || orphan_sig {
                std::fs::remove_file(&path)?;
                tracing::info!(path = %path.display(), "removed leftover of an interrupted capture");
                removed.push(path);
            }
        }
        Ok(removed)
    }

    pub fn partial_path(&self, final_name: &str) -> PathBuf {
        self.dir.join(format!(".{final_name}{PARTIAL_SUFFIX}"))
    }

    /// Creates the temporary archive file, 0600.
    pub fn create_partial(&self, final_name: &str) -> io::Result<(PathBuf, File)> {
        let path = self.partial_path(final_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((path, file))
    }

    /// Writes `data` durably under `final_name` (temp, fsync, rename).
    pub fn write_durably(&self, final_name: &str, data: &[u8]) -> io::Result<PathBuf> {
        use std::io::Write as _;
        let (tmp, mut f) = self.create_partial(final_name)?;
        let res = f.write_all(data).and_then(|()| f.sync_all());
        if let Err(err) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
        let dest = self.dir.join(final_name);
        std::fs::rename(&tmp, &dest)?;
        Ok(dest)
    }

    /// Moves a fully written (and fsynced) temp file to its final name and fsyncs the
    /// directory so the rename survives a crash.
    pub fn commit(&self, tmp: &Path, final_name: &str) -> io::Result<PathBuf> {
        let dest = self.dir.join(final_name);
        std::fs::rename(tmp, &dest)?;
        self.sync()?;
        Ok(dest)
    }

    pub fn sync(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Deletes the oldest archives (and their signatures) beyond `keep_archives` or
    /// `keep_bytes` (0 = no limit); `newest` is never deleted.
    pub fn retain(
        &self,
        keep_archives: usize,
        keep_bytes: u64,
        newest: &Path,
    ) -> io::Result<Vec<PathBuf>> {
        let mut archives: Vec<(std::time::SystemTime, String, u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(ARCHIVE_SUFFIX) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let sig_len = std::fs::metadata(self.dir.join(format!("{name}{SIG_SUFFIX}")))
                .map_or(0, |m| m.len());
            archives.push((meta.modified()?, name, meta.len() + sig_len, entry.path()));
        }
        // Newest first; names embed the UTC time, so they break mtime ties.
        archives.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        let mut removed = Vec::new();
        let mut total = 0u64;
        for (i, (_, name, len, path)) in archives.iter().enumerate() {
            total += len;
            let over_count = keep_archives > 0 && i >= keep_archives;
            let over_bytes = keep_bytes > 0 && total > keep_bytes;
            if path != newest && (over_count || over_bytes) {
                std::fs::remove_file(path)?;
                let _ = std::fs::remove_file(self.dir.join(format!("{name}{SIG_SUFFIX}")));
                tracing::info!(archive = %path.display(), "retention: removed old archive");
                removed.push(path.clone());
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(".h-1-a.tar.zst.partial"), b"x").unwrap();
        std::fs::write(dir.path().join("h-0-z.tar.zst.minisig"), b"orphan").unwrap();
        let mut names = Vec::new();
        for i in 0..4 {
            let name = format!("h-2026120{i}T000000Z-{i}{ARCHIVE_SUFFIX}");
            std::fs::write(dir.path().join(&name), vec![0u8; 100]).unwrap();
            std::fs::write(dir.path().join(format!("{name}{SIG_SUFFIX}")), b"sig").unwrap();
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(100 - i * 10);
            File::options()
                .write(true)
                .open(dir.path().join(&name))
                .unwrap()
                .set_modified(t)
                .unwrap();
            names.push(name);
        }
        let removed = out.clean_leftovers().unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        let newest = dir.path().join(&names[3]);
        let removed = out.retain(2, 0, &newest).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(!dir.path().join(&names[0]).exists());
        assert!(
            !dir.path()
                .join(format!("{}{SIG_SUFFIX}", names[0]))
                .exists()
        );
        assert!(dir.path().join(&names[2]).exists());
        // Byte limit smaller than one archive: the newest stays anyway.
        let removed = out.retain(0, 10, &newest).unwrap();
        assert_eq!(removed, vec![dir.path().join(&names[2])]);
        assert!(newest.exists());
    }
}
