//! Addresses -> function names, with blazesym: ELF symtab/dynsym, DWARF (inlined functions
//! included), debug files found by build-id or debuglink under /usr/lib/debug, Rust and C++
//! demangling, and kallsyms for the kernel. User addresses are turned into file offsets
//! with the process's captured maps ([`super::process`]), so processes in other mount
//! namespaces and processes that already exited symbolize the same way.
//!
//! A frame is a list of names, outermost first: a call site inside inlined code gives the
//! real function and then each inlined callee. An address that cannot be named becomes
//! `[<file name>]` when its file is known (as perf shows it) and `[unknown]` otherwise.

use std::{collections::HashMap, sync::Arc};

use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer as Blazesym,
        source::{Elf, Kernel, Source},
    },
};

use super::process::{Backing, ObjectFile, ProcessInfo};

/// Name of a frame that could not be named at all.
pub const UNKNOWN: &str = "[unknown]";

pub type FrameNames = Vec<String>;

/// Addresses of one file to symbolize together: the file, and (address, file offset) pairs.
type FileBatch = (Arc<ObjectFile>, Vec<(u64, u64)>);

pub struct Symbolizer {
    inner: Blazesym,
    kernel: HashMap<u64, FrameNames>,
    /// (object identity, file offset) -> names, shared by every process mapping the file.
    user: HashMap<(usize, u64), FrameNames>,
    /// Read DWARF (inlined functions) when a file has it; off: ELF symbols only.
    debug_syms: bool,
    /// Source file of each user function name DWARF located (first seen wins), for the
    /// pprof export's `Function.filename`.
    pub sources: HashMap<String, String>,
    pub stats: SymbolizeStats,
}

