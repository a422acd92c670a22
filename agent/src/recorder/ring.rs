//! The flight recorder's memory: folded stacks per mode for each rolling window, oldest
//! first, bounded by age and by a byte budget. Identical stacks of different windows share
//! one interned string, so a steady workload costs one copy of its stacks plus a count per
//! window. The byte count is measured from what is actually held (string lengths and the
//! capacities of the vectors and the interning table), and the budget is enforced after
//! every window by dropping the oldest windows first.

use std::{
    collections::{BTreeMap, HashSet},
    mem::size_of,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::profile::{Mode, stack::Folded};

/// One rolling window: what each mode recorded between `from` and `to`.
#[derive(Debug, Clone)]
pub struct Window {
    pub from: SystemTime,
    pub to: SystemTime,
    /// Folded stack -> weight, per mode.
    pub stacks: BTreeMap<Mode, Vec<(Arc<str>, u64)>>,
    /// Samples or waits the kernel could not record in this window (full maps, lost
    /// stacks), per mode; kept to be reported with the profile.
    pub lost: BTreeMap<Mode, u64>,
}

impl Window {
    /// Heap and inline bytes of the window itself (the interned strings are counted once,
    /// by the ring).
    fn bytes(&self) -> usize {
        size_of::<Self>()
            + self
                .stacks
                .values()
                .map(|v| v.capacity() * size_of::<(Arc<str>, u64)>() + BTREE_ENTRY)
                .sum::<usize>()
            + self.lost.len() * BTREE_ENTRY
    }
}

/// A B-tree entry's share of its node, rounded up: key, value and the node's bookkeeping.
const BTREE_ENTRY: usize = 64;
/// The allocation header of an `Arc<str>` (strong and weak counts).
const ARC_HEADER: usize = 2 * size_of::<usize>();

/// Bounds of the ring.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Windows that ended longer ago than this are dropped.
    pub max_age: Duration,
    /// Bytes the ring may hold; the oldest windows are dropped to stay under it.
    pub budget: usize,
}

/// What the ring holds and what it had to drop.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RingStats {
    pub windows: usize,
    pub bytes: usize,
    pub budget: usize,
    pub distinct_stacks: usize,
    pub dropped_for_age: u64,
    pub dropped_for_budget: u64,
}

#[derive(Debug)]
pub struct Ring {
    limits: Limits,
    windows: std::collections::VecDeque<Window>,
    interned: HashSet<Arc<str>>,
    /// Bytes of the interned strings (with their headers).
    interned_bytes: usize,
    /// Bytes of the windows.
    window_bytes: usize,
    dropped_for_age: u64,
    dropped_for_budget: u64,
}

impl Ring {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            windows: Default::default(),
            interned: HashSet::new(),
            interned_bytes: 0,
            window_bytes: 0,
            dropped_for_age: 0,
            dropped_for_budget: 0,
        }
    }

    /// Adds a window (its stacks interned), then drops windows older than the age limit
    /// (counted from `now`) and the oldest ones until the ring is within its budget.
    pub fn push(
        &mut self,
        from: SystemTime,
        to: SystemTime,
        modes: Vec<(Mode, Folded, u64)>,
        now: SystemTime,
    ) {
        let mut window = Window {
            from,
            to,
            stacks: BTreeMap::new(),
            lost: BTreeMap::new(),
        };
        for (mode, folded, lost) in modes {
            let mut stacks = Vec::with_capacity(folded.len());
            for (stack, weight) in folded.entries() {
                stacks.push((self.intern(stack), weight));
            }
            window.stacks.insert(mode, stacks);
            if lost > 0 {
                window.lost.insert(mode, lost);
            }
        }
        self.window_bytes += window.bytes();
        self.windows.push_back(window);
        while let Some(oldest) = self.windows.front() {
            let expired = now
                .duration_since(oldest.to)
                .is_ok_and(|age| age > self.limits.max_age);
            if expired {
                self.dropped_for_age += 1;
            } else if self.bytes() > self.limits.budget {
                self.dropped_for_budget += 1;
            } else {
                break;
            }
            self.pop_oldest();
        }
        if self.windows.is_empty() {
            tracing::warn!(
                budget = self.limits.budget,
                "one flight-recorder window alone exceeds the memory budget: nothing kept"
            );
        }
    }

    fn intern(&mut self, stack: &str) -> Arc<str> {
        if let Some(existing) = self.interned.get(stack) {
            return Arc::clone(existing);
        }
        let new: Arc<str> = Arc::from(stack);
        self.interned_bytes += stack.len() + ARC_HEADER;
        self.interned.insert(Arc::clone(&new));
        new
    }

    fn pop_oldest(&mut self) {
        let Some(window) = self.windows.pop_front() else {
            return;
        };
        self.window_bytes -= window.bytes();
        let candidates: Vec<Arc<str>> = window
            .stacks
            .into_values()
            .flatten()
            .map(|(s, _)| s)
            .collect();
        for stack in candidates {
            // Two references: the interning table's and this one.
            if Arc::strong_count(&stack) == 2 && self.interned.remove(&stack) {
                self.interned_bytes -= stack.len() + ARC_HEADER;
            }
        }
    }

    /// Bytes held: windows, interned strings, and the interning table's slots.
    pub fn bytes(&self) -> usize {
        self.window_bytes
            + self.interned_bytes
            + self.interned.capacity() * (size_of::<Arc<str>>() + 1)
            + self.windows.capacity() * size_of::<Window>()
    }

    pub fn stats(&self) -> RingStats {
        RingStats {
            windows: self.windows.len(),
            bytes: self.bytes(),
            budget: self.limits.budget,
            distinct_stacks: self.interned.len(),
            dropped_for_age: self.dropped_for_age,
            dropped_for_budget: self.dropped_for_budget,
        }
    }

    /// The windows that overlap `[from, to]`, oldest first.
    pub fn windows_between(&self, from: SystemTime, to: SystemTime) -> Vec<&Window> {
        self.windows
            .iter()
            .filter(|w| w.to > from && w.from < to)
            .collect()
    }

    /// All the windows, oldest first.
    pub fn windows(&self) -> impl Iterator<Item = &Window> {
        self.windows.iter()
    }
}

