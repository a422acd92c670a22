//! Collectors, run most volatile first (RFC 3227 order): processes, sockets, system
//! state, logs, configs. Each reads one kind of host data and hands members to a
//! [`Sink`] (the archive writer in production, any `Write` in tests); anything it wants
//! but cannot capture becomes a recorded skip, never an error. Only a failing sink (disk
//! full) stops a collector.

pub mod configs;
pub mod logs;
pub mod processes;
pub mod sockets;
pub mod system;

use std::io::Read;
use std::path::{Path, PathBuf};

use super::archive::ArchiveError;
use super::redact::Redactor;
use crate::config::CaptureConfig;
use crate::paths;

/// Where members go. Implemented by [`super::archive::ArchiveWriter`].
pub trait Sink {
    /// Adds a generated member.
    fn add_bytes(&mut self, path: &str, data: &[u8], meta: MemberMeta) -> Result<(), ArchiveError>;
    /// Adds `len` bytes streamed from `reader`.
    fn add_reader(
        &mut self,
        path: &str,
        reader: &mut dyn Read,
        len: u64,
        meta: MemberMeta,
    ) -> Result<(), ArchiveError>;
    /// Copies a file safely (regular files only, capped, flagged if it changes while
    /// read). Returns false, with the skip recorded, when it was not captured.
    fn add_file(
        &mut self,
        path: &str,
        source: &Path,
        opts: &FileOpts,
    ) -> Result<bool, ArchiveError>;
    /// Records something not captured, and why.
    fn skip(&mut self, source: &str, reason: &str);
    /// Member bytes still allowed by the total cap.
    fn budget_left(&self) -> u64;
}

/// Per-member facts the manifest records.
#[derive(Debug, Default, Clone)]
pub struct MemberMeta {
    pub source: Option<String>,
    pub mtime: Option<u64>,
    pub redactions: u32,
    pub notes: Vec<String>,
}

impl MemberMeta {
    pub fn from_source(source: &str) -> Self {
        Self {
            source: Some(source.to_owned()),
            ..Self::default()
        }
    }
}

/// Which end of an over-cap file to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The start (configs).
    Head,
    /// The newest end (logs).
    Tail,
}

/// How [`Sink::add_file`] copies a file.
#[derive(Clone, Copy)]
pub struct FileOpts<'a> {
    pub cap: u64,
    pub keep: Keep,
    /// Redact the text (the file is read into memory, so `cap` must be small).
    pub redact: Option<&'a Redactor>,
    /// Already compressed (x.log.2.gz): stored as is, never cut.
    pub compressed: bool,
}

/// What every collector may read.
pub struct Context<'a> {
    pub config: &'a CaptureConfig,
    pub redactor: &'a Redactor,
    pub exclusions: &'a Exclusions,
    /// procfs root (tests may point it elsewhere).
    pub proc: PathBuf,
    /// Directory for unnamed spool files (the output dir: same filesystem, same
    /// permissions as the evidence).
    pub spool_dir: PathBuf,
}

impl Context<'_> {
    /// An unnamed temporary file for output too large to hold in memory; it vanishes
    /// when dropped, crash or not.
    pub fn spool(&self) -> std::io::Result<std::fs::File> {
        tempfile::tempfile_in(&self.spool_dir)
    }
}

/// One collector.
pub trait Collector {
    /// Its name in the manifest and the member prefix (`processes/...`).
    fn name(&self) -> &'static str;
    fn collect(&self, ctx: &Context<'_>, sink: &mut dyn Sink) -> Result<(), ArchiveError>;
}

/// The collectors in the order they run: most volatile first (RFC 3227).
pub fn standard() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(processes::Processes),
        Box::new(sockets::Sockets),
        Box::new(system::System),
        Box::new(logs::Logs),
        Box::new(configs::Configs),
    ]
}

/// Paths never captured: the built-in list plus `[capture] exclude`, plus the signing
/// key.
#[derive(Debug)]
pub struct Exclusions {
    patterns: Vec<glob::Pattern>,
    paths: Vec<PathBuf>,
}

impl Exclusions {
    pub fn new(config: &CaptureConfig) -> Result<Self, glob::PatternError> {
        let patterns = paths::DEFAULT_EXCLUDES
            .iter()
            .copied()
            .chain(config.exclude.iter().map(String::as_str))
            .map(glob::Pattern::new)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            patterns,
            paths: vec![config.signing_key.clone()],
        })
    }

    /// The rule that excludes `path`, if one does; symlinks are judged by their target
    /// too.
    pub fn matches(&self, path: &Path) -> Option<String> {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let candidates = [Some(path.to_owned()), std::fs::canonicalize(path).ok()];
        for p in candidates.iter().flatten() {
            if self.paths.iter().any(|x| x == p) {
                return Some("the signing key".into());
            }
            if let Some(pat) = self
                .patterns
                .iter()
                .find(|pat| pat.matches_path_with(p, opts))
            {
                return Some(format!("exclusion rule {:?}", pat.as_str()));
            }
        }
        None
    }
}

