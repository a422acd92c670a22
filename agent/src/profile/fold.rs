//! Raw kernel counts -> folded stacks: resolves each count-map key's stack ids to frames
//! (symbolized per process), prefixes the process name, and merges identical stacks.
//! Every sample lands in the output; a stack the kernel could not record becomes a
//! `[lost]` frame, one it could not walk an `[unknown]` frame.

use std::collections::{BTreeMap, HashMap};

use hindsight_common::errno;

use super::{
    process::ProcessTable,
    stack::{Folded, KERNEL_SUFFIX},
    symbolize::{FrameNames, Symbolizer, UNKNOWN, lookup_addr},
};
use crate::bpf::oncpu::RawProfile;

/// A stack the kernel did not record (map collision or full map).
pub const LOST: &str = "[lost]";

/// What folding saw, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct FoldStats {
    pub samples: u64,
    /// Samples whose user stack was lost (collision, full map).
    pub lost_user: u64,
    /// Samples whose kernel stack was lost.
    pub lost_kernel: u64,
    /// Samples of user processes whose user stack could not be walked at all.
    pub unwalkable_user: u64,
    pub processes: usize,
    /// Processes gone before the end of the profile.
    pub exited: usize,
}

pub fn fold(
    raw: &RawProfile,
    processes: &ProcessTable,
    symbolizer: &mut Symbolizer,
) -> (Folded, FoldStats) {
    let mut stats = FoldStats::default();
    // Symbolize in batches: kernel addresses together, user addresses per process.
    let mut kernel_addrs = Vec::new();
    let mut user_addrs: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for sample in &raw.samples {
        if let Some(ips) = stack(raw, sample.key.kernel_stack_id) {
            kernel_addrs.extend(ips.iter().enumerate().map(|(i, ip)| lookup_addr(i, *ip)));
        }
        if let Some(ips) = stack(raw, sample.key.user_stack_id) {
            user_addrs
                .entry(sample.key.tgid)
                .or_default()
                .extend(ips.iter().enumerate().map(|(i, ip)| lookup_addr(i, *ip)));
        }
    }
    let kernel_names = symbolizer.kernel(&kernel_addrs);
    let mut user_names: HashMap<u32, HashMap<u64, FrameNames>> = HashMap::new();
    for (tgid, addrs) in &user_addrs {
        let names = match processes.get(*tgid) {
            Some(process) => symbolizer.user(process, addrs),
            None => addrs
                .iter()
                .map(|a| (*a, vec![UNKNOWN.to_owned()]))
                .collect(),
        };
        user_names.insert(*tgid, names);
    }

    let mut folded = Folded::default();
    let mut seen = std::collections::BTreeSet::new();
    for sample in &raw.samples {
        let key = sample.key;
        stats.samples += sample.count;
        seen.insert(key.tgid);
        let process = processes.get(key.tgid);
        let mut frames =
            vec![process.map_or_else(|| format!("[pid {}]", key.tgid), |p| p.comm.clone())];
        match stack(raw, key.user_stack_id) {
            Some(ips) => {
                let names = &user_names[&key.tgid];
                for (i, ip) in ips.iter().enumerate().rev() {
                    frames.extend(names[&lookup_addr(i, *ip)].iter().cloned());
                }
            }
            None if key.user_stack_id == -errno::EFAULT => {
                // Kernel threads have no user stack; for anything else it was unwalkable.
                if !process.is_some_and(|p| p.kernel_thread) {
                    stats.unwalkable_user += sample.count;
                    frames.push(UNKNOWN.to_owned());
                }
            }
            None => {
                stats.lost_user += sample.count;
                frames.push(LOST.to_owned());
            }
        }
        match stack(raw, key.kernel_stack_id) {
            Some(ips) => {
                for (i, ip) in ips.iter().enumerate().rev() {
                    for name in &kernel_names[&lookup_addr(i, *ip)] {
                        frames.push(format!("{name}{KERNEL_SUFFIX}"));
                    }
                }
            }
            // The sample interrupted user mode: no kernel part.
            None if key.kernel_stack_id == -errno::EFAULT => {}
            None => {
                stats.lost_kernel += sample.count;
                frames.push(format!("{LOST}{KERNEL_SUFFIX}"));
            }
        }
        folded.add(&frames, sample.count);
    }
    stats.processes = seen.len();
    stats.exited = seen
        .iter()
        .filter(|t| processes.get(**t).is_some_and(|p| p.exited))
        .count();
    (folded, stats)
}

/// The frames of a stack id, or `None` when the id is an error or was not readable.
fn stack(raw: &RawProfile, id: i32) -> Option<&Vec<u64>> {
    if id < 0 {
        return None;
    }
    raw.stacks.get(&(id as u32)).filter(|ips| !ips.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::oncpu::RawSample;
    use hindsight_common::StackKey;

    #[inline(never)]
    fn outer_fixture_fn() -> u64 {
        std::hint::black_box(1)
    }

    #[inline(never)]
    fn inner_fixture_fn() -> u64 {
        std::hint::black_box(2)
    }

    #[test]
    fn folds_our_own_stack_and_keeps_failures_visible() {
        let me = std::process::id();
        let mut processes = ProcessTable::default();
        processes.observe(me, None);
        let leaf = inner_fixture_fn as *const () as u64 + 1;
        // A return address: inside outer, past its start.
        let caller = outer_fixture_fn as *const () as u64 + 2;
        let sample = |user, kernel, count| RawSample {
            key: StackKey {
                tgid: me,
                user_stack_id: user,
                kernel_stack_id: kernel,
            },
            count,
        };
        let raw = RawProfile {
            samples: vec![
                sample(1, -errno::EFAULT, 3),
                sample(-errno::EEXIST, -errno::EFAULT, 2),
                sample(1, -errno::EEXIST, 1),
            ],
            stacks: HashMap::from([(1, vec![leaf, caller])]),
            counters: Default::default(),
        };
        let (folded, stats) = fold(&raw, &processes, &mut Symbolizer::new());
        assert_eq!(folded.total(), 6);
        assert_eq!(stats.samples, 6);
        assert_eq!(stats.lost_user, 2);
        assert_eq!(stats.lost_kernel, 1);
        let lines: Vec<String> = folded.lines().collect();
        let comm = processes.get(me).unwrap().comm.clone();
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{comm};"))
                && l.contains("outer_fixture_fn;")
                && l.contains("inner_fixture_fn")
                && l.ends_with(" 3")),
            "{lines:#?}"
        );
        assert!(lines.contains(&format!("{comm};[lost] 2")), "{lines:#?}");
        assert!(
            lines.iter().any(|l| l.ends_with(";[lost]_[k] 1")),
            "{lines:#?}"
        );
    }
}
