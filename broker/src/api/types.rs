//! Request and response bodies of the REST API. Unknown fields are refused, so a typo in a field
//! name is an error that names the field rather than a silently ignored setting.

use crate::hub::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Who may run a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// The owner, and the users in `shared_with`.
    #[default]
    Private,
    /// Every user.
    Public,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FunctionKind {
    Builtin,
    Shell,
    /// A command run with the block's MPI launcher over several nodes.
    Mpi,
    /// A Python function: `source` defines `entry`.
    Python,
}

/// Largest value of an id or a count on the API: SQLite's integers are signed 64-bit.
pub const MAX_INT: u64 = i64::MAX as u64;

/// A whole number in `0..=MAX_INT`, written as an integer or as a number with no fraction
/// (`3.0`), as JSON Schema's `integer` allows.
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    let v = match (n.as_u64(), n.as_f64()) {
        (Some(v), _) => Some(v),
        (None, Some(f)) if f.fract() == 0.0 && f >= 0.0 && f <= MAX_INT as f64 => Some(f as u64),
        _ => None,
    };
    v.filter(|v| *v <= MAX_INT)
        .ok_or_else(|| D::Error::custom(format!("`{n}` is not a whole number from 0 to {MAX_INT}")))
}

/// A list of whole numbers (see [`whole`]).
pub fn de_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    struct W(#[serde(deserialize_with = "whole")] u64);
    Ok(Vec::<W>::deserialize(d)?.into_iter().map(|w| w.0).collect())
}

/// An optional whole number (see [`whole`]).
pub fn de_opt_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct W(#[serde(deserialize_with = "whole")] u64);
    Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
}

/// An optional whole number that fits in 32 bits.
fn de_opt_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    de_opt_whole(d)?
        .map(|v| u32::try_from(v).map_err(|_| D::Error::custom(format!("`{v}` is too large"))))
        .transpose()
}

/// A function to register.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionBody {
    /// 1 to 128 characters, not all blank.
    #[schema(min_length = 1, max_length = 128, pattern = "\\S")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: String,
    pub kind: FunctionKind,
    /// For `builtin`: noop, sleep, spin, echo, fail, put, get, map, reduce.
    #[serde(default)]
    pub builtin: Option<String>,
    /// For `shell`: the command template; `{name}` is filled from the task's arguments.
    #[serde(default)]
    pub command: Option<String>,
    /// For `python`: the source, which defines the function `entry` (at most 1 MiB).
    #[serde(default)]
    #[schema(max_length = 1048576)]
    pub source: Option<String>,
    /// For `python`: the name of the function to call.
    #[serde(default)]
    #[schema(max_length = 256)]
    pub entry: Option<String>,
    /// For `python`: the Python version of the client registering it (`3.11.2`); pickled
    /// arguments need the same major and minor version on the endpoint.
    #[serde(default)]
    #[schema(max_length = 32)]
    pub python_version: Option<String>,
    /// For `shell`, `mpi` and `python`: wall-clock limit in milliseconds (0: none).
    #[serde(default, deserialize_with = "de_opt_whole")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub walltime_ms: Option<u64>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// For `mpi` only: nodes (1 to 100,000) and ranks per node (1 to 1,024).
    #[serde(default, deserialize_with = "de_opt_u32")]
    #[schema(minimum = 1, maximum = 100000)]
    pub num_nodes: Option<u32>,
    #[serde(default, deserialize_with = "de_opt_u32")]
    #[schema(minimum = 1, maximum = 1024)]
    pub ranks_per_node: Option<u32>,
    #[serde(default)]
    pub visibility: Visibility,
    /// User names who may run it besides the owner.
    #[serde(default)]
    pub shared_with: Vec<String>,
    /// The container it runs in; the endpoint's own environment when absent.
    #[serde(default)]
    pub container: Option<ContainerBody>,
}

/// A container for a function: a runtime the endpoint knows (`bwrap`, `podman`, `charliecloud`,
/// `apptainer`, `singularity`, `shifter`, `docker`, or one the site configures), an image in
/// that runtime's terms, and extra options for the runtime's command line.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainerBody {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub runtime: String,
    #[schema(min_length = 1, max_length = 4096)]
    pub image: String,
    #[serde(default)]
    #[schema(max_items = 64)]
    pub options: Vec<String>,
}

/// A registered function: its id and owner, and what it was registered with.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct FunctionInfo {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub description: String,
    pub kind: FunctionKind,
    pub builtin: Option<String>,
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_version: Option<String>,
    pub walltime_ms: Option<u64>,
    pub env: Option<BTreeMap<String, String>>,
    pub cwd: Option<String>,
    pub num_nodes: Option<u32>,
    pub ranks_per_node: Option<u32>,
    pub visibility: Visibility,
    pub shared_with: Vec<String>,
    pub container: Option<ContainerBody>,
}