/// The windows' stacks of one mode merged into one profile.
pub fn merge(windows: &[&Window], mode: Mode) -> Folded {
    let mut folded = Folded::default();
    for window in windows {
        for (stack, weight) in window.stacks.get(&mode).into_iter().flatten() {
            folded.add_line(stack, *weight);
        }
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(lines: &[(&str, u64)]) -> Folded {
        let mut f = Folded::default();
        for (line, n) in lines {
            f.add_line(line, *n);
        }
        f
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn big_stack(i: usize) -> String {
        format!("proc;{}", format!("frame{i};").repeat(40))
    }

    #[test]
    fn identical_stacks_are_stored_once() {
        let mut ring = Ring::new(Limits {
            max_age: Duration::from_secs(3600),
            budget: usize::MAX,
        });
        let stack = big_stack(1).repeat(4);
        let mut after_one = 0;
        for i in 0..5 {
            ring.push(
                at(i * 10),
                at(i * 10 + 10),
                vec![(Mode::Cpu, folded(&[(&stack, 3)]), 0)],
                at(i * 10 + 10),
            );
            if i == 0 {
                after_one = ring.bytes();
            }
        }
        let stats = ring.stats();
        assert_eq!((stats.windows, stats.distinct_stacks), (5, 1));
        assert!(after_one > stack.len(), "{after_one}");
        let per_window = (stats.bytes - after_one) / 4;
        assert!(
            per_window < stack.len() / 4,
            "a window repeating a stored stack should cost a count, not {per_window} bytes"
        );
        let all = ring.windows().collect::<Vec<_>>();
        assert_eq!(merge(&all, Mode::Cpu).total(), 15);
    }

    #[test]
    fn the_budget_drops_the_oldest_windows_and_is_never_exceeded() {
        let budget = 64 * 1024;
        let mut ring = Ring::new(Limits {
            max_age: Duration::from_secs(3600),
            budget,
        });
        for w in 0..100usize {
            // Each window has its own stacks, about 10 KiB of them.
            let lines: Vec<(String, u64)> = (0..30).map(|i| (big_stack(w * 100 + i), 1)).collect();
            let refs: Vec<(&str, u64)> = lines.iter().map(|(s, n)| (s.as_str(), *n)).collect();
            ring.push(
                at(w as u64),
                at(w as u64 + 1),
                vec![(Mode::Cpu, folded(&refs), 0)],
                at(w as u64 + 1),
            );
            assert!(
                ring.bytes() <= budget,
                "window {w}: {} > {budget}",
                ring.bytes()
            );
        }
        let stats = ring.stats();
        assert!(stats.dropped_for_budget > 50, "{stats:?}");
        assert!(stats.windows >= 2, "{stats:?}");
        // The newest windows stay: the last one pushed is the last one held.
        assert_eq!(ring.windows().last().map(|w| w.to), Some(at(100)));
        // Freed strings left the interning table.
        assert_eq!(stats.distinct_stacks, stats.windows * 30);
        // And the accounting is not a lower bound: the strings alone weigh about as much.
        let strings: usize = ring
            .windows()
            .flat_map(|w| w.stacks.values().flatten())
            .map(|(s, _)| s.len())
            .sum();
        assert!(stats.bytes >= strings, "{} < {strings}", stats.bytes);
    }

    #[test]
    fn windows_older_than_the_age_limit_are_dropped() {
        let mut ring = Ring::new(Limits {
            max_age: Duration::from_secs(60),
            budget: usize::MAX,
        });
        for i in 0..20 {
            ring.push(
                at(i * 10),
                at(i * 10 + 10),
                vec![(Mode::OffCpu, folded(&[("p;f", 1)]), 0)],
                at(i * 10 + 10),
            );
        }
        let stats = ring.stats();
        assert_eq!(stats.windows, 7, "{stats:?}");
        assert_eq!(stats.dropped_for_age, 13);
        let recent = ring.windows_between(at(175), at(200));
        assert_eq!(recent.len(), 3);
        assert_eq!(merge(&recent, Mode::OffCpu).total(), 3);
        assert_eq!(merge(&recent, Mode::Cpu).total(), 0);
    }
}
