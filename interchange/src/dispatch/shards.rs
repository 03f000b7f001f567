//! Dispatch sharded across threads: several [`Dispatcher`]s, each over its own group of
//! managers, run side by side, one thread each, and a queue in front of them that hands each
//! shard only the tasks it has room for.
//!
//! How a cycle goes (the core calls [`Sharded::dispatch`] once per turn of its loop):
//! 1. Events for a shard's managers (results, acknowledgements, registrations, losses, ...)
//!    were recorded, in order, as that shard's *ops* while the core took them in; nothing ran.
//! 2. The core thread hands out queued tasks: first one per idle worker, shard by shard, then
//!    the rest up to each shard's free slots (results in a shard's ops count as freed slots).
//! 3. Every shard, on its own thread, applies its ops in order, takes
//!    its share, dispatches it with the other shards' counts added to its own (so prefetch
//!    follows the same rule as one dispatcher's), and gives back what it could not send, as
//!    many as other shards have idle workers (the rest waits for its own managers).
//! 4. The core joins them: their messages and results go out, what came back is queued again
//!    at the front, oldest first.
//!
//! Between cycles the core owns every shard (the threads wait for their next job), so a query
//! (counts, status, the managers of a block) runs any recorded ops first and then reads the
//! shards directly. With one shard there is no queue, no op list and no thread: every call goes
//! straight to the one dispatcher, as if it were not wrapped.
//!
//! Invariants (checked by `shard_tests.rs`, a property test over random event sequences): a task
//! is in exactly one place (the queue in front, or one shard, queued or at one of its
//! managers); a result leaves once; each manager belongs to one shard for as long as it is
//! registered.

use super::{DispatchConfig, Dispatcher, Outbox, Outside, ShardLoad};
use crate::idmap::IdMap;
use fxr_protocol::{
    BlockId, FailureKind, ManagerId, ManagerMsg, ManagerStatus, Registration, Task, TaskId,
    TaskResult,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::Counters;

/// An event for one shard, kept until its next cycle.
#[derive(Debug)]
enum Op {
    Message(ManagerId, ManagerMsg, Instant),
    Register(Registration, Instant),
    Lost(ManagerId, String),
    Drain(ManagerId, bool),
    Cancel(Vec<TaskId>),
    FailQueued(String),
}

/// One shard's work for a cycle.
#[derive(Debug)]
pub(crate) struct Job {
    ops: Vec<Op>,
    given: Vec<Task>,
    outside: Outside,
    tick: Option<Instant>,
    /// Dispatch at this time (none while the endpoint shuts down: ops only).
    dispatch: Option<Instant>,
}

/// What a shard did in a cycle.
#[derive(Debug, Default)]
pub(crate) struct Done {
    shard: usize,
    out: Outbox,
    back: Vec<Task>,
    load: ShardLoad,
}

/// A shard's dispatcher and its numbering of the tasks it was handed.
///
/// Why its own numbers: a shard is handed a share of the tasks, so the global ids it holds
/// have gaps where other shards' tasks went, and its table of open tasks (a ring indexed by
/// id, see `idmap.rs`) would spill them into a hash map. Numbered again as they arrive, a
/// shard's ids are dense; its managers see only those numbers, and results and tasks handed
/// back are given their global ids again on the way out.
#[derive(Debug)]
pub(crate) struct Part {
    d: Dispatcher,
    /// The global id of each task by the shard's own number.
    global: IdMap<TaskId>,
    next: u64,
}

impl Part {
    fn new(d: Dispatcher) -> Part {
        Part {
            d,
            global: IdMap::default(),
            next: 1,
        }
    }

    /// Numbers tasks handed to this shard.
    fn adopt(&mut self, tasks: &mut [Task]) {
        for t in tasks {
            let local = TaskId(self.next);
            self.next += 1;
            self.global.insert(local, t.id);
            t.id = local;
        }
    }

    /// The shard's numbers of global ids (a scan: only cancellations ask).
    fn locals(&self, ids: &[TaskId]) -> Vec<TaskId> {
        let wanted: HashSet<TaskId> = ids.iter().copied().collect();
        self.global
            .iter()
            .filter(|(_, g)| wanted.contains(g))
            .map(|(local, _)| local)
            .collect()
    }

    /// Gives results and tasks leaving the shard their global ids back.
    fn release(&mut self, out: &mut Outbox, back: &mut [Task]) {
        out.results.retain_mut(|r| match self.global.remove(&r.id) {
            Some(g) => {
                r.id = g;
                true
            }
            None => {
                tracing::error!(id = r.id.0, "a shard reported a task it was never handed");
                false
            }
        });
        for t in back {
            if let Some(g) = self.global.remove(&t.id) {
                t.id = g;
            }
        }
    }
}

#[derive(Debug)]
struct Shard {
    d: Arc<Mutex<Part>>,
    ops: Vec<Op>,
    /// Its load after its last cycle.
    load: ShardLoad,
    /// Results recorded in `ops` since: slots they will free.
    freed: usize,
    /// Managers that belong to it.
    managers: usize,
}

/// Runs shards' jobs side by side: a thread per shard (`crate::lanes`, which owns the threads,
/// so this module stays plain data and calls). Returns what each job did, in any order.
pub(crate) trait Lanes: std::fmt::Debug + Send {
    fn run(&mut self, jobs: Vec<(usize, Job)>) -> Vec<Done>;
}

/// A shard's data, shared with the thread that runs its jobs.
pub(crate) type SharedPart = Arc<Mutex<Part>>;

/// The sharded dispatcher. See the module documentation.
#[derive(Debug)]
pub struct Sharded {
    shards: Vec<Shard>,
    /// A thread per shard when there are several (none for one, and none in some tests:
    /// then every cycle runs on the caller's thread).
    lanes: Option<Box<dyn Lanes>>,
    /// Tasks no shard holds yet, oldest first.
    front: VecDeque<Task>,
    /// Which shard each registered manager belongs to, and its block.
    home: HashMap<ManagerId, (usize, BlockId)>,
    tick: Option<Instant>,
    /// Results and messages of ops run outside a dispatch (by a query), sent with the next.
    spill: Outbox,
    /// What happened in the front queue (cancelled, failed) and was never any shard's.
    counters: Counters,
    /// The shard the hand-out starts at, turning each cycle, so no shard is always served first.
    turn: usize,
    /// [`INLINE_BELOW`]; the tests set 0 to run every cycle on the shards' threads.
    inline_below: usize,
}

/// Cycles with less work than this (events, results and tasks handed out) run on the caller's
/// thread, shard after shard.
const INLINE_BELOW: usize = 256;

pub(crate) fn lock(d: &Mutex<Part>) -> MutexGuard<'_, Part> {
    // Poisoned only by a panic in a shard's thread, which aborts the process.
    d.lock().unwrap_or_else(|p| p.into_inner())
}