impl FunctionInfo {
    pub fn new(id: String, owner: String, b: FunctionBody) -> FunctionInfo {
        FunctionInfo {
            id,
            owner,
            name: b.name,
            description: b.description,
            kind: b.kind,
            builtin: b.builtin,
            command: b.command,
            source: b.source,
            entry: b.entry,
            python_version: b.python_version,
            walltime_ms: b.walltime_ms,
            env: b.env,
            cwd: b.cwd,
            num_nodes: b.num_nodes,
            ranks_per_node: b.ranks_per_node,
            visibility: b.visibility,
            shared_with: b.shared_with,
            container: b.container,
        }
    }
}

/// An endpoint to register.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    /// 1 to 128 characters, not all blank.
    #[schema(min_length = 1, max_length = 128, pattern = "\\S")]
    pub name: String,
    /// User names who may send tasks to it besides the owner.
    #[serde(default)]
    pub shared_with: Vec<String>,
}

/// A newly registered endpoint, with its credential (shown only this once).
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct EndpointCreated {
    pub id: String,
    pub name: String,
    pub credential: String,
}

/// An endpoint and its live status: the same view whether it is read from the broker or, for a
/// standalone endpoint, from its front door.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct EndpointInfo {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub connected: bool,
    pub managers: u64,
    pub workers: u64,
    /// Workers holding a task, and the rest.
    pub workers_busy: u64,
    pub workers_idle: u64,
    /// Tasks queued at the endpoint and running there, from its last report.
    pub queued: u64,
    pub running: u64,
    /// Tasks the endpoint finished since it started.
    pub completed: u64,
    pub failed: u64,
    /// Tasks waiting at the broker for this endpoint.
    pub backlog: u64,
    /// Milliseconds since the endpoint's last status report, if any.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// `local`, `slurm` or `pbs`; empty before the endpoint's first report.
    pub provider: String,
    /// The endpoint's blocks: live ones, then the most recent ended ones.
    pub blocks: Vec<BlockInfo>,
    /// The scheduler's most recent errors, oldest first.
    pub scheduler_errors: Vec<SchedulerErrorInfo>,
    /// Set while the endpoint has stopped submitting blocks after repeated failures.
    pub gave_up: Option<String>,
    /// The site's ceiling on blocks (0 before the endpoint's first report).
    pub max_blocks: u32,
    /// The broker's request for blocks, while it holds at the endpoint.
    pub requested: Option<ProvisionInfo>,
    /// Containers started cold, workers switched to another container, containers that failed.
    pub cold_starts: u64,
    pub container_switches: u64,
    pub container_errors: u64,
}

/// One block (a batch job, or a local pilot process) of an endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct BlockInfo {
    /// fxr's id, `NAME-N`.
    pub id: String,
    /// The scheduler's job id.
    pub job: Option<String>,
    /// `pending`, `running`, `draining`, `ended` or `failed`.
    pub state: String,
    pub nodes: u32,
    /// Seconds since it was submitted.
    pub age_s: u64,
    pub managers: u64,
    pub workers: u64,
    pub workers_busy: u64,
    /// Why it failed, in the scheduler's words.
    pub message: Option<String>,
    /// Who asked for it and why.
    pub reason: String,
}

/// The broker's request for an endpoint's blocks.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct ProvisionInfo {
    /// Blocks the broker would have running (the endpoint runs at most its `max_blocks`).
    pub blocks: u32,
    /// Tasks open for the endpoint at the broker when it asked.
    pub backlog: u64,
    pub reason: String,
    /// Seconds the request still holds unless renewed.
    pub valid_s: u64,
}

/// A scheduler error.
#[derive(Clone, Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct SchedulerErrorInfo {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub block: String,
    pub message: String,
}

impl EndpointInfo {
    /// Fills the live fields from an endpoint's status report.
    pub fn with_status(mut self, s: &fxr_protocol::EndpointStatus) -> EndpointInfo {
        let busy = |m: &fxr_protocol::ManagerStatus| u64::from(m.in_flight.min(m.workers));
        self.managers = s.managers.len() as u64;
        self.workers = s.managers.iter().map(|m| u64::from(m.workers)).sum();
        self.workers_busy = s.managers.iter().map(busy).sum();
        self.workers_idle = self.workers - self.workers_busy;
        self.queued = s.queued;
        self.running = s.running;
        self.completed = s.completed;
        self.failed = s.failed;
        self.provider = s.provider.kind.clone();
        self.gave_up = s.provider.gave_up.clone();
        self.max_blocks = s.provider.max_blocks;
        self.requested = s.requested.as_ref().map(|r| ProvisionInfo {
            blocks: r.blocks,
            backlog: r.backlog,
            reason: r.reason.clone(),
            valid_s: r.valid_ms.div_ceil(1000),
        });
        self.scheduler_errors = s
            .provider
            .errors
            .iter()
            .map(|e| SchedulerErrorInfo {
                at_ms: e.at_ms,
                block: e.block.clone(),
                message: e.message.clone(),
            })
            .collect();
        self.blocks = s
            .provider
            .blocks
            .iter()
            .map(|b| BlockInfo {
                id: b.id.clone(),
                job: b.job.clone(),
                state: b.state.clone(),
                nodes: b.nodes,
                age_s: b.age_ms / 1000,
                message: b.message.clone(),
                reason: b.reason.clone(),
                ..BlockInfo::default()
            })
            .collect();
        for m in &s.managers {
            let at = match self.blocks.iter().position(|b| b.id == m.block_id.0) {
                Some(i) => i,
                None => {
                    // A pilot the endpoint did not start (by hand, say) is a block of its own.
                    self.blocks.push(BlockInfo {
                        id: m.block_id.0.clone(),
                        state: "running".into(),
                        nodes: 1,
                        ..BlockInfo::default()
                    });
                    self.blocks.len() - 1
                }
            };
            let b = &mut self.blocks[at];
            if b.state == "pending" {
                // Registered since the scaling loop's last report.
                b.state = "running".into();
            }
            b.managers += 1;
            b.workers += u64::from(m.workers);
            b.workers_busy += busy(m);
            self.cold_starts += m.counters.cold_starts;
            self.container_switches += m.counters.container_switches;
            self.container_errors += m.counters.container_errors;
        }
        self
    }
}

