//! How the dispatcher picks a manager for the next batch of tasks.
//!
//! A policy is a type implementing [`DispatchPolicy`]. It keeps its own index of the managers
//! that can take work now (the dispatcher tells it whenever a manager's load or room changes),
//! so picking costs a lookup in that index, not a scan of every manager for every batch. The
//! index holds only managers with room: on a busy endpoint that is a small set.
//!
//! [`Policy`] is the name chosen in configuration; [`Policy::build`] makes its type.

use fxr_protocol::{Capacity, ManagerId};
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

/// What a policy is told of a manager.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Registration order (for round-robin).
    pub order: u64,
    pub in_flight: usize,
    /// Tasks it may hold (workers + prefetch, widened while tasks are short); at least 1.
    pub limit: usize,
}

/// What a policy may look at when it picks: whether a manager runs the task's container type,
/// and its last capacity report per type (free, warm, unused).
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub runs: bool,
    pub capacity: &'a [Capacity],
}

/// Looks up what a policy may see of a manager.
pub type Lookup<'a> = dyn Fn(ManagerId) -> Option<View<'a>> + 'a;

/// A dispatch policy with its index of managers that have room.
pub trait DispatchPolicy: std::fmt::Debug + Send {
    /// A manager's load changed; `ready` says whether it may take work now (not draining, has
    /// room, not too many unacknowledged batches).
    fn update(&mut self, id: ManagerId, load: Load, ready: bool);
    /// A manager is gone.
    fn remove(&mut self, id: ManagerId);
    /// The manager for the next batch of tasks of `container`, among the ready ones for which
    /// `view` says `runs`.
    fn pick<'a>(&mut self, container: &str, view: &Lookup<'a>) -> Option<ManagerId>;
}

/// The policy named in configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// A manager chosen uniformly among those with room (the paper's baseline).
    Random,
    /// Managers with room in turn.
    RoundRobin,
    /// The manager with the smallest share of its slots in use.
    #[default]
    LeastLoaded,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "random" => Ok(Policy::Random),
            "round-robin" => Ok(Policy::RoundRobin),
            "least-loaded" => Ok(Policy::LeastLoaded),
            other => Err(format!(
                "unknown dispatch policy `{other}` (expected random, round-robin or least-loaded)"
            )),
        }
    }
}

impl Policy {
    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::RoundRobin => "round-robin",
            Policy::LeastLoaded => "least-loaded",
        }
    }

    /// The policy's type, with an empty index.
    pub fn build(self, seed: u64) -> Box<dyn DispatchPolicy> {
        match self {
            Policy::Random => Box::new(Random {
                ready: Vec::new(),
                pos: HashMap::default(),
                rng: fastrand::Rng::with_seed(seed),
            }),
            Policy::RoundRobin => Box::new(RoundRobin::default()),
            Policy::LeastLoaded => Box::new(LeastLoaded::default()),
        }
    }
}

fn runs(view: &Lookup<'_>, id: ManagerId) -> bool {
    view(id).is_some_and(|v| v.runs)
}

/// Uniform among ready managers: a vector with O(1) insert, remove and choice.
#[derive(Debug)]
struct Random {
    ready: Vec<ManagerId>,
    pos: HashMap<ManagerId, usize>,
    rng: fastrand::Rng,
}

impl DispatchPolicy for Random {
    fn update(&mut self, id: ManagerId, _load: Load, ready: bool) {
        match (ready, self.pos.contains_key(&id)) {
            (true, false) => {
                self.pos.insert(id, self.ready.len());
                self.ready.push(id);
            }
            (false, true) => self.remove(id),
            _ => {}
        }
    }

    fn remove(&mut self, id: ManagerId) {
        let Some(i) = self.pos.remove(&id) else {
            return;
        };
        self.ready.swap_remove(i);
        if let Some(moved) = self.ready.get(i) {
            self.pos.insert(*moved, i);
        }
    }

    fn pick<'a>(&mut self, _container: &str, view: &Lookup<'a>) -> Option<ManagerId> {
        let n = self.ready.len();
        if n == 0 {
            return None;
        }
        // A random start, then the first that runs the type: uniform when all do.
        let start = self.rng.usize(0..n);
        (0..n)
            .map(|k| self.ready[(start + k) % n])
            .find(|id| runs(view, *id))
    }
}

/// Ready managers in registration order, and a cursor.
#[derive(Debug, Default)]
struct RoundRobin {
    ready: BTreeMap<u64, ManagerId>,
    order_of: HashMap<ManagerId, u64>,
    cursor: u64,
}

