//! Processes seen in a profile: their names and memory maps, captured while they are alive
//! (at their first sample, and again at the end if they still run) so that stacks of
//! processes that exit before the profile ends can still be symbolized. Each mapped file is
//! opened through `/proc/PID/map_files` (or `/proc/PID/root`), which reaches binaries in
//! other mount namespaces (containers) and deleted ones; the open file is what the
//! symbolizer reads, through `/proc/self/fd/N`.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use procfs::process::{MMapPath, Process};

/// `PF_KTHREAD` in /proc/PID/stat flags (include/linux/sched.h).
const PF_KTHREAD: u32 = 0x0020_0000;

/// A binary or library mapped by some process, held open.
#[derive(Debug)]
pub struct ObjectFile {
    /// The path as the process sees it (in its own mount namespace).
    pub path: PathBuf,
    file: File,
    /// ELF `e_type` is ET_EXEC: mapped at its link-time addresses (no load bias).
    pub fixed_address: bool,
}

impl ObjectFile {
    /// A path to the open file that works from this process, whatever namespace the file
    /// came from.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The file name, for frames that have no symbol: `[libc.so.6]`.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// What backs one mapping.
#[derive(Debug, Clone)]
pub enum Backing {
    File(Arc<ObjectFile>),
    /// A file we could not open (reported as `[name]` frames).
    Unopened(String),
    Vdso,
    /// Heap, stacks, anonymous memory: JIT code lives here (see perf maps).
    Anonymous,
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub backing: Backing,
}

/// One `START SIZE NAME` line of a JIT's `/tmp/perf-PID.map`.
#[derive(Debug, Clone)]
pub struct PerfMapEntry {
    pub start: u64,
    pub size: u64,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub tgid: u32,
    /// Process name (the group leader's comm): the root frame of its stacks.
    pub comm: String,
    pub kernel_thread: bool,
    /// Start time in clock ticks since boot: tells a PID reused by another process.
    pub start_time: Option<u64>,
    /// Sorted by `start`, non-overlapping.
    pub maps: Vec<Mapping>,
    /// Sorted by `start`.
    pub perf_map: Vec<PerfMapEntry>,
    /// Gone before the end of the profile (symbolized from its first snapshot).
    pub exited: bool,
    /// Its cgroup v2 path (`/system.slice/nginx.service`) when it was first seen: a label
    /// of pprof samples.
    pub cgroup: Option<String>,
}

impl ProcessInfo {
    pub fn mapping(&self, addr: u64) -> Option<&Mapping> {
        let idx = self.maps.partition_point(|m| m.start <= addr);
        let m = self.maps.get(idx.checked_sub(1)?)?;
        (addr < m.end).then_some(m)
    }

    /// For a data address: the object whose variables live there (its file mappings, or the
    /// anonymous mapping right after them: .bss beyond the file) and the address as the
    /// object's link-time (virtual) address.
    pub fn data_address(&self, addr: u64) -> Option<(&Arc<ObjectFile>, u64)> {
        let idx = self
            .maps
            .partition_point(|m| m.start <= addr)
            .checked_sub(1)?;
        let m = &self.maps[idx];
        if addr >= m.end {
            return None;
        }
        let object = match &m.backing {
            Backing::File(object) => object,
            Backing::Anonymous => match &self.maps.get(idx.checked_sub(1)?)?.backing {
                Backing::File(object) if self.maps[idx - 1].end == m.start => object,
                _ => return None,
            },
            _ => return None,
        };
        if object.fixed_address {
            return Some((object, addr));
        }
        // Shared objects and PIE are linked at 0: the mapping of file offset 0 is the bias.
        let base = self
            .maps
            .iter()
            .filter(|m| {
                m.offset == 0 && matches!(&m.backing, Backing::File(o) if Arc::ptr_eq(o, object))
            })
            .map(|m| m.start)
            .min()?;
        Some((object, addr.checked_sub(base)?))
    }

