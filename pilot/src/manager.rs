//! The manager: one per node. It registers with the interchange, keeps its workers fed, returns
//! results in batches, heartbeats, and drains on request or on SIGTERM.
//!
//! This is the I/O edge around [`crate::core::Core`]: one thread reads a channel of [`Event`]s
//! (from the link's receive callback, the worker pool's reading threads and the signal handler),
//! passes each to the core with the time, and carries out the core's actions on the link and the
//! [`WorkerPool`]. Simulated workers are timers of a [`SimPool`] in this same thread, so a single
//! process can host thousands of managers with tens of thousands of workers.

use crate::core::{Action, Core, CoreConfig, Exit};
pub use crate::event::Event;
use crate::link::{Link, LinkError};
use crate::node::{hostname, memory_bytes};
use crate::pool::{ColdStart, ProcessPool, SimPool, WorkerPool};
use fxr_protocol::{BlockId, ManagerId, Registration};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// How workers run.
#[derive(Clone, Debug)]
pub enum WorkerMode {
    /// Real processes: `EXE worker`, on the node or inside a container.
    Processes { exe: PathBuf },
    /// In-process workers: built-ins only, `sleep` and `spin` become timers; container workers
    /// take their cold-start cost before they are ready.
    Simulated { cold_start: ColdStart },
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
    /// The node's object store, shared with the workers, and its data service.
    pub store: Option<StoreConfig>,
    /// The Python interpreter workers on the node start (`python3` when `None`).
    pub python: Option<String>,
}

/// Where the node's object store lives and how peers reach it.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub root: PathBuf,
    pub capacity: u64,
    /// Objects older than this are removed; kept until evicted when `None`.
    pub ttl: Option<Duration>,
    /// Results larger than this many bytes are kept here and travel by reference.
    pub inline_max: u64,
    /// Where the data service listens (`tcp://HOST:0` for any port).
    pub listen: String,
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
    #[error("the node's object store: {0}")]
    Store(String),
}

/// A handle to ask a running manager to drain and exit.
#[derive(Clone)]
pub struct ManagerHandle(Sink);

impl std::fmt::Debug for ManagerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManagerHandle")
    }
}

impl ManagerHandle {
    pub(crate) fn from_sink(sink: Sink) -> ManagerHandle {
        ManagerHandle(sink)
    }

    pub fn terminate(&self) {
        (self.0)(Event::Terminate);
    }
}

pub use crate::event::Sink;

fn sink_of(tx: Sender<Event>) -> Sink {
    std::sync::Arc::new(move |e| tx.send(e).is_ok())
}

/// A manager, ready to run.
#[derive(Debug)]
pub struct Manager {
    cfg: ManagerConfig,
    tx: Sender<Event>,
    rx: Receiver<Event>,
}

impl Manager {
    pub fn new(cfg: ManagerConfig) -> Manager {
        let (tx, rx) = mpsc::channel();
        Manager { cfg, tx, rx }
    }

    pub fn handle(&self) -> ManagerHandle {
        ManagerHandle(sink_of(self.tx.clone()))
    }

    /// Runs until drained, refused, or the interchange is gone for too long.
    pub fn run(self) -> Result<(), ManagerError> {
        let Manager { cfg, tx, rx } = self;
        let mut m = Running::start(cfg, sink_of(tx.clone()), tx, true)?;
        let result = loop {
            let now = Instant::now();
            let exit = match rx.recv_timeout(m.deadline().saturating_duration_since(now)) {
                Ok(ev) => m.handle(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break Ok(()),
            };
            let mut exit = exit;
            for _ in 0..10_000 {
                match rx.try_recv() {
                    Ok(ev) => exit = exit.or(m.handle(ev)),
                    Err(_) => break,
                }
            }
            if let Some(r) = m.settle(exit) {
                break r;
            }
        };
        m.finish();
        result
    }
}

/// A manager between events: its core, workers and link, driven by a loop of its own
/// ([`Manager::run`]) or by a group's ([`crate::Fleet`]).
pub(crate) struct Running {
    cfg: ManagerConfig,
    core: Core,
    pool: Box<dyn WorkerPool>,
    link: Link,
    service: Option<crate::data::DataService>,
    tenancy: Option<fxr_datastore::tenancy::Tenancy>,
    actions: Vec<Action>,
    events: Vec<Event>,
}

impl Running {
    /// Opens the store and its data service (when `with_store`), dials the interchange and
    /// makes the core. Events for it go to `sink`; process workers report on `tx`.
    pub(crate) fn start(
        cfg: ManagerConfig,
        sink: Sink,
        tx: Sender<Event>,
        with_store: bool,
    ) -> Result<Running, ManagerError> {
        // The store and its data service first, so workers find them from their first task.
        let mut env = Vec::new();
        if let Some(py) = &cfg.python {
            env.push(("FXR_PYTHON".to_string(), py.clone()));
        }
        let mut tenancy = None;
        let service = match cfg.store.as_ref().filter(|_| with_store) {
            None => None,
            Some(sc) => {
                let limits = fxr_datastore::Limits {
                    capacity: sc.capacity,
                    ttl: sc.ttl,
                };
                let store = fxr_datastore::Store::open(&sc.root, limits)
                    .map_err(|e| ManagerError::Store(e.to_string()))?;
                tenancy = Some(
                    fxr_datastore::tenancy::Tenancy::hold(&sc.root)
                        .map_err(|e| ManagerError::Store(e.to_string()))?,
                );
                let svc = crate::data::DataService::start(store, cfg.secret.clone(), &sc.listen)
                    .map_err(ManagerError::Store)?;
                env.push((
                    "FXR_STORE".to_string(),
                    sc.root.to_string_lossy().into_owned(),
                ));
                env.push(("FXR_STORE_CAPACITY".to_string(), sc.capacity.to_string()));
                env.push((
                    "FXR_RESULT_INLINE_MAX".to_string(),
                    sc.inline_max.to_string(),
                ));
                env.push(("FXR_DATA_NODE".to_string(), svc.url().to_string()));
                env.push(("FXR_SECRET".to_string(), cfg.secret.clone()));
                // `fxr data ...` inside a shell task finds this executable first.
                if let WorkerMode::Processes { exe } = &cfg.mode {
                    if let Some(dir) = exe.parent() {
                        let path = std::env::var_os("PATH").unwrap_or_default();
                        let mut dirs = vec![dir.to_path_buf()];
                        dirs.extend(std::env::split_paths(&path));
                        if let Ok(p) = std::env::join_paths(dirs) {
                            env.push(("PATH".to_string(), p.to_string_lossy().into_owned()));
                        }
                    }
                }
                tracing::info!(store = %sc.root.display(), service = svc.url(), "object store ready");
                Some(svc)
            }
        };
        let link = Link::dial(&cfg.interchange, sink)?;
        let pool: Box<dyn WorkerPool> = match &cfg.mode {
            WorkerMode::Processes { exe } => {
                Box::new(ProcessPool::new(exe.clone(), tx).with_env(env))
            }
            WorkerMode::Simulated { cold_start } => {
                Box::new(SimPool::new(cold_start.clone(), cfg.manager_id.0))
            }
        };
        let core = Core::new(
            CoreConfig {
                registration: registration(&cfg),
                secret: cfg.secret.clone(),
                heartbeat_period: cfg.heartbeat_period,
                give_up_after: cfg.give_up_after,
                prestart: true,
            },
            Instant::now(),
        );
        Ok(Running {
            cfg,
            core,
            pool,
            link,
            service,
            tenancy,
            actions: Vec::new(),
            events: Vec::new(),
        })
    }

