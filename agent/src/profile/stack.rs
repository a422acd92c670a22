//! Folded stacks: the profile as `process;outer;...;leaf COUNT` lines, the input of flame
//! graphs. Frames go root to leaf: the process name, the user frames, then the kernel
//! frames suffixed `_[k]` (inferno's and perf's convention, which colours them apart).
//! Stacks the kernel could not record stay in the profile as `[lost]`/`[unknown]` frames so
//! that the shares stay right.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, Write},
};

/// One stack with its weight, frames root to leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stack {
    pub frames: Vec<String>,
    pub weight: u64,
}

/// Stacks merged by identical frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Folded {
    stacks: BTreeMap<String, u64>,
}

/// Kernel frames carry this suffix in folded output.
pub const KERNEL_SUFFIX: &str = "_[k]";

/// Makes a frame name safe for the folded format, where `;` separates frames and the last
/// space precedes the count: Rust names such as `<[u8; 4] as Debug>::fmt` contain both.
pub fn sanitize(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

impl Folded {
    pub fn add(&mut self, frames: &[String], weight: u64) {
        if weight == 0 {
            return;
        }
        let line = frames
            .iter()
            .map(|f| sanitize(f))
            .collect::<Vec<_>>()
            .join(";");
        *self.stacks.entry(line).or_default() += weight;
    }

    /// Adds an already folded line (`frame;frame;...`, frames sanitized), e.g. one kept by
    /// the flight recorder.
    pub fn add_line(&mut self, stack: &str, weight: u64) {
        if weight == 0 {
            return;
        }
        match self.stacks.get_mut(stack) {
            Some(n) => *n += weight,
            None => {
                self.stacks.insert(stack.to_owned(), weight);
            }
        }
    }

    /// Folded lines and their weights, in sorted order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.stacks.iter().map(|(s, n)| (s.as_str(), *n))
    }

    /// Per-process stacks merged by frames (processes of one name merge too).
    pub fn from_stacks(stacks: &[super::fold::ProcessStack]) -> Self {
        let mut folded = Self::default();
        for s in stacks {
            folded.add(&s.frames, s.weight);
        }
        folded
    }

    pub fn total(&self) -> u64 {
        self.stacks.values().sum()
    }

    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    /// `stack count` lines in a stable (sorted) order.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.stacks.iter().map(|(s, n)| format!("{s} {n}"))
    }

    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        for line in self.lines() {
            writeln!(out, "{line}")?;
        }
        out.flush()
    }

    /// Reads folded lines (ours, or any tool's): `frame;frame;... count`.
    pub fn read_from(input: impl BufRead) -> io::Result<Self> {
        let mut folded = Self::default();
        for (number, line) in input.lines().enumerate() {
            let line = line?;
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let (stack, count) = line.rsplit_once(' ').ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line {}: no count", number + 1),
                )
            })?;
            let count: u64 = count.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line {}: count {count:?} is not a number", number + 1),
                )
            })?;
            *folded.stacks.entry(stack.to_owned()).or_default() += count;
        }
        Ok(folded)
    }

    pub fn iter(&self) -> impl Iterator<Item = (impl Iterator<Item = &str>, u64)> {
        self.stacks.iter().map(|(s, n)| (s.split(';'), *n))
    }

    /// Share of the weight whose stack contains `frame` (inclusive time), 0..=1.
    pub fn inclusive_share(&self, frame: &str) -> f64 {
        let hit: u64 = self
            .iter()
            .filter_map(|(mut frames, n)| frames.any(|f| f == frame).then_some(n))
            .sum();
        ratio(hit, self.total())
    }

    /// Functions by self weight (the leaf frame), heaviest first.
    pub fn top_self(&self, limit: usize) -> Vec<(String, u64)> {
        let mut by_leaf: BTreeMap<&str, u64> = BTreeMap::new();
        for (frames, n) in self.iter() {
            if let Some(leaf) = frames.last() {
                *by_leaf.entry(leaf).or_default() += n;
            }
        }
        let mut top: Vec<(String, u64)> = by_leaf
            .into_iter()
            .map(|(f, n)| (f.to_owned(), n))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(limit);
        top
    }
}

