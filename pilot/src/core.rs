//! The manager's rules, without I/O: events in, actions out, time passed in.
//!
//! The core owns the task queues (one per container type), the worker slots and what each
//! holds, and decides which worker runs what, when a worker of which type starts, retires or is
//! evicted, and what goes to the interchange. The loop in [`crate::manager`] feeds it the
//! [`Event`]s its link, its [`crate::pool::WorkerPool`] and signals report, and carries out the
//! [`Action`]s it returns. Every rule here is unit-tested without processes or sockets.
//!
//! Workers per container type, as funcX's manager keeps them:
//! - a slot is empty, starting, idle or busy, and belongs to one type while it is not empty;
//! - each type with demand (queued plus running tasks) gets a share of the slots in proportion
//!   to that demand, and starts workers in empty slots up to its share (a **cold start**);
//! - when no slot is empty and a type is under its share, an idle worker of a type over its share
//!   (or with no demand) is stopped and its slot restarted in the wanted type (a **container
//!   switch**); a type with no worker at all always gets at least one, so no type starves;
//! - an idle worker past `max_idle` is stopped;
//! - a container worker that dies before it is ready fails the queued tasks of its type with
//!   `container_error` and the runtime's message, and its type waits an exponential backoff
//!   (tasks of that type arriving meanwhile fail at once with the same message).
//!
//! Invariants (checked by `check_invariants` in the tests): a task id is in exactly one queue or
//! one slot's `assigned`; only busy slots have assigned tasks; every idle slot is in its type's
//! idle list and nothing else is; the count of workers per type equals the slots of that type.

pub use crate::event::Event;
use fxr_protocol::ids::IdHash;
use fxr_protocol::{
    Capacity, ContainerSpec, FailureKind, InterchangeMsg, ManagerMsg, Registration, Task, TaskId,
    TaskResult, WorkerCounters, WorkerSettings,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// A worker's batching depth: tasks whose recent mean run time is under this go to a worker
/// many at a time; longer ones one at a time, so no task waits behind a long one.
const SHORT_TASK_US: f64 = 500.0;
const MAX_WORKER_BATCH: usize = 64;
/// The index of the bare node's type in [`Core::kinds`].
const BARE: usize = 0;
const MAX_RESULT_BATCH: usize = 4096;
const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;
/// Most Python functions whose source a manager keeps.
const MAX_PYTHON_FUNCTIONS: usize = 100_000;
/// How long an acknowledgement may wait for results to ride with: the interchange keeps a
/// window of unacknowledged batches per manager and resends after seconds, so a few
/// milliseconds cost nothing and spare a message per batch.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// How long a draining manager waits for the interchange to take its last messages.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What the core wants done.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send to the interchange.
    Send(ManagerMsg),
    /// Start a worker in `slot`, in `container` (the bare node when `None`).
    Start {
        slot: usize,
        generation: u64,
        container: Option<ContainerSpec>,
    },
    /// Give the worker in `slot` the last `tasks` tasks assigned to it: the core keeps them
    /// (to queue again those not started if the worker dies) and lends them with
    /// [`Core::given`], so no task is copied to be handed over.
    Run {
        slot: usize,
        generation: u64,
        tasks: usize,
    },
    /// Stop the worker in `slot` (it is forgotten: a later report of its end is ignored).
    Stop { slot: usize, generation: u64 },
    /// How workers start, as the interchange said.
    Configure(WorkerSettings),
    /// Seal and open every message after the coming `Welcome` with these keys (the endpoint
    /// asked for encryption).
    Secure {
        send_key: [u8; 32],
        recv_key: [u8; 32],
    },
}

/// Why the manager's loop should end.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Drained, or the interchange closed the link after the drain.
    Done,
    Refused(String),
    /// The interchange was silent this long.
    Lost(Duration),
}

/// The core's settings.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// What the manager registers with (its proof is filled in per connection).
    pub registration: Registration,
    /// The endpoint's secret: proofs are made with it; it is never sent.
    pub secret: String,
    pub heartbeat_period: Duration,
    pub give_up_after: Duration,
    /// Start a worker on the bare node in every slot at once, so the first tasks find them
    /// ready. Idle bare workers count as unused slots: a container type takes their slot
    /// without it counting as a switch.
    pub prestart: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Empty,
    Starting,
    Idle,
    Busy,
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    generation: u64,
    /// The type (an index into [`Core::kinds`]) while not empty.
    kind: usize,
    /// Tasks given to the worker, the running one first: kept so that those not started can
    /// be queued again if the worker dies.
    assigned: VecDeque<Task>,
    /// When the worker started, or last became idle.
    since: Instant,
}

