//! The archive writer: members stream through tar into zstd into the output file, each
//! hashed (SHA-256) on its way in, so memory stays bounded whatever the input size. It
//! owns the per-member records that become the manifest, and writes MANIFEST.json and
//! SHA256SUMS last. It knows nothing about files on disk beyond "copy this one safely"
//! ([`Sink::add_file`]); the collectors decide what to copy.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Component, Path};

use sha2::{Digest as _, Sha256};

use super::collect::{FileOpts, Keep, MemberMeta, Sink};
use super::manifest::{MANIFEST_NAME, Manifest, Member, SUMS_NAME, Skipped};

/// Writing the archive failed; the capture cannot go on (disk full, I/O error).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("writing archive {archive} (member {member})")]
    Write {
        archive: String,
        member: String,
        #[source]
        source: io::Error,
    },
    #[error("finishing archive {archive}")]
    Finish {
        archive: String,
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    /// The underlying I/O error, e.g. to tell a full disk apart.
    pub fn io(&self) -> &io::Error {
        match self {
            Self::Write { source, .. } | Self::Finish { source, .. } => source,
        }
    }
}

/// Counts and hashes every byte written through it (the archive file's own SHA-256).
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What [`ArchiveWriter::finish`] hands back.
pub struct Finished<W> {
    pub writer: W,
    /// SHA-256 of the archive file.
    pub sha256: String,
    pub size: u64,
    /// SHA-256 of the MANIFEST.json member.
    pub manifest_sha256: String,
}

/// tar -> zstd -> `W`, recording every member and skip.
pub struct ArchiveWriter<W: Write> {
    tar: tar::Builder<zstd::stream::write::Encoder<'static, HashingWriter<W>>>,
    /// The top directory every member sits under.
    root: String,
    /// Names the archive in errors.
    label: String,
    members: Vec<Member>,
    skipped: Vec<Skipped>,
    collector: String,
    written: u64,
    max_total: u64,
    /// mtime for generated members.
    now: u64,
}

impl<W: Write> ArchiveWriter<W> {
    /// `root` is the top directory inside the archive, `label` names the archive in
    /// errors, `max_total` caps the member bytes (before compression).
    pub fn new(
        out: W,
        root: &str,
        label: &str,
        level: i32,
        max_total: u64,
    ) -> Result<Self, ArchiveError> {
        let wrap = |source| ArchiveError::Write {
            archive: label.to_owned(),
            member: "(zstd setup)".into(),
            source,
        };
        let mut zstd = zstd::stream::write::Encoder::new(
            HashingWriter {
                inner: out,
                hasher: Sha256::new(),
                len: 0,
            },
            level,
        )
        .map_err(wrap)?;
        zstd.include_checksum(true).map_err(wrap)?;
        // Compression runs on zstd's worker threads while this thread reads and hashes.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        zstd.multithread(workers).map_err(wrap)?;
        let mut tar = tar::Builder::new(zstd);
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(Self {
            tar,
            root: root.to_owned(),
            label: label.to_owned(),
            members: Vec::new(),
            skipped: Vec::new(),
            collector: String::new(),
            written: 0,
            max_total,
            now: unix_now(),
        })
    }