/// How well symbolization went, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct SymbolizeStats {
    pub addresses: u64,
    pub unnamed: u64,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            inner: Blazesym::builder()
                .enable_inlined_fns(true)
                .enable_code_info(true)
                .enable_demangling(true)
                .build(),
            kernel: HashMap::new(),
            user: HashMap::new(),
            debug_syms: true,
            sources: HashMap::new(),
            stats: SymbolizeStats::default(),
        }
    }

    /// Names from ELF symbol tables only, no DWARF: inlined functions are not shown, but
    /// big binaries with debug info (a compiler, a browser) cost a few MiB instead of
    /// hundreds. For the always-on flight recorder, which symbolizes every window of the
    /// whole host within a memory budget.
    pub fn symbols_only() -> Self {
        Self {
            inner: Blazesym::builder()
                .enable_inlined_fns(false)
                .enable_code_info(false)
                .enable_demangling(true)
                .build(),
            debug_syms: false,
            ..Self::new()
        }
    }

    fn elf(&self, object: &ObjectFile) -> Source<'static> {
        let mut elf = Elf::new(object.fd_path());
        elf.debug_syms = self.debug_syms;
        Source::Elf(elf)
    }

    /// Names kernel addresses (`lookup` adjusted: see [`lookup_addr`]).
    pub fn kernel(&mut self, addrs: &[u64]) -> HashMap<u64, FrameNames> {
        let missing: Vec<u64> = dedup(
            addrs
                .iter()
                .copied()
                .filter(|a| !self.kernel.contains_key(a)),
        );
        if !missing.is_empty() {
            let source = Source::Kernel(Kernel {
                kallsyms: MaybeDefault::Default,
                // No vmlinux with DWARF ships on these hosts; kallsyms names every function.
                vmlinux: MaybeDefault::None,
                debug_syms: false,
                ..Default::default()
            });
            let results = self.inner.symbolize(&source, Input::AbsAddr(&missing));
            for (i, addr) in missing.iter().enumerate() {
                let names = match &results {
                    Ok(results) => {
                        names_of(results.get(i)).unwrap_or_else(|| vec![UNKNOWN.to_owned()])
                    }
                    Err(err) => {
                        tracing::debug!("kernel symbolization failed: {err}");
                        vec![UNKNOWN.to_owned()]
                    }
                };
                self.kernel.insert(*addr, names);
            }
        }
        addrs
            .iter()
            .map(|a| (*a, self.counted(self.kernel[a].clone())))
            .collect()
    }

    /// Names user addresses of one process.
    pub fn user(&mut self, process: &ProcessInfo, addrs: &[u64]) -> HashMap<u64, FrameNames> {
        let mut out = HashMap::new();
        // File-backed addresses grouped by file, to symbolize each file in one batch.
        let mut by_file: HashMap<usize, FileBatch> = HashMap::new();
        for &addr in addrs {
            let Some(mapping) = process.mapping(addr) else {
                out.insert(addr, vec![UNKNOWN.to_owned()]);
                continue;
            };
            match &mapping.backing {
                Backing::File(object) => {
                    let offset = addr - mapping.start + mapping.offset;
                    let id = Arc::as_ptr(object) as usize;
                    if let Some(names) = self.user.get(&(id, offset)) {
                        out.insert(addr, names.clone());
                    } else {
                        by_file
                            .entry(id)
                            .or_insert_with(|| (Arc::clone(object), Vec::new()))
                            .1
                            .push((addr, offset));
                    }
                }
                Backing::Unopened(name) => {
                    out.insert(addr, vec![format!("[{name}]")]);
                }
                Backing::Vdso => {
                    out.insert(addr, vec!["[vdso]".to_owned()]);
                }
                Backing::Anonymous => {
                    let name = process
                        .perf_map_symbol(addr)
                        .map_or_else(|| UNKNOWN.to_owned(), str::to_owned);
                    out.insert(addr, vec![name]);
                }
            }
        }
        for (id, (object, pairs)) in by_file {
            let offsets: Vec<u64> = pairs.iter().map(|(_, off)| *off).collect();
            let source = self.elf(&object);
            let results = self.inner.symbolize(&source, Input::FileOffset(&offsets));
            if let Err(err) = &results {
                tracing::debug!(file = %object.path.display(), "symbolization failed: {err}");
            }
            for (i, (addr, offset)) in pairs.iter().enumerate() {
                let names = results
                    .as_ref()
                    .ok()
                    .and_then(|r| {
                        record_sources(r.get(i), &mut self.sources);
                        names_of(r.get(i))
                    })
                    .unwrap_or_else(|| vec![format!("[{}]", object.name())]);
                self.user.insert((id, *offset), names.clone());
                out.insert(*addr, names);
            }
        }
        out.into_iter()
            .map(|(addr, names)| (addr, self.counted(names)))
            .collect()
    }

    /// Names the variable at a data address of a process (a global `pthread_mutex_t`, say),
    /// from the symbols of the object it lies in. `None` for heap and stack addresses.
    pub fn data(&mut self, process: &ProcessInfo, addr: u64) -> Option<String> {
        let (object, vaddr) = process.data_address(addr)?;
        let source = self.elf(object);
        let results = self
            .inner
            .symbolize(&source, Input::VirtOffset(&[vaddr]))
            .ok()?;
        match results.first()? {
            Symbolized::Sym(sym) => Some(sym.name.to_string()),
            Symbolized::Unknown(_) => None,
        }
    }

    /// Names a kernel data address (a static lock such as `cgroup_mutex`) from kallsyms.
    pub fn kernel_data(&mut self, addr: u64) -> Option<String> {
        let source = Source::Kernel(Kernel {
            kallsyms: MaybeDefault::Default,
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Default::default()
        });
        match self
            .inner
            .symbolize(&source, Input::AbsAddr(&[addr]))
            .ok()?
            .first()?
        {
            // kallsyms has no sizes: only an address in the kernel image (static data)
            // is named; a heap lock (in an mm_struct, say) would otherwise take the name
            // of whatever symbol precedes it.
            Symbolized::Sym(sym)
                if in_kernel_image(addr) || sym.size.is_some_and(|s| sym.offset < s) =>
            {
                Some(sym.name.to_string())
            }
            _ => None,
        }
    }

    fn counted(&mut self, names: FrameNames) -> FrameNames {
        self.stats.addresses += 1;
        if names.len() == 1 && names[0].starts_with('[') {
            self.stats.unnamed += 1;
        }
        names
    }
}

/// x86-64 maps the kernel image at -2 GiB (Documentation/arch/x86/x86_64/mm.rst); heap
/// and per-CPU data live below.
fn in_kernel_image(addr: u64) -> bool {
    cfg!(target_arch = "x86_64") && addr >= 0xffff_ffff_8000_0000
}

