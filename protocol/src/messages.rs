//! The messages of each link inside an endpoint.
//!
//! | link | down (towards workers) | up (towards the user) |
//! |---|---|---|
//! | client ↔ interchange (local front door) | [`ClientMsg`] | [`FrontMsg`] |
//! | interchange ↔ manager (nng) | [`InterchangeMsg`] | [`ManagerMsg`] |
//! | manager ↔ worker (pipes) | [`ToWorker`] | [`FromWorker`] |
//! | broker ↔ interchange (WebSocket, binary frames) | [`BrokerMsg`] | [`LinkMsg`] |
//!
//! Tasks and results always travel in batches: a message costs 20–40 µs on nng here, a task
//! a few hundred nanoseconds to encode.

use crate::data::{DataRef, DataReply};
use crate::ids::{BlockId, ManagerId, TaskId};
use crate::task::{Task, TaskResult};
use serde::{Deserialize, Serialize};

/// What a manager tells the interchange about itself when it connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub manager_id: ManagerId,
    pub block_id: BlockId,
    /// This manager's rank within its block and the block's size in nodes.
    pub rank: u32,
    pub block_size: u32,
    pub hostname: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub workers: u32,
    /// Tasks the manager queues beyond its workers; it accepts `workers + prefetch` at once.
    pub prefetch: u32,
    /// Container runtimes this manager can start workers in; empty means any the endpoint
    /// configures (the bare node, `""`, always runs).
    pub containers: Vec<String>,
    /// Software version of the pilot.
    pub version: String,
    /// Proof that the manager holds the endpoint's secret, for this connection's nonces
    /// ([`crate::auth::manager_proof`]); the secret itself never travels.
    pub proof: crate::auth::Proof,
    /// Whether the workers are simulated (run in-process) rather than real processes.
    pub simulated: bool,
}

/// Free capacity for one container type, as funcX managers advertise it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Capacity {
    /// Container type ([`crate::ContainerSpec::key`], `""` for the bare node).
    pub container: String,
    /// Workers of this type, started or starting.
    pub total: u32,
    /// Tasks the manager will accept now (idle workers plus prefetch room), of any type.
    pub free: u32,
    /// Idle workers already running in this container.
    pub warm: u32,
    /// Worker slots not started, which can start in any container (the same in every entry).
    pub unused: u32,
}

/// What the endpoint tells every manager about starting and retiring workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkerSettings {
    /// Command templates per runtime name, overriding or adding to the built-in ones.
    pub runtimes: Vec<(String, String)>,
    /// A worker idle this long is stopped, freeing its slot; 0 keeps idle workers.
    pub max_idle_ms: u64,
}

/// What a manager has done with its workers since it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkerCounters {
    /// Workers started in a container.
    pub cold_starts: u64,
    /// Idle workers stopped so that their slot could start another container type.
    pub container_switches: u64,
    /// Container workers that could not start.
    pub container_errors: u64,
}

/// Manager → interchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerMsg {
    /// First on every connection: the manager's nonce, answered by a `Challenge`.
    Hello { nonce: crate::auth::Nonce },
    /// After checking the interchange's proof: who the manager is, and its own proof.
    Register(Registration),
    /// Sent every heartbeat period, with the current capacity.
    Heartbeat {
        capacity: Vec<Capacity>,
        counters: WorkerCounters,
    },
    /// Acknowledges a task batch, so the interchange may count it as delivered.
    Ack { seq: u64 },
    /// Finished tasks, and the capacity after them.
    Results {
        results: Vec<TaskResult>,
        capacity: Vec<Capacity>,
        counters: WorkerCounters,
        /// Task batches acknowledged with these results, as [`ManagerMsg::Ack`] would, one
        /// message fewer each (read before the results).
        acks: Vec<u64>,
    },
    /// Tasks the manager gives back unstarted (on drain or shutdown).
    Returned { tasks: Vec<TaskId> },
    /// The manager has no task left and is about to exit.
    Drained,
}

/// Interchange → manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InterchangeMsg {
    /// The answer to `Hello`: the interchange's nonce and its proof that it holds the secret.
    Challenge {
        nonce: crate::auth::Nonce,
        proof: crate::auth::Proof,
        /// After `Welcome`, both sides seal every message with the connection's keys.
        encrypt: bool,
    },
    /// Registration accepted.
    Welcome {
        heartbeat_period_ms: u64,
        heartbeat_threshold_ms: u64,
        /// How workers are started, per container runtime (`endpoint.toml`'s `[containers]`).
        workers: WorkerSettings,
    },
    /// Registration refused; the manager should exit.
    Refused { reason: String },
    /// Work to do. `seq` increases per manager and is acknowledged with [`ManagerMsg::Ack`].
    Tasks { seq: u64, tasks: Vec<Task> },
    /// Finish running tasks, give queued ones back, then exit. When the whole endpoint is
    /// stopping, the last manager of a node also removes the node's object store.
    Drain { endpoint_stopping: bool },
    /// The interchange is alive.
    Heartbeat,
    /// Cancel these tasks if they are still queued or running.
    Cancel { tasks: Vec<TaskId> },
}

/// Client → interchange (the local front door).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Run these tasks; results stream back as [`FrontMsg::Results`].
    Submit { tasks: Vec<Task> },
    /// Ask for an [`EndpointStatus`].
    Status,
    /// Drain one manager.
    DrainManager { manager_id: ManagerId },
    /// Cancel these tasks (the client's own ids) if they have not started.
    Cancel { tasks: Vec<TaskId> },
    /// The scaling loop's blocks and the scheduler's last errors, shown in status reports.
    ProviderReport { report: ProviderStatus },
    /// Fail every task still queued here with this reason (the endpoint gave up starting
    /// blocks, so nothing would run them).
    FailQueued { reason: String },
    /// Stop the endpoint: drain every manager, then exit.
    Shutdown,
    /// Read part of an object kept in a node's store (a result returned by reference); answered
    /// by [`FrontMsg::Data`].
    Fetch {
        data: DataRef,
        offset: u64,
        len: u64,
    },
    /// The broker's request for blocks, passed on by the broker link; it replaces the last one.
    Provision(ProvisionRequest),
}

