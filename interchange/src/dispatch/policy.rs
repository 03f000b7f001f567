//! How the dispatcher picks a manager for the next batch of tasks.
//!
//! A policy is a type implementing [`DispatchPolicy`]. It keeps its own index of the managers
//! that can take work now (the dispatcher tells it whenever a manager's load or room changes),
//! so picking costs a lookup in that index, not a scan of every manager for every batch. The
//! index holds only managers with room: on a busy endpoint that is a small set.
//!
//! [`Policy`] is the name chosen in configuration; [`Policy::build`] makes its type.
//!
//! The container-aware policies (`warm`, `warm-hard`) read each manager's last capacity report
//! (workers per container type) and the dispatcher's own count of tasks in flight per type, so
//! they know between reports how many warm workers of a type are still unclaimed.

use fxr_protocol::{Capacity, ManagerId};
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// What a policy is told of a manager.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Registration order (for round-robin).
    pub order: u64,
    pub in_flight: usize,
    /// Tasks it may hold (workers + prefetch, widened while tasks are short); at least 1.
    pub limit: usize,
}

/// What a policy may look at: whether a manager runs the task's container type, its last
/// capacity report per type (total, free, warm, unused), and its tasks in flight per type.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub runs: bool,
    pub capacity: &'a [Capacity],
    /// Tasks in flight by container type number: `held[i]` of type `kinds[i]`.
    pub held: &'a [usize],
    pub kinds: &'a [String],
    pub workers: u32,
}

impl View<'_> {
    /// Tasks of `kind` in flight.
    pub fn held(&self, kind: &str) -> usize {
        self.kinds
            .iter()
            .position(|k| k == kind)
            .and_then(|i| self.held.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Workers of `kind` not claimed by a task in flight: reported workers minus held tasks.
    pub fn warm_room(&self, kind: &str) -> usize {
        let total = self
            .capacity
            .iter()
            .find(|c| c.container == kind)
            .map_or(0, |c| c.total as usize);
        total.saturating_sub(self.held(kind))
    }

    /// Slots free to start any container, as far as the dispatcher can tell: the reported
    /// unused slots, less one for each task in flight beyond its type's workers.
    pub fn unused(&self) -> usize {
        let reported = self.capacity.first().map_or(self.workers, |c| c.unused) as usize;
        let mut needed = 0usize;
        for (k, n) in self.kinds.iter().zip(self.held).filter(|(_, n)| **n > 0) {
            let total = self
                .capacity
                .iter()
                .find(|c| &c.container == k)
                .map_or(0, |c| c.total as usize);
            needed += n.saturating_sub(total);
        }
        reported.saturating_sub(needed)
    }

    /// The container types it has workers of.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.capacity
            .iter()
            .filter(|c| c.total > 0)
            .map(|c| c.container.as_str())
    }

    fn idle(&self) -> bool {
        self.held.iter().all(|n| *n == 0)
    }
}

/// Looks up what a policy may see of a manager.
pub type Lookup<'a> = dyn Fn(ManagerId) -> Option<View<'a>> + 'a;

/// A dispatch policy with its index of managers that have room.
pub trait DispatchPolicy: std::fmt::Debug + Send {
    /// A manager's load or capacity changed; `ready` says whether it may take work now (not
    /// draining, has room, not too many unacknowledged batches).
    fn update(&mut self, id: ManagerId, load: Load, ready: bool, view: &View<'_>);
    /// A manager is gone.
    fn remove(&mut self, id: ManagerId);
    /// Whether it answers `warm_only` picks (the dispatcher skips that pass otherwise).
    fn knows_warmth(&self) -> bool {
        false
    }
    /// The manager for the next batch of tasks of `container`, among the ready ones for which
    /// `view` says `runs`, and the most tasks the batch may hold. The dispatcher asks twice:
    /// first with `warm_only` (a policy that knows warm workers answers only with those), then
    /// without, so warm work goes first wherever it waits.
    fn pick<'a>(
        &mut self,
        container: &str,
        view: &Lookup<'a>,
        now: Instant,
        warm_only: bool,
    ) -> Option<(ManagerId, usize)>;
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
    /// Managers with an unclaimed warm worker of the task's type first, then managers with
    /// unused slots; a task goes where it forces a container switch at most once per
    /// `cold_routing_interval`.
    Warm,
    /// As `warm`, but never forcing a switch: a manager takes only types it has workers of,
    /// unless it has unused slots or nothing in flight.
    WarmHard,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "random" => Ok(Policy::Random),
            "round-robin" => Ok(Policy::RoundRobin),
            "least-loaded" => Ok(Policy::LeastLoaded),
            "warm" => Ok(Policy::Warm),
            "warm-hard" => Ok(Policy::WarmHard),
            other => Err(format!(
                "unknown dispatch policy `{other}` (expected random, round-robin, least-loaded, \
                 warm or warm-hard)"
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
            Policy::Warm => "warm",
            Policy::WarmHard => "warm-hard",
        }
    }

