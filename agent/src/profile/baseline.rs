//! The baseline library: saved profiles of a component under a business condition ("market
//! open", "month-end batch"), to compare later runs against with [`super::diff`].
//!
//! Layout, under the library directory (`--dir`, default
//! [`crate::paths::DEFAULT_BASELINE_DIR`]):
//!
//! ```text
//! <component>/<condition>/<stamp>.json        metadata (BaselineMeta)
//! <component>/<condition>/<stamp>.folded      all replicates summed (for any folded tool)
//! <component>/<condition>/<stamp>.r<N>.folded replicate N, when there are several
//! ```
//!
//! `<stamp>` is the UTC time of the save, `20261204T183005.123Z`: names sort by time, so the
//! latest baseline of a condition is the last name. A baseline holds one mode.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{pprof, stack::Folded};

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error(
        "{what} {name:?} is not a valid name: use letters, digits, '.', '_' and '-', not starting with '.'"
    )]
    Name { what: &'static str, name: String },
    #[error("no baseline {spec:?} in {dir} (`hindsight baseline list --dir {dir}` shows them)", dir = .dir.display())]
    NotFound { spec: String, dir: PathBuf },
    #[error("{path}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a baseline's metadata", path = .path.display())]
    Meta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: not a pprof profile", path = .path.display())]
    Pprof {
        path: PathBuf,
        #[source]
        source: pprof::PprofError,
    },
    #[error("{path}: not folded stacks", path = .path.display())]
    Folded {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the profile is empty", path = .path.display())]
    Empty { path: PathBuf },
    #[error("a baseline needs at least one replicate")]
    NoReplicates,
}

/// What a baseline is: written next to its folded files as `<stamp>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineMeta {
    pub component: String,
    pub condition: String,
    /// `2026-12-04T18:30:05Z`.
    pub created: String,
    pub host: String,
    pub kernel: String,
    pub agent_version: String,
    /// cpu, offcpu or locks.
    pub mode: String,
    /// Seconds sampled per replicate (0 for imported files).
    pub duration_secs: f64,
    /// On-CPU sampling frequency, Hz (cpu mode).
    pub frequency: Option<u64>,
    /// What the profiled process(es) were.
    pub target: String,
    /// The load during the profile, in the operator's words (`--load`).
    pub load: Option<String>,
    /// Replicate files, relative to the baseline's directory.
    pub replicates: Vec<String>,
    /// The files a baseline was imported from, if it was.
    pub imported_from: Vec<String>,
    /// Total weight of all replicates, in the mode's unit.
    pub total: u64,
}

/// One saved baseline.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub stamp: String,
    pub meta: BaselineMeta,
    /// The directory holding its files.
    pub dir: PathBuf,
}

impl Baseline {
    /// `component/condition/stamp`, what `diff` and `show` take.
    pub fn spec(&self) -> String {
        format!(
            "{}/{}/{}",
            self.meta.component, self.meta.condition, self.stamp
        )
    }