/// One shard's cycle: its ops in order, its share of tasks, a tick, a dispatch, and the tasks
/// it could not send handed back.
pub(crate) fn work(p: &mut Part, mut job: Job, shard: usize) -> Done {
    let mut out = Outbox::default();
    p.adopt(&mut job.given);
    for op in job.ops {
        let d = &mut p.d;
        match op {
            Op::Message(id, msg, now) => d.on_message(id, msg, now, &mut out),
            Op::Register(reg, now) => d.register(reg, now, &mut out),
            Op::Lost(id, why) => d.lost(id, &why, &mut out),
            Op::Drain(id, stopping) => {
                d.drain(id, stopping, &mut out);
            }
            Op::Cancel(ids) => {
                let locals = p.locals(&ids);
                p.d.cancel(&locals, &mut out)
            }
            Op::FailQueued(reason) => d.fail_queued(&reason, &mut out),
        }
    }
    let d = &mut p.d;
    if !job.given.is_empty() {
        d.submit(job.given, &mut out);
    }
    if let Some(now) = job.tick {
        d.tick(now, &mut out);
    }
    let mut back = Vec::new();
    if let Some(now) = job.dispatch {
        d.outside = job.outside;
        d.dispatch(now, &mut out);
        d.outside = Outside::default();
        // What it could not send goes back only as far as other shards have idle workers to
        // take it: the rest waits here for its own managers, not handed back and forth.
        back = d.take_queued(job.outside.idle_workers);
    }
    let load = d.load();
    p.release(&mut out, &mut back);
    Done {
        shard,
        out,
        back,
        load,
    }
}

impl Sharded {
    /// `config.shards` dispatchers (at least one), each with the whole configuration; with
    /// more than one, `start` gives them lanes to run on (the caller's thread then only hands
    /// out tasks and gathers what the shards did). `Sharded::new` (in `crate::lanes`) starts a
    /// thread per shard.
    pub(crate) fn with_lanes<E>(
        config: &DispatchConfig,
        start: impl FnOnce(Vec<SharedPart>) -> Result<Box<dyn Lanes>, E>,
    ) -> Result<Sharded, E> {
        let n = config.shards.max(1);
        let mut s = Sharded::with_shards(config, n);
        if n > 1 {
            s.lanes = Some(start(s.shards.iter().map(|x| x.d.clone()).collect())?);
        }
        Ok(s)
    }

