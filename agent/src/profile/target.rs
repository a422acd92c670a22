//! What to profile: turns `--pid`, `--cgroup` and `--unit` into the process ids and cgroup
//! v2 ids that the in-kernel filter matches, with errors that name the bad argument.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
};

/// Where cgroup v2 is usually mounted; hybrid hosts mount it at /sys/fs/cgroup/unified.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with PID {0} (is it running? it may have exited)")]
    NoSuchProcess(u32),
    #[error("cgroup {path} does not exist", path = .0.display())]
    NoSuchCgroup(PathBuf),
    #[error("{path} is not a cgroup v2 directory (cgroup filters need the unified hierarchy)", path = .0.display())]
    NotCgroup2(PathBuf),
    #[error(
        "no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo): --cgroup and --unit need one"
    )]
    NoCgroup2,
    #[error(
        "systemd unit {unit} has no cgroup: it is not running, or there is no such unit \
         (checked `systemctl show` and the tree under {root})", root = .root.display()
    )]
    NoSuchUnit { unit: String, root: PathBuf },
    #[error("reading {path}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the user asked to profile.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub pids: Vec<u32>,
    pub cgroups: Vec<PathBuf>,
    pub units: Vec<String>,
}

/// A selected cgroup: its directory, so descendants created later can be found.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    /// What the user typed (unit name or path), for messages.
    pub label: String,
    pub dir: PathBuf,
}

/// [`Targets`] checked and resolved.
#[derive(Debug, Clone, Default)]
pub struct ResolvedTargets {
    pub tgids: BTreeSet<u32>,
    pub cgroups: Vec<CgroupRoot>,
}

impl ResolvedTargets {
    /// True when nothing narrows the profile: the whole system is sampled.
    pub fn is_all(&self) -> bool {
        self.tgids.is_empty() && self.cgroups.is_empty()
    }

    /// The cgroup ids of every selected cgroup and all of its current descendants.
    pub fn cgroup_ids(&self) -> BTreeSet<u64> {
        let mut ids = BTreeSet::new();
        for root in &self.cgroups {
            collect_cgroup_ids(&root.dir, &mut ids);
        }
        ids
    }

    /// "PID 4242, unit nginx.service", or "all processes".
    pub fn describe(&self) -> String {
        if self.is_all() {
            return "all processes".to_owned();
        }
        let mut parts: Vec<String> = self.tgids.iter().map(|p| format!("PID {p}")).collect();
        parts.extend(self.cgroups.iter().map(|c| c.label.clone()));
        parts.join(", ")
    }
}

impl Targets {
    pub fn resolve(&self) -> Result<ResolvedTargets, TargetError> {
        let mut resolved = ResolvedTargets::default();
        for &pid in &self.pids {
            resolved.tgids.insert(thread_group_of(pid)?);
        }
        let root = if self.cgroups.is_empty() && self.units.is_empty() {
            PathBuf::from(CGROUP_ROOT)
        } else {
            cgroup2_root()?
        };
        for path in &self.cgroups {
            let dir = if path.is_absolute() {
                path.clone()
            } else {
                root.join(path)
            };
            check_cgroup_dir(&dir)?;
            resolved.cgroups.push(CgroupRoot {
                label: format!("cgroup {}", dir.display()),
                dir,
            });
        }
        for unit in &self.units {
            let unit = if unit.contains('.') {
                unit.clone()
            } else {
                format!("{unit}.service")
            };
            let dir = unit_cgroup(&root, &unit)?;
            resolved.cgroups.push(CgroupRoot {
                label: format!("unit {unit}"),
                dir,
            });
        }
        Ok(resolved)
    }
}

/// The process a PID belongs to: a thread id given by mistake maps to its process.
fn thread_group_of(pid: u32) -> Result<u32, TargetError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = fs::read_to_string(&path).map_err(|_| TargetError::NoSuchProcess(pid))?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(TargetError::NoSuchProcess(pid))?;
    if tgid != pid {
        tracing::warn!("{pid} is a thread of process {tgid}: profiling the whole process");
    }
    Ok(tgid)
}

fn check_cgroup_dir(dir: &Path) -> Result<(), TargetError> {
    if !dir.is_dir() {
        return Err(TargetError::NoSuchCgroup(dir.to_path_buf()));
    }
    let fs = nix::sys::statfs::statfs(dir).map_err(|errno| TargetError::Io {
        path: dir.to_path_buf(),
        source: errno.into(),
    })?;
    if fs.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
        return Err(TargetError::NotCgroup2(dir.to_path_buf()));
    }
    Ok(())
}

/// A unit's cgroup: systemd's answer when systemctl is there, else a search of the tree
/// for a directory of that name (units in containers, or without systemd).
fn unit_cgroup(root: &Path, unit: &str) -> Result<PathBuf, TargetError> {
    if let Ok(out) = Command::new("systemctl")
        .args(["show", "--property=ControlGroup", "--value", "--", unit])
        .output()
    {
        let group = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !group.is_empty() {
            let dir = root.join(group.trim_start_matches('/'));
            if dir.is_dir() {
                check_cgroup_dir(&dir)?;
                return Ok(dir);
            }
        }
    }
    let dir = find_dir_named(root, unit).ok_or_else(|| TargetError::NoSuchUnit {
        unit: unit.to_owned(),
        root: root.to_path_buf(),
    })?;
    check_cgroup_dir(&dir)?;
    Ok(dir)
}

/// The cgroup v2 mount point: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on
/// hybrid ones (cgroup v1 controllers beside v2), from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf, TargetError> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|source| TargetError::Io {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE ...
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    mounts.sort_by_key(|m| m != Path::new(CGROUP_ROOT));
    mounts.into_iter().next().ok_or(TargetError::NoCgroup2)
}

/// Breadth-first, so `system.slice/x.service` wins over a nested namesake.
fn find_dir_named(root: &Path, name: &str) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    while let Some(dir) = queue.pop_front() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if entry.file_name() == name {
                    return Some(entry.path());
                }
                queue.push_back(entry.path());
            }
        }
    }
    None
}

/// A cgroup v2 id is the inode number of its directory (the kernfs node id that
/// `bpf_get_current_cgroup_id` returns).
fn collect_cgroup_ids(dir: &Path, ids: &mut BTreeSet<u64>) {
    let Ok(meta) = fs::metadata(dir) else {
        return; // removed since: nothing left to sample there
    };
    ids.insert(meta.ino());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_cgroup_ids(&entry.path(), ids);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pid_is_named() {
        let err = Targets {
            pids: vec![u32::MAX - 1],
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.to_string().contains(&(u32::MAX - 1).to_string()),
            "{err}"
        );
    }

    #[test]
    fn missing_cgroup_is_named() {
        let err = Targets {
            cgroups: vec!["no/such/cgroup-hindsight".into()],
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            err.to_string().contains("no/such/cgroup-hindsight"),
            "{err}"
        );
    }

    #[test]
    fn thread_id_maps_to_its_process() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            done_rx.recv().ok();
        });
        let tid = tid_rx.recv().unwrap();
        let resolved = Targets {
            pids: vec![tid],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        done_tx.send(()).unwrap();
        thread.join().unwrap();
        assert_ne!(tid, std::process::id());
        assert_eq!(resolved.tgids, BTreeSet::from([std::process::id()]));
    }

    #[test]
    fn root_cgroup_resolves_with_descendants() {
        let Ok(root) = cgroup2_root() else {
            eprintln!("skipped: no cgroup v2 hierarchy here");
            return;
        };
        let resolved = Targets {
            cgroups: vec![root],
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(!resolved.cgroup_ids().is_empty());
    }
}
