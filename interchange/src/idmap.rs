//! A map keyed by task id, for ids handed out in ascending order (the core numbers every task
//! it accepts), as the interchange's tables of open tasks are.
//!
//! Values sit in a ring indexed by `id - base`: no hashing, one slot per id, neighbours next to
//! each other in memory, and finished ids at the front fall off as they finish. A value left
//! long after those around it were removed would keep the ring of every id since, so once the
//! ring is mostly holes its oldest values move to a hash map; ids that arrive out of order go
//! there too. Every value moves at most once, so each operation is O(1) amortised, and the
//! map behaves like a `HashMap` for any ids (a test holds it to one).

use fxr_protocol::TaskId;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

/// Below this many slots the ring is never compacted.
const SMALL: usize = 1024;
/// The most holes an insertion past the end fills to keep its value in the ring.
const GAP: u64 = 64;

/// See the module documentation.
#[derive(Debug)]
pub struct IdMap<V> {
    /// The id of `ring[0]`.
    base: u64,
    ring: VecDeque<Option<V>>,
    /// Values in the ring (the rest of it is holes).
    in_ring: usize,
    /// Values that stayed while the ring moved on, and ids that came out of order.
    spill: HashMap<u64, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            base: 0,
            ring: VecDeque::new(),
            in_ring: 0,
            spill: HashMap::default(),
        }
    }
}

impl<V> IdMap<V> {
    pub fn len(&self) -> usize {
        self.in_ring + self.spill.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ring slot of `id`, when `id` is in the ring's range.
    fn slot(&self, id: u64) -> Option<usize> {
        let at = id.wrapping_sub(self.base);
        (id >= self.base && at < self.ring.len() as u64).then_some(at as usize)
    }

    pub fn get(&self, id: &TaskId) -> Option<&V> {
        match self.slot(id.0).and_then(|i| self.ring[i].as_ref()) {
            Some(v) => Some(v),
            None => self.spill.get(&id.0),
        }
    }

    pub fn get_mut(&mut self, id: &TaskId) -> Option<&mut V> {
        match self.slot(id.0) {
            Some(i) if self.ring[i].is_some() => self.ring[i].as_mut(),
            _ => self.spill.get_mut(&id.0),
        }
    }

    pub fn contains_key(&self, id: &TaskId) -> bool {
        self.get(id).is_some()
    }

    /// Adds `v` under `id`, returning the value it replaces.
    pub fn insert(&mut self, id: TaskId, v: V) -> Option<V> {
        let id = id.0;
        if let Some(old) = self.spill.get_mut(&id) {
            return Some(std::mem::replace(old, v));
        }
        if let Some(i) = self.slot(id) {
            let old = self.ring[i].replace(v);
            if old.is_none() {
                self.in_ring += 1;
            }
            return old;
        }
        if self.ring.is_empty() {
            self.base = id;
        }
        let end = self.base + self.ring.len() as u64;
        if id >= end && id - end <= GAP {
            for _ in end..id {
                self.ring.push_back(None);
            }
            self.ring.push_back(Some(v));
            self.in_ring += 1;
        } else {
            self.spill.insert(id, v);
        }
        None
    }

    pub fn remove(&mut self, id: &TaskId) -> Option<V> {
        let taken = self.slot(id.0).and_then(|i| self.ring[i].take());
        let found = match taken {
            Some(v) => {
                self.in_ring -= 1;
                Some(v)
            }
            None => self.spill.remove(&id.0),
        };
        self.trim();
        found
    }

    /// Drops holes at the front; moves the oldest values to the map while the ring is more
    /// than three quarters holes.
    fn trim(&mut self) {
        self.drop_front_holes();
        if self.ring.len() <= SMALL || self.ring.len() <= 4 * self.in_ring {
            return;
        }
        while self.ring.len() > 2 * self.in_ring {
            match self.ring.pop_front() {
                Some(Some(v)) => {
                    self.spill.insert(self.base, v);
                    self.in_ring -= 1;
                }
                Some(None) => {}
                None => break,
            }
            self.base += 1;
        }
        self.drop_front_holes();
    }

    fn drop_front_holes(&mut self) {
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.base += 1;
        }
    }

    /// Every id and value: the ring's in id order, then the map's.
    pub fn iter(&self) -> impl Iterator<Item = (TaskId, &V)> + '_ {
        let base = self.base;
        self.ring
            .iter()
            .enumerate()
            .filter_map(move |(i, v)| v.as_ref().map(|v| (TaskId(base + i as u64), v)))
            .chain(self.spill.iter().map(|(id, v)| (TaskId(*id), v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// Slots the ring holds, values and holes (for tests of its bound).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_operations_match_a_hash_map() {
        for seed in 0..50 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut m: IdMap<u64> = IdMap::default();
            let mut model: std::collections::HashMap<u64, u64> = Default::default();
            let mut next = 1u64;
            for step in 0..20_000 {
                let id = match rng.u32(0..20) {
                    // Out of order, far behind or ahead, or a gap.
                    0 => rng.u64(0..next + 200),
                    1 => next + rng.u64(1..100),
                    // Mostly the oldest open ids.
                    _ => model.keys().min().copied().unwrap_or(0) + rng.u64(0..3),
                };
                match rng.u32(0..8) {
                    0..=2 => {
                        let v = rng.u64(..);
                        assert_eq!(m.insert(TaskId(next), v), model.insert(next, v));
                        next += 1;
                    }
                    3 => {
                        let v = rng.u64(..);
                        assert_eq!(m.insert(TaskId(id), v), model.insert(id, v), "seed {seed}");
                        next = next.max(id + 1);
                    }
                    4 => {
                        if let Some(v) = m.get_mut(&TaskId(id)) {
                            *v += 1;
                        }
                        if let Some(v) = model.get_mut(&id) {
                            *v += 1;
                        }
                    }
                    _ => assert_eq!(
                        m.remove(&TaskId(id)),
                        model.remove(&id),
                        "seed {seed} step {step}: id {id}"
                    ),
                }
                assert_eq!(m.len(), model.len(), "seed {seed} step {step}");
                assert_eq!(
                    m.get(&TaskId(id)),
                    model.get(&id),
                    "seed {seed} step {step}"
                );
            }
            let mut all: Vec<(u64, u64)> = m.iter().map(|(id, v)| (id.0, *v)).collect();
            all.sort_unstable();
            let mut want: Vec<(u64, u64)> = model.into_iter().collect();
            want.sort_unstable();
            assert_eq!(all, want, "seed {seed}");
        }
    }

    #[test]
    fn one_value_left_does_not_keep_the_ring_of_everything_after_it() {
        let mut m = IdMap::default();
        m.insert(TaskId(1), 100u64);
        for id in 2..1_000_000u64 {
            m.insert(TaskId(id), id);
            assert_eq!(m.remove(&TaskId(id)), Some(id));
        }
        assert!(m.slots() <= SMALL + 1, "{} slots", m.slots());
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove(&TaskId(1)), Some(100));
        assert!(m.is_empty());
    }
}