    /// One dispatcher, no threads: what the core's unit tests drive.
    pub fn single(config: DispatchConfig) -> Sharded {
        Sharded::with_shards(&config, 1)
    }

    /// `n` shards and no threads yet.
    fn with_shards(config: &DispatchConfig, n: usize) -> Sharded {
        let shards = (0..n)
            .map(|i| {
                let c = DispatchConfig {
                    seed: config.seed.wrapping_add(i as u64),
                    shards: n,
                    ..config.clone()
                };
                Shard {
                    d: Arc::new(Mutex::new(Part::new(Dispatcher::new(c)))),
                    ops: Vec::new(),
                    load: ShardLoad::default(),
                    freed: 0,
                    managers: 0,
                }
            })
            .collect();
        Sharded {
            shards,
            lanes: None,
            front: VecDeque::new(),
            home: HashMap::default(),
            tick: None,
            spill: Outbox::default(),
            counters: Counters::default(),
            turn: 0,
            inline_below: INLINE_BELOW,
        }
    }

    fn sharded(&self) -> bool {
        self.shards.len() > 1
    }

    /// The only shard, when there is one.
    fn one(&self) -> Option<MutexGuard<'_, Part>> {
        (!self.sharded()).then(|| lock(&self.shards[0].d))
    }

    /// Accepts new tasks (ids must be fresh, as the core hands them out: a sharded dispatcher
    /// does not look for an id among its shards).
    pub fn submit(&mut self, tasks: impl IntoIterator<Item = Task>, out: &mut Outbox) {
        if let Some(mut p) = self.one() {
            return p.d.submit(tasks, out);
        }
        let before = self.front.len();
        self.front.extend(tasks);
        self.counters.submitted += (self.front.len() - before) as u64;
    }

    pub fn register(&mut self, reg: Registration, now: Instant, out: &mut Outbox) {
        if let Some(mut p) = self.one() {
            return p.d.register(reg, now, out);
        }
        let id = reg.manager_id;
        let shard = match self.home.get(&id) {
            Some((s, _)) => *s,
            None => {
                // The shard with the fewest managers.
                let s = (0..self.shards.len())
                    .min_by_key(|s| self.shards[*s].managers)
                    .unwrap_or(0);
                self.shards[s].managers += 1;
                s
            }
        };
        self.home.insert(id, (shard, reg.block_id.clone()));
        self.shards[shard].ops.push(Op::Register(reg, now));
    }

    pub fn on_message(&mut self, id: ManagerId, msg: ManagerMsg, now: Instant, out: &mut Outbox) {
        if let Some(mut p) = self.one() {
            return p.d.on_message(id, msg, now, out);
        }
        let Some((s, _)) = self.home.get(&id) else {
            return;
        };
        let shard = &mut self.shards[*s];
        if let ManagerMsg::Results { results, .. } = &msg {
            shard.freed += results.len();
        }
        shard.ops.push(Op::Message(id, msg, now));
    }

    pub fn lost(&mut self, id: ManagerId, why: &str, out: &mut Outbox) {
        if let Some(mut p) = self.one() {
            return p.d.lost(id, why, out);
        }
        if let Some((s, _)) = self.home.remove(&id) {
            self.shards[s].managers -= 1;
            self.shards[s].ops.push(Op::Lost(id, why.to_string()));
        }
    }

    /// Whether the manager is known (as far as the events so far say) and now draining.
    pub fn drain(&mut self, id: ManagerId, endpoint_stopping: bool, out: &mut Outbox) -> bool {
        if let Some(mut p) = self.one() {
            return p.d.drain(id, endpoint_stopping, out);
        }
        match self.home.get(&id) {
            Some((s, _)) => {
                self.shards[*s].ops.push(Op::Drain(id, endpoint_stopping));
                true
            }
            None => false,
        }
    }

    pub fn tick(&mut self, now: Instant, out: &mut Outbox) {
        if let Some(mut p) = self.one() {
            return p.d.tick(now, out);
        }
        self.tick = Some(now);
    }

    pub fn cancel(&mut self, ids: &[TaskId], out: &mut Outbox) {
        if let Some(mut p) = self.one() {
            return p.d.cancel(ids, out);
        }
        let wanted: HashSet<TaskId> = ids.iter().copied().collect();
        let before = self.front.len();
        self.front.retain(|t| {
            if wanted.contains(&t.id) {
                out.results.push(TaskResult::failure(
                    t.id,
                    FailureKind::Cancelled,
                    "cancelled while queued",
                ));
                false
            } else {
                true
            }
        });
        self.counters.failed += (before - self.front.len()) as u64;
        for s in &mut self.shards {
            s.ops.push(Op::Cancel(ids.to_vec()));
        }
    }

    pub fn fail_queued(&mut self, reason: &str, out: &mut Outbox) {
        if let Some(mut p) = self.one() {
            return p.d.fail_queued(reason, out);
        }
        for t in self.front.drain(..) {
            self.counters.failed += 1;
            out.results.push(TaskResult::failure(
                t.id,
                FailureKind::EndpointUnavailable,
                reason,
            ));
        }
        for s in &mut self.shards {
            s.ops.push(Op::FailQueued(reason.to_string()));
        }
    }

    /// Runs a cycle (see the module documentation): every shard's ops, the hand-out and each
    /// shard's dispatch, side by side.
    pub fn dispatch(&mut self, now: Instant, out: &mut Outbox) {
        if let Some(mut p) = self.one() {
            return p.d.dispatch(now, out);
        }
        self.cycle(Some(now), out);
        // A shard that had no room when the hand-out began (registered, or freed by results,
        // during the cycle) and is idle now gets its share at once, not a turn later.
        if !self.front.is_empty() && self.shards.iter().any(|s| s.load.idle_workers > 0) {
            self.cycle(Some(now), out);
        }
    }

    /// Runs every shard's recorded ops (and a tick, if one is due) without dispatching: while
    /// the endpoint shuts down, and before a query.
    pub fn settle(&mut self, out: &mut Outbox) {
        if self.sharded() {
            self.cycle(None, out);
        }
    }

    fn cycle(&mut self, dispatch: Option<Instant>, out: &mut Outbox) {
        out.to_managers.append(&mut self.spill.to_managers);
        out.results.append(&mut self.spill.results);
        out.close.append(&mut self.spill.close);
        let n = self.shards.len();
        let mut given: Vec<Vec<Task>> = (0..n).map(|_| Vec::new()).collect();
        if dispatch.is_some() && !self.front.is_empty() {
            self.hand_out(&mut given);
        }
        let totals = self.shards.iter().fold(Outside::default(), |t, s| Outside {
            queued: 0,
            idle_workers: t.idle_workers + s.load.idle_workers,
            workers: t.workers + s.load.workers,
        });
        let left = self.front.len();
        // Work of this cycle, in events and tasks: small cycles run on this thread, one shard
        // after the other, since waking threads would cost more than the work.
        let size: usize = self
            .shards
            .iter()
            .zip(&given)
            .map(|(s, g)| s.ops.len() + s.freed + g.len())
            .sum();
        let mut jobs: Vec<Option<Job>> = Vec::with_capacity(n);
        for (i, s) in self.shards.iter_mut().enumerate() {
            let mine = std::mem::take(&mut given[i]);
            s.freed = 0;
            // A shard with no events, no tasks given, none queued and no tick has nothing to do.
            if s.ops.is_empty() && mine.is_empty() && s.load.queued == 0 && self.tick.is_none() {
                jobs.push(None);
                continue;
            }
            jobs.push(Some(Job {
                ops: std::mem::take(&mut s.ops),
                outside: Outside {
                    // The tasks other shards were given this cycle count as theirs only once
                    // they report them; until then they are queued elsewhere.
                    queued: left,
                    idle_workers: totals.idle_workers - s.load.idle_workers,
                    workers: totals.workers - s.load.workers,
                },
                given: mine,
                tick: self.tick,
                dispatch,
            }));
        }
        self.tick = None;
        let jobs: Vec<(usize, Job)> = jobs
            .into_iter()
            .enumerate()
            .filter_map(|(i, j)| Some((i, j?)))
            .collect();
        let dones = match &mut self.lanes {
            Some(lanes) if size >= self.inline_below => lanes.run(jobs),
            _ => jobs
                .into_iter()
                .map(|(i, job)| work(&mut lock(&self.shards[i].d), job, i))
                .collect(),
        };
        let mut back: Vec<Task> = Vec::new();
        for mut d in dones {
            out.to_managers.append(&mut d.out.to_managers);
            out.results.append(&mut d.out.results);
            for m in &d.out.close {
                if matches!(self.home.get(m), Some((s, _)) if *s == d.shard) {
                    self.home.remove(m);
                    self.shards[d.shard].managers -= 1;
                }
            }
            out.close.append(&mut d.out.close);
            back.append(&mut d.back);
            if let Some(s) = self.shards.get_mut(d.shard) {
                s.load = d.load;
            }
        }
        if !back.is_empty() {
            back.sort_unstable_by_key(|t| std::cmp::Reverse(t.id));
            for t in back {
                self.front.push_front(t);
            }
        }
    }

    /// Splits the front queue among the shards: one task per idle worker first, then up to
    /// each shard's free slots.
    fn hand_out(&mut self, given: &mut [Vec<Task>]) {
        let n = self.shards.len();
        self.turn = (self.turn + 1) % n;
        let order: Vec<usize> = (0..n).map(|i| (self.turn + i) % n).collect();
        let mut taken = vec![0usize; n];
        for pass in 0..2 {
            for &i in &order {
                let s = &self.shards[i];
                let free = s.load.free_slots + s.freed;
                let want = if pass == 0 {
                    (s.load.idle_workers + s.freed).min(free)
                } else {
                    free
                }
                .saturating_sub(s.load.queued + taken[i]);
                let k = want.min(self.front.len());
                given[i].extend(self.front.drain(..k));
                taken[i] += k;
                if self.front.is_empty() {
                    return;
                }
            }
        }
    }

    /// Runs what is recorded, so the shards can be read directly; the output waits for the
    /// next cycle.
    fn settled(&mut self) -> Vec<MutexGuard<'_, Part>> {
        if self.sharded() {
            let mut spill = std::mem::take(&mut self.spill);
            self.cycle(None, &mut spill);
            self.spill = spill;
        }
        self.shards.iter().map(|s| lock(&s.d)).collect()
    }

    pub fn counters(&mut self) -> Counters {
        let mine = self.counters;
        let sharded = self.sharded();
        self.settled().iter().fold(mine, |c, p| {
            let x = p.d.counters();
            Counters {
                // Counted once, in front: a task handed to a shard again after coming back
                // would count twice there.
                submitted: if sharded { c.submitted } else { x.submitted },
                completed: c.completed + x.completed,
                failed: c.failed + x.failed,
                retried: c.retried + x.retried,
                duplicates_dropped: c.duplicates_dropped + x.duplicates_dropped,
                batches_sent: c.batches_sent + x.batches_sent,
            }
        })
    }

    /// Tasks waiting for a manager (in front of the shards or in one).
    pub fn queued(&mut self) -> usize {
        let front = self.front.len();
        front + self.settled().iter().map(|p| p.d.queued()).sum::<usize>()
    }

    pub fn in_flight(&mut self) -> usize {
        self.settled().iter().map(|p| p.d.in_flight()).sum()
    }

    pub fn outstanding(&mut self) -> usize {
        let front = self.front.len();
        front
            + self
                .settled()
                .iter()
                .map(|p| p.d.outstanding())
                .sum::<usize>()
    }

    pub fn manager_ids(&mut self) -> Vec<ManagerId> {
        let mut ids: Vec<ManagerId> = self
            .settled()
            .iter()
            .flat_map(|p| p.d.manager_ids())
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn worker_load(&mut self) -> (u64, u64, u64) {
        self.settled().iter().fold((0, 0, 0), |(n, w, b), p| {
            let (n2, w2, b2) = p.d.worker_load();
            (n + n2, w + w2, b + b2)
        })
    }

    pub fn manager_status(&mut self) -> Vec<ManagerStatus> {
        let mut all: Vec<ManagerStatus> = self
            .settled()
            .iter()
            .flat_map(|p| p.d.manager_status())
            .collect();
        all.sort_unstable_by_key(|m| m.manager_id);
        all
    }

    /// Managers of one block (registrations recorded but not yet run count).
    pub fn managers_of_block(&self, block: &BlockId) -> Vec<ManagerId> {
        if let Some(p) = self.one() {
            return p.d.managers_of_block(block);
        }
        let mut ids: Vec<ManagerId> = self
            .home
            .iter()
            .filter(|(_, (_, b))| b == block)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
#[path = "shard_tests.rs"]
mod shard_tests;
