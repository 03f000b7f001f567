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
        // The store and its data service first, so workers find them from their first task.
        let mut env = Vec::new();
        if let Some(py) = &cfg.python {
            env.push(("FXR_PYTHON".to_string(), py.clone()));
        }
        let mut tenancy = None;
        let service = match &cfg.store {
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
        let mut link = Link::dial(&cfg.interchange, tx.clone())?;
        let mut pool: Box<dyn WorkerPool> = match &cfg.mode {
            WorkerMode::Processes { exe } => {
                Box::new(ProcessPool::new(exe.clone(), tx.clone()).with_env(env))
            }
            WorkerMode::Simulated { cold_start } => {
                Box::new(SimPool::new(cold_start.clone(), cfg.manager_id.0))
            }
        };
        let now = Instant::now();
        let mut core = Core::new(
            CoreConfig {
                registration: registration(&cfg),
                secret: cfg.secret.clone(),
                heartbeat_period: cfg.heartbeat_period,
                give_up_after: cfg.give_up_after,
                prestart: true,
            },
            now,
        );
        let result = run_loop(&mut core, pool.as_mut(), &mut link, &rx, &cfg);
        pool.shutdown();
        link.close();
        drop(service);
        // The endpoint is stopping: the last manager on this node takes the store with it.
        if let (Some(t), Some(sc), true) = (tenancy, &cfg.store, core.endpoint_stopping()) {
            match t.leave_and_remove_if_last() {
                Ok(true) => tracing::info!(store = %sc.root.display(), "object store removed"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(store = %sc.root.display(), error = %e, "cannot remove the object store")
                }
            }
        }
        result
    }
}

fn run_loop(
    core: &mut Core,
    pool: &mut dyn WorkerPool,
    link: &mut Link,
    rx: &Receiver<Event>,
    cfg: &ManagerConfig,
) -> Result<(), ManagerError> {
    let mut actions = Vec::new();
    let mut events = Vec::new();
    loop {
        let now = Instant::now();
        let mut deadline = core.next_deadline();
        if let Some(t) = pool.next_deadline() {
            deadline = deadline.min(t);
        }
        let mut exit = None;
        match rx.recv_timeout(deadline.saturating_duration_since(now)) {
            Ok(ev) => exit = exit.or(core.handle(ev, Instant::now(), &mut actions)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        for _ in 0..10_000 {
            match rx.try_recv() {
                Ok(ev) => exit = exit.or(core.handle(ev, Instant::now(), &mut actions)),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        pool.poll(now, &mut events);
        for ev in events.drain(..) {
            exit = exit.or(core.handle(ev, now, &mut actions));
        }
        exit = exit.or(core.poll(now, &mut actions));
        for a in actions.drain(..) {
            match a {
                Action::Send(m) => link.send(&m),
                Action::Start {
                    slot,
                    generation,
                    container,
                } => pool.start(slot, generation, container.as_ref(), now),
                Action::Run {
                    slot,
                    generation,
                    tasks,
                } => pool.run(slot, generation, tasks, now),
                Action::Stop { slot, generation } => pool.stop(slot, generation),
                Action::Configure(s) => pool.configure(&s),
                Action::Secure { send_key, recv_key } => link.secure(&send_key, &recv_key),
            }
        }
        match exit {
            None => {}
            Some(Exit::Done) => {
                tracing::info!(manager_id = %cfg.manager_id, "drained");
                return Ok(());
            }
            Some(Exit::Refused(r)) => return Err(ManagerError::Refused(r)),
            Some(Exit::Lost(d)) => return Err(ManagerError::InterchangeLost(d)),
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