/// Tasks and workers of one container type.
#[derive(Debug)]
struct Kind {
    /// [`ContainerSpec::key`], `""` for the bare node.
    key: String,
    spec: Option<ContainerSpec>,
    queue: VecDeque<Task>,
    /// Tasks held by its workers.
    running: usize,
    /// Slots of this type (starting, idle or busy).
    workers: usize,
    starting: usize,
    /// Idle slots, the most recently idle last.
    idle: Vec<usize>,
    /// Starts that died before ready (or soon after), in a row.
    failures: u32,
    blocked_until: Option<Instant>,
    last_error: Option<String>,
}

impl Kind {
    fn new(spec: Option<ContainerSpec>) -> Kind {
        Kind {
            key: spec.as_ref().map(ContainerSpec::key).unwrap_or_default(),
            spec,
            queue: VecDeque::new(),
            running: 0,
            workers: 0,
            starting: 0,
            idle: Vec::new(),
            failures: 0,
            blocked_until: None,
            last_error: None,
        }
    }

    fn demand(&self) -> usize {
        self.queue.len() + self.running
    }
}

/// The manager core. See the module documentation.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    settings: WorkerSettings,
    connected: bool,
    registered: bool,
    last_heard: Instant,
    heartbeat_period: Duration,
    next_heartbeat: Instant,
    /// Container types in the order they first appeared; the bare node is always the first.
    /// Slots name their type by its index here, so no task or result looks a type up by name.
    kinds: Vec<Kind>,
    queued: usize,
    known: HashSet<TaskId, IdHash>,
    /// Tasks handed to workers (held in their slots).
    assigned: usize,
    slots: Vec<Slot>,
    empty: Vec<usize>,
    results: Vec<TaskResult>,
    acks: Vec<u64>,
    /// When the oldest acknowledgement in `acks` goes on its own if no results take it.
    acks_due: Option<Instant>,
    ewma_us: f64,
    seen_results: bool,
    draining: bool,
    /// The drain is the endpoint's shutdown, not this manager's alone.
    endpoint_stopping: bool,
    /// Python sources by function id: the interchange sends each once per connection.
    python_sources: HashMap<String, std::sync::Arc<str>>,
    drained_at: Option<Instant>,
    counters: WorkerCounters,
    prestarted: bool,
    /// This connection's nonce, sent in `Hello` and answered by the interchange's `Challenge`.
    hello: Option<fxr_protocol::auth::Nonce>,
}

impl Core {
    pub fn new(cfg: CoreConfig, now: Instant) -> Core {
        let n = cfg.registration.workers as usize;
        Core {
            heartbeat_period: cfg.heartbeat_period,
            next_heartbeat: now + cfg.heartbeat_period,
            cfg,
            settings: WorkerSettings::default(),
            connected: false,
            registered: false,
            last_heard: now,
            kinds: vec![Kind::new(None)],
            queued: 0,
            known: HashSet::default(),
            assigned: 0,
            slots: (0..n)
                .map(|_| Slot {
                    state: SlotState::Empty,
                    generation: 0,
                    kind: BARE,
                    assigned: VecDeque::new(),
                    since: now,
                })
                .collect(),
            empty: (0..n).rev().collect(),
            results: Vec::new(),
            acks: Vec::new(),
            acks_due: None,
            ewma_us: 0.0,
            seen_results: false,
            draining: false,
            endpoint_stopping: false,
            python_sources: HashMap::new(),
            drained_at: None,
            counters: WorkerCounters::default(),
            prestarted: false,
            hello: None,
        }
    }

    /// Cold starts, container switches and container errors so far.
    pub fn counters(&self) -> WorkerCounters {
        self.counters
    }

    /// The last `n` tasks assigned to the worker in `slot` (what an [`Action::Run`] hands
    /// it); none when the slot holds another worker by now.
    pub fn given(&mut self, slot: usize, generation: u64, n: usize) -> &[Task] {
        match self.slots.get_mut(slot) {
            Some(s) if s.generation == generation && s.assigned.len() >= n => {
                let all = s.assigned.make_contiguous();
                &all[all.len() - n..]
            }
            _ => &[],
        }
    }

