//! The bounded in-memory ring that holds the exec history: entries older than the window
//! are dropped, and so are the oldest ones whenever a count or byte bound is reached, so
//! memory stays bounded whatever the exec rate. Pure data structure: unit-tested.

use std::collections::VecDeque;

/// Something the ring can size.
pub trait Weigh {
    /// Estimated heap + inline bytes.
    fn bytes(&self) -> usize;
}

#[derive(Debug)]
pub struct Ring<T> {
    entries: VecDeque<(u64, T)>,
    bytes: usize,
    window_ns: u64,
    max_entries: usize,
    max_bytes: usize,
    /// Entries dropped because a bound was reached (not those aged out of the window).
    pub dropped: u64,
}

impl<T: Weigh> Ring<T> {
    pub fn new(window_ns: u64, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            window_ns,
            max_entries: max_entries.max(1),
            max_bytes,
            dropped: 0,
        }
    }

    /// Adds `item` stamped `time_ns` (monotonic), dropping what no longer fits.
    pub fn push(&mut self, time_ns: u64, item: T) {
        self.age(time_ns);
        let size = item.bytes();
        while !self.entries.is_empty()
            && (self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes)
        {
            self.pop();
            self.dropped += 1;
        }
        self.bytes += size;
        self.entries.push_back((time_ns, item));
    }

    /// Drops entries older than the window before `now_ns`.
    pub fn age(&mut self, now_ns: u64) {
        let oldest = now_ns.saturating_sub(self.window_ns);
        while self.entries.front().is_some_and(|(t, _)| *t < oldest) {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((_, item)) = self.entries.pop_front() {
            self.bytes -= item.bytes();
        }
    }

    /// The newest entries first, for in-place updates (an exec's result).
    pub fn iter_mut_rev(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().rev().map(|(_, item)| item)
    }

    pub fn iter(&self) -> impl Iterator<Item = &(u64, T)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weigh for String {
        fn bytes(&self) -> usize {
            self.len()
        }
    }

    fn items(r: &Ring<String>) -> Vec<&str> {
        r.iter().map(|(_, s)| s.as_str()).collect()
    }

    #[test]
    fn drops_entries_older_than_the_window() {
        let mut r = Ring::new(10, 100, 1000);
        r.push(1, "a".into());
        r.push(5, "b".into());
        r.push(14, "c".into());
        assert_eq!(items(&r), ["b", "c"]);
        r.age(100);
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
        assert_eq!(r.dropped, 0, "ageing out is not a loss");
    }

    #[test]
    fn count_and_byte_bounds_drop_the_oldest_and_count_them() {
        let mut r = Ring::new(u64::MAX, 3, 1000);
        for (i, s) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            r.push(i as u64, s.to_string());
        }
        assert_eq!(items(&r), ["c", "d", "e"]);
        assert_eq!(r.dropped, 2);

        let mut r = Ring::new(u64::MAX, 100, 10);
        r.push(0, "aaaa".into());
        r.push(1, "bbbb".into());
        r.push(2, "cccc".into());
        assert_eq!(items(&r), ["bbbb", "cccc"]);
        assert!(r.bytes() <= 10);
        assert_eq!(r.dropped, 1);
    }
}