/// What the broker asks of an endpoint's blocks ([`BrokerMsg::Provision`]). The endpoint runs
/// at least `blocks` blocks while the request holds, never more than its own `max_blocks`;
/// `blocks: 0` says the broker needs none of them any more, so idle blocks may be drained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProvisionRequest {
    pub blocks: u32,
    /// Tasks open for this endpoint at the broker when it asked.
    pub backlog: u64,
    /// Why, in words, for status reports.
    pub reason: String,
    /// Milliseconds the request holds unless the broker renews it (in status reports: what is
    /// left of that).
    pub valid_ms: u64,
}

/// Interchange → client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrontMsg {
    /// Tasks accepted (counted), before any of them runs.
    Accepted {
        count: u32,
    },
    /// Finished tasks.
    Results {
        results: Vec<TaskResult>,
    },
    Status(EndpointStatus),
    /// A request was refused, with the reason.
    Error {
        message: String,
    },
    /// The answer to a [`ClientMsg::Fetch`].
    Data(DataReply),
}

/// A snapshot of the endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EndpointStatus {
    pub managers: Vec<ManagerStatus>,
    /// The provider's blocks and the scheduler's last errors.
    pub provider: ProviderStatus,
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    /// A shutdown was requested: managers are draining and no block should be replaced.
    pub stopping: bool,
    /// The broker's request for blocks while it holds.
    pub requested: Option<ProvisionRequest>,
}

/// What the scaling loop knows of its blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProviderStatus {
    /// `local`, `slurm` or `pbs`.
    pub kind: String,
    /// Blocks pending, running and draining, then the most recent ended ones.
    pub blocks: Vec<BlockReport>,
    /// The scheduler's most recent errors, oldest first.
    pub errors: Vec<SchedulerError>,
    /// Set while the endpoint has stopped submitting blocks after repeated failures: why, and
    /// when it tries again.
    pub gave_up: Option<String>,
    /// The site's ceiling on blocks, and the workers one block brings.
    pub max_blocks: u32,
    pub slots_per_block: u32,
    /// How long recent blocks took from submission to their first manager (the median of
    /// the last few), once one has started.
    pub block_start_ms: Option<u64>,
}

/// One block of the scaling loop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockReport {
    /// fxr's id (`NAME-N`).
    pub id: String,
    /// The scheduler's job id, once it accepted the block.
    pub job: Option<String>,
    /// `pending`, `running`, `draining`, `ended` or `failed`.
    pub state: String,
    pub nodes: u32,
    /// Milliseconds since the block was submitted.
    pub age_ms: u64,
    /// Why it failed, in the scheduler's words.
    pub message: Option<String>,
    /// Who asked for it and why: `init_blocks`, `min_blocks`, the endpoint's own backlog, or
    /// the broker's request.
    pub reason: String,
}

/// A scheduler error and when it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerError {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub block: String,
    pub message: String,
}

/// One manager as the interchange sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerStatus {
    pub manager_id: ManagerId,
    pub block_id: BlockId,
    pub hostname: String,
    pub workers: u32,
    pub in_flight: u32,
    pub draining: bool,
    pub simulated: bool,
    /// Its last capacity report, per container type.
    pub capacity: Vec<Capacity>,
    pub counters: WorkerCounters,
}

/// Manager → worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run these in order and report each result.
    Run { tasks: Vec<Task> },
    /// Exit after the current task.
    Stop,
}

/// [`ToWorker::Run`] over borrowed tasks, for sending: it encodes exactly as
/// `ToWorker::Run { tasks }` does, so the manager sends a worker its tasks' bytes without
/// copying the tasks it keeps.
#[derive(Debug, Serialize)]
pub enum ToWorkerRef<'a> {
    Run { tasks: &'a [Task] },
}

/// Worker → manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker is up.
    Ready { pid: u32 },
    /// Results of tasks it ran, in order.
    Results { results: Vec<TaskResult> },
}

/// Broker → interchange, over the endpoint link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerMsg {
    /// Work for this endpoint; ids are the broker's task ids. Sent only within granted credit.
    Tasks { tasks: Vec<Task> },
    /// These results are stored; the interchange may forget them.
    ResultsStored { tasks: Vec<TaskId> },
    /// Cancel these tasks.
    Cancel { tasks: Vec<TaskId> },
    /// Read part of an object kept in a node's store; answered by [`LinkMsg::Data`] with the
    /// same `request`. `len` is at most 2 MiB, so the answer stays within a link message.
    Fetch {
        request: u64,
        data: DataRef,
        offset: u64,
        len: u64,
    },
    /// Blocks the broker would have this endpoint run (see [`ProvisionRequest`]).
    Provision(ProvisionRequest),
}

/// Interchange → broker, over the endpoint link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMsg {
    /// The broker may send this many more tasks.
    Credit { tasks: u64 },
    /// These tasks arrived and are queued (their receipt is acknowledged).
    Received { tasks: Vec<TaskId> },
    /// Finished tasks; sent again after a reconnect until the broker says they are stored.
    Results { results: Vec<TaskResult> },
    /// Managers, workers and queues, every few seconds.
    Status(EndpointStatus),
    /// The answer to a [`BrokerMsg::Fetch`].
    Data { request: u64, reply: DataReply },
}
