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
}

/// A function to register.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionBody {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub kind: FunctionKind,
    /// For `builtin`: noop, sleep, spin, echo, fail.
    #[serde(default)]
    pub builtin: Option<String>,
    /// For `shell`: the command template; `{name}` is filled from the task's arguments.
    #[serde(default)]
    pub command: Option<String>,
    /// For `shell`: wall-clock limit in milliseconds (0: none).
    #[serde(default)]
    pub walltime_ms: Option<u64>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// For `mpi`: nodes and ranks per node.
    #[serde(default)]
    pub num_nodes: Option<u32>,
    #[serde(default)]
    pub ranks_per_node: Option<u32>,
    #[serde(default)]
    pub visibility: Visibility,
    /// User names who may run it besides the owner.
    #[serde(default)]
    pub shared_with: Vec<String>,
}

/// A registered function.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct FunctionInfo {
    pub id: String,
    pub owner: String,
    #[serde(flatten)]
    pub body: FunctionBody,
}

/// An endpoint to register.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
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

/// An endpoint and its live status.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct EndpointInfo {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub connected: bool,
    pub managers: u64,
    pub workers: u64,
    /// Tasks queued at the endpoint and running there, from its last report.
    pub queued: u64,
    pub running: u64,
    /// Tasks waiting at the broker for this endpoint.
    pub backlog: u64,
    /// Milliseconds since the endpoint's last status report, if any.
    pub last_heartbeat_ms_ago: Option<u64>,
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
    /// The function's arguments (a JSON object for shell and sleep functions).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub args: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
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
    #[serde(default)]
    pub ids: Vec<u64>,
    /// Batch ids, as answered by `POST /v1/tasks` (at most 1,000).
    #[serde(default)]
    pub batches: Vec<u64>,
    /// Every task of the caller from now on; the stream does not end.
    #[serde(default)]
    pub all: bool,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdsBody {
    pub ids: Vec<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitBody {
    pub ids: Vec<u64>,
    /// How long to wait for every task to finish (default 30 s, at most 300 s).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct TasksResponse {
    pub tasks: Vec<TaskInfo>,
    /// How many of the requested tasks have not finished.
    pub pending: u64,
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