    /// Records which collector the following members and skips belong to.
    pub fn set_collector(&mut self, name: &str) {
        self.collector = name.to_owned();
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Streams `reader` (exactly `len` bytes; short reads are zero-filled and noted) as
    /// member `path`.
    fn append(
        &mut self,
        path: &str,
        reader: &mut dyn Read,
        len: u64,
        mut meta: MemberMeta,
    ) -> Result<(), ArchiveError> {
        let path = clean_member_path(path);
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(meta.mtime.unwrap_or(self.now));
        header.set_entry_type(tar::EntryType::Regular);
        let mut exact = ExactReader {
            inner: reader,
            remaining: len,
            hasher: Sha256::new(),
            zero_filled: 0,
            read_error: None,
        };
        let full = format!("{}/{}", self.root, path);
        self.tar
            .append_data(&mut header, &full, &mut exact)
            .map_err(|source| ArchiveError::Write {
                archive: self.label.clone(),
                member: path.clone(),
                source,
            })?;
        if let Some(err) = exact.read_error {
            meta.notes.push(format!("read error: {err}"));
        }
        if exact.zero_filled > 0 {
            meta.notes.push(format!(
                "shrank while read: the last {} bytes are zero-filled",
                exact.zero_filled
            ));
        }
        self.written += len;
        self.members.push(Member {
            path,
            source: meta.source,
            collector: self.collector.clone(),
            size: len,
            sha256: hex::encode(exact.hasher.finalize()),
            mtime: meta.mtime.unwrap_or(self.now),
            redactions: meta.redactions,
            notes: meta.notes,
        });
        Ok(())
    }

    /// Writes MANIFEST.json (with `manifest`'s members and skips replaced by the ones
    /// recorded here) and SHA256SUMS, then closes tar and zstd.
    pub fn finish(mut self, manifest: &mut Manifest) -> Result<Finished<W>, ArchiveError> {
        manifest.members = std::mem::take(&mut self.members);
        manifest.skipped = std::mem::take(&mut self.skipped);
        let json = serde_json::to_vec_pretty(&*manifest).expect("manifest serializes");
        let manifest_sha256 = hex::encode(Sha256::digest(&json));
        let sums = manifest.sha256sums(&self.root, &manifest_sha256);
        // The bookkeeping members are not listed in the manifest; append directly.
        for (name, data) in [(MANIFEST_NAME, &json[..]), (SUMS_NAME, sums.as_bytes())] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(self.now);
            header.set_entry_type(tar::EntryType::Regular);
            self.tar
                .append_data(&mut header, format!("{}/{name}", self.root), data)
                .map_err(|source| ArchiveError::Write {
                    archive: self.label.clone(),
                    member: name.into(),
                    source,
                })?;
        }
        let finish = |source| ArchiveError::Finish {
            archive: self.label.clone(),
            source,
        };
        let zstd = self.tar.into_inner().map_err(finish)?;
        let mut hashing = zstd.finish().map_err(finish)?;
        hashing.flush().map_err(finish)?;
        Ok(Finished {
            writer: hashing.inner,
            sha256: hex::encode(hashing.hasher.finalize()),
            size: hashing.len,
            manifest_sha256,
        })
    }
}

impl<W: Write> Sink for ArchiveWriter<W> {
    fn add_bytes(&mut self, path: &str, data: &[u8], meta: MemberMeta) -> Result<(), ArchiveError> {
        let mut data = data;
        let len = data.len() as u64;
        self.append(path, &mut data, len, meta)
    }

    fn add_reader(
        &mut self,
        path: &str,
        reader: &mut dyn Read,
        len: u64,
        meta: MemberMeta,
    ) -> Result<(), ArchiveError> {
        self.append(path, reader, len, meta)
    }

    fn add_file(
        &mut self,
        path: &str,
        source: &Path,
        opts: &FileOpts,
    ) -> Result<bool, ArchiveError> {
        let src = source.display().to_string();
        match open_regular(source) {
            Err(reason) => {
                self.skip(&src, &reason);
                Ok(false)
            }
            Ok((file, before)) => self.copy_open_file(path, source, &src, file, before, opts),
        }
    }

    fn skip(&mut self, source: &str, reason: &str) {
        tracing::debug!(source, reason, "skipped");
        self.skipped.push(Skipped {
            source: source.to_owned(),
            collector: self.collector.clone(),
            reason: reason.to_owned(),
        });
    }

    fn budget_left(&self) -> u64 {
        self.max_total.saturating_sub(self.written)
    }
}

impl<W: Write> ArchiveWriter<W> {
    fn copy_open_file(
        &mut self,
        path: &str,
        source: &Path,
        src: &str,
        mut file: File,
        before: std::fs::Metadata,
        opts: &FileOpts,
    ) -> Result<bool, ArchiveError> {
        let size = before.len();
        let budget = self.budget_left();
        if budget == 0 {
            self.skip(
                src,
                "the archive's total byte cap (capture.max_total_bytes) is reached",
            );
            return Ok(false);
        }
        let cap = opts.cap.min(budget);
        if opts.compressed && size > cap {
            self.skip(
                src,
                &format!("compressed file of {size} bytes is over the {cap}-byte cap; a cut compressed file cannot be read"),
            );
            return Ok(false);
        }
        let mut notes = Vec::new();
        if opts.compressed {
            notes.push("stored as it is (compressed)".to_owned());
        }
        let (offset, len) = if size > cap {
            match opts.keep {
                Keep::Tail => {
                    notes.push(format!("truncated: kept the newest {cap} of {size} bytes"));
                    (size - cap, cap)
                }
                Keep::Head => {
                    notes.push(format!("truncated: kept the first {cap} of {size} bytes"));
                    (0, cap)
                }
            }
        } else {
            (0, size)
        };
        if offset > 0
            && let Err(err) = file.seek(SeekFrom::Start(offset))
        {
            self.skip(src, &format!("cannot seek: {err}"));
            return Ok(false);
        }
        let mtime = u64::try_from(before.mtime()).unwrap_or(0);
        let mut meta = MemberMeta {
            source: Some(src.to_owned()),
            mtime: Some(mtime),
            redactions: 0,
            notes,
        };
        if let Some(redactor) = opts.redact {
            let mut buf = Vec::with_capacity(len as usize);
            if let Err(err) = (&mut file).take(len).read_to_end(&mut buf) {
                self.skip(src, &format!("read failed: {err}"));
                return Ok(false);
            }
            let text = match String::from_utf8(buf) {
                Ok(text) => text,
                Err(err) => {
                    meta.notes
                        .push("not valid UTF-8: redacted after replacing invalid bytes".into());
                    String::from_utf8_lossy(err.as_bytes()).into_owned()
                }
            };
            let redacted = redactor.redact_text(&text);
            meta.redactions = redacted.count;
            meta.notes
                .extend(changed_while_read(source, &file, &before));
            self.add_bytes(path, redacted.text.as_bytes(), meta)?;
        } else {
            let mut limited = (&mut file).take(len);
            self.append(path, &mut limited, len, meta)?;
            let notes = changed_while_read(source, &file, &before);
            if let Some(last) = self.members.last_mut() {
                last.notes.extend(notes);
            }
        }
        Ok(true)
    }
}