    /// Tasks held: queued here or at a worker.
    pub fn held(&self) -> usize {
        self.queued + self.assigned
    }

    /// The earliest time [`Core::poll`] has something to do without a new event.
    pub fn next_deadline(&self) -> Instant {
        let mut d = self.next_heartbeat;
        if let Some(t) = self.acks_due {
            d = d.min(t);
        }
        if self.settings.max_idle_ms > 0 {
            let idle = Duration::from_millis(self.settings.max_idle_ms);
            for k in &self.kinds {
                if let Some(s) = k.idle.first() {
                    d = d.min(self.slots[*s].since + idle);
                }
            }
        }
        for k in &self.kinds {
            if let (Some(t), false) = (k.blocked_until, k.queue.is_empty()) {
                d = d.min(t);
            }
        }
        d
    }

    /// One event.
    pub fn handle(&mut self, ev: Event, now: Instant, out: &mut Vec<Action>) -> Option<Exit> {
        match ev {
            Event::LinkUp { nonce } => {
                self.connected = true;
                self.last_heard = now;
                self.hello = Some(nonce);
                out.push(Action::Send(ManagerMsg::Hello { nonce }));
            }
            Event::LinkDown => {
                self.connected = false;
                self.registered = false;
                self.hello = None;
                // The interchange takes back what the lost connection held; its batches need
                // no acknowledgement.
                self.acks.clear();
                self.acks_due = None;
            }
            Event::FromInterchange(msg) => {
                self.last_heard = now;
                let exit = self.on_interchange(msg, out);
                if !self.acks.is_empty() {
                    self.acks_due.get_or_insert(now + ACK_DELAY);
                }
                return exit;
            }
            Event::Worker {
                slot,
                generation,
                msg,
            } => self.on_worker(slot, generation, msg, now),
            Event::WorkerGone {
                slot,
                generation,
                reason,
            } => self.worker_gone(slot, generation, &reason, now),
            Event::Terminate => self.start_drain(out),
        }
        None
    }