fn names_of(result: Option<&Symbolized<'_>>) -> Option<FrameNames> {
    let Some(Symbolized::Sym(sym)) = result else {
        return None;
    };
    let mut names = vec![sym.name.to_string()];
    names.extend(sym.inlined.iter().map(|f| f.name.to_string()));
    Some(names)
}

/// Notes the source file of each name of a symbolized address. The address's own location
/// is in the innermost (inlined) function; each inlined function's call site is in the
/// function it was inlined into.
fn record_sources(result: Option<&Symbolized<'_>>, sources: &mut HashMap<String, String>) {
    let Some(Symbolized::Sym(sym)) = result else {
        return;
    };
    let names = std::iter::once(&sym.name).chain(sym.inlined.iter().map(|f| &f.name));
    let files = sym
        .inlined
        .iter()
        .map(|f| f.code_info.as_ref())
        .chain(std::iter::once(sym.code_info.as_deref()));
    for (name, info) in names.zip(files) {
        if let Some(info) = info
            && !sources.contains_key(name.as_ref())
        {
            sources.insert(
                name.to_string(),
                info.to_path().to_string_lossy().into_owned(),
            );
        }
    }
}

fn dedup(addrs: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = addrs.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The address to look up for frame `index` of a stack (0 = leaf). Every frame but the
/// leaf holds a return address, which points after the call and can belong to the next
/// function or line; looking up the byte before it names the caller correctly.
pub fn lookup_addr(index: usize, ip: u64) -> u64 {
    if index == 0 { ip } else { ip.saturating_sub(1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::process::ProcessTable;

    #[inline(never)]
    fn a_function_with_a_distinct_name() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn names_a_function_of_this_test_binary() {
        let mut table = ProcessTable::default();
        let me = std::process::id();
        table.observe(me, None);
        let addr = a_function_with_a_distinct_name as *const () as u64 + 1;
        let mut symbolizer = Symbolizer::new();
        let names = symbolizer.user(table.get(me).unwrap(), &[addr]);
        let names = &names[&addr];
        assert!(
            names
                .iter()
                .any(|n| n.contains("a_function_with_a_distinct_name")),
            "{names:?}"
        );
    }

    static A_GLOBAL_WITH_A_DISTINCT_NAME: std::sync::Mutex<u64> = std::sync::Mutex::new(7);

    #[test]
    fn names_a_global_variable_from_its_address() {
        let mut table = ProcessTable::default();
        let me = std::process::id();
        table.observe(me, None);
        let addr = &raw const A_GLOBAL_WITH_A_DISTINCT_NAME as u64;
        let name = Symbolizer::new().data(table.get(me).unwrap(), addr);
        assert!(
            name.as_deref()
                .is_some_and(|n| n.contains("A_GLOBAL_WITH_A_DISTINCT_NAME")),
            "{name:?}"
        );
        let heap = Box::new(5u64);
        let heap_addr = &raw const *heap as u64;
        assert_eq!(
            Symbolizer::new().data(table.get(me).unwrap(), heap_addr),
            None
        );
    }

    #[test]
    fn unmapped_address_is_unknown() {
        let mut table = ProcessTable::default();
        let me = std::process::id();
        table.observe(me, None);
        let mut symbolizer = Symbolizer::new();
        let names = symbolizer.user(table.get(me).unwrap(), &[8]);
        assert_eq!(names[&8], vec![UNKNOWN.to_owned()]);
        assert_eq!(symbolizer.stats.unnamed, 1);
    }

    #[test]
    fn kernel_addresses_resolve_from_kallsyms() {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let Some(addr) = kallsyms.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let _kind = f.next()?;
            (f.next()? == "schedule" && addr != 0).then_some(addr)
        }) else {
            eprintln!("skipped: kallsyms addresses are hidden (not root, or kptr_restrict)");
            return;
        };
        let mut symbolizer = Symbolizer::new();
        let names = symbolizer.kernel(&[addr + 1]);
        assert_eq!(names[&(addr + 1)], vec!["schedule".to_owned()]);
    }
}