impl Folded {
    /// The heaviest stacks, summarized for a terminal: the process, the innermost user
    /// frames (leaf first) and the leaf marker (a state or a lock), heaviest first.
    pub fn top_waits(&self, limit: usize) -> Vec<(String, u64)> {
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for (frames, n) in self.iter() {
            let frames: Vec<&str> = frames.collect();
            let Some((process, rest)) = frames.split_first() else {
                continue;
            };
            let marker = rest.last().filter(|f| f.starts_with('[')).copied();
            let user: Vec<&str> = rest
                .iter()
                .filter(|f| !f.ends_with(KERNEL_SUFFIX) && Some(**f) != marker)
                .copied()
                .collect();
            let inner: Vec<&str> = user.iter().rev().take(2).copied().collect();
            let label = format!(
                "{process}: {}{}",
                if inner.is_empty() {
                    "[no user stack]".to_owned()
                } else {
                    inner.join(" <- ")
                },
                marker.map(|m| format!(" {m}")).unwrap_or_default()
            );
            *merged.entry(label).or_default() += n;
        }
        let mut top: Vec<(String, u64)> = merged.into_iter().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(limit);
        top
    }
}

pub fn ratio(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(s: &str) -> Vec<String> {
        s.split(';').map(str::to_owned).collect()
    }

    #[test]
    fn identical_stacks_merge_and_lines_are_sorted() {
        let mut f = Folded::default();
        f.add(&frames("app;main;b"), 1);
        f.add(&frames("app;main;a"), 2);
        f.add(&frames("app;main;a"), 3);
        f.add(&frames("app;main;zero"), 0);
        assert_eq!(
            f.lines().collect::<Vec<_>>(),
            ["app;main;a 5", "app;main;b 1"]
        );
        assert_eq!(f.total(), 6);
    }

    #[test]
    fn separators_inside_names_are_neutralized() {
        let mut f = Folded::default();
        f.add(&["app".to_owned(), "<[u8; 4] as Debug>::fmt".to_owned()], 1);
        let line = f.lines().next().unwrap();
        assert_eq!(line, "app;<[u8: 4] as Debug>::fmt 1");
        let back = Folded::read_from(line.as_bytes()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn round_trips_and_rejects_bad_counts() {
        let mut f = Folded::default();
        f.add(&frames("p;main;x_[k]"), 7);
        let mut buf = Vec::new();
        f.write_to(&mut buf).unwrap();
        assert_eq!(Folded::read_from(&buf[..]).unwrap(), f);
        let err = Folded::read_from("a;b x\n".as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn top_waits_name_the_innermost_user_frames_and_the_marker() {
        let mut f = Folded::default();
        f.add(
            &frames("app;main;read_loop;read;ksys_read_[k];schedule_[k];[sleeping]"),
            5,
        );
        f.add(
            &frames("app;main;read_loop;read;ksys_read_[k];[sleeping]"),
            2,
        );
        f.add(&frames("kworker;worker_thread_[k];[sleeping]"), 1);
        assert_eq!(
            f.top_waits(5),
            vec![
                ("app: read <- read_loop [sleeping]".to_owned(), 7),
                ("kworker: [no user stack] [sleeping]".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn shares_and_top_functions() {
        let mut f = Folded::default();
        f.add(&frames("p;main;a"), 3);
        f.add(&frames("p;main;b"), 1);
        assert!((f.inclusive_share("a") - 0.75).abs() < 1e-9);
        assert!((f.inclusive_share("main") - 1.0).abs() < 1e-9);
        assert_eq!(f.top_self(1), vec![("a".to_owned(), 3)]);
    }
}