    /// Periodic and follow-up work after events: start, assign, retire, flush, heartbeat, and
    /// the end of a drain.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Action>) -> Option<Exit> {
        self.unblock(now);
        if self.cfg.prestart && !self.prestarted {
            self.prestarted = true;
            while let Some(slot) = self.empty.pop() {
                self.start(slot, BARE, now, out);
            }
        }
        if !self.draining {
            self.rebalance(now, out);
            self.assign(out);
        }
        self.retire_idle(now, out);
        if self.flush(now, out) && !self.draining {
            // Results carry what a heartbeat would (capacity, counters): the next one can wait.
            self.next_heartbeat = now + self.heartbeat_period;
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.heartbeat_period;
            if self.registered {
                out.push(Action::Send(ManagerMsg::Heartbeat {
                    capacity: self.capacity(),
                    counters: self.counters,
                }));
            }
        }
        let silent = now.saturating_duration_since(self.last_heard);
        if silent > self.cfg.give_up_after {
            return Some(Exit::Lost(silent));
        }
        // Draining with the interchange gone: what is left cannot be delivered (the
        // interchange has re-queued it), so there is nothing to wait for.
        if self.draining && self.assigned == 0 && (self.results.is_empty() || !self.connected) {
            match self.drained_at {
                None if self.registered => {
                    self.drained_at = Some(now);
                    out.push(Action::Send(ManagerMsg::Drained));
                    self.next_heartbeat = self.next_heartbeat.min(now + DRAIN_GRACE);
                }
                None => return Some(Exit::Done),
                Some(t) if now.saturating_duration_since(t) >= DRAIN_GRACE || !self.connected => {
                    return Some(Exit::Done)
                }
                Some(_) => {}
            }
        }
        None
    }

    fn on_interchange(&mut self, msg: InterchangeMsg, out: &mut Vec<Action>) -> Option<Exit> {
        match msg {
            InterchangeMsg::Challenge {
                nonce,
                proof,
                encrypt,
            } => {
                use fxr_protocol::auth;
                // A challenge this connection did not ask for is ignored.
                let mine = self.hello.take()?;
                if !auth::same(
                    &proof,
                    &auth::interchange_proof(&self.cfg.secret, &mine, &nonce),
                ) {
                    return Some(Exit::Refused(
                        "the interchange did not prove that it holds the endpoint's secret \
                         (a wrong address, or someone else's listener); nothing was sent to it"
                            .into(),
                    ));
                }
                if encrypt {
                    let (m2i, i2m) = auth::session_keys(&self.cfg.secret, &mine, &nonce);
                    out.push(Action::Secure {
                        send_key: m2i,
                        recv_key: i2m,
                    });
                }
                let mut reg = self.cfg.registration.clone();
                reg.proof = auth::manager_proof(&self.cfg.secret, &nonce, &mine);
                out.push(Action::Send(ManagerMsg::Register(reg)));
            }
            InterchangeMsg::Welcome {
                heartbeat_period_ms,
                workers,
                ..
            } => {
                self.registered = true;
                self.heartbeat_period = Duration::from_millis(heartbeat_period_ms.max(10));
                self.settings = workers.clone();
                out.push(Action::Configure(workers));
            }
            InterchangeMsg::Refused { reason } => return Some(Exit::Refused(reason)),
            InterchangeMsg::Tasks { seq, tasks } => {
                self.acks.push(seq);
                for mut t in tasks {
                    if self.draining {
                        // Arrived after the drain began: give it straight back.
                        out.push(Action::Send(ManagerMsg::Returned { tasks: vec![t.id] }));
                    } else if self.known.contains(&t.id) {
                    } else if let Err(e) = fxr_protocol::PythonSpec::fill_known(
                        &mut t,
                        &mut self.python_sources,
                        MAX_PYTHON_FUNCTIONS,
                    ) {
                        self.results
                            .push(TaskResult::failure(t.id, FailureKind::Rejected, e));
                    } else {
                        self.known.insert(t.id);
                        self.enqueue(t, false);
                    }
                }
            }
            InterchangeMsg::Drain { endpoint_stopping } => {
                self.endpoint_stopping |= endpoint_stopping;
                self.start_drain(out)
            }
            InterchangeMsg::Heartbeat => {}
            InterchangeMsg::Cancel { tasks } => {
                let cancel: HashSet<TaskId, IdHash> = tasks.into_iter().collect();
                for k in &mut self.kinds {
                    let before = k.queue.len();
                    let mut kept = VecDeque::with_capacity(before);
                    for t in k.queue.drain(..) {
                        if cancel.contains(&t.id) {
                            self.known.remove(&t.id);
                            self.results.push(TaskResult::failure(
                                t.id,
                                FailureKind::Cancelled,
                                "cancelled while queued",
                            ));
                        } else {
                            kept.push_back(t);
                        }
                    }
                    self.queued -= before - kept.len();
                    k.queue = kept;
                }
            }
        }
        None
    }

    fn enqueue(&mut self, t: Task, front: bool) {
        // Most tasks run on the bare node; the few container types are compared field by field.
        let i = match t.container.as_deref() {
            None => BARE,
            Some(c) => match self.kinds.iter().position(|k| k.spec.as_ref() == Some(c)) {
                Some(i) => i,
                None => {
                    self.kinds.push(Kind::new(Some(c.clone())));
                    self.kinds.len() - 1
                }
            },
        };
        let kind = &mut self.kinds[i];
        if front {
            kind.queue.push_front(t);
        } else {
            kind.queue.push_back(t);
        }
        self.queued += 1;
    }

    fn start_drain(&mut self, out: &mut Vec<Action>) {
        if self.draining {
            return;
        }
        self.draining = true;
        let mut back = Vec::new();
        for k in &mut self.kinds {
            back.extend(k.queue.drain(..).map(|t| t.id));
        }
        self.queued = 0;
        for id in &back {
            self.known.remove(id);
        }
        if !back.is_empty() && self.registered {
            out.push(Action::Send(ManagerMsg::Returned { tasks: back }));
        }
    }

    /// Whether the interchange drained this manager because the whole endpoint is stopping.
    pub fn endpoint_stopping(&self) -> bool {
        self.endpoint_stopping
    }

    /// Per type: workers, idle workers; and the manager's room and empty slots.
    pub fn capacity(&self) -> Vec<Capacity> {
        let slots =
            self.cfg.registration.workers as usize + self.cfg.registration.prefetch as usize;
        let free = slots.saturating_sub(self.held()) as u32;
        let unused = (self.empty.len() + self.spare_bare()) as u32;
        // The bare node always reports (its index is 0, so it comes first).
        self.kinds
            .iter()
            .enumerate()
            .filter(|(i, k)| *i == BARE || k.workers > 0 || !k.queue.is_empty())
            .map(|(_, k)| Capacity {
                container: k.key.clone(),
                total: k.workers as u32,
                free,
                warm: k.idle.len() as u32,
                unused,
            })
            .collect()
    }

    /// Sends acknowledgements and results, once the interchange has welcomed this connection:
    /// before that only the handshake may go (it closes a connection that sends anything
    /// else first).
    /// Returns whether results went.
    fn flush(&mut self, now: Instant, out: &mut Vec<Action>) -> bool {
        if !self.registered {
            return false;
        }
        let mut sent = false;
        // Acknowledgements ride with the first results; alone only when none came in time.
        let due = self.acks_due.is_some_and(|t| now >= t) || self.draining;
        if self.results.is_empty() && due {
            for seq in self.acks.drain(..) {
                out.push(Action::Send(ManagerMsg::Ack { seq }));
            }
        }
        while !self.results.is_empty() {
            let n = self.results.len().min(MAX_RESULT_BATCH);
            let mut bytes = 0;
            let mut cut = 0;
            while cut < n && (cut == 0 || bytes < MAX_RESULT_BYTES) {
                bytes += self.results[cut].approx_size();
                cut += 1;
            }
            let rest = self.results.split_off(cut);
            let results = std::mem::replace(&mut self.results, rest);
            out.push(Action::Send(ManagerMsg::Results {
                results,
                capacity: self.capacity(),
                counters: self.counters,
                acks: std::mem::take(&mut self.acks),
            }));
            sent = true;
        }
        if self.acks.is_empty() {
            self.acks_due = None;
        }
        sent
    }

    /// Slots with a worker that must be stopped when the manager exits.
    pub fn live_slots(&self) -> Vec<(usize, u64)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state != SlotState::Empty)
            .map(|(i, s)| (i, s.generation))
            .collect()
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        let mut seen = HashSet::new();
        let mut queued = 0;
        assert!(self.kinds[BARE].spec.is_none() && self.kinds[BARE].key.is_empty());
        for (i, k) in self.kinds.iter().enumerate() {
            assert_eq!(
                self.kinds.iter().filter(|o| o.spec == k.spec).count(),
                1,
                "one entry per type"
            );
            for t in &k.queue {
                assert!(seen.insert(t.id), "task {:?} twice", t.id);
                assert_eq!(
                    t.container.as_deref(),
                    k.spec.as_ref(),
                    "queued by its type"
                );
                queued += 1;
            }
            let slots: Vec<&Slot> = self
                .slots
                .iter()
                .filter(|s| s.kind == i && s.state != SlotState::Empty)
                .collect();
            assert_eq!(k.workers, slots.len(), "workers of `{}`", k.key);
            assert_eq!(
                k.starting,
                slots
                    .iter()
                    .filter(|s| s.state == SlotState::Starting)
                    .count()
            );
            assert_eq!(
                k.idle.len(),
                slots.iter().filter(|s| s.state == SlotState::Idle).count()
            );
            assert_eq!(
                k.running,
                slots.iter().map(|s| s.assigned.len()).sum::<usize>()
            );
        }
        assert_eq!(queued, self.queued);
        for (i, s) in self.slots.iter().enumerate() {
            assert_eq!(
                s.state == SlotState::Empty,
                self.empty.contains(&i),
                "slot {i}"
            );
            assert_eq!(
                s.state == SlotState::Busy,
                !s.assigned.is_empty(),
                "slot {i}"
            );
            for t in &s.assigned {
                assert!(seen.insert(t.id), "task {:?} twice", t.id);
                assert!(self.known.contains(&t.id), "task {:?} not known", t.id);
            }
        }
        assert_eq!(
            self.assigned,
            self.slots.iter().map(|s| s.assigned.len()).sum::<usize>()
        );
    }
}

mod workers;

#[cfg(test)]
mod tests;
