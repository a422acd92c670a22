//! DWARF unwinding of copied user stacks (`--unwind dwarf|auto`): each record of the copy
//! ring ([`crate::bpf::CopyEvent`]) carries the user registers and a slice of the stack
//! from `sp` up; [`framehop`] walks it with the `.eh_frame` tables of the binaries the
//! process maps (frame pointers for code without them). The unwound stacks are interned
//! under ids from [`UNWOUND_ID_BASE`] up and their events aggregated into the same keys
//! as the kernel's, so that the rest of the pipeline (records, fold) sees no difference.
//!
//! Unwind tables are read once per binary, keyed by its GNU build id (the path and size
//! when it has none), from the files the process table holds open: a process that exited
//! during the profile is unwound from its first snapshot.

use std::{
    collections::HashMap,
    fs::File,
    ops::Range,
    sync::Arc,
    time::{Duration, Instant},
};

use framehop::{
    ExplicitModuleSectionInfo, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use hindsight_common::{LockKey, OffCpuKey, StackKey, WaitStats, stack_copy};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use super::process::{Backing, ObjectFile, ProcessInfo, ProcessTable};
use crate::bpf::{CopyEvent, RawProfile, oncpu::RawSample, stackcopy::StackEvent};

/// First id of the stacks unwound here, above any id of the kernel's stack map.
pub const UNWOUND_ID_BASE: u32 = 1 << 30;

/// Frames kept per stack, as many as the kernel's frame-pointer walk keeps.
const MAX_FRAMES: usize = 127;

type Data = Arc<[u8]>;

/// What one binary contributes to unwinding.
struct ObjectUnwindInfo {
    sections: ExplicitModuleSectionInfo<Data>,
    /// `PT_LOAD` segments: file offsets and the addresses they are linked at.
    segments: Vec<(Range<u64>, u64)>,
}

impl ObjectUnwindInfo {
    /// The binary's build id (its device, inode and size when it has none), and its tables
    /// unless `known` already has them under that key.
    fn read(
        file: &File,
        known: &HashMap<Vec<u8>, Arc<ObjectUnwindInfo>>,
    ) -> Option<(Vec<u8>, Option<Self>)> {
        let cache = object::ReadCache::new(file);
        let elf = object::File::parse(&cache).ok()?;
        let key = match elf.build_id() {
            Ok(Some(id)) => id.to_vec(),
            _ => Self::fallback_key(file)?,
        };
        if known.contains_key(&key) {
            return Some((key, None));
        }
        let info = Self::parse(&elf)?;
        Some((key, Some(info)))
    }

    fn fallback_key(file: &File) -> Option<Vec<u8>> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = file.metadata().ok()?;
        Some(format!("{}:{}:{}", meta.dev(), meta.ino(), meta.size()).into_bytes())
    }

    fn parse<'a, R: object::ReadRef<'a>>(elf: &object::File<'a, R>) -> Option<Self> {
        let range = |name: &str| {
            elf.section_by_name(name)
                .map(|s| s.address()..s.address() + s.size())
        };
        let data = |name: &str| -> Option<Data> {
            let section = elf.section_by_name(name)?;
            Some(Arc::from(section.data().ok()?))
        };
        let eh_frame = data(".eh_frame");
        let debug_frame = if eh_frame.is_none() {
            data(".debug_frame")
        } else {
            None
        };
        if eh_frame.is_none() && debug_frame.is_none() {
            return None; // frame pointers only: framehop's fallback for unknown code
        }
        let sections = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: range(".text"),
            got_svma: range(".got"),
            eh_frame_svma: range(".eh_frame"),
            eh_frame,
            eh_frame_hdr_svma: range(".eh_frame_hdr"),
            eh_frame_hdr: data(".eh_frame_hdr"),
            debug_frame,
            ..Default::default()
        };
        let segments = elf
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset..offset + size, s.address())
            })
            .collect();
        Some(Self { sections, segments })
    }

    /// Where address 0 of the binary is in a process that maps file offset `offset` at
    /// `start`.
    fn load_bias(&self, start: u64, offset: u64) -> u64 {
        self.segments
            .iter()
            .find(|(file, _)| file.contains(&offset))
            .map_or(start.wrapping_sub(offset), |(file, vaddr)| {
                start.wrapping_sub(vaddr + (offset - file.start))
            })
    }
}