    pub fn perf_map_symbol(&self, addr: u64) -> Option<&str> {
        let idx = self.perf_map.partition_point(|e| e.start <= addr);
        let e = self.perf_map.get(idx.checked_sub(1)?)?;
        (addr < e.start + e.size).then_some(e.name.as_str())
    }
}

/// Every process seen so far, and the files their maps hold open (shared by identity).
#[derive(Debug, Default)]
pub struct ProcessTable {
    processes: HashMap<u32, ProcessInfo>,
    files: HashMap<(i32, i32, u64), Arc<ObjectFile>>,
    /// Processes first seen after they had already exited: named from the kernel's comm.
    pub missed: usize,
}

impl ProcessTable {
    pub fn get(&self, tgid: u32) -> Option<&ProcessInfo> {
        self.processes.get(&tgid)
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    pub fn contains(&self, tgid: u32) -> bool {
        self.processes.contains_key(&tgid)
    }

    /// Records a process the first time it is seen. `kernel_comm` is the sampled thread's
    /// comm, used as its name if it is already gone.
    pub fn observe(&mut self, tgid: u32, kernel_comm: Option<&str>) {
        if self.processes.contains_key(&tgid) {
            return;
        }
        match self.snapshot(tgid) {
            Some(info) => {
                self.processes.insert(tgid, info);
            }
            None => {
                self.missed += 1;
                self.processes.insert(
                    tgid,
                    ProcessInfo {
                        tgid,
                        comm: kernel_comm
                            .filter(|c| !c.is_empty())
                            .map_or_else(|| format!("[pid {tgid}]"), str::to_owned),
                        kernel_thread: false,
                        start_time: None,
                        maps: Vec::new(),
                        perf_map: Vec::new(),
                        exited: true,
                        cgroup: None,
                    },
                );
            }
        }
    }

    /// A process announced again by the kernel: it called execve, so its maps and name
    /// changed. The new maps win; old ones that do not overlap stay, for the samples taken
    /// before the exec.
    pub fn reobserve(&mut self, tgid: u32, kernel_comm: Option<&str>) {
        if !self.processes.contains_key(&tgid) {
            return self.observe(tgid, kernel_comm);
        }
        let Some(fresh) = self.snapshot(tgid) else {
            return;
        };
        let info = self.processes.get_mut(&tgid).expect("checked above");
        let old = std::mem::take(&mut info.maps);
        info.maps = if fresh.start_time == info.start_time {
            merge_maps(fresh.maps, old)
        } else {
            fresh.maps // PID reused by another process
        };
        info.comm = fresh.comm;
        info.start_time = fresh.start_time;
        info.perf_map = fresh.perf_map;
        info.kernel_thread = fresh.kernel_thread;
        info.exited = false;
    }

    /// At the end of the profile: refresh the maps of processes that still run (libraries
    /// loaded since), and mark the others as exited.
    pub fn refresh(&mut self) {
        let tgids: Vec<u32> = self.processes.keys().copied().collect();
        for tgid in tgids {
            let fresh = self.snapshot(tgid);
            let info = self.processes.get_mut(&tgid).expect("listed above");
            match fresh {
                Some(fresh) if fresh.start_time == info.start_time => {
                    let old = std::mem::take(&mut info.maps);
                    info.maps = merge_maps(fresh.maps, old);
                    if !fresh.perf_map.is_empty() {
                        info.perf_map = fresh.perf_map;
                    }
                }
                _ => info.exited = true,
            }
        }
    }

    /// Forgets the processes marked exited by [`Self::refresh`] and closes the files only
    /// they held open; returns how many files were closed. A long-running recorder calls
    /// it after folding, so that the table does not grow with every process the host
    /// ever ran.
    pub fn forget_exited(&mut self) -> usize {
        self.processes.retain(|_, p| !p.exited);
        let before = self.files.len();
        self.files.retain(|_, file| Arc::strong_count(file) > 1);
        before - self.files.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ProcessInfo> {
        self.processes.values()
    }

    fn snapshot(&mut self, tgid: u32) -> Option<ProcessInfo> {
        let process = Process::new(tgid as i32).ok()?;
        let stat = process.stat().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{tgid}/comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or(stat.comm.clone());
        let kernel_thread = stat.flags & PF_KTHREAD != 0;
        let mut maps = Vec::new();
        if !kernel_thread {
            for map in process.maps().ok()? {
                let backing = match &map.pathname {
                    // Data mappings too: lock (futex) addresses are named from them.
                    MMapPath::Path(path) => {
                        self.open_object(tgid, map.address, map.dev, map.inode, path)
                    }
                    MMapPath::Vdso => Backing::Vdso,
                    MMapPath::Vvar | MMapPath::Vsyscall => continue,
                    _ => Backing::Anonymous,
                };
                maps.push(Mapping {
                    start: map.address.0,
                    end: map.address.1,
                    offset: map.offset,
                    backing,
                });
            }
        }
        let perf_map = if kernel_thread {
            Vec::new()
        } else {
            read_perf_map(tgid)
        };
        Some(ProcessInfo {
            tgid,
            comm,
            kernel_thread,
            start_time: Some(stat.starttime),
            maps,
            perf_map,
            exited: false,
            cgroup: read_cgroup(tgid),
        })
    }

    fn open_object(
        &mut self,
        tgid: u32,
        (start, end): (u64, u64),
        dev: (i32, i32),
        inode: u64,
        path: &Path,
    ) -> Backing {
        let key = (dev.0, dev.1, inode);
        if let Some(file) = self.files.get(&key) {
            return Backing::File(Arc::clone(file));
        }
        let via_map_files = format!("/proc/{tgid}/map_files/{start:x}-{end:x}");
        let in_root =
            Path::new(&format!("/proc/{tgid}/root")).join(path.strip_prefix("/").unwrap_or(path));
        let opened = File::open(&via_map_files).or_else(|_| File::open(&in_root));
        match opened {
            Ok(file) => {
                // e_type, at offset 16 of the ELF header: 2 = ET_EXEC.
                let mut e_type = [0u8; 2];
                let fixed_address =
                    std::os::unix::fs::FileExt::read_exact_at(&file, &mut e_type, 16)
                        .is_ok_and(|()| u16::from_le_bytes(e_type) == 2);
                let object = Arc::new(ObjectFile {
                    path: path.to_path_buf(),
                    file,
                    fixed_address,
                });
                self.files.insert(key, Arc::clone(&object));
                Backing::File(object)
            }
            Err(err) => {
                tracing::debug!(tgid, path = %path.display(), "cannot open mapped file: {err}");
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Backing::Unopened(name)
            }
        }
    }
}

/// New maps win; old ones that no new map overlaps are kept (libraries unloaded since).
fn merge_maps(new: Vec<Mapping>, old: Vec<Mapping>) -> Vec<Mapping> {
    let mut merged = new.clone();
    for m in old {
        if !new.iter().any(|n| n.start < m.end && m.start < n.end) {
            merged.push(m);
        }
    }
    merged.sort_by_key(|m| m.start);
    merged
}

/// The process's JIT symbol map, `/tmp/perf-<pid>.map` in its own mount and PID namespace.
fn read_perf_map(tgid: u32) -> Vec<PerfMapEntry> {
    let ns_pid = std::fs::read_to_string(format!("/proc/{tgid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last().map(str::to_owned))
        })
        .unwrap_or_else(|| tgid.to_string());
    let path = format!("/proc/{tgid}/root/tmp/perf-{ns_pid}.map");
    std::fs::read_to_string(path)
        .map(|text| parse_perf_map(&text))
        .unwrap_or_default()
}

/// Parses perf's JIT map format: `START SIZE NAME` per line, hex numbers.
/// The unified (v2) hierarchy's line of `/proc/PID/cgroup`: `0::/system.slice/x.service`.
fn read_cgroup(tgid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

pub fn parse_perf_map(text: &str) -> Vec<PerfMapEntry> {
    let mut entries: Vec<PerfMapEntry> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let start = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
            let size = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
            let name = parts.next()?.trim().to_owned();
            Some(PerfMapEntry { start, size, name })
        })
        .collect();
    entries.sort_by_key(|e| e.start);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_map_lines_parse_and_look_up() {
        let entries =
            parse_perf_map("7f00 10 LazyCompile:*foo bar.js:1\nbad line\n7e00 0x80 stub\n");
        assert_eq!(entries.len(), 2);
        let info = ProcessInfo {
            tgid: 1,
            comm: "x".into(),
            kernel_thread: false,
            start_time: None,
            maps: Vec::new(),
            perf_map: entries,
            exited: false,
            cgroup: None,
        };
        assert_eq!(
            info.perf_map_symbol(0x7f08),
            Some("LazyCompile:*foo bar.js:1")
        );
        assert_eq!(info.perf_map_symbol(0x7e7f), Some("stub"));
        assert_eq!(info.perf_map_symbol(0x7f10), None);
    }

    #[test]
    fn own_process_snapshot_has_our_binary() {
        let mut table = ProcessTable::default();
        let me = std::process::id();
        table.observe(me, None);
        let info = table.get(me).unwrap();
        assert!(!info.exited && !info.kernel_thread);
        let here = perf_map_lines_parse_and_look_up as *const () as u64;
        let mapping = info.mapping(here).expect("our code is mapped");
        let Backing::File(object) = &mapping.backing else {
            panic!("our code is file-backed: {mapping:?}");
        };
        assert_eq!(
            std::fs::canonicalize(object.fd_path()).unwrap(),
            std::env::current_exe().unwrap()
        );
    }

    #[test]
    fn vanished_process_keeps_kernel_name() {
        let mut table = ProcessTable::default();
        table.observe(u32::MAX - 7, Some("ghost"));
        let info = table.get(u32::MAX - 7).unwrap();
        assert!(info.exited);
        assert_eq!(info.comm, "ghost");
        assert_eq!(table.missed, 1);
    }
}