/// One task of a submission.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub function_id: String,
    /// The endpoint to run on; or give `endpoints` and a `policy`.
    #[serde(default)]
    pub endpoint_id: Option<String>,
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
    #[serde(default)]
    pub policy: Option<Policy>,
    /// The function's arguments, any JSON value (an object for shell and sleep functions).
    #[serde(default)]
    #[schema(value_type = Value)]
    pub args: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    #[schema(min_items = 1, max_items = 10000)]
    pub tasks: Vec<TaskSpec>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct Submitted {
    pub task_ids: Vec<u64>,
    /// The submission's batch, to follow with `GET /v1/tasks/stream?batch=ID`.
    pub batch_id: u64,
}

/// What a result stream follows; name at least one.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamBody {
    /// Task ids (at most 10,000).
    #[serde(default, deserialize_with = "de_ids")]
    #[schema(max_items = 10000)]
    pub ids: Vec<u64>,
    /// Batch ids, as answered by `POST /v1/tasks` (at most 1,000).
    #[serde(default, deserialize_with = "de_ids")]
    #[schema(max_items = 1000)]
    pub batches: Vec<u64>,
    /// Every task of the caller from now on; the stream does not end.
    #[serde(default)]
    pub all: bool,
    /// Results finished together go as one `results` event whose data is a JSON array of
    /// tasks (instead of one `result` event per task).
    #[serde(default)]
    pub grouped: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct TaskError {
    pub kind: String,
    pub message: String,
}

/// A task and, once finished, its result or error.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct TaskInfo {
    pub id: u64,
    /// pending | dispatched | queued | succeeded | failed
    pub state: String,
    pub function_id: String,
    pub endpoint_id: String,
    /// The submission it came in.
    pub batch_id: u64,
    /// The function's return value, any JSON value.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub result: Option<serde_json::Value>,
    /// Present instead of `result` when the value was too large to travel with the result:
    /// it is kept at the endpoint, and `GET /v1/tasks/{id}/data` reads it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_data: Option<StoredResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
}

/// A result kept in the object store of the node that ran the task.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct StoredResult {
    /// Bytes of the JSON value.
    pub size: u64,
    /// CRC-32 (IEEE) of those bytes, as 8 hex digits.
    pub checksum: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdsBody {
    #[serde(deserialize_with = "de_ids")]
    #[schema(max_items = 10000)]
    pub ids: Vec<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitBody {
    #[serde(deserialize_with = "de_ids")]
    #[schema(max_items = 10000)]
    pub ids: Vec<u64>,
    /// How long to wait for every task to finish (default 30 s; longer waits are cut to 300 s).
    #[serde(default, deserialize_with = "de_opt_whole")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct TasksResponse {
    pub tasks: Vec<TaskInfo>,
    /// How many of the requested tasks have not finished.
    pub pending: u64,
    /// When listing by filters and more tasks may follow: pass it as `cursor` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<u64>,
}

/// Counts over your tasks, for the dashboard.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct TaskStats {
    /// All your tasks by state (`pending`, `succeeded`, `failed`).
    pub by_state: std::collections::BTreeMap<String, u64>,
    /// Failures by kind among the tasks finished in the window.
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Tasks finished per bucket in the window, oldest first (buckets with none are left out).
    pub finished: Vec<FinishedBucket>,
    pub window_s: u64,
    pub bucket_s: u64,
    /// The broker's clock (ms since the epoch) when counted.
    pub now_ms: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct FinishedBucket {
    /// The bucket's start, ms since the epoch.
    pub t_ms: i64,
    pub succeeded: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct Cancelled {
    pub cancelled: Vec<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct WhoAmI {
    pub id: i64,
    pub name: String,
}

/// The body of every error response.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `not_found`, `invalid_body`.
    pub code: String,
    /// What was wrong, for people.
    pub message: String,
}
