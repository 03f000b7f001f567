//! The dispatcher: which task goes to which manager, and what happens when a manager goes away.
//!
//! It is a state machine over plain data. Events come in as method calls (`submit`,
//! `register`, `on_message`, `lost`, `tick`); what must be sent goes into an [`Outbox`] that the
//! caller drains after each event. Time is passed in, never read. Nothing here touches a socket,
//! so every rule is unit-tested without one (see `tests.rs`).
//!
//! Invariants:
//! - a task id is in exactly one place: queued, or held by one manager (its `Place` in the task
//!   table; each manager's count of what it holds matches the table);
//! - a result leaves through the outbox at most once per task id; later duplicates are counted
//!   and dropped;
//! - a manager never holds more than `workers + prefetch` tasks, and never more than
//!   `max_unacked` unacknowledged batches, because nng drops messages silently when a pipe's
//!   queue is full.

mod batch;
mod manager;
mod policy;
pub(crate) mod shards;
use manager::Manager;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;

pub use policy::{DispatchPolicy, Load, Lookup, Policy, View};
pub use shards::Sharded;

use fxr_protocol::{
    BlockId, FailureKind, InterchangeMsg, ManagerId, ManagerMsg, ManagerStatus, Outcome,
    Registration, Task, TaskId, TaskResult, WorkerCounters, MAX_BODY,
};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Tunables of the dispatcher.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub policy: Policy,
    /// Re-runs allowed after a lost worker or manager.
    pub max_retries: u32,
    /// Most tasks in one batch message.
    pub max_batch: usize,
    /// Most encoded bytes (approximately) in one batch message.
    pub max_batch_bytes: usize,
    /// Most unacknowledged batches per manager.
    pub max_unacked: usize,
    /// A batch not acknowledged in this time is sent again.
    pub ack_timeout: Duration,
    /// Extra tasks a manager may hold while its tasks are short (mean run time under
    /// `short_task_us`): a manager running no-ops drains `workers + prefetch` tasks in
    /// microseconds, and would otherwise idle while waiting for the next batch.
    pub burst_prefetch: usize,
    pub short_task_us: u64,
    /// A manager silent for this long is lost.
    pub heartbeat_threshold: Duration,
    /// Under the `warm` policy, how often a task may go where it forces a container switch.
    pub cold_routing_interval: Duration,
    pub seed: u64,
    /// Nodes in each of this endpoint's blocks: an MPI task asking for more is refused at
    /// once rather than failing when it runs.
    pub block_nodes: u32,
    /// Dispatch shards, each a dispatcher over its own group of managers on its own thread
    /// ([`Sharded`]); 1 dispatches on the core's thread alone.
    pub shards: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            policy: Policy::default(),
            max_retries: 2,
            max_batch: 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            max_unacked: 16,
            ack_timeout: Duration::from_secs(2),
            burst_prefetch: 1024,
            short_task_us: 1000,
            heartbeat_threshold: Duration::from_secs(20),
            cold_routing_interval: Duration::from_secs(1),
            seed: 0x0f0e_0d0c,
            block_nodes: 1,
            shards: 1,
        }
    }
}

/// What the dispatcher wants done; the caller drains it after every event.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Messages to send to managers.
    pub to_managers: Vec<(ManagerId, InterchangeMsg)>,
    /// Final results, each task exactly once.
    pub results: Vec<TaskResult>,
    /// Managers whose connection should be closed.
    pub close: Vec<ManagerId>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.to_managers.is_empty() && self.results.is_empty() && self.close.is_empty()
    }
}

#[derive(Debug)]
enum Place {
    Queued,
    InFlight(ManagerId),
}

#[derive(Debug)]
struct Entry {
    task: Task,
    place: Place,
    /// Its container type, worked out once when it arrives: an index into
    /// [`Dispatcher::kinds`] (4 bytes a task rather than a string each).
    kind: u32,
}

/// What the other shards of a [`Sharded`] dispatcher hold, as of the start of a cycle.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Outside {
    pub(crate) queued: usize,
    pub(crate) idle_workers: usize,
    pub(crate) workers: usize,
}

/// What a shard can take, reported after each cycle of a [`Sharded`] dispatcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ShardLoad {
    pub(crate) idle_workers: usize,
    pub(crate) workers: usize,
    pub(crate) free_slots: usize,
    pub(crate) queued: usize,
}

