//! Where each task's result goes: its client and the client's own id, by interchange id.
//!
//! The core hands out interchange ids in order, so the routes of open tasks sit in a ring
//! indexed by `id - base`: no hashing, one slot of 24 bytes per task, and finished tasks at the
//! front fall off as they finish. A task still open long after those around it finished would
//! keep the whole ring of everything submitted since, so once the ring is mostly holes its
//! oldest open routes move to a map. Every route moves at most once: O(1) amortised per task.

use crate::event::ClientId;
use fxr_protocol::TaskId;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

/// A task's client and its id there.
pub(crate) type Route = (ClientId, TaskId);

/// Below this many slots the ring is never compacted.
const SMALL: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// The interchange id of `ring[0]`.
    base: u64,
    ring: VecDeque<Option<Route>>,
    /// Routes in the ring (the rest of it is holes).
    in_ring: usize,
    /// Routes of tasks that stayed open while the ring moved on.
    spill: HashMap<u64, Route>,
}

impl Routes {
    /// Adds the route of interchange id `id`, normally the one after the last added.
    pub fn insert(&mut self, id: TaskId, route: Route) {
        if self.ring.is_empty() {
            self.base = id.0;
        }
        if id.0 >= self.base && id.0 - self.base == self.ring.len() as u64 {
            self.ring.push_back(Some(route));
            self.in_ring += 1;
        } else {
            self.spill.insert(id.0, route);
        }
    }

    /// Takes the route of `id`, if it has one.
    pub fn remove(&mut self, id: TaskId) -> Option<Route> {
        let at = id.0.wrapping_sub(self.base);
        let found = if id.0 >= self.base && at < self.ring.len() as u64 {
            let r = self.ring.get_mut(at as usize).and_then(Option::take);
            if r.is_some() {
                self.in_ring -= 1;
            }
            r
        } else {
            self.spill.remove(&id.0)
        };
        self.trim();
        found
    }

    /// Drops finished slots at the front; moves the oldest open routes to the map while the
    /// ring is more than three quarters holes.
    fn trim(&mut self) {
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.base += 1;
        }
        if self.ring.len() <= SMALL || self.ring.len() <= 4 * self.in_ring {
            return;
        }
        while self.ring.len() > 2 * self.in_ring {
            match self.ring.pop_front() {
                Some(Some(r)) => {
                    self.spill.insert(self.base, r);
                    self.in_ring -= 1;
                }
                Some(None) => {}
                None => break,
            }
            self.base += 1;
        }
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.base += 1;
        }
    }

    /// Every route, with its interchange id.
    pub fn iter(&self) -> impl Iterator<Item = (TaskId, Route)> + '_ {
        let base = self.base;
        self.ring
            .iter()
            .enumerate()
            .filter_map(move |(i, r)| r.map(|r| (TaskId(base + i as u64), r)))
            .chain(self.spill.iter().map(|(id, r)| (TaskId(*id), *r)))
    }

    /// How many routes are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.in_ring + self.spill.len()
    }

    /// Slots the ring holds, routes and holes (for tests of its bound).
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_inserts_and_removals_match_a_map() {
        for seed in 0..50 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut r = Routes::default();
            let mut model: std::collections::HashMap<u64, Route> = Default::default();
            let mut next = 1u64;
            for step in 0..20_000 {
                if rng.u32(0..3) == 0 || model.is_empty() {
                    let route = (rng.u64(0..4), TaskId(rng.u64(..)));
                    r.insert(TaskId(next), route);
                    model.insert(next, route);
                    next += 1;
                } else {
                    // Mostly the oldest open tasks finish; now and then any, or an unknown id.
                    let id = match rng.u32(0..10) {
                        0 => rng.u64(0..next + 10),
                        _ => *model.keys().min().unwrap_or(&0) + rng.u64(0..3),
                    };
                    assert_eq!(
                        r.remove(TaskId(id)),
                        model.remove(&id),
                        "seed {seed} step {step}: id {id}"
                    );
                }
                assert_eq!(r.len(), model.len(), "seed {seed} step {step}");
            }
            let mut all: Vec<(TaskId, Route)> = r.iter().collect();
            all.sort_unstable_by_key(|(id, _)| id.0);
            let mut want: Vec<(TaskId, Route)> =
                model.iter().map(|(id, r)| (TaskId(*id), *r)).collect();
            want.sort_unstable_by_key(|(id, _)| id.0);
            assert_eq!(all, want, "seed {seed}");
        }
    }

    #[test]
    fn one_task_left_open_does_not_keep_the_ring_of_everything_after_it() {
        let mut r = Routes::default();
        r.insert(TaskId(1), (7, TaskId(100)));
        for id in 2..1_000_000u64 {
            r.insert(TaskId(id), (7, TaskId(id)));
            assert!(r.remove(TaskId(id)).is_some());
        }
        assert!(r.slots() <= SMALL + 1, "{} slots", r.slots());
        assert_eq!(r.len(), 1);
        assert_eq!(r.remove(TaskId(1)), Some((7, TaskId(100))));
        assert_eq!(r.len(), 0);
    }
}