/// What the unwinder did, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnwindStats {
    /// Copied stacks unwound.
    pub stacks: u64,
    /// Unwinds that stopped on an unreadable address or an unknown rule before a root.
    pub incomplete: u64,
    /// Copies that stopped at the size limit rather than at the stack's end.
    pub truncated_copies: u64,
    /// Records that could not be parsed.
    pub malformed: u64,
    /// Binaries whose unwind tables were read (once per build id).
    pub binaries: usize,
    /// Time spent unwinding (not counting reading the tables).
    pub unwind_time: Duration,
}

impl UnwindStats {
    pub fn per_stack(&self) -> Duration {
        if self.stacks == 0 {
            Duration::ZERO
        } else {
            self.unwind_time / self.stacks as u32
        }
    }
}

/// A process's modules, and what they were built from (rebuilt when its maps change).
struct ProcessUnwinder {
    maps_seen: (Option<u64>, usize),
    unwinder: UnwinderX86_64<Data>,
}

/// A file mapped by a process: its address range, and (start, file offset) of its
/// mapping of lowest offset.
type ObjectExtent = (Arc<ObjectFile>, Range<u64>, (u64, u64));

/// Unwinds copied stacks and aggregates their events.
#[derive(Default)]
pub struct StackUnwinder {
    by_build_id: HashMap<Vec<u8>, Arc<ObjectUnwindInfo>>,
    /// Per open file (by identity): its tables, or `None` when it has none.
    by_object: HashMap<usize, Option<Arc<ObjectUnwindInfo>>>,
    processes: HashMap<u32, ProcessUnwinder>,
    cache: CacheX86_64,
    stacks: HashMap<Vec<u64>, u32>,
    oncpu: HashMap<StackKey, u64>,
    offcpu: HashMap<OffCpuKey, WaitStats>,
    locks: HashMap<LockKey, WaitStats>,
    /// Off-CPU waits whose stack arrived and whose end has not, by wait id.
    pending: HashMap<u64, OffCpuKey>,
    pub stats: UnwindStats,
}

fn add_wait(stats: &mut WaitStats, ns: u64) {
    stats.total_ns += ns;
    stats.count += 1;
    stats.max_ns = stats.max_ns.max(ns);
}