    /// When it next has something to do without an event.
    pub(crate) fn deadline(&self) -> Instant {
        let d = self.core.next_deadline();
        match self.pool.next_deadline() {
            Some(t) => d.min(t),
            None => d,
        }
    }

    /// One event; what it asks for is carried out by [`Running::settle`].
    pub(crate) fn handle(&mut self, ev: Event) -> Option<Exit> {
        self.core.handle(ev, Instant::now(), &mut self.actions)
    }

    /// Periodic and follow-up work, then the actions; `Some` when the manager is done.
    pub(crate) fn settle(&mut self, exit: Option<Exit>) -> Option<Result<(), ManagerError>> {
        let now = Instant::now();
        let mut exit = exit;
        self.pool.poll(now, &mut self.events);
        for ev in self.events.drain(..) {
            exit = exit.or(self.core.handle(ev, now, &mut self.actions));
        }
        exit = exit.or(self.core.poll(now, &mut self.actions));
        for a in self.actions.drain(..) {
            match a {
                Action::Send(m) => self.link.send(&m),
                Action::Start {
                    slot,
                    generation,
                    container,
                } => self.pool.start(slot, generation, container.as_ref(), now),
                Action::Run {
                    slot,
                    generation,
                    tasks,
                } => self.pool.run(
                    slot,
                    generation,
                    self.core.given(slot, generation, tasks),
                    now,
                ),
                Action::Stop { slot, generation } => self.pool.stop(slot, generation),
                Action::Configure(s) => self.pool.configure(&s),
                Action::Secure { send_key, recv_key } => self.link.secure(&send_key, &recv_key),
            }
        }
        match exit? {
            Exit::Done => {
                tracing::info!(manager_id = %self.cfg.manager_id, "drained");
                Some(Ok(()))
            }
            Exit::Refused(r) => Some(Err(ManagerError::Refused(r))),
            Exit::Lost(d) => Some(Err(ManagerError::InterchangeLost(d))),
        }
    }

    /// Stops the workers and the link; the last manager of a stopping endpoint on this node
    /// removes the store.
    pub(crate) fn finish(mut self) {
        self.pool.shutdown();
        self.link.close();
        drop(self.service.take());
        if let (Some(t), Some(sc), true) = (
            self.tenancy.take(),
            &self.cfg.store,
            self.core.endpoint_stopping(),
        ) {
            match t.leave_and_remove_if_last() {
                Ok(true) => tracing::info!(store = %sc.root.display(), "object store removed"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(store = %sc.root.display(), error = %e, "cannot remove the object store")
                }
            }
        }
    }
}

fn registration(cfg: &ManagerConfig) -> Registration {
    Registration {
        manager_id: cfg.manager_id,
        block_id: cfg.block_id.clone(),
        rank: cfg.rank,
        block_size: cfg.block_size,
        hostname: hostname(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: memory_bytes(),
        workers: cfg.workers,
        prefetch: cfg.prefetch,
        containers: Vec::new(),
        version: fxr_protocol::VERSION.to_string(),
        proof: [0; 32],
        simulated: matches!(cfg.mode, WorkerMode::Simulated { .. }),
    }
}
