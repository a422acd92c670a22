//! What the trigger rules observe: PSI averages (/proc/pressure), free disk space
//! (statvfs), and new lines of a log file followed across rotation.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// `avg10` of `some` or `full` in /proc/pressure/<resource>, in percent.
pub fn psi_avg10(proc_pressure: &Path, resource: &str, level: &str) -> std::io::Result<f64> {
    let text = std::fs::read_to_string(proc_pressure.join(resource))?;
    parse_psi(&text, level).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no `{level} avg10=` in /proc/pressure/{resource}"),
        )
    })
}

fn parse_psi(text: &str, level: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(level)?.strip_prefix(' '))?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// Free space of the filesystem holding `path`: (bytes available to unprivileged
/// users, percent of the total).
pub fn disk_free(path: &Path) -> std::io::Result<(u64, f64)> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = s.fragment_size() as u64;
    let total = s.blocks() as u64 * frsize;
    let avail = s.blocks_available() as u64 * frsize;
    let percent = if total == 0 {
        100.0
    } else {
        avail as f64 * 100.0 / total as f64
    };
    Ok((avail, percent))
}

/// Most bytes read from a log per poll; more waits for the next one.
const READ_CAP: u64 = 1 << 20;
/// A line longer than this is matched on its first bytes.
const MAX_LINE: usize = 64 * 1024;

/// Follows a log file from its end at start: new complete lines, across rotation (a new
/// file at the path: the old one is read to its end first, then the new one from its
/// start) and truncation (read again from the start).
pub struct LogFollower {
    path: PathBuf,
    file: Option<(File, u64, u64)>, // (file, inode, position)
    partial: Vec<u8>,
}

impl LogFollower {
    /// Starts at the current end of `path` (which may not exist yet).
    pub fn new(path: &Path) -> Self {
        let file = File::open(path).ok().and_then(|f| {
            let m = f.metadata().ok()?;
            Some((f, m.ino(), m.len()))
        });
        Self {
            path: path.to_owned(),
            file,
            partial: Vec::new(),
        }
    }

    /// New complete lines since the last call.
    pub fn poll(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let current = std::fs::metadata(&self.path).ok();
        let rotated = match (&self.file, &current) {
            (Some((_, ino, _)), Some(m)) => m.ino() != *ino,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if rotated {
            // Lines written to the old file before it was moved away.
            self.read_new(&mut lines);
            self.file = None;
            self.partial.clear();
        }
        if self.file.is_none() {
            // A new file (or one that appeared): every line in it is new.
            self.file = File::open(&self.path).ok().and_then(|f| {
                let m = f.metadata().ok()?;
                Some((f, m.ino(), 0))
            });
        }
        if let Some((f, _, pos)) = &mut self.file
            && f.metadata().is_ok_and(|m| m.len() < *pos)
        {
            *pos = 0; // truncated in place (copytruncate)
            self.partial.clear();
        }
        self.read_new(&mut lines);
        lines
    }

    fn read_new(&mut self, lines: &mut Vec<String>) {
        let Some((f, _, pos)) = &mut self.file else {
            return;
        };
        let mut buf = Vec::new();
        let read = f
            .seek(SeekFrom::Start(*pos))
            .and_then(|_| f.take(READ_CAP).read_to_end(&mut buf));
        let Ok(n) = read else {
            return;
        };
        *pos += n as u64;
        for &b in &buf {
            if b == b'\n' {
                lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                self.partial.clear();
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn psi_lines_parse() {
        let text = "some avg10=5.83 avg60=6.25 avg300=7.18 total=3035008231\n\
                    full avg10=0.50 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_psi(text, "some"), Some(5.83));
        assert_eq!(parse_psi(text, "full"), Some(0.5));
        assert_eq!(parse_psi("garbage", "some"), None);
    }

    #[test]
    fn follower_sees_only_new_lines_across_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, "old line\n").unwrap();
        let mut f = LogFollower::new(&path);
        assert!(f.poll().is_empty(), "existing lines are not new");

        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(log, "one\ntw").unwrap();
        assert_eq!(f.poll(), ["one"]);
        writeln!(log, "o").unwrap();
        assert_eq!(f.poll(), ["two"]);

        // Rotation: a last line lands in the old file after it was renamed.
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        writeln!(log, "late").unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        assert_eq!(f.poll(), ["late", "fresh"]);

        // copytruncate
        std::fs::write(&path, "").unwrap();
        assert!(f.poll().is_empty());
        std::fs::write(&path, "after truncate\n").unwrap();
        assert_eq!(f.poll(), ["after truncate"]);
    }

    #[test]
    fn disk_free_of_root_is_sane() {
        let (bytes, percent) = disk_free(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&percent), "{percent}");
        assert!(bytes > 0 || percent == 0.0);
    }
}