/// Opens `source` for reading only if it is a regular file; special files (FIFOs,
/// devices, sockets) are never opened. Returns the reason as text when it cannot.
fn open_regular(source: &Path) -> Result<(File, std::fs::Metadata), String> {
    let meta = std::fs::metadata(source).map_err(|err| describe_open_error(source, &err))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(format!("{}; never opened", describe_special(&meta)));
    }
    // O_NONBLOCK: should the path be swapped for a FIFO between stat and open, the open
    // cannot hang; the inode check below then rejects it.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(source)
        .map_err(|err| describe_open_error(source, &err))?;
    let opened = file
        .metadata()
        .map_err(|err| format!("fstat failed: {err}"))?;
    if opened.ino() != meta.ino() || opened.dev() != meta.dev() || !opened.is_file() {
        return Err("replaced by another file while being opened; not read".into());
    }
    Ok((file, opened))
}

fn describe_open_error(source: &Path, err: &io::Error) -> String {
    if err.raw_os_error() == Some(libc::ELOOP) {
        return format!("symlink loop: {err}");
    }
    if err.kind() == io::ErrorKind::PermissionDenied {
        return format!("unreadable: {err}");
    }
    if err.kind() == io::ErrorKind::NotFound && source.symlink_metadata().is_ok() {
        return format!("dangling symlink: {err}");
    }
    format!("cannot open: {err}")
}

fn describe_special(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt as _;
    let ft = meta.file_type();
    let kind = if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_dir() {
        "directory"
    } else {
        "not a regular file"
    };
    format!("special file ({kind})")
}

/// Notes on a file that changed while it was read. What was captured is still a
/// consistent prefix: the length was fixed at open time and bytes below it are only
/// ever appended to, not rewritten, by log writers.
fn changed_while_read(source: &Path, file: &File, before: &std::fs::Metadata) -> Vec<String> {
    let mut notes = Vec::new();
    if let Ok(after) = file.metadata() {
        if after.len() > before.len() {
            notes.push(format!(
                "changed while read: grew from {} to {} bytes; captured the {} bytes present at open (a consistent prefix)",
                before.len(),
                after.len(),
                before.len()
            ));
        } else if after.len() < before.len() {
            notes.push(format!(
                "changed while read: shrank from {} to {} bytes (truncated by its writer)",
                before.len(),
                after.len()
            ));
        } else if after.mtime() != before.mtime() || after.mtime_nsec() != before.mtime_nsec() {
            notes.push("changed while read: modified in place (same size)".into());
        }
    }
    match std::fs::metadata(source) {
        Ok(now) if now.ino() != before.ino() || now.dev() != before.dev() => notes.push(
            "rotated while read: the path now names another file; captured the file as opened"
                .into(),
        ),
        Err(_) => {
            notes.push("rotated while read: the path is gone; captured the file as opened".into())
        }
        Ok(_) => {}
    }
    notes
}

/// A member path without leading `/`, `.` or `..` (tar refuses `..`, and extraction must
/// stay under the archive's top directory).
fn clean_member_path(path: &str) -> String {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Yields exactly `remaining` bytes from `inner`, hashing them; if `inner` ends early or
/// fails, the rest is zero-filled so the tar stream stays well-formed.
struct ExactReader<'a> {
    inner: &'a mut dyn Read,
    remaining: u64,
    hasher: Sha256,
    zero_filled: u64,
    read_error: Option<io::Error>,
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = if self.read_error.is_some() || self.zero_filled > 0 {
            0
        } else {
            loop {
                match self.inner.read(&mut buf[..want]) {
                    Ok(n) => break n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        self.read_error = Some(err);
                        break 0;
                    }
                }
            }
        };
        let n = if n == 0 {
            buf[..want].fill(0);
            self.zero_filled += want as u64;
            want
        } else {
            n
        };
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