/// Expands one glob; errors (unreadable directories) become skips.
///
/// Walks from the pattern's literal leading directory without following directory
/// symlinks (walkdir), so a symlink loop under a `**` glob cannot make the expansion
/// explode; file symlinks are matched like files (the collector decides what to do with
/// their targets). The `glob` crate's own walker follows directory symlinks.
pub fn expand_glob(pattern: &str, sink: &mut dyn Sink) -> Vec<PathBuf> {
    /// Deeper than any config or log tree; a bound in case of a pathological tree.
    const MAX_DEPTH: usize = 32;
    let mut out = Vec::new();
    if pattern.contains(['*', '?', '[']) {
        match glob::Pattern::new(pattern) {
            Err(err) => sink.skip(pattern, &format!("bad glob: {err}")),
            Ok(matcher) => {
                let opts = glob::MatchOptions {
                    case_sensitive: true,
                    require_literal_separator: true,
                    require_literal_leading_dot: false,
                };
                // The longest leading run of components without glob characters.
                let base: PathBuf = Path::new(pattern)
                    .components()
                    .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                    .collect();
                let walker = walkdir::WalkDir::new(&base)
                    .follow_links(false)
                    .max_depth(MAX_DEPTH)
                    .sort_by_file_name();
                for entry in walker {
                    match entry {
                        Ok(e) if !e.file_type().is_dir() => {
                            if matcher.matches_path_with(e.path(), opts) {
                                out.push(e.into_path());
                            }
                        }
                        Ok(_) => {}
                        Err(err) => {
                            // A missing base is reported below as "matched nothing".
                            if err.depth() > 0 {
                                let path = err.path().map(|p| p.display().to_string());
                                sink.skip(
                                    &path.unwrap_or_else(|| pattern.to_owned()),
                                    &format!("{err}"),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() && !pattern.contains(['*', '?', '[']) {
        // A plain path that matched nothing: say why (missing, or a dangling link).
        let p = Path::new(pattern);
        if p.symlink_metadata().is_ok() {
            out.push(p.to_owned());
        } else {
            sink.skip(pattern, "does not exist");
        }
    } else if out.is_empty() {
        sink.skip(pattern, "glob matched nothing");
    }
    out
}

/// Reads a small kernel or config file whole (procfs files report size 0, so they
/// cannot be streamed by length).
pub fn read_small(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Member path for a copied file: `prefix` + its absolute path.
pub fn member_for(prefix: &str, source: &Path) -> String {
    format!(
        "{prefix}/{}",
        source.display().to_string().trim_start_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records skips; any member added is a test failure.
    #[derive(Default)]
    struct Skips(Vec<(String, String)>);

    impl Sink for Skips {
        fn add_bytes(&mut self, path: &str, _: &[u8], _: MemberMeta) -> Result<(), ArchiveError> {
            panic!("unexpected member {path}")
        }
        fn add_reader(
            &mut self,
            path: &str,
            _: &mut dyn Read,
            _: u64,
            _: MemberMeta,
        ) -> Result<(), ArchiveError> {
            panic!("unexpected member {path}")
        }
        fn add_file(&mut self, path: &str, _: &Path, _: &FileOpts) -> Result<bool, ArchiveError> {
            panic!("unexpected member {path}")
        }
        fn skip(&mut self, source: &str, reason: &str) {
            self.0.push((source.to_owned(), reason.to_owned()));
        }
        fn budget_left(&self) -> u64 {
            u64::MAX
        }
    }

    #[test]
    fn double_star_globs_do_not_follow_directory_symlink_loops() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("deeper")).unwrap();
        std::os::unix::fs::symlink("..", a.join("up")).unwrap();
        std::os::unix::fs::symlink("../a", a.join("side")).unwrap();
        std::fs::write(a.join("x.conf"), "x=1").unwrap();
        std::fs::write(a.join("deeper/y.conf"), "y=1").unwrap();
        std::fs::write(a.join("deeper/not-me.txt"), "").unwrap();
        let pattern = format!("{}/**/*.conf", dir.path().display());
        let mut skips = Skips::default();
        let found = expand_glob(&pattern, &mut skips);
        assert_eq!(
            found,
            vec![a.join("deeper/y.conf"), a.join("x.conf")],
            "{:?}",
            skips.0
        );
        assert!(skips.0.is_empty(), "{:?}", skips.0);

        let nothing = format!("{}/*.none", dir.path().display());
        assert!(expand_glob(&nothing, &mut skips).is_empty());
        assert_eq!(skips.0, vec![(nothing, "glob matched nothing".to_owned())]);
    }
}