    pub fn replicates(&self) -> Result<Vec<Folded>, BaselineError> {
        self.meta
            .replicates
            .iter()
            .map(|r| read_profile(&self.dir.join(r)))
            .collect()
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), BaselineError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(BaselineError::Name {
            what,
            name: name.to_owned(),
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BaselineError + '_ {
    move |source| BaselineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a folded file or a pprof file (by its gzip or protobuf content, whatever its
/// name): one replicate.
pub fn read_profile(path: &Path) -> Result<Folded, BaselineError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let name = path.to_string_lossy();
    let is_pprof = bytes.starts_with(&[0x1f, 0x8b])
        || name.ends_with(".pb")
        || name.ends_with(".pprof")
        || name.ends_with(".pb.gz");
    let folded = if is_pprof {
        pprof::read_folded(&bytes).map_err(|source| BaselineError::Pprof {
            path: path.to_path_buf(),
            source,
        })?
    } else {
        Folded::read_from(&bytes[..]).map_err(|source| BaselineError::Folded {
            path: path.to_path_buf(),
            source,
        })?
    };
    if folded.is_empty() {
        return Err(BaselineError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(folded)
}

/// A library directory.
#[derive(Debug, Clone)]
pub struct Library {
    pub dir: PathBuf,
}

impl Library {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Saves the replicates under `meta.component/meta.condition/<stamp>`, with `stamp`
    /// from `meta.created` (filled in here, as are `replicates` and `total`).
    pub fn save(
        &self,
        mut meta: BaselineMeta,
        replicates: &[Folded],
    ) -> Result<Baseline, BaselineError> {
        check_name("component", &meta.component)?;
        check_name("condition", &meta.condition)?;
        if replicates.is_empty() {
            return Err(BaselineError::NoReplicates);
        }
        let dir = self.dir.join(&meta.component).join(&meta.condition);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        // Fixed-width stamps, so that names sort by time; a save in the same millisecond as
        // another waits for the next one.
        let (now, stamp) = loop {
            let now = time::OffsetDateTime::now_utc();
            let stamp = now
                .format(&time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
                ))
                .unwrap_or_default();
            if !dir.join(format!("{stamp}.json")).exists() {
                break (now, stamp);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        meta.created = now
            .format(&time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .unwrap_or_default();
        let mut all = Folded::default();
        meta.replicates.clear();
        for (i, run) in replicates.iter().enumerate() {
            for (frames, w) in run.iter() {
                all.add(&frames.map(str::to_owned).collect::<Vec<_>>(), w);
            }
            if replicates.len() > 1 {
                let name = format!("{stamp}.r{}.folded", i + 1);
                write(&dir.join(&name), |out| run.write_to(out))?;
                meta.replicates.push(name);
            }
        }
        let summed = format!("{stamp}.folded");
        write(&dir.join(&summed), |out| all.write_to(out))?;
        if replicates.len() == 1 {
            meta.replicates.push(summed);
        }
        meta.total = all.total();
        let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        write(&dir.join(format!("{stamp}.json")), |out| {
            std::io::Write::write_all(out, &json)
        })?;
        Ok(Baseline { stamp, meta, dir })
    }

    /// Every baseline, by component, condition and time.
    pub fn list(&self) -> Result<Vec<Baseline>, BaselineError> {
        let mut found = Vec::new();
        if !self.dir.exists() {
            return Ok(found);
        }
        for component in sorted_dirs(&self.dir)? {
            for condition in sorted_dirs(&component)? {
                let mut metas: Vec<PathBuf> = fs::read_dir(&condition)
                    .map_err(io(&condition))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "json"))
                    .collect();
                metas.sort();
                for path in metas {
                    found.push(load_meta(&path)?);
                }
            }
        }
        Ok(found)
    }

    /// `component/condition` (the latest) or `component/condition/stamp`.
    pub fn find(&self, spec: &str) -> Result<Baseline, BaselineError> {
        let not_found = || BaselineError::NotFound {
            spec: spec.to_owned(),
            dir: self.dir.clone(),
        };
        let parts: Vec<&str> = spec.trim_end_matches('/').split('/').collect();
        let (component, condition, stamp) = match parts[..] {
            [c, k] => (c, k, None),
            [c, k, s] => (c, k, Some(s)),
            _ => return Err(not_found()),
        };
        for (what, name) in [("component", component), ("condition", condition)] {
            check_name(what, name)?;
        }
        let dir = self.dir.join(component).join(condition);
        let path = match stamp {
            Some(stamp) => {
                check_name("timestamp", stamp)?;
                dir.join(format!("{stamp}.json"))
            }
            None => {
                let Ok(entries) = fs::read_dir(&dir) else {
                    return Err(not_found());
                };
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "json"))
                    .max()
                    .ok_or_else(not_found)?
            }
        };
        if !path.exists() {
            return Err(not_found());
        }
        load_meta(&path)
    }
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>, BaselineError> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn load_meta(path: &Path) -> Result<Baseline, BaselineError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let meta = serde_json::from_slice(&bytes).map_err(|source| BaselineError::Meta {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Baseline {
        stamp: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        meta,
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    })
}

fn write(
    path: &Path,
    body: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<(), BaselineError> {
    let mut file = fs::File::create(path).map_err(io(path))?;
    body(&mut file).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(component: &str, condition: &str) -> BaselineMeta {
        BaselineMeta {
            component: component.into(),
            condition: condition.into(),
            created: String::new(),
            host: "h".into(),
            kernel: "k".into(),
            agent_version: "0".into(),
            mode: "cpu".into(),
            duration_secs: 1.0,
            frequency: Some(99),
            target: "t".into(),
            load: Some("100 rps".into()),
            replicates: Vec::new(),
            imported_from: Vec::new(),
            total: 0,
        }
    }

    fn run(n: u64) -> Folded {
        let mut f = Folded::default();
        f.add(&["app".into(), "main".into()], n);
        f
    }

    #[test]
    fn saves_lists_and_finds_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::new(dir.path());
        let first = lib
            .save(meta("payments", "market-open"), &[run(1), run(2)])
            .unwrap();
        let second = lib
            .save(meta("payments", "market-open"), &[run(5)])
            .unwrap();
        lib.save(meta("ledger", "month-end"), &[run(3)]).unwrap();
        assert_ne!(first.stamp, second.stamp);
        assert_eq!(first.meta.replicates.len(), 2);
        assert_eq!(first.meta.total, 3);
        assert_eq!(first.replicates().unwrap(), [run(1), run(2)]);
        let listed: Vec<String> = lib.list().unwrap().iter().map(Baseline::spec).collect();
        assert_eq!(
            listed,
            [
                lib.find("ledger/month-end").unwrap().spec(),
                first.spec(),
                second.spec()
            ]
        );
        let latest = lib.find("payments/market-open").unwrap();
        assert_eq!(latest.stamp, second.stamp);
        assert_eq!(latest.meta.load.as_deref(), Some("100 rps"));
        assert_eq!(latest.replicates().unwrap(), [run(5)]);
        assert_eq!(lib.find(&first.spec()).unwrap().meta, first.meta);
    }

    #[test]
    fn bad_names_and_unknown_baselines_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library::new(dir.path());
        let err = lib.save(meta("../etc", "x"), &[run(1)]).unwrap_err();
        assert!(err.to_string().contains("component \"../etc\""), "{err}");
        let err = lib.find("payments/nothing").unwrap_err();
        assert!(err.to_string().contains("no baseline"), "{err}");
        assert!(lib.list().unwrap().is_empty());
    }
}