/// Counters for status reports and experiments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
    pub duplicates_dropped: u64,
    pub batches_sent: u64,
}

/// The dispatcher. See the module documentation.
#[derive(Debug)]
pub struct Dispatcher {
    config: DispatchConfig,
    /// Every open task by id (ids come in order: a ring, not a hash table; see `idmap.rs`).
    tasks: crate::idmap::IdMap<Entry>,
    /// Queued task ids per container type, by the type's index in `kinds` (no string lookup per
    /// task). Ids whose entry has moved on are skipped when popped.
    queues: Vec<VecDeque<TaskId>>,
    queued: usize,
    /// Workers without a task over all managers not draining (each manager's `counted_idle`,
    /// kept by [`Dispatcher::touch`]), and all their workers: a batch prefetches only the
    /// queued tasks beyond these (see [`Dispatcher::send_batch`]).
    idle_workers: usize,
    workers: usize,
    /// Free slots (`limit - in_flight`) over all managers not draining, kept like
    /// `idle_workers`: what a sharded dispatcher may hand this shard.
    free_slots: usize,
    /// Under a [`Sharded`] dispatcher, the queued tasks, idle workers and workers of the other
    /// shards, added to this one's when a batch is sized (zero otherwise).
    outside: Outside,
    managers: BTreeMap<ManagerId, Manager>,
    /// The policy and its index of managers with room, kept current by [`Dispatcher::touch`].
    policy: Box<dyn DispatchPolicy>,
    next_order: u64,
    counters: Counters,
    /// Container types seen, `""` (the bare node) first; tasks name theirs by index.
    kinds: Vec<String>,
    kind_index: HashMap<String, u32>,
}

impl Dispatcher {
    pub fn new(config: DispatchConfig) -> Dispatcher {
        let policy = config
            .policy
            .build(config.seed, config.cold_routing_interval);
        Dispatcher {
            config,
            tasks: Default::default(),
            queues: vec![VecDeque::new()],
            queued: 0,
            idle_workers: 0,
            workers: 0,
            free_slots: 0,
            outside: Outside::default(),
            managers: BTreeMap::new(),
            policy,
            next_order: 0,
            counters: Counters::default(),
            kinds: vec![String::new()],
            kind_index: HashMap::default(),
        }
    }

    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Tells the policy a manager's current load and whether it can take work; called after
    /// every change to a manager's tasks, room, batches or draining.
    fn touch(&mut self, id: ManagerId) {
        let max_unacked = self.config.max_unacked;
        match self.managers.get_mut(&id) {
            Some(m) => {
                let idle = m.idle_workers();
                self.idle_workers = self.idle_workers - m.counted_idle + idle;
                m.counted_idle = idle;
                let workers = m.workers();
                self.workers = self.workers - m.counted_workers + workers;
                m.counted_workers = workers;
                let free = if m.draining { 0 } else { m.free() };
                self.free_slots = self.free_slots - m.counted_free + free;
                m.counted_free = free;
                self.policy.update(
                    id,
                    Load {
                        order: m.order,
                        in_flight: m.in_flight,
                        limit: m.limit,
                    },
                    m.can_take(max_unacked),
                    &m.view("", &self.kinds),
                )
            }
            None => self.policy.remove(id),
        }
    }

    /// Tasks waiting for a manager.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Tasks held by managers.
    pub fn in_flight(&self) -> usize {
        self.tasks.len() - self.queued
    }

    /// Tasks not yet finished (queued or in flight).
    pub fn outstanding(&self) -> usize {
        self.tasks.len()
    }

    pub fn manager_ids(&self) -> Vec<ManagerId> {
        self.managers.keys().copied().collect()
    }

    /// Total worker slots of the connected managers.
    /// Managers, their workers, and the workers busy (tasks held, up to each one's workers),
    /// without building a status line per manager.
    pub fn worker_load(&self) -> (u64, u64, u64) {
        self.managers.values().fold((0, 0, 0), |(n, w, b), m| {
            let workers = u64::from(m.reg.workers);
            (n + 1, w + workers, b + (m.in_flight as u64).min(workers))
        })
    }

    pub fn workers(&self) -> u64 {
        self.managers
            .values()
            .map(|m| u64::from(m.reg.workers))
            .sum()
    }