    /// The policy's type, with an empty index.
    pub fn build(self, seed: u64, cold_routing_interval: Duration) -> Box<dyn DispatchPolicy> {
        match self {
            Policy::Random => Box::new(Random {
                ready: ReadySet::default(),
                rng: fastrand::Rng::with_seed(seed),
            }),
            Policy::RoundRobin => Box::new(RoundRobin::default()),
            Policy::LeastLoaded => Box::new(LeastLoaded::default()),
            Policy::Warm | Policy::WarmHard => Box::new(Warm {
                hard: self == Policy::WarmHard,
                interval: cold_routing_interval,
                last_cold: None,
                ready: ReadySet::default(),
                warm: HashMap::default(),
                unused: ReadySet::default(),
                idle: ReadySet::default(),
                member: HashMap::default(),
                hosts: HashMap::default(),
                hosted: HashMap::default(),
                rng: fastrand::Rng::with_seed(seed),
            }),
        }
    }
}

/// A set of managers with O(1) insert, remove and uniform choice.
#[derive(Debug, Default)]
struct ReadySet {
    ids: Vec<ManagerId>,
    pos: HashMap<ManagerId, usize>,
}

impl ReadySet {
    fn set(&mut self, id: ManagerId, member: bool) {
        if member {
            if !self.pos.contains_key(&id) {
                self.pos.insert(id, self.ids.len());
                self.ids.push(id);
            }
        } else if let Some(i) = self.pos.remove(&id) {
            self.ids.swap_remove(i);
            if let Some(moved) = self.ids.get(i) {
                self.pos.insert(*moved, i);
            }
        }
    }

    /// A random member for which `ok` holds: a random start, then the first that passes
    /// (uniform when all do).
    fn choose(&self, rng: &mut fastrand::Rng, ok: impl Fn(ManagerId) -> bool) -> Option<ManagerId> {
        let n = self.ids.len();
        if n == 0 {
            return None;
        }
        let start = rng.usize(0..n);
        (0..n).map(|k| self.ids[(start + k) % n]).find(|id| ok(*id))
    }
}

fn runs(view: &Lookup<'_>, id: ManagerId) -> bool {
    view(id).is_some_and(|v| v.runs)
}

/// Uniform among ready managers.
#[derive(Debug)]
struct Random {
    ready: ReadySet,
    rng: fastrand::Rng,
}

impl DispatchPolicy for Random {
    fn update(&mut self, id: ManagerId, _load: Load, ready: bool, _: &View<'_>) {
        self.ready.set(id, ready);
    }

    fn remove(&mut self, id: ManagerId) {
        self.ready.set(id, false);
    }

