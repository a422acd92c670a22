//! Draining a session that keeps running, window by window, for the flight recorder
//! ([`crate::recorder`]). The kernel maps hold running totals; each window reads them and
//! keeps the difference from the previous read, so a count added while we read is never
//! lost: it shows up in the next window. Keys that did not move during a whole window are
//! deleted (the map would fill up otherwise); a sample landing on such a key in the
//! microseconds between its read and its delete is the only thing this can lose. Stacks
//! that no remaining key refers to are deleted once the stack map is half full.
//!
//! Off-CPU and lock waits count in the window in which they end; a wait still open at the
//! end of a window is not split.

use std::collections::{BTreeSet, HashMap};

use aya::maps::{PerCpuArray, PerCpuHashMap, StackTraceMap};
use hindsight_common::{Counter, LockKey, OffCpuKey, OffCpuStart, StackKey, WaitStats};

use super::{
    BpfError, Counters, RawProfile, Session,
    oncpu::RawSample,
    session::{map_mut, map_ref},
};

/// What the previous window read: the running totals the next one subtracts.
#[derive(Debug, Default)]
pub struct WindowDrain {
    oncpu: HashMap<StackKey, u64>,
    offcpu: HashMap<OffCpuKey, WaitStats>,
    locks: HashMap<LockKey, WaitStats>,
    counters: Counters,
    /// Keys deleted because they were idle for a whole window, over the session.
    pub idle_keys_deleted: u64,
    /// Stacks deleted because no key referred to them any more, over the session.
    pub stacks_deleted: u64,
}

impl WindowDrain {
    /// Everything recorded since the previous call (or since the session started).
    pub fn drain(&mut self, session: &mut Session) -> Result<RawProfile, BpfError> {
        let config = session.config().clone();
        let stack_capacity = config.sizes.stacks;
        let ebpf = session.ebpf_mut();
        let mut raw = RawProfile::default();
        if config.oncpu_hz.is_some() {
            let mut map: PerCpuHashMap<_, StackKey, u64> = map_mut(ebpf, "CPU_COUNTS")?;
            let totals = read_totals(&map, "CPU_COUNTS", |values| values.iter().sum::<u64>())?;
            let idle = delta(&mut self.oncpu, totals, |now, before| {
                now.saturating_sub(before.copied().unwrap_or(0))
            })
            .into_iter()
            .filter_map(|(key, count)| {
                if count > 0 {
                    raw.oncpu.push(RawSample { key, count });
                    None
                } else {
                    Some(key)
                }
            })
            .collect::<Vec<_>>();
            self.idle_keys_deleted += remove_all(&mut map, &mut self.oncpu, idle);
        }
        if config.offcpu.is_some() {
            raw.offcpu = drain_waits(
                ebpf,
                "OFFCPU",
                &mut self.offcpu,
                &mut self.idle_keys_deleted,
            )?;
        }
        if config.locks {
            raw.locks = drain_waits(ebpf, "LOCKS", &mut self.locks, &mut self.idle_keys_deleted)?;
        }

        // Stack ids the off-CPU program still holds: waits in progress, and the last stacks
        // of running threads, whose kernel stack id a next switch-out may reuse.
        let mut held = Vec::new();
        if config.offcpu.is_some() {
            let starts: aya::maps::HashMap<_, u64, OffCpuStart> = map_ref(ebpf, "OFFCPU_START")?;
            for entry in starts.iter() {
                let (_, start) = entry.map_err(BpfError::map("OFFCPU_START"))?;
                held.push((start.key.user_stack_id, start.key.kernel_stack_id));
            }
        }
        let mut stack_map: StackTraceMap<_> = map_mut(ebpf, "STACKS")?;
        let wanted: BTreeSet<u32> = stack_ids(
            raw.oncpu
                .iter()
                .map(|s| (s.key.user_stack_id, s.key.kernel_stack_id)),
            raw.offcpu
                .iter()
                .map(|(k, _)| (k.user_stack_id, k.kernel_stack_id)),
            raw.locks
                .iter()
                .map(|(k, _)| (k.user_stack_id, k.kernel_stack_id)),
        );
        for id in wanted {
            match stack_map.get(&id, 0) {
                Ok(trace) => {
                    raw.stacks
                        .insert(id, trace.frames().iter().map(|f| f.ip).collect());
                }
                // Counted as a lost stack when the samples are folded.
                Err(err) => tracing::debug!(id, "stack id unreadable: {err}"),
            }
        }
        let stored: Vec<u32> = stack_map.stack_ids().filter_map(Result::ok).collect();
        if stored.len() as u64 * 2 > u64::from(stack_capacity) {
            let live = stack_ids(
                self.oncpu
                    .keys()
                    .map(|k| (k.user_stack_id, k.kernel_stack_id)),
                self.offcpu
                    .keys()
                    .map(|k| (k.user_stack_id, k.kernel_stack_id)),
                self.locks
                    .keys()
                    .map(|k| (k.user_stack_id, k.kernel_stack_id))
                    .chain(held),
            );
            for id in stored.into_iter().filter(|id| !live.contains(id)) {
                if stack_map.remove(&id).is_ok() {
                    self.stacks_deleted += 1;
                }
            }
        }

        let counters_map: PerCpuArray<_, u64> = map_ref(ebpf, "COUNTERS")?;
        let mut now = Counters::default();
        for counter in Counter::ALL {
            let values = counters_map
                .get(&(counter as u32), 0)
                .map_err(super::BpfError::map("COUNTERS"))?;
            now.0[counter as usize] = values.iter().sum();
        }
        for (i, value) in now.0.iter().enumerate() {
            raw.counters.0[i] = value.saturating_sub(self.counters.0[i]);
        }
        self.counters = now;
        Ok(raw)
    }
}