    /// Accepts new tasks. A task whose id is already known is ignored (dropped as a duplicate);
    /// a task whose arguments exceed the body limit fails at once as `rejected`.
    pub fn submit(&mut self, tasks: impl IntoIterator<Item = Task>, out: &mut Outbox) {
        for task in tasks {
            if self.tasks.contains_key(&task.id) {
                self.counters.duplicates_dropped += 1;
                continue;
            }
            self.counters.submitted += 1;
            if task.args.len() > MAX_BODY {
                self.counters.failed += 1;
                out.results.push(TaskResult::failure(
                    task.id,
                    FailureKind::Rejected,
                    format!(
                        "arguments of {} bytes exceed the limit of {MAX_BODY} bytes",
                        task.args.len()
                    ),
                ));
                continue;
            }
            if let fxr_protocol::Function::Mpi(m) = &task.function {
                if m.num_nodes > self.config.block_nodes {
                    self.counters.failed += 1;
                    out.results.push(TaskResult::failure(
                        task.id,
                        FailureKind::Rejected,
                        format!(
                            "the MPI task asks for {} nodes; this endpoint's blocks have {} (provider.nodes_per_block)",
                            m.num_nodes, self.config.block_nodes
                        ),
                    ));
                    continue;
                }
            }
            let kind = self.kind_of(&task);
            self.enqueue(task, kind, false);
        }
    }

    /// The index of a task's container type (`0`, `""`, for the bare node).
    fn kind_of(&mut self, task: &Task) -> u32 {
        let Some(c) = task.container.as_deref() else {
            return 0;
        };
        let key = c.key();
        if let Some(i) = self.kind_index.get(&key) {
            return *i;
        }
        let i = self.kinds.len() as u32;
        self.kinds.push(key.clone());
        self.queues.push(VecDeque::new());
        self.kind_index.insert(key, i);
        i
    }

    fn enqueue(&mut self, task: Task, kind: u32, front: bool) {
        let id = task.id;
        let Some(queue) = self.queues.get_mut(kind as usize) else {
            return;
        };
        if front {
            queue.push_front(id);
        } else {
            queue.push_back(id);
        }
        self.queued += 1;
        self.tasks.insert(
            id,
            Entry {
                task,
                place: Place::Queued,
                kind,
            },
        );
    }

    /// A manager registered (its secret was already checked by the caller).
    pub fn register(&mut self, reg: Registration, now: Instant, out: &mut Outbox) {
        let id = reg.manager_id;
        if self.managers.contains_key(&id) {
            // The same manager reconnected: what the old connection held is lost.
            self.lost(id, "manager re-registered", out);
        }
        let slots = (reg.workers as usize + reg.prefetch as usize).max(1);
        self.next_order += 1;
        self.managers.insert(
            id,
            Manager {
                reg,
                slots,
                limit: slots,
                mean_run_us: 0.0,
                results_seen: 0,
                in_flight: 0,
                counted_idle: 0,
                counted_workers: 0,
                counted_free: 0,
                sent_ids: Vec::new(),
                unacked: BTreeMap::new(),
                next_seq: 1,
                last_seen: now,
                draining: false,
                capacity: Vec::new(),
                counters: WorkerCounters::default(),
                held: Vec::new(),
                order: self.next_order,
                python_sent: HashSet::default(),
            },
        );
        self.touch(id);
    }

    /// Whether a manager is registered.
    pub fn is_registered(&self, id: ManagerId) -> bool {
        self.managers.contains_key(&id)
    }

    /// A message from a registered manager.
    pub fn on_message(&mut self, id: ManagerId, msg: ManagerMsg, now: Instant, out: &mut Outbox) {
        let Some(m) = self.managers.get_mut(&id) else {
            return;
        };
        m.last_seen = now;
        match msg {
            ManagerMsg::Register(_) | ManagerMsg::Hello { .. } => {}
            ManagerMsg::Heartbeat { capacity, counters } => {
                m.capacity = capacity;
                m.counters = counters;
            }
            ManagerMsg::Ack { seq } => {
                m.unacked.remove(&seq);
            }
            ManagerMsg::Results {
                results,
                capacity,
                counters,
                acks,
            } => {
                m.capacity = capacity;
                m.counters = counters;
                for seq in acks {
                    m.unacked.remove(&seq);
                }
                for r in results {
                    self.on_result(id, r, out);
                }
            }
            ManagerMsg::Returned { tasks } => {
                let held_here = |t: &TaskId| matches!(self.tasks.get(t), Some(e) if matches!(e.place, Place::InFlight(x) if x == id));
                let mut back: Vec<TaskId> = tasks.into_iter().filter(held_here).collect();
                // Each once, in the order they came (ids grow with submission).
                back.sort_unstable();
                back.dedup();
                m.in_flight -= back.len();
                for t in back.into_iter().rev() {
                    if let Some(entry) = self.tasks.remove(&t) {
                        if let Some(m) = self.managers.get_mut(&id) {
                            m.hold(entry.kind, -1);
                        }
                        self.enqueue(entry.task, entry.kind, true);
                    }
                }
            }
            ManagerMsg::Drained => {
                self.lost(id, "manager drained with tasks still assigned", out);
                out.close.push(id);
            }
        }
        self.touch(id);
    }