    fn pick<'a>(
        &mut self,
        _container: &str,
        view: &Lookup<'a>,
        _: Instant,
        warm_only: bool,
    ) -> Option<(ManagerId, usize)> {
        if warm_only {
            return None;
        }
        let id = self.ready.choose(&mut self.rng, |id| runs(view, id))?;
        Some((id, usize::MAX))
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
    fn update(&mut self, id: ManagerId, load: Load, ready: bool, _: &View<'_>) {
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

    fn pick<'a>(
        &mut self,
        _container: &str,
        view: &Lookup<'a>,
        _: Instant,
        warm_only: bool,
    ) -> Option<(ManagerId, usize)> {
        if warm_only {
            return None;
        }
        let (order, id) = self
            .ready
            .range(self.cursor + 1..)
            .chain(self.ready.range(..=self.cursor))
            .find(|(_, id)| runs(view, **id))
            .map(|(o, id)| (*o, *id))?;
        self.cursor = order;
        Some((id, usize::MAX))
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
    fn update(&mut self, id: ManagerId, load: Load, ready: bool, _: &View<'_>) {
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

    fn pick<'a>(
        &mut self,
        _container: &str,
        view: &Lookup<'a>,
        _: Instant,
        warm_only: bool,
    ) -> Option<(ManagerId, usize)> {
        if warm_only {
            return None;
        }
        self.ready
            .iter()
            .map(|(_, id)| *id)
            .find(|id| runs(view, *id))
            .map(|id| (id, usize::MAX))
    }
}

/// Warming-aware routing, funcX's: an index per container type of the ready managers with
/// unclaimed warm workers of it, and sets of ready managers with unused slots and with nothing in
/// flight.
#[derive(Debug)]
struct Warm {
    hard: bool,
    interval: Duration,
    last_cold: Option<Instant>,
    ready: ReadySet,
    warm: HashMap<String, BTreeSet<ManagerId>>,
    unused: ReadySet,
    idle: ReadySet,
    /// The warm sets each manager is in, to leave them on the next update.
    member: HashMap<ManagerId, Vec<String>>,
    /// Per type, how many managers have workers of it; and the types each manager has.
    hosts: HashMap<String, usize>,
    hosted: HashMap<ManagerId, Vec<String>>,
    rng: fastrand::Rng,
}

impl Warm {
    fn leave_sets(&mut self, id: ManagerId) {
        self.ready.set(id, false);
        self.unused.set(id, false);
        self.idle.set(id, false);
        for k in self.member.remove(&id).unwrap_or_default() {
            if let Some(set) = self.warm.get_mut(&k) {
                set.remove(&id);
                if set.is_empty() {
                    self.warm.remove(&k);
                }
            }
        }
    }

    fn unhost(&mut self, id: ManagerId) {
        for k in self.hosted.remove(&id).unwrap_or_default() {
            if let Some(n) = self.hosts.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.hosts.remove(&k);
                }
            }
        }
    }
}

impl DispatchPolicy for Warm {
    fn knows_warmth(&self) -> bool {
        true
    }

    fn update(&mut self, id: ManagerId, _load: Load, ready: bool, view: &View<'_>) {
        self.leave_sets(id);
        // Which types it has workers of counts whether or not it has room now.
        self.unhost(id);
        let hosted: Vec<String> = view.kinds().map(str::to_string).collect();
        for k in &hosted {
            *self.hosts.entry(k.clone()).or_default() += 1;
        }
        self.hosted.insert(id, hosted);
        if !ready {
            return;
        }
        self.ready.set(id, true);
        self.unused.set(id, view.unused() > 0);
        self.idle.set(id, view.idle());
        let kinds: Vec<String> = view
            .kinds()
            .filter(|k| view.warm_room(k) > 0)
            .map(str::to_string)
            .collect();
        for k in &kinds {
            self.warm.entry(k.clone()).or_default().insert(id);
        }
        self.member.insert(id, kinds);
    }

    fn remove(&mut self, id: ManagerId) {
        self.leave_sets(id);
        self.unhost(id);
    }