impl DispatchPolicy for RoundRobin {
    fn update(&mut self, id: ManagerId, load: Load, ready: bool) {
        if ready {
            self.ready.insert(load.order, id);
            self.order_of.insert(id, load.order);
        } else {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: ManagerId) {
        if let Some(o) = self.order_of.remove(&id) {
            self.ready.remove(&o);
        }
    }

    fn pick<'a>(&mut self, _container: &str, view: &Lookup<'a>) -> Option<ManagerId> {
        let (order, id) = self
            .ready
            .range(self.cursor + 1..)
            .chain(self.ready.range(..=self.cursor))
            .find(|(_, id)| runs(view, **id))
            .map(|(o, id)| (*o, *id))?;
        self.cursor = order;
        Some(id)
    }
}

/// A share of slots in use, ordered exactly (`a/b < c/d` as `a·d < c·b`).
#[derive(Clone, Copy, Debug)]
struct Share {
    in_flight: u64,
    limit: u64,
}

impl PartialEq for Share {
    fn eq(&self, o: &Share) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Share {}
impl PartialOrd for Share {
    fn partial_cmp(&self, o: &Share) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Share {
    fn cmp(&self, o: &Share) -> std::cmp::Ordering {
        (u128::from(self.in_flight) * u128::from(o.limit))
            .cmp(&(u128::from(o.in_flight) * u128::from(self.limit)))
    }
}

/// Ready managers ordered by their share of slots in use, then by id.
#[derive(Debug, Default)]
struct LeastLoaded {
    ready: BTreeSet<(Share, ManagerId)>,
    key_of: HashMap<ManagerId, Share>,
}

impl DispatchPolicy for LeastLoaded {
    fn update(&mut self, id: ManagerId, load: Load, ready: bool) {
        self.remove(id);
        if ready {
            let s = Share {
                in_flight: load.in_flight as u64,
                limit: load.limit.max(1) as u64,
            };
            self.ready.insert((s, id));
            self.key_of.insert(id, s);
        }
    }

    fn remove(&mut self, id: ManagerId) {
        if let Some(s) = self.key_of.remove(&id) {
            self.ready.remove(&(s, id));
        }
    }

    fn pick<'a>(&mut self, _container: &str, view: &Lookup<'a>) -> Option<ManagerId> {
        self.ready
            .iter()
            .map(|(_, id)| *id)
            .find(|id| runs(view, *id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: ManagerId) -> Option<View<'static>> {
        Some(View {
            runs: true,
            capacity: &[],
        })
    }

    fn load(order: u64, in_flight: usize, limit: usize) -> Load {
        Load {
            order,
            in_flight,
            limit,
        }
    }

    #[test]
    fn every_policy_picks_only_ready_managers_and_forgets_removed_ones() {
        for p in [Policy::Random, Policy::RoundRobin, Policy::LeastLoaded] {
            let mut pol = p.build(1);
            pol.update(ManagerId(1), load(1, 0, 4), true);
            pol.update(ManagerId(2), load(2, 4, 4), false);
            for _ in 0..20 {
                assert_eq!(pol.pick("", &all), Some(ManagerId(1)), "{p:?}");
            }
            pol.update(ManagerId(1), load(1, 4, 4), false);
            assert_eq!(pol.pick("", &all), None, "{p:?}");
            pol.update(ManagerId(2), load(2, 1, 4), true);
            pol.remove(ManagerId(2));
            assert_eq!(pol.pick("", &all), None, "{p:?}");
        }
    }

    #[test]
    fn least_loaded_compares_shares_exactly_and_breaks_ties_by_id() {
        let mut pol = Policy::LeastLoaded.build(1);
        pol.update(ManagerId(3), load(1, 2, 4), true);
        pol.update(ManagerId(2), load(2, 4, 8), true);
        pol.update(ManagerId(1), load(3, 3, 4), true);
        assert_eq!(
            pol.pick("", &all),
            Some(ManagerId(2)),
            "1/2 = 2/4, lower id"
        );
        pol.update(ManagerId(1), load(3, 0, 4), true);
        assert_eq!(pol.pick("", &all), Some(ManagerId(1)));
    }

    #[test]
    fn round_robin_wraps_and_skips_managers_that_do_not_run_the_type() {
        let mut pol = Policy::RoundRobin.build(1);
        for i in 1..=3 {
            pol.update(ManagerId(i), load(i, 0, 4), true);
        }
        let only_odd = |id: ManagerId| {
            Some(View {
                runs: id.0 % 2 == 1,
                capacity: &[],
            })
        };
        let picks: Vec<u64> = (0..4)
            .map(|_| pol.pick("c", &only_odd).unwrap().0)
            .collect();
        assert_eq!(picks, vec![1, 3, 1, 3]);
    }

    #[test]
    fn random_reaches_every_ready_manager() {
        let mut pol = Policy::Random.build(7);
        for i in 1..=5 {
            pol.update(ManagerId(i), load(i, 0, 4), true);
        }
        pol.remove(ManagerId(3));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(pol.pick("", &all).unwrap().0);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2, 4, 5]);
    }
}