    fn on_result(&mut self, from: ManagerId, r: TaskResult, out: &mut Outbox) {
        if let Some(m) = self.managers.get_mut(&from) {
            if let Some(e) = self.tasks.get(&r.id) {
                if matches!(e.place, Place::InFlight(x) if x == from) {
                    m.in_flight -= 1;
                    m.hold(e.kind, -1);
                }
            }
            m.observe(
                r.run_us,
                self.config.burst_prefetch,
                self.config.short_task_us,
            );
        }
        let Some(entry) = self.tasks.get_mut(&r.id) else {
            self.counters.duplicates_dropped += 1;
            return;
        };
        // A lost worker is retried here, where the retry budget lives.
        if let Outcome::Failure {
            kind: FailureKind::WorkerLost,
            ..
        } = r.outcome
        {
            if entry.task.attempt < self.config.max_retries
                && matches!(entry.place, Place::InFlight(m) if m == from)
            {
                if let Some(Entry { mut task, kind, .. }) = self.tasks.remove(&r.id) {
                    task.attempt += 1;
                    self.counters.retried += 1;
                    self.enqueue(task, kind, true);
                }
                return;
            }
        }
        let Some(entry) = self.tasks.remove(&r.id) else {
            return;
        };
        match entry.place {
            Place::Queued => self.queued -= 1,
            Place::InFlight(other) if other != from => {
                if let Some(m) = self.managers.get_mut(&other) {
                    m.in_flight -= 1;
                    m.hold(entry.kind, -1);
                }
                self.touch(other);
            }
            Place::InFlight(_) => {}
        }
        if r.is_success() {
            self.counters.completed += 1;
        } else {
            self.counters.failed += 1;
        }
        out.results.push(r);
    }

    /// A manager's connection closed or it stopped heartbeating: re-queue what it held, or fail
    /// tasks that have used up their retries as `manager_lost`.
    pub fn lost(&mut self, id: ManagerId, why: &str, out: &mut Outbox) {
        let Some(m) = self.managers.remove(&id) else {
            return;
        };
        self.idle_workers -= m.counted_idle;
        self.workers -= m.counted_workers;
        self.free_slots -= m.counted_free;
        self.policy.remove(id);
        let mut held: Vec<TaskId> = m
            .sent_ids
            .into_iter()
            .filter(|t| {
                matches!(self.tasks.get(t), Some(e) if matches!(e.place, Place::InFlight(x) if x == id))
            })
            .collect();
        held.sort_unstable();
        held.dedup();
        for t in held.into_iter().rev() {
            let Some(entry) = self.tasks.remove(&t) else {
                continue;
            };
            let Entry { mut task, kind, .. } = entry;
            if task.attempt >= self.config.max_retries {
                self.counters.failed += 1;
                out.results.push(TaskResult::failure(
                    t,
                    FailureKind::ManagerLost,
                    format!(
                        "manager {id} lost ({why}) after {} attempts",
                        task.attempt + 1
                    ),
                ));
            } else {
                task.attempt += 1;
                self.counters.retried += 1;
                self.enqueue(task, kind, true);
            }
        }
    }

    /// Marks a manager as draining (it gets no new work) and tells it so, and whether the
    /// whole endpoint is stopping.
    pub fn drain(&mut self, id: ManagerId, endpoint_stopping: bool, out: &mut Outbox) -> bool {
        match self.managers.get_mut(&id) {
            Some(m) => {
                m.draining = true;
                out.to_managers
                    .push((id, InterchangeMsg::Drain { endpoint_stopping }));
                self.touch(id);
                true
            }
            None => false,
        }
    }