    fn pick<'a>(
        &mut self,
        container: &str,
        view: &Lookup<'a>,
        now: Instant,
        warm_only: bool,
    ) -> Option<(ManagerId, usize)> {
        let v = |id| view(id).filter(|v| v.runs);
        // 1. An unclaimed warm worker of the type: as many tasks as such workers.
        if let Some(set) = self.warm.get(container) {
            for id in set {
                if let Some(room) = v(*id).map(|v| v.warm_room(container)).filter(|r| *r > 0) {
                    return Some((*id, room));
                }
            }
        }
        if warm_only {
            return None;
        }
        // 2. Unused slots, where a worker of the type starts cold without evicting another.
        let rng = &mut self.rng;
        if let Some(id) = self
            .unused
            .choose(rng, |id| v(id).is_some_and(|v| v.unused() > 0))
        {
            let room = v(id).map_or(1, |v| v.unused());
            return Some((id, room));
        }
        // 3. A type no ready manager has workers of may take a manager with nothing in
        // flight, switching its idle workers (so no type starves).
        let homeless = !self.hosts.contains_key(container);
        if let Some(id) = homeless
            .then(|| self.idle.choose(rng, |id| v(id).is_some()))
            .flatten()
        {
            let room = v(id).map_or(1, |v| v.workers as usize);
            return Some((id, room.max(1)));
        }
        // 4. Soft: now and then, one task where it forces a switch.
        if self.hard
            || self
                .last_cold
                .is_some_and(|t| now.saturating_duration_since(t) < self.interval)
        {
            return None;
        }
        let id = self.ready.choose(rng, |id| v(id).is_some())?;
        self.last_cold = Some(now);
        Some((id, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: ManagerId) -> Option<View<'static>> {
        Some(View {
            runs: true,
            capacity: &[],
            held: &[],
            kinds: &[],
            workers: 4,
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
        for p in [
            Policy::Random,
            Policy::RoundRobin,
            Policy::LeastLoaded,
            Policy::Warm,
        ] {
            let mut pol = p.build(1, Duration::ZERO);
            pol.update(
                ManagerId(1),
                load(1, 0, 4),
                true,
                &all(ManagerId(1)).unwrap(),
            );
            pol.update(
                ManagerId(2),
                load(2, 4, 4),
                false,
                &all(ManagerId(2)).unwrap(),
            );
            for _ in 0..20 {
                assert_eq!(
                    pol.pick("", &all, Instant::now(), false).map(|p| p.0),
                    Some(ManagerId(1)),
                    "{p:?}"
                );
            }
            pol.update(
                ManagerId(1),
                load(1, 4, 4),
                false,
                &all(ManagerId(1)).unwrap(),
            );
            assert_eq!(
                pol.pick("", &all, Instant::now(), false).map(|p| p.0),
                None,
                "{p:?}"
            );
            pol.update(
                ManagerId(2),
                load(2, 1, 4),
                true,
                &all(ManagerId(2)).unwrap(),
            );
            pol.remove(ManagerId(2));
            assert_eq!(
                pol.pick("", &all, Instant::now(), false).map(|p| p.0),
                None,
                "{p:?}"
            );
        }
    }

    #[test]
    fn least_loaded_compares_shares_exactly_and_breaks_ties_by_id() {
        let mut pol = Policy::LeastLoaded.build(1, Duration::ZERO);
        pol.update(
            ManagerId(3),
            load(1, 2, 4),
            true,
            &all(ManagerId(3)).unwrap(),
        );
        pol.update(
            ManagerId(2),
            load(2, 4, 8),
            true,
            &all(ManagerId(2)).unwrap(),
        );
        pol.update(
            ManagerId(1),
            load(3, 3, 4),
            true,
            &all(ManagerId(1)).unwrap(),
        );
        assert_eq!(
            pol.pick("", &all, Instant::now(), false).map(|p| p.0),
            Some(ManagerId(2)),
            "1/2 = 2/4, lower id"
        );
        pol.update(
            ManagerId(1),
            load(3, 0, 4),
            true,
            &all(ManagerId(1)).unwrap(),
        );
        assert_eq!(
            pol.pick("", &all, Instant::now(), false).map(|p| p.0),
            Some(ManagerId(1))
        );
    }

    #[test]
    fn round_robin_wraps_and_skips_managers_that_do_not_run_the_type() {
        let mut pol = Policy::RoundRobin.build(1, Duration::ZERO);
        for i in 1..=3 {
            pol.update(
                ManagerId(i),
                load(i, 0, 4),
                true,
                &all(ManagerId(i)).unwrap(),
            );
        }
        let only_odd = |id: ManagerId| {
            Some(View {
                runs: id.0 % 2 == 1,
                capacity: &[],
                held: &[],
                kinds: &[],
                workers: 4,
            })
        };
        let picks: Vec<u64> = (0..4)
            .map(|_| {
                pol.pick("c", &only_odd, Instant::now(), false)
                    .map(|p| p.0)
                    .unwrap()
                    .0
            })
            .collect();
        assert_eq!(picks, vec![1, 3, 1, 3]);
    }

    #[test]
    fn random_reaches_every_ready_manager() {
        let mut pol = Policy::Random.build(7, Duration::ZERO);
        for i in 1..=5 {
            pol.update(
                ManagerId(i),
                load(i, 0, 4),
                true,
                &all(ManagerId(i)).unwrap(),
            );
        }
        pol.remove(ManagerId(3));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(
                pol.pick("", &all, Instant::now(), false)
                    .map(|p| p.0)
                    .unwrap()
                    .0,
            );
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 2, 4, 5]);
    }
}