impl StackUnwinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one record of the copy ring. A process not yet in the table is snapshotted
    /// now (its notification may still be on its way).
    pub fn add(&mut self, bytes: &[u8], processes: &mut ProcessTable) {
        let event = match CopyEvent::parse(bytes) {
            Some(CopyEvent::Stack(event)) => event,
            Some(CopyEvent::WaitDone(done)) => {
                if let Some(key) = self.pending.remove(&done.wait_id)
                    && done.ns > 0
                {
                    add_wait(self.offcpu.entry(key).or_default(), done.ns);
                }
                return;
            }
            None => {
                self.stats.malformed += 1;
                return;
            }
        };
        if !processes.contains(event.tgid) {
            processes.observe(event.tgid, None);
        }
        let ips = self.unwind(processes.get(event.tgid), &event);
        let next = UNWOUND_ID_BASE + self.stacks.len() as u32;
        let id = *self.stacks.entry(ips).or_insert(next) as i32;
        match event.kind {
            stack_copy::ONCPU => {
                let key = StackKey {
                    tgid: event.tgid,
                    user_stack_id: id,
                    kernel_stack_id: event.kernel_stack_id,
                };
                *self.oncpu.entry(key).or_default() += event.value;
            }
            stack_copy::OFFCPU => {
                let key = OffCpuKey {
                    tgid: event.tgid,
                    user_stack_id: id,
                    kernel_stack_id: event.kernel_stack_id,
                    state: event.extra,
                };
                self.pending.insert(event.value, key);
            }
            stack_copy::LOCK => {
                let key = LockKey {
                    lock_addr: event.lock_addr,
                    tgid: event.tgid,
                    user_stack_id: id,
                    kernel_stack_id: event.kernel_stack_id,
                    flags: event.extra,
                };
                add_wait(self.locks.entry(key).or_default(), event.value);
            }
            _ => self.stats.malformed += 1,
        }
    }

    /// Adds what was unwound to the kernel's aggregates. `raw.open_copied_waits` closes
    /// the off-CPU waits still open at the end.
    pub fn finish(mut self, raw: &mut RawProfile) {
        for (wait_id, ns) in std::mem::take(&mut raw.open_copied_waits) {
            if let Some(key) = self.pending.remove(&wait_id) {
                add_wait(self.offcpu.entry(key).or_default(), ns);
            }
        }
        raw.oncpu.extend(
            self.oncpu
                .into_iter()
                .map(|(key, count)| RawSample { key, count }),
        );
        raw.offcpu.extend(self.offcpu);
        raw.locks.extend(self.locks);
        raw.stacks
            .extend(self.stacks.into_iter().map(|(ips, id)| (id, ips)));
    }

    /// The stack's instruction pointers, leaf first.
    fn unwind(&mut self, process: Option<&ProcessInfo>, event: &StackEvent<'_>) -> Vec<u64> {
        self.stats.stacks += 1;
        if event.truncated {
            self.stats.truncated_copies += 1;
        }
        if let Some(process) = process {
            self.prepare(process);
        }
        let started = Instant::now();
        let empty = UnwinderX86_64::new();
        let unwinder = self
            .processes
            .get(&event.tgid)
            .filter(|_| process.is_some())
            .map_or(&empty, |p| &p.unwinder);
        let (sp, stack) = (event.sp, event.stack);
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let at = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let bytes = stack.get(at..at.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_ne_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let regs = UnwindRegsX86_64::new(event.ip, event.sp, event.bp);
        let mut frames = unwinder.iter_frames(event.ip, regs, &mut self.cache, &mut read_stack);
        let mut ips = Vec::new();
        let complete = loop {
            match frames.next() {
                Ok(Some(frame)) => {
                    ips.push(frame.address());
                    if ips.len() == MAX_FRAMES {
                        break false;
                    }
                }
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        if !complete {
            self.stats.incomplete += 1;
        }
        self.stats.unwind_time += started.elapsed();
        if ips.is_empty() {
            ips.push(event.ip);
        }
        ips
    }

    /// Builds (or rebuilds, when its maps changed) the process's module list.
    fn prepare(&mut self, process: &ProcessInfo) {
        let seen = (process.start_time, process.maps.len());
        if self
            .processes
            .get(&process.tgid)
            .is_some_and(|p| p.maps_seen == seen)
        {
            return;
        }
        // Each file's extent in the process, and where its lowest file offset is mapped.
        let mut objects: Vec<ObjectExtent> = Vec::new();
        for m in &process.maps {
            let Backing::File(object) = &m.backing else {
                continue;
            };
            match objects.iter_mut().find(|(o, ..)| Arc::ptr_eq(o, object)) {
                Some((_, range, lowest)) => {
                    range.start = range.start.min(m.start);
                    range.end = range.end.max(m.end);
                    if m.offset < lowest.1 {
                        *lowest = (m.start, m.offset);
                    }
                }
                None => objects.push((Arc::clone(object), m.start..m.end, (m.start, m.offset))),
            }
        }
        let mut unwinder = UnwinderX86_64::new();
        for (object, range, (start, offset)) in objects {
            let Some(info) = self.object_info(&object) else {
                continue;
            };
            let bias = info.load_bias(start, offset);
            unwinder.add_module(Module::new(
                object.path.display().to_string(),
                range,
                bias,
                info.sections.clone(),
            ));
        }
        self.processes.insert(
            process.tgid,
            ProcessUnwinder {
                maps_seen: seen,
                unwinder,
            },
        );
    }

    fn object_info(&mut self, object: &Arc<ObjectFile>) -> Option<Arc<ObjectUnwindInfo>> {
        let id = Arc::as_ptr(object) as usize;
        if let Some(info) = self.by_object.get(&id) {
            return info.clone();
        }
        let info = File::open(object.fd_path())
            .ok()
            .and_then(|file| ObjectUnwindInfo::read(&file, &self.by_build_id))
            .and_then(|(key, parsed)| match parsed {
                Some(info) => {
                    self.stats.binaries += 1;
                    let info = Arc::new(info);
                    self.by_build_id.insert(key, Arc::clone(&info));
                    Some(info)
                }
                None => self.by_build_id.get(&key).cloned(),
            });
        if info.is_none() {
            tracing::debug!(path = %object.path.display(), "no unwind tables");
        }
        self.by_object.insert(id, info.clone());
        info
    }
}