    /// Periodic work: lose silent managers, resend unacknowledged batches.
    pub fn tick(&mut self, now: Instant, out: &mut Outbox) {
        let threshold = self.config.heartbeat_threshold;
        let silent: Vec<ManagerId> = self
            .managers
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > threshold)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            self.lost(id, "missed heartbeats", out);
            out.close.push(id);
        }
        let ack_timeout = self.config.ack_timeout;
        for (id, m) in &mut self.managers {
            for (seq, u) in m.unacked.iter_mut() {
                if now.saturating_duration_since(u.sent) > ack_timeout {
                    u.sent = now;
                    let tasks: Vec<Task> = u
                        .tasks
                        .iter()
                        .filter_map(|t| self.tasks.get(t))
                        .filter(|e| matches!(e.place, Place::InFlight(x) if x == *id))
                        .map(|e| e.task.clone())
                        .collect();
                    out.to_managers
                        .push((*id, InterchangeMsg::Tasks { seq: *seq, tasks }));
                }
            }
        }
    }

    /// Cancels tasks still queued here; tasks already at a manager are asked to stop there.
    pub fn cancel(&mut self, ids: &[TaskId], out: &mut Outbox) {
        let mut at: HashMap<ManagerId, Vec<TaskId>> = HashMap::default();
        for id in ids {
            match self.tasks.get(id).map(|e| &e.place) {
                Some(Place::Queued) => {
                    self.tasks.remove(id);
                    self.queued -= 1;
                    self.counters.failed += 1;
                    out.results.push(TaskResult::failure(
                        *id,
                        FailureKind::Cancelled,
                        "cancelled while queued",
                    ));
                }
                Some(Place::InFlight(m)) => at.entry(*m).or_default().push(*id),
                None => {}
            }
        }
        for (m, tasks) in at {
            out.to_managers.push((m, InterchangeMsg::Cancel { tasks }));
        }
    }

    /// Fails every queued task as `endpoint_unavailable` with `reason` (nothing can run them).
    pub fn fail_queued(&mut self, reason: &str, out: &mut Outbox) {
        let queued: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, e)| matches!(e.place, Place::Queued))
            .map(|(id, _)| id)
            .collect();
        for id in queued {
            self.tasks.remove(&id);
            self.queued -= 1;
            self.counters.failed += 1;
            out.results.push(TaskResult::failure(
                id,
                FailureKind::EndpointUnavailable,
                reason,
            ));
        }
        for q in &mut self.queues {
            q.clear();
        }
    }

    /// What this dispatcher could take now, for a [`Sharded`] one's hand-out.
    pub(crate) fn load(&self) -> ShardLoad {
        ShardLoad {
            idle_workers: self.idle_workers,
            workers: self.workers,
            free_slots: self.free_slots,
            queued: self.queued,
        }
    }

    /// Takes up to `most` queued tasks out, oldest first (a [`Sharded`] dispatcher hands them
    /// to another shard); the others stay queued, in their order.
    pub(crate) fn take_queued(&mut self, most: usize) -> Vec<Task> {
        let mut tasks = Vec::new();
        while tasks.len() < most && self.queued > 0 {
            // The queue whose first live task is the oldest (`front` drops stale ids).
            let Some((kind, _)) = (0..self.queues.len() as u32)
                .map(|k| (k, self.front(k)))
                .filter(|(_, f)| *f != u64::MAX)
                .min_by_key(|(_, f)| *f)
            else {
                break;
            };
            let Some(id) = self.queues[kind as usize].pop_front() else {
                break;
            };
            if let Some(e) = self.tasks.remove(&id) {
                self.queued -= 1;
                tasks.push(e.task);
            }
        }
        tasks
    }

    /// A status line per manager.
    pub fn manager_status(&self) -> Vec<ManagerStatus> {
        self.managers
            .iter()
            .map(|(id, m)| ManagerStatus {
                manager_id: *id,
                block_id: m.reg.block_id.clone(),
                hostname: m.reg.hostname.clone(),
                workers: m.reg.workers,
                in_flight: m.in_flight as u32,
                draining: m.draining,
                simulated: m.reg.simulated,
                capacity: m.capacity.clone(),
                counters: m.counters,
            })
            .collect()
    }

    /// Managers of one block.
    pub fn managers_of_block(&self, block: &BlockId) -> Vec<ManagerId> {
        self.managers
            .iter()
            .filter(|(_, m)| &m.reg.block_id == block)
            .map(|(id, _)| *id)
            .collect()
    }
}
