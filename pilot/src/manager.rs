//! The manager: one per node. It registers with the interchange, keeps its workers fed, returns
//! results in batches, heartbeats, and drains on request or on SIGTERM.
//!
//! Like the interchange, it is one thread that owns all state and reads a channel of [`Event`]s:
//! from the link's receiving thread, from one reading thread per worker process, and from the
//! signal handler. Simulated workers are timers in this same thread, so a single process can host
//! thousands of managers with tens of thousands of workers.

pub use crate::event::Event;
use crate::exec;
use crate::link::{Link, LinkError};
use fxr_protocol::{
    BlockId, Builtin, Capacity, FailureKind, FromWorker, Function, InterchangeMsg, ManagerId,
    ManagerMsg, Outcome, Registration, Task, TaskId, TaskResult, ToWorker,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How workers run.
#[derive(Clone, Debug)]
pub enum WorkerMode {
    /// Real processes started with this command line (the `fxr worker` subcommand).
    Processes { command: Vec<String> },
    /// In-process workers: built-ins only, `sleep` and `spin` become timers.
    Simulated,
}

/// One manager's settings.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub interchange: String,
    pub secret: String,
    pub manager_id: ManagerId,
    pub block_id: BlockId,
    pub rank: u32,
    pub block_size: u32,
    pub workers: u32,
    pub prefetch: u32,
    pub mode: WorkerMode,
    /// Heartbeat period until the interchange says otherwise.
    pub heartbeat_period: Duration,
    /// Exit when the interchange has been unreachable this long.
    pub give_up_after: Duration,
}

/// Why a manager stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the interchange refused this manager: {0}")]
    Refused(String),
    #[error("the interchange was unreachable for {0:?}")]
    InterchangeLost(Duration),
}

/// A worker's batching depth: tasks whose recent mean run time is under this go to a worker
/// many at a time; longer ones one at a time, so no task waits behind a long one.
const SHORT_TASK_US: f64 = 500.0;
const MAX_WORKER_BATCH: usize = 64;
const MAX_RESULT_BATCH: usize = 4096;

#[derive(Debug)]
struct Proc {
    child: Child,
    stdin: ChildStdin,
}

#[derive(Debug, Default)]
struct Slot {
    proc: Option<Proc>,
    generation: u64,
    ready: bool,
    /// Tasks given to this worker, in the order it runs them.
    assigned: VecDeque<TaskId>,
    started: Option<Instant>,
    quick_deaths: u32,
    respawn_at: Option<Instant>,
}

/// A handle to ask a running manager to drain and exit.
#[derive(Clone, Debug)]
pub struct ManagerHandle(Sender<Event>);

impl ManagerHandle {
    pub fn terminate(&self) {
        let _ = self.0.send(Event::Terminate);
    }
}

/// A manager, ready to run.
#[derive(Debug)]
pub struct Manager {
    cfg: ManagerConfig,
    tx: Sender<Event>,
    rx: Receiver<Event>,
}

struct State {
    cfg: ManagerConfig,
    tx: Sender<Event>,
    link: Link,
    connected: bool,
    registered: bool,
    last_heard: Instant,
    heartbeat_period: Duration,
    queue: VecDeque<Task>,
    known: HashSet<TaskId>,
    results: Vec<TaskResult>,
    acks: Vec<u64>,
    slots: Vec<Slot>,
    /// Tasks handed to worker processes, kept so they can be re-queued if the worker dies.
    inflight_copy: HashMap<TaskId, Task>,
    timers: BinaryHeap<Reverse<(Instant, TaskId, u64)>>,
    sim_running: usize,
    ewma_us: f64,
    seen_results: bool,
    draining: bool,
}

impl Manager {
    pub fn new(cfg: ManagerConfig) -> Manager {
        let (tx, rx) = mpsc::channel();
        Manager { cfg, tx, rx }
    }

    pub fn handle(&self) -> ManagerHandle {
        ManagerHandle(self.tx.clone())
    }

