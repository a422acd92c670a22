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
    collections::{BTreeMap, HashMap},
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

/// Least time between two re-reads of a process's maps for code it mapped since.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

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
    /// Off-CPU waits walked with frame pointers (over the copy budget) attributed to the
    /// unwound stacks of copied waits that had the same frame-pointer stack.
    pub attributed_waits: u64,
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
    /// Off-CPU copies by the frame-pointer stack walked beside them: (tgid, fp stack id,
    /// thread or 0) → unwound stack id → copies.
    unwound_by_fp: HashMap<(u32, i32, u32), BTreeMap<u32, u64>>,
    /// When each process's maps were last re-read for an unknown address.
    rescanned: HashMap<u32, Instant>,
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
        } else if processes
            .get(event.tgid)
            .is_some_and(|p| !p.exited && p.mapping(event.ip).is_none())
        {
            // Code mapped since the snapshot (dlopen): look again, at most once a second.
            let now = Instant::now();
            let due = self
                .rescanned
                .get(&event.tgid)
                .is_none_or(|last| now.duration_since(*last) >= RESCAN_EVERY);
            if due {
                self.rescanned.insert(event.tgid, now);
                processes.reobserve(event.tgid, None);
            }
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
                    pid: event.tid,
                };
                *self.oncpu.entry(key).or_default() += event.value;
            }
            stack_copy::OFFCPU => {
                let key = OffCpuKey {
                    tgid: event.tgid,
                    user_stack_id: id,
                    kernel_stack_id: event.kernel_stack_id,
                    state: event.extra,
                    pid: event.tid,
                };
                if event.fp_stack_id >= 0 {
                    *self
                        .unwound_by_fp
                        .entry((event.tgid, event.fp_stack_id, event.tid))
                        .or_default()
                        .entry(id as u32)
                        .or_default() += 1;
                }
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

    /// Adds what was unwound to the kernel's aggregates (`raw.open_copied_waits` closes
    /// the off-CPU waits still open at the end); the final statistics.
    pub fn finish(mut self, raw: &mut RawProfile) -> UnwindStats {
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
        // Waits over the copy budget (`auto`) have a frame-pointer stack, cut short in code
        // without frame pointers. Copied waits of the same process with that same
        // frame-pointer stack were unwound: their unwound stacks are a sample of where such
        // waits come from, so the wait time is shared among them in proportion to how often
        // each was seen (the kernel stack and state stay the wait's own).
        for (key, stats) in std::mem::take(&mut raw.offcpu) {
            let seen = (key.user_stack_id >= 0)
                .then(|| {
                    self.unwound_by_fp
                        .get(&(key.tgid, key.user_stack_id, key.pid))
                })
                .flatten();
            let Some(seen) = seen else {
                raw.offcpu.push((key, stats));
                continue;
            };
            self.stats.attributed_waits += stats.count;
            let copies: u64 = seen.values().sum();
            let (mut ns_left, mut count_left) = (stats.total_ns, stats.count);
            for (i, (&id, &n)) in seen.iter().enumerate() {
                let (ns, count) = if i + 1 == seen.len() {
                    (ns_left, count_left) // the remainder: totals are kept exactly
                } else {
                    let share =
                        |x: u64| (u128::from(x) * u128::from(n) / u128::from(copies)) as u64;
                    (share(stats.total_ns), share(stats.count))
                };
                ns_left -= ns;
                count_left -= count;
                let entry = self
                    .offcpu
                    .entry(OffCpuKey {
                        user_stack_id: id as i32,
                        ..key
                    })
                    .or_default();
                entry.total_ns += ns;
                entry.count += count;
                entry.max_ns = entry.max_ns.max(stats.max_ns);
            }
        }
        raw.offcpu.extend(self.offcpu);
        raw.locks.extend(self.locks);
        raw.stacks
            .extend(self.stacks.into_iter().map(|(ips, id)| (id, ips)));
        self.stats
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

#[cfg(test)]
mod tests {
    use hindsight_common::{StackCopy, errno};

    use super::*;
    use crate::profile::symbolize::{Symbolizer, lookup_addr};

    /// Reads `buf.len()` bytes of our own memory at `addr`, stopping at the first
    /// unreadable page as the eBPF program does; returns how many were read.
    fn read_own(addr: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            let chunk = (buf.len() - done).min(512);
            let local = libc::iovec {
                iov_base: buf[done..].as_mut_ptr().cast(),
                iov_len: chunk,
            };
            let remote = libc::iovec {
                iov_base: (addr as usize + done) as *mut libc::c_void,
                iov_len: chunk,
            };
            // SAFETY: `local` is inside `buf`; the kernel checks the remote range.
            let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
            if n != chunk as isize {
                break;
            }
            done += chunk;
        }
        done
    }

    /// This thread's registers and stack, as a record of the copy ring.
    #[inline(never)]
    fn copy_own_stack(kind: u32, value: u64) -> Vec<u8> {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers into locals; touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nomem, nostack, preserves_flags),
            );
        }
        let mut stack = vec![0u8; 16 * 1024];
        let len = read_own(sp, &mut stack);
        let mut record = vec![0u8; StackCopy::HEADER];
        record[0..4].copy_from_slice(&kind.to_ne_bytes());
        record[4..8].copy_from_slice(&std::process::id().to_ne_bytes());
        record[8..12].copy_from_slice(&(-errno::EFAULT).to_ne_bytes());
        record[16..24].copy_from_slice(&ip.to_ne_bytes());
        record[24..32].copy_from_slice(&sp.to_ne_bytes());
        record[32..40].copy_from_slice(&bp.to_ne_bytes());
        record[48..56].copy_from_slice(&value.to_ne_bytes());
        record[56..60].copy_from_slice(&(len as u32).to_ne_bytes());
        record.extend_from_slice(&stack[..len]);
        record
    }

    #[inline(never)]
    fn inner_unwind_fixture(kind: u32, value: u64) -> Vec<u8> {
        let record = copy_own_stack(kind, value);
        std::hint::black_box(&record); // no tail call: this frame stays on the stack
        record
    }

    #[inline(never)]
    fn outer_unwind_fixture(kind: u32, value: u64) -> Vec<u8> {
        let record = inner_unwind_fixture(kind, value);
        std::hint::black_box(&record);
        record
    }

    #[test]
    fn unwinds_its_own_stack_through_its_callers() {
        let me = std::process::id();
        let mut table = ProcessTable::default();
        table.observe(me, None);
        let record = outer_unwind_fixture(stack_copy::ONCPU, 1);
        let mut unwinder = StackUnwinder::new();
        unwinder.add(&record, &mut table);
        unwinder.add(&record, &mut table);
        assert_eq!((unwinder.stats.stacks, unwinder.stats.malformed), (2, 0));
        assert!(unwinder.stats.binaries >= 1);
        let mut raw = RawProfile::default();
        unwinder.finish(&mut raw);
        // The same stack twice: one key, counted twice, under an unwound id.
        assert_eq!(raw.oncpu.len(), 1);
        assert_eq!(raw.oncpu[0].count, 2);
        let id = raw.oncpu[0].key.user_stack_id as u32;
        assert!(id >= UNWOUND_ID_BASE);
        let addrs: Vec<u64> = raw.stacks[&id]
            .iter()
            .enumerate()
            .map(|(i, ip)| lookup_addr(i, *ip))
            .collect();
        let names = Symbolizer::new().user(table.get(me).unwrap(), &addrs);
        let frames: Vec<String> = addrs.iter().flat_map(|a| names[a].clone()).collect();
        let at = |name: &str| {
            frames
                .iter()
                .position(|f| f.contains(name))
                .unwrap_or_else(|| panic!("no {name} in {frames:#?}"))
        };
        // Leaf first: the copying function, then its callers in order, then the harness.
        assert!(
            at("copy_own_stack") < at("inner_unwind_fixture"),
            "{frames:#?}"
        );
        assert!(at("inner_unwind_fixture") < at("outer_unwind_fixture"));
        assert!(
            frames.len() > at("outer_unwind_fixture") + 1,
            "stops at the test function: {frames:#?}"
        );
    }

    #[test]
    fn offcpu_copies_wait_for_their_end_or_the_profile_end() {
        let me = std::process::id();
        let mut table = ProcessTable::default();
        table.observe(me, None);
        let mut unwinder = StackUnwinder::new();
        let done = |wait_id: u64, ns: u64| {
            let mut bytes = stack_copy::OFFCPU_DONE.to_ne_bytes().to_vec();
            bytes.extend_from_slice(&0u32.to_ne_bytes());
            bytes.extend_from_slice(&wait_id.to_ne_bytes());
            bytes.extend_from_slice(&ns.to_ne_bytes());
            bytes
        };
        for wait_id in [7, 8, 9, 10] {
            unwinder.add(&copy_own_stack(stack_copy::OFFCPU, wait_id), &mut table);
        }
        unwinder.add(&done(7, 5000), &mut table);
        unwinder.add(&done(9, 0), &mut table); // shorter than --min-block: dropped
        unwinder.add(&done(99, 1), &mut table); // no copy: ignored
        unwinder.add(&[1, 2], &mut table);
        assert_eq!(unwinder.stats.malformed, 1);
        let mut raw = RawProfile {
            open_copied_waits: vec![(8, 3000)], // wait 10 is neither ended nor open: lost
            ..Default::default()
        };
        unwinder.finish(&mut raw);
        let total: u64 = raw.offcpu.iter().map(|(_, s)| s.total_ns).sum();
        let count: u64 = raw.offcpu.iter().map(|(_, s)| s.count).sum();
        assert_eq!((total, count), (8000, 2));
        assert!(
            raw.offcpu
                .iter()
                .all(|(k, _)| k.user_stack_id as u32 >= UNWOUND_ID_BASE)
        );
    }

    #[test]
    fn frame_pointer_waits_take_the_unwound_stacks_of_copies_with_their_fp_stack() {
        let me = std::process::id();
        let mut table = ProcessTable::default();
        table.observe(me, None);
        let mut unwinder = StackUnwinder::new();
        // Two copied waits whose frame-pointer stack (walked beside the copy) was id 5.
        for wait_id in [1, 2] {
            let mut record = copy_own_stack(stack_copy::OFFCPU, wait_id);
            record[68..72].copy_from_slice(&5i32.to_ne_bytes());
            unwinder.add(&record, &mut table);
        }
        let wait = |user_stack_id: i32, total_ns: u64, count: u64| {
            let key = OffCpuKey {
                tgid: me,
                user_stack_id,
                kernel_stack_id: 3,
                state: 1,
                pid: 0,
            };
            let stats = WaitStats {
                total_ns,
                count,
                max_ns: total_ns,
            };
            (key, stats)
        };
        // Over-budget waits from the kernel's map: stack 5 was seen copied, stack 6 not.
        let mut raw = RawProfile {
            offcpu: vec![wait(5, 9000, 3), wait(6, 100, 1)],
            open_copied_waits: vec![(1, 10), (2, 20)],
            ..Default::default()
        };
        let stats = unwinder.finish(&mut raw);
        assert_eq!(stats.attributed_waits, 3);
        let total: u64 = raw.offcpu.iter().map(|(_, s)| s.total_ns).sum();
        assert_eq!(total, 9000 + 100 + 10 + 20, "no time lost or made up");
        assert!(!raw.offcpu.iter().any(|(k, _)| k.user_stack_id == 5));
        // The attributed time keeps the waits' own kernel stack and state.
        let attributed: u64 = raw
            .offcpu
            .iter()
            .filter(|(k, _)| (k.kernel_stack_id, k.state) == (3, 1) && k.user_stack_id != 6)
            .map(|(k, s)| {
                assert!(k.user_stack_id as u32 >= UNWOUND_ID_BASE, "{k:?}");
                s.total_ns
            })
            .sum();
        assert_eq!(attributed, 9000);
        assert!(
            raw.offcpu
                .iter()
                .any(|(k, s)| k.user_stack_id == 6 && s.total_ns == 100)
        );
    }
}