/// Reads a per-CPU map's running totals, per key.
fn read_totals<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod, T>(
    map: &PerCpuHashMap<&mut aya::maps::MapData, K, V>,
    name: &'static str,
    total: impl Fn(&aya::maps::PerCpuValues<V>) -> T,
) -> Result<Vec<(K, T)>, BpfError> {
    let mut out = Vec::new();
    for entry in map.iter() {
        let (key, values) = entry.map_err(BpfError::map(name))?;
        out.push((key, total(&values)));
    }
    Ok(out)
}

/// Replaces the previous totals by `now` and returns each key's difference (keys gone from
/// the kernel are forgotten).
fn delta<K: Copy + Eq + std::hash::Hash, T: Copy, D>(
    previous: &mut HashMap<K, T>,
    now: Vec<(K, T)>,
    diff: impl Fn(&T, Option<&T>) -> D,
) -> Vec<(K, D)> {
    let mut next = HashMap::with_capacity(now.len());
    let out = now
        .into_iter()
        .map(|(key, total)| {
            let d = diff(&total, previous.get(&key));
            next.insert(key, total);
            (key, d)
        })
        .collect();
    *previous = next;
    out
}

/// The difference of two wait totals; a key deleted and created again since (its totals
/// went down) counts from zero.
fn wait_delta(now: &WaitStats, before: Option<&WaitStats>) -> WaitStats {
    match before {
        Some(b) if now.count >= b.count && now.total_ns >= b.total_ns => WaitStats {
            total_ns: now.total_ns - b.total_ns,
            count: now.count - b.count,
            // The longest wait over the key's life: a per-window maximum is not kept.
            max_ns: now.max_ns,
        },
        _ => *now,
    }
}

fn drain_waits<K: aya::Pod + Copy + Eq + std::hash::Hash>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    previous: &mut HashMap<K, WaitStats>,
    deleted: &mut u64,
) -> Result<Vec<(K, WaitStats)>, BpfError> {
    let mut map: PerCpuHashMap<_, K, WaitStats> = map_mut(ebpf, name)?;
    let totals = read_totals(&map, name, |values| {
        let mut total = WaitStats::default();
        for v in values.iter() {
            total.total_ns += v.total_ns;
            total.count += v.count;
            total.max_ns = total.max_ns.max(v.max_ns);
        }
        total
    })?;
    let mut out = Vec::new();
    let mut idle = Vec::new();
    for (key, d) in delta(previous, totals, wait_delta) {
        if d.count > 0 {
            out.push((key, d));
        } else {
            idle.push(key);
        }
    }
    *deleted += remove_all(&mut map, previous, idle);
    Ok(out)
}

fn remove_all<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod, T>(
    map: &mut PerCpuHashMap<&mut aya::maps::MapData, K, V>,
    previous: &mut HashMap<K, T>,
    keys: Vec<K>,
) -> u64 {
    let mut removed = 0;
    for key in keys {
        if map.remove(&key).is_ok() {
            previous.remove(&key);
            removed += 1;
        }
    }
    removed
}

/// The valid stack ids among (user, kernel) pairs.
fn stack_ids(
    a: impl Iterator<Item = (i32, i32)>,
    b: impl Iterator<Item = (i32, i32)>,
    c: impl Iterator<Item = (i32, i32)>,
) -> BTreeSet<u32> {
    a.chain(b)
        .chain(c)
        .flat_map(|(u, k)| [u, k])
        .filter(|&id| id >= 0)
        .map(|id| id as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_subtract_the_previous_totals_and_forget_vanished_keys() {
        let mut previous = HashMap::new();
        let diff =
            |now: &u64, before: Option<&u64>| now.saturating_sub(before.copied().unwrap_or(0));
        let first = delta(&mut previous, vec![(1u32, 5u64), (2, 3)], diff);
        assert_eq!(sorted(first), vec![(1, 5), (2, 3)]);
        let second = delta(&mut previous, vec![(1, 9), (3, 1)], diff);
        assert_eq!(sorted(second), vec![(1, 4), (3, 1)]);
        assert!(!previous.contains_key(&2));
        let third = delta(&mut previous, vec![(1, 9)], diff);
        assert_eq!(third, vec![(1, 0)]);
    }

    #[test]
    fn a_recreated_wait_key_counts_from_zero() {
        let before = WaitStats {
            total_ns: 1000,
            count: 4,
            max_ns: 500,
        };
        let grown = WaitStats {
            total_ns: 1600,
            count: 5,
            max_ns: 600,
        };
        let d = wait_delta(&grown, Some(&before));
        assert_eq!((d.total_ns, d.count), (600, 1));
        let recreated = WaitStats {
            total_ns: 70,
            count: 1,
            max_ns: 70,
        };
        assert_eq!(wait_delta(&recreated, Some(&before)), recreated);
    }

    fn sorted(mut v: Vec<(u32, u64)>) -> Vec<(u32, u64)> {
        v.sort();
        v
    }
}