    /// Runs until drained, refused, or the interchange is gone for too long.
    pub fn run(self) -> Result<(), ManagerError> {
        let Manager { cfg, tx, rx } = self;
        let link = Link::dial(&cfg.interchange, tx.clone())?;
        let n = cfg.workers as usize;
        let mut st = State {
            heartbeat_period: cfg.heartbeat_period,
            cfg,
            tx,
            link,
            connected: false,
            registered: false,
            last_heard: Instant::now(),
            queue: VecDeque::new(),
            known: HashSet::new(),
            results: Vec::new(),
            acks: Vec::new(),
            slots: (0..n).map(|_| Slot::default()).collect(),
            inflight_copy: HashMap::new(),
            timers: BinaryHeap::new(),
            sim_running: 0,
            ewma_us: 0.0,
            seen_results: false,
            draining: false,
        };
        if matches!(st.cfg.mode, WorkerMode::Processes { .. }) {
            for i in 0..n {
                st.spawn(i);
            }
        }
        let result = st.run(&rx);
        st.stop_workers();
        st.link.close();
        result
    }
}

impl State {
    fn run(&mut self, rx: &Receiver<Event>) -> Result<(), ManagerError> {
        let mut next_heartbeat = Instant::now() + self.heartbeat_period;
        let mut drained_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut deadline = next_heartbeat;
            if let Some(Reverse((t, _, _))) = self.timers.peek() {
                deadline = deadline.min(*t);
            }
            for s in &self.slots {
                if let Some(t) = s.respawn_at {
                    deadline = deadline.min(t);
                }
            }
            match rx.recv_timeout(deadline.saturating_duration_since(now)) {
                Ok(ev) => self.handle(ev)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            for _ in 0..10_000 {
                match rx.try_recv() {
                    Ok(ev) => self.handle(ev)?,
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            self.fire_timers(now);
            self.respawn_due(now);
            if !self.draining {
                self.assign();
            }
            self.flush();
            if now >= next_heartbeat {
                next_heartbeat = now + self.heartbeat_period;
                if self.registered {
                    let capacity = self.capacity();
                    self.link.send(&ManagerMsg::Heartbeat { capacity });
                }
                let silent = now.saturating_duration_since(self.last_heard);
                if silent > self.cfg.give_up_after {
                    return Err(ManagerError::InterchangeLost(silent));
                }
            }
            // Draining with the interchange gone: what is left cannot be delivered (the
            // interchange has re-queued it), so there is nothing to wait for.
            if self.draining && self.busy() == 0 && (self.results.is_empty() || !self.connected) {
                match drained_at {
                    None => {
                        drained_at = Some(now);
                        if self.connected {
                            self.link.send(&ManagerMsg::Drained);
                        } else {
                            return Ok(());
                        }
                    }
                    // Give the interchange a moment to take the last messages and close the pipe.
                    Some(t)
                        if now.saturating_duration_since(t) > Duration::from_secs(2)
                            || !self.connected =>
                    {
                        return Ok(())
                    }
                    Some(_) => {
                        next_heartbeat = next_heartbeat.min(now + Duration::from_millis(100))
                    }
                }
            }
        }
    }

    fn busy(&self) -> usize {
        self.sim_running + self.slots.iter().map(|s| s.assigned.len()).sum::<usize>()
    }

    fn handle(&mut self, ev: Event) -> Result<(), ManagerError> {
        match ev {
            Event::LinkUp => {
                self.connected = true;
                self.last_heard = Instant::now();
                let reg = self.registration();
                tracing::info!(manager_id = %self.cfg.manager_id, url = %self.cfg.interchange, "connected; registering");
                self.link.send(&ManagerMsg::Register(reg));
            }
            Event::LinkDown => {
                self.connected = false;
                self.registered = false;
                if self.draining {
                    tracing::info!(manager_id = %self.cfg.manager_id, "interchange closed the connection after the drain");
                } else {
                    tracing::warn!(manager_id = %self.cfg.manager_id, "lost the interchange; reconnecting");
                }
            }
            Event::FromInterchange(msg) => {
                self.last_heard = Instant::now();
                self.on_interchange_message(msg)?;
            }
            Event::Worker {
                slot,
                generation,
                msg,
            } => self.on_worker_message(slot, generation, msg),
            Event::WorkerGone { slot, generation } => self.worker_gone(slot, generation),
            Event::Wake => {}
            Event::Terminate => {
                tracing::info!(manager_id = %self.cfg.manager_id, "terminating: draining");
                self.start_drain();
            }
        }
        Ok(())
    }

    fn registration(&self) -> Registration {
        Registration {
            manager_id: self.cfg.manager_id,
            block_id: self.cfg.block_id.clone(),
            rank: self.cfg.rank,
            block_size: self.cfg.block_size,
            hostname: hostname(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: memory_bytes(),
            workers: self.cfg.workers,
            prefetch: self.cfg.prefetch,
            containers: vec![String::new()],
            version: fxr_protocol::VERSION.to_string(),
            secret: self.cfg.secret.clone(),
            simulated: matches!(self.cfg.mode, WorkerMode::Simulated),
        }
    }

    fn on_interchange_message(&mut self, msg: InterchangeMsg) -> Result<(), ManagerError> {
        match msg {
            InterchangeMsg::Welcome {
                heartbeat_period_ms,
                ..
            } => {
                self.registered = true;
                self.heartbeat_period = Duration::from_millis(heartbeat_period_ms.max(10));
            }
            InterchangeMsg::Refused { reason } => return Err(ManagerError::Refused(reason)),
            InterchangeMsg::Tasks { seq, tasks } => {
                self.acks.push(seq);
                for t in tasks {
                    if self.draining {
                        // Arrived after the drain began: give it straight back.
                        self.link.send(&ManagerMsg::Returned { tasks: vec![t.id] });
                    } else if self.known.insert(t.id) {
                        self.queue.push_back(t);
                    }
                }
            }
            InterchangeMsg::Drain => self.start_drain(),
            InterchangeMsg::Heartbeat => {}
            InterchangeMsg::Cancel { tasks } => {
                let cancel: HashSet<TaskId> = tasks.into_iter().collect();
                let before = self.queue.len();
                let mut kept = VecDeque::with_capacity(before);
                for t in self.queue.drain(..) {
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
                self.queue = kept;
            }
        }
        Ok(())
    }

    fn start_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        let back: Vec<TaskId> = self.queue.drain(..).map(|t| t.id).collect();
        for id in &back {
            self.known.remove(id);
        }
        if !back.is_empty() && self.connected {
            self.link.send(&ManagerMsg::Returned { tasks: back });
        }
    }

    fn capacity(&self) -> Vec<Capacity> {
        let workers = self.cfg.workers as usize;
        let slots = workers + self.cfg.prefetch as usize;
        let held = self.queue.len() + self.busy();
        let (warm, unused) = match self.cfg.mode {
            WorkerMode::Simulated => (workers.saturating_sub(self.sim_running), 0),
            WorkerMode::Processes { .. } => (
                self.slots
                    .iter()
                    .filter(|s| s.ready && s.assigned.is_empty())
                    .count(),
                self.slots.iter().filter(|s| s.proc.is_none()).count(),
            ),
        };
        vec![Capacity {
            container: String::new(),
            free: slots.saturating_sub(held) as u32,
            warm: warm as u32,
            unused: unused as u32,
        }]
    }

    fn flush(&mut self) {
        if !self.connected {
            return;
        }
        for seq in self.acks.drain(..) {
            self.link.send(&ManagerMsg::Ack { seq });
        }
        while !self.results.is_empty() {
            let n = self.results.len().min(MAX_RESULT_BATCH);
            let mut bytes = 0;
            let mut cut = 0;
            while cut < n && (cut == 0 || bytes < 4 * 1024 * 1024) {
                bytes += self.results[cut].approx_size();
                cut += 1;
            }
            let rest = self.results.split_off(cut);
            let results = std::mem::replace(&mut self.results, rest);
            let capacity = self.capacity();
            self.link.send(&ManagerMsg::Results { results, capacity });
        }
    }

    fn finish(&mut self, r: TaskResult) {
        self.known.remove(&r.id);
        self.inflight_copy.remove(&r.id);
        self.ewma_us = if self.seen_results {
            0.9 * self.ewma_us + 0.1 * r.run_us as f64
        } else {
            r.run_us as f64
        };
        self.seen_results = true;
        self.results.push(r);
    }

    // ---- simulated workers ----

    fn assign(&mut self) {
        match self.cfg.mode {
            WorkerMode::Simulated => self.assign_simulated(),
            WorkerMode::Processes { .. } => self.assign_processes(),
        }
    }

    fn assign_simulated(&mut self) {
        let now = Instant::now();
        while self.sim_running < self.cfg.workers as usize {
            let Some(task) = self.queue.pop_front() else {
                return;
            };
            let delay = match &task.function {
                Function::Builtin(Builtin::Sleep | Builtin::Spin) => {
                    match exec::millis_arg(&task.args) {
                        Ok(ms) => Some(ms),
                        Err(e) => {
                            self.finish(TaskResult::failure(
                                task.id,
                                FailureKind::FunctionError,
                                e,
                            ));
                            None
                        }
                    }
                }
                Function::Builtin(b) => {
                    let outcome = exec::run_builtin(*b, &task.args);
                    self.finish(TaskResult {
                        id: task.id,
                        outcome,
                        run_us: 0,
                    });
                    None
                }
                Function::Shell(_) | Function::Mpi(_) => {
                    self.finish(TaskResult::failure(
                        task.id,
                        FailureKind::Rejected,
                        "simulated workers run builtin functions only",
                    ));
                    None
                }
            };
            if let Some(ms) = delay {
                self.sim_running += 1;
                self.timers
                    .push(Reverse((now + Duration::from_millis(ms), task.id, ms)));
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, _, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, id, ms))) = self.timers.pop() else {
                break;
            };
            self.sim_running -= 1;
            self.finish(TaskResult {
                id,
                outcome: Outcome::Success(b"null".to_vec()),
                run_us: ms * 1000,
            });
        }
    }

    // ---- worker processes ----

    fn spawn(&mut self, i: usize) {
        let WorkerMode::Processes { command } = &self.cfg.mode else {
            return;
        };
        let Some((prog, args)) = command.split_first() else {
            return;
        };
        let slot = &mut self.slots[i];
        slot.generation += 1;
        slot.ready = false;
        slot.respawn_at = None;
        let generation = slot.generation;
        let mut child = match Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(slot = i, error = %e, "cannot start a worker");
                slot.quick_deaths += 1;
                slot.respawn_at = Some(Instant::now() + backoff(slot.quick_deaths));
                return;
            }
        };
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return;
        };
        let tx = self.tx.clone();
        let reader = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                let mut r = BufReader::with_capacity(1 << 16, stdout);
                let mut buf = Vec::new();
                while let Ok(Some(msg)) = fxr_protocol::read_frame::<FromWorker>(&mut r, &mut buf) {
                    if tx
                        .send(Event::Worker {
                            slot: i,
                            generation,
                            msg,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = tx.send(Event::WorkerGone {
                    slot: i,
                    generation,
                });
            });
        if reader.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        slot.proc = Some(Proc { child, stdin });
        slot.started = Some(Instant::now());
    }

    fn on_worker_message(&mut self, i: usize, generation: u64, msg: FromWorker) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        match msg {
            FromWorker::Ready { pid } => {
                tracing::debug!(slot = i, pid, "worker ready");
                slot.ready = true;
            }
            FromWorker::Results { results } => {
                for r in results {
                    let slot = &mut self.slots[i];
                    if slot.assigned.front() == Some(&r.id) {
                        slot.assigned.pop_front();
                    } else {
                        slot.assigned.retain(|t| *t != r.id);
                    }
                    if slot.assigned.is_empty() {
                        slot.quick_deaths = 0;
                    }
                    self.finish(r);
                }
            }
        }
    }

    fn worker_gone(&mut self, i: usize, generation: u64) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        if let Some(mut p) = slot.proc.take() {
            let status = p.child.wait();
            tracing::warn!(slot = i, ?status, "worker exited");
        }
        slot.ready = false;
        let lived = slot.started.map_or(Duration::ZERO, |t| t.elapsed());
        slot.quick_deaths = if lived < Duration::from_secs(1) {
            slot.quick_deaths + 1
        } else {
            0
        };
        let mut assigned = std::mem::take(&mut slot.assigned);
        // The first was running; the rest never started and go back to the queue.
        let running = assigned.pop_front();
        let retry_at = Instant::now() + backoff(slot.quick_deaths);
        slot.respawn_at = Some(retry_at);
        for id in assigned.into_iter().rev() {
            if let Some(task) = self.take_known(id) {
                self.queue.push_front(task);
            }
        }
        if let Some(id) = running {
            self.finish(TaskResult::failure(
                id,
                FailureKind::WorkerLost,
                format!("worker {i} died while running it"),
            ));
        }
    }

    fn take_known(&mut self, id: TaskId) -> Option<Task> {
        self.inflight_copy.remove(&id)
    }

    fn respawn_due(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        let due: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.proc.is_none() && s.respawn_at.is_some_and(|t| t <= now))
            .map(|(i, _)| i)
            .collect();
        for i in due {
            self.spawn(i);
        }
    }

    fn assign_processes(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let idle: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.ready && s.assigned.is_empty() && s.proc.is_some())
            .map(|(i, _)| i)
            .collect();
        if idle.is_empty() {
            return;
        }
        let short = self.seen_results && self.ewma_us < SHORT_TASK_US;
        let per_worker = if short {
            self.queue
                .len()
                .div_ceil(idle.len())
                .clamp(1, MAX_WORKER_BATCH)
        } else {
            1
        };
        let mut frame = Vec::new();
        for i in idle {
            if self.queue.is_empty() {
                break;
            }
            let n = per_worker.min(self.queue.len());
            let tasks: Vec<Task> = self.queue.drain(..n).collect();
            frame.clear();
            let msg = ToWorker::Run { tasks };
            if fxr_protocol::encode_into(&mut frame, &msg).is_err() {
                continue;
            }
            let ToWorker::Run { tasks } = msg else {
                continue;
            };
            let slot = &mut self.slots[i];
            let Some(p) = slot.proc.as_mut() else {
                continue;
            };
            if p.stdin
                .write_all(&frame)
                .and_then(|()| p.stdin.flush())
                .is_err()
            {
                // The worker is dying; its reader will report it. Keep the tasks.
                for t in tasks.into_iter().rev() {
                    self.queue.push_front(t);
                }
                continue;
            }
            for t in tasks {
                slot.assigned.push_back(t.id);
                self.inflight_copy.insert(t.id, t);
            }
        }
    }

    fn stop_workers(&mut self) {
        for slot in &mut self.slots {
            if let Some(mut p) = slot.proc.take() {
                let mut frame = Vec::new();
                if fxr_protocol::encode_into(&mut frame, &ToWorker::Stop).is_ok() {
                    let _ = p.stdin.write_all(&frame);
                }
                drop(p.stdin);
                let deadline = Instant::now() + Duration::from_secs(2);
                loop {
                    match p.child.try_wait() {
                        Ok(Some(_)) => break,
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        _ => {
                            let _ = p.child.kill();
                            let _ = p.child.wait();
                            break;
                        }
                    }
                }
            }
        }
    }
}

fn backoff(quick_deaths: u32) -> Duration {
    if quick_deaths == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(100u64 << quick_deaths.min(7)).min(Duration::from_secs(10))
    }
}

/// This node's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
