//! Task submission, lookup, waiting, streaming and cancellation.
//!
//! Waiting and streaming go through the broker's [`crate::watch::Watchers`]: a client registers
//! what it follows, reads the store once (in batches), then receives each result as it is
//! recorded. Nothing re-reads the tasks it waits on when other results arrive.

use super::types::{
    Cancelled, IdsBody, StoredResult, StreamBody, SubmitBody, Submitted, TaskError, TaskInfo,
    TasksResponse, WaitBody,
};
use super::{ApiError, ApiJson, ApiQuery, Caller};
use crate::hub::{Finished, Meta};
use crate::store::{Completion, NewTask, TaskRow};
use crate::watch::{Done, Interest};
use crate::Broker;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fxr_protocol::{FailureKind, TaskId, TaskResult, MAX_BODY};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Most ids in a query string; longer lists go in a request body.
pub const MAX_QUERY_IDS: usize = 1000;

/// Seconds a client refused for backlog is told to wait.
const RETRY_AFTER_SECS: u64 = 2;

fn result_value(r: Vec<u8>) -> serde_json::Value {
    serde_json::from_slice(&r)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&r).into_owned()))
}

/// What a client is told of a result kept at the endpoint.
fn stored_result(data_ref: Option<&str>) -> Option<StoredResult> {
    let r: fxr_protocol::DataRef = serde_json::from_str(data_ref?).ok()?;
    Some(StoredResult {
        size: r.size,
        checksum: format!("{:08x}", r.checksum),
    })
}

pub(crate) fn task_info(broker: &Broker, t: TaskRow) -> TaskInfo {
    let state = if t.state == "pending" {
        broker
            .hub()
            .live_state(t.id)
            .map_or("pending", |s| s.name())
            .to_string()
    } else {
        t.state
    };
    let error = match (t.error_kind, t.error_message) {
        (Some(kind), message) => Some(TaskError {
            kind,
            message: message.unwrap_or_default(),
        }),
        _ => None,
    };
    TaskInfo {
        id: t.id,
        state,
        function_id: t.function_id,
        endpoint_id: t.endpoint_id,
        batch_id: t.batch,
        result: t.result.map(result_value),
        result_data: stored_result(t.data_ref.as_deref()),
        error,
        created_ms: t.created_ms,
        completed_ms: t.completed_ms,
    }
}

/// A task just recorded, as watchers receive it.
pub fn finished_info(f: &Finished, c: &Completion, completed_ms: i64) -> TaskInfo {
    TaskInfo {
        id: f.id,
        state: if c.error.is_none() {
            "succeeded"
        } else {
            "failed"
        }
        .into(),
        function_id: f.meta.function_id.to_string(),
        endpoint_id: f.endpoint.to_string(),
        batch_id: f.meta.batch,
        result: c.result.clone().map(result_value),
        result_data: stored_result(c.data_ref.as_deref()),
        error: c
            .error
            .clone()
            .map(|(kind, message)| TaskError { kind, message }),
        created_ms: f.meta.created_ms,
        completed_ms: Some(completed_ms),
    }
}

fn check_ids(broker: &Broker, ids: &[u64]) -> Result<(), ApiError> {
    if ids.len() > broker.config.max_tasks_per_request {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_tasks",
            format!(
                "{} ids in one request; the limit is {}",
                ids.len(),
                broker.config.max_tasks_per_request
            ),
        ));
    }
    Ok(())
}

/// Tasks of `user` among `ids`, in no particular order; other users' tasks are left out.
async fn load(broker: &Broker, user: i64, ids: Vec<u64>) -> Result<Vec<TaskRow>, ApiError> {
    let rows = broker.read(move |s| s.tasks(&ids)).await?;
    Ok(rows.into_iter().filter(|t| t.owner == user).collect())
}

/// A registered watcher and its results; removed from the broker's watchers when dropped. It
/// holds the broker, so an event stream can carry it for as long as the stream lives.
struct Watch {
    broker: Arc<Broker>,
    id: u64,
    rx: tokio::sync::mpsc::UnboundedReceiver<Done>,
}

impl Watch {
    fn new(broker: &Arc<Broker>, user: i64, interest: Interest) -> Watch {
        let (id, rx) = broker.watchers().watch(user, interest);
        Watch {
            broker: broker.clone(),
            id,
            rx,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.broker.watchers().unwatch(self.id);
    }
}

fn too_busy(r: crate::hub::Refusal) -> Response {
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "backlog_full",
        format!(
            "the backlog of {} would pass its limit: {} open tasks, {} more submitted, limit {}; retry later",
            r.what, r.open, r.adding, r.limit
        ),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&RETRY_AFTER_SECS.to_string()) {
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, v);
    }
    resp
}

/// Submit tasks (at most 10,000 per request), as one batch. Each names a function and either
/// one endpoint or several with a routing policy. The tasks are stored before the answer is
/// sent. A submission that would pass a backlog limit (per endpoint, per user) is refused whole
/// with `429` and `Retry-After`.
#[utoipa::path(post, path = "/v1/tasks", request_body = SubmitBody,
    responses((status = 202, body = Submitted), (status = 400, body = super::types::ErrorBody),
              (status = 401, body = super::types::ErrorBody), (status = 404, body = super::types::ErrorBody),
              (status = 413, body = super::types::ErrorBody), (status = 415, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody),
              (status = 429, body = super::types::ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait"))),
              (status = 503, body = super::types::ErrorBody)))]
pub async fn submit(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<Response, ApiError> {
    let n = body.tasks.len();
    if n == 0 {
        return Err(ApiError::bad("`tasks` is empty"));
    }
    if n > broker.config.max_tasks_per_request {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_tasks",
            format!(
                "{n} tasks in one request; the limit is {}",
                broker.config.max_tasks_per_request
            ),
        ));
    }
    // Validate everything before storing anything: a request is accepted whole or not at all.
    if broker.shared {
        // Each distinct id once, not a copy per task.
        let functions: HashSet<&str> = body.tasks.iter().map(|t| t.function_id.as_str()).collect();
        let mut endpoints: HashSet<&str> = HashSet::new();
        for t in &body.tasks {
            endpoints.extend(t.endpoint_id.as_deref());
            endpoints.extend(t.endpoints.iter().flatten().map(String::as_str));
        }
        let functions: Vec<String> = functions.into_iter().map(str::to_string).collect();
        let endpoints: Vec<String> = endpoints.into_iter().map(str::to_string).collect();
        broker.refresh(functions, endpoints).await?;
    }
    let mut plan = Vec::with_capacity(n);
    let mut checked_eps: HashSet<String> = HashSet::new();
    let mut fids: HashMap<String, Arc<str>> = HashMap::new();
    for (i, spec) in body.tasks.into_iter().enumerate() {
        let (frow, func) = broker
            .function(&spec.function_id)
            .filter(|(f, _)| super::functions::may_use(f, user.id))
            .ok_or_else(|| {
                ApiError::not_found(format!("tasks[{i}]: no function `{}`", spec.function_id))
            })?;
        let candidates = match (&spec.endpoint_id, &spec.endpoints) {
            (Some(e), None) => vec![e.clone()],
            (None, Some(list)) if !list.is_empty() => list.clone(),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(format!(
                    "tasks[{i}]: give `endpoint_id` or `endpoints`, not both"
                )))
            }
            _ => {
                return Err(ApiError::bad(format!(
                    "tasks[{i}]: name an `endpoint_id` or a non-empty `endpoints` list"
                )))
            }
        };
        for e in &candidates {
            if checked_eps.contains(e) {
                continue;
            }
            match broker.endpoint(e) {
                Some(row) if super::endpoints::may_use(&row, user.id) => {
                    checked_eps.insert(e.clone());
                }
                _ => {
                    return Err(ApiError::not_found(format!(
                        "tasks[{i}]: no endpoint `{e}`"
                    )))
                }
            }
        }
        let args = match &spec.args {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => serde_json::to_vec(v).map_err(ApiError::internal)?,
        };
        if args.len() > MAX_BODY {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "args_too_large",
                format!(
                    "tasks[{i}]: arguments of {} bytes exceed {MAX_BODY}",
                    args.len()
                ),
            ));
        }
        let fid = fids
            .entry(frow.id.clone())
            .or_insert_with(|| Arc::from(frow.id.as_str()))
            .clone();
        plan.push((fid, func, candidates, spec.policy.unwrap_or_default(), args));
    }
    let mut routed = Vec::with_capacity(n);
    let per_ep = {
        let mut hub = broker.hub();
        let mut per_ep: HashMap<String, u64> = HashMap::new();
        for (fid, func, candidates, policy, args) in plan {
            let ep = hub
                .route(&candidates, policy, &func.kind(), &per_ep)
                .unwrap_or_default();
            *per_ep.entry(ep.clone()).or_default() += 1;
            routed.push((
                NewTask {
                    owner: user.id,
                    function_id: fid.to_string(),
                    endpoint_id: ep,
                    args,
                },
                func,
                fid,
            ));
        }
        if let Err(r) = hub.admit(user.id, &per_ep) {
            broker.metrics.refused.fetch_add(1, Ordering::Relaxed);
            return Ok(too_busy(r));
        }
        per_ep
    };
    if broker.shared {
        if let Err(r) = broker.admit_shared(user.id, &per_ep).await? {
            broker.metrics.refused.fetch_add(1, Ordering::Relaxed);
            return Ok(too_busy(r));
        }
    }
    let rows: Vec<NewTask> = routed.iter().map(|(t, ..)| t.clone()).collect();
    let started = std::time::Instant::now();
    let (batch, created_ms, ids) = broker.db(move |s| s.insert_tasks(user.id, &rows)).await?;
    broker
        .metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    broker
        .metrics
        .submitted
        .fetch_add(ids.len() as u64, Ordering::Relaxed);
    {
        let mut hub = broker.hub();
        let mut touched = HashSet::new();
        for ((t, func, fid), id) in routed.into_iter().zip(&ids) {
            // With a shared store, the broker holding the endpoint's link takes them.
            if broker.shared && !hub.linked(&t.endpoint_id) {
                continue;
            }
            touched.insert(t.endpoint_id.clone());
            hub.enqueue(
                &t.endpoint_id,
                func.task(TaskId(*id), t.args),
                Meta {
                    owner: user.id,
                    batch,
                    function_id: fid,
                    created_ms,
                },
            );
        }
        for ep in touched {
            hub.pump(&ep);
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            task_ids: ids,
            batch_id: batch,
        }),
    )
        .into_response())
}

/// Get one task.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = u64, Path, description = "task id")),
    responses((status = 200, body = TaskInfo), (status = 401, body = super::types::ErrorBody),
              (status = 404, body = super::types::ErrorBody), (status = 422, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
pub async fn get_one(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    let row = load_one(&broker, user.id, &id).await?;
    Ok(Json(task_info(&broker, row)))
}

/// The caller's task whose id is the path segment `id`.
pub(super) async fn load_one(broker: &Broker, user: i64, id: &str) -> Result<TaskRow, ApiError> {
    let n: u64 = id
        .parse()
        .ok()
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| {
            ApiError::bad(format!("`{id}` is not a task id (a non-negative integer)"))
        })?;
    load(broker, user, vec![n])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no task {n}")))
}

/// Parses `1,2,3` (digits and commas only, as the documented pattern says).
pub(super) fn parse_ids(s: &str) -> Result<Vec<u64>, ApiError> {
    let ids: Vec<u64> = s
        .split(',')
        .map(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| p.parse::<u64>().ok())
                .flatten()
                .filter(|n| !p.is_empty() && *n <= i64::MAX as u64)
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "`{p}` is not a task id: give ids as digits separated by commas"
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    if ids.len() > MAX_QUERY_IDS {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "too_many_ids",
            format!(
                "{} ids in the query string; at most {MAX_QUERY_IDS} there: send longer lists in the body of POST /v1/tasks/query (or /wait, /stream)",
                ids.len()
            ),
        ));
    }
    Ok(ids)
}

/// Tasks by id, in the order asked.
async fn many(broker: &Broker, user: i64, ids: Vec<u64>) -> Result<TasksResponse, ApiError> {
    check_ids(broker, &ids)?;
    let order: HashMap<u64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let rows = load(broker, user, ids).await?;
    let mut tasks: Vec<TaskInfo> = rows.into_iter().map(|t| task_info(broker, t)).collect();
    tasks.sort_by_key(|t| order.get(&t.id).copied().unwrap_or(usize::MAX));
    let pending = tasks.iter().filter(|t| t.completed_ms.is_none()).count() as u64;
    Ok(TasksResponse {
        tasks,
        pending,
        next_cursor: None,
    })
}

/// Get many tasks by id (`GET /v1/tasks?ids=1,2,3`, at most 1,000; more answer `414`), or list
/// your tasks by filters, newest first, a page at a time (`?state=failed&limit=100`, then
/// `?cursor=NEXT_CURSOR` with the same filters).
#[utoipa::path(get, path = "/v1/tasks", params(super::history::ListQuery),
    responses((status = 200, body = TasksResponse), (status = 401, body = super::types::ErrorBody),
              (status = 414, body = super::types::ErrorBody), (status = 422, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
pub async fn get_many(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiQuery(q): ApiQuery<super::history::ListQuery>,
) -> Result<Json<TasksResponse>, ApiError> {
    match q.ids() {
        Some(_) if q.has_filters() => Err(ApiError::bad(
            "`ids` does not combine with filters, a cursor, an order or a limit",
        )),
        Some(ids) => {
            let ids = parse_ids(ids)?;
            Ok(Json(many(&broker, user.id, ids).await?))
        }
        None => {
            let filter = q.filter(user.id)?;
            let limit = filter.limit;
            let rows = broker.read(move |s| s.list_tasks(&filter)).await?;
            let next_cursor = (rows.len() == limit)
                .then(|| rows.last().map(|t| t.id))
                .flatten();
            let tasks: Vec<TaskInfo> = rows.into_iter().map(|t| task_info(&broker, t)).collect();
            let pending = tasks.iter().filter(|t| t.completed_ms.is_none()).count() as u64;
            Ok(Json(TasksResponse {
                tasks,
                pending,
                next_cursor,
            }))
        }
    }
}

/// Get many tasks, ids in the body (up to 10,000).
#[utoipa::path(post, path = "/v1/tasks/query", request_body = IdsBody,
    responses((status = 200, body = TasksResponse), (status = 400, body = super::types::ErrorBody),
              (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 415, body = super::types::ErrorBody), (status = 422, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
pub async fn query(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiJson(body): ApiJson<IdsBody>,
) -> Result<Json<TasksResponse>, ApiError> {
    Ok(Json(many(&broker, user.id, body.ids).await?))
}

/// Wait until every listed task has finished, or the timeout passes; returns them all, in the
/// order asked.
#[utoipa::path(post, path = "/v1/tasks/wait", request_body = WaitBody,
    responses((status = 200, body = TasksResponse), (status = 400, body = super::types::ErrorBody),
              (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 415, body = super::types::ErrorBody), (status = 422, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
pub async fn wait(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiJson(body): ApiJson<WaitBody>,
) -> Result<Json<TasksResponse>, ApiError> {
    check_ids(&broker, &body.ids)?;
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(30_000).min(300_000));
    let deadline = tokio::time::Instant::now() + timeout;
    // Register first, then read: a result recorded in between is in the read or delivered.
    let mut watch = Watch::new(
        &broker,
        user.id,
        Interest {
            tasks: body.ids.clone(),
            ..Interest::default()
        },
    );
    let rows = load(&broker, user.id, body.ids.clone()).await?;
    let mut tasks: HashMap<u64, TaskInfo> = HashMap::with_capacity(rows.len());
    let mut open: HashSet<u64> = HashSet::new();
    for r in rows {
        if r.completed_ms.is_none() {
            open.insert(r.id);
        }
        tasks.insert(r.id, task_info(&broker, r));
    }
    while !open.is_empty() {
        let Ok(Some(done)) = tokio::time::timeout_at(deadline, watch.rx.recv()).await else {
            break;
        };
        let mut take = |d: Done| {
            if open.remove(&d.id) {
                tasks.insert(d.id, (*d).clone());
            }
        };
        take(done);
        while let Ok(d) = watch.rx.try_recv() {
            take(d);
        }
    }
    drop(watch);
    // Tasks still open report where they are now.
    let hub = broker.hub();
    for id in &open {
        if let Some(t) = tasks.get_mut(id) {
            if let Some(s) = hub.live_state(*id) {
                t.state = s.name().to_string();
            }
        }
    }
    drop(hub);
    let pending = open.len() as u64;
    let mut seen = HashSet::new();
    let ordered = body
        .ids
        .iter()
        .filter(|id| seen.insert(**id))
        .filter_map(|id| tasks.remove(id))
        .collect();
    Ok(Json(TasksResponse {
        tasks: ordered,
        pending,
        next_cursor: None,
    }))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Comma-separated task ids, at most 1,000.
    #[serde(default)]
    #[param(pattern = "^[0-9]{1,19}(,[0-9]{1,19}){0,999}$")]
    ids: Option<String>,
    /// A batch id, as answered by `POST /v1/tasks`.
    #[serde(default)]
    batch: Option<u64>,
    /// Follow every task of the caller from now on (the stream does not end).
    #[serde(default)]
    all: Option<bool>,
    /// Send results finished together as one `results` event whose data is a JSON array.
    #[serde(default)]
    grouped: Option<bool>,
}

/// What a stream follows, resolved.
struct Follow {
    ids: Vec<u64>,
    batches: Vec<u64>,
    all: bool,
    /// Results ready together go in one `results` event (a JSON array).
    grouped: bool,
}

async fn follow(broker: Arc<Broker>, user: i64, f: Follow) -> Result<Response, ApiError> {
    if f.ids.is_empty() && f.batches.is_empty() && !f.all {
        return Err(ApiError::bad(
            "name what to follow: `ids`, `batch`/`batches`, or `all`",
        ));
    }
    check_ids(&broker, &f.ids)?;
    if f.batches.len() > 1000 {
        return Err(ApiError::bad("at most 1000 batches in one stream"));
    }
    for b in &f.batches {
        let b = *b;
        let owner = broker.read(move |s| s.batch_owner(b)).await?;
        if owner != Some(user) {
            return Err(ApiError::not_found(format!("no batch {b}")));
        }
    }
    let watch = Watch::new(
        &broker,
        user,
        Interest {
            tasks: f.ids.clone(),
            batches: f.batches.clone(),
            all: f.all,
        },
    );
    // The tasks already finished go first; the stream then ends when the open ones are done.
    let mut rows = load(&broker, user, f.ids.clone()).await?;
    for b in f.batches.clone() {
        rows.extend(
            broker
                .read(move |s| s.batch_tasks(b))
                .await?
                .into_iter()
                .filter(|t| t.owner == user),
        );
    }
    let mut first = Vec::new();
    let mut open: HashSet<u64> = HashSet::new();
    let mut seen: HashSet<u64> = HashSet::new();
    for r in rows {
        if !seen.insert(r.id) {
            continue;
        }
        if r.completed_ms.is_some() {
            first.push(Arc::new(task_info(&broker, r)));
        } else {
            open.insert(r.id);
        }
    }
    let state = StreamState {
        watch,
        first,
        open,
        seen,
        endless: f.all,
        ended: false,
    };
    let grouped = f.grouped;
    let s = futures_util::stream::unfold(state, move |mut st| async move {
        if st.ended {
            return None;
        }
        let mut done = std::mem::take(&mut st.first);
        if done.is_empty() {
            if st.open.is_empty() && !st.endless {
                st.ended = true;
                return Some((vec![Event::default().event("end").data("{}")], st));
            }
            match st.watch.rx.recv().await {
                Some(d) => st.take(d, &mut done),
                None => return None,
            }
            while done.len() < 1000 {
                match st.watch.rx.try_recv() {
                    Ok(d) => st.take(d, &mut done),
                    Err(_) => break,
                }
            }
        }
        let events = if grouped {
            let all: Vec<&TaskInfo> = done.iter().map(|d| &**d).collect();
            if all.is_empty() {
                Vec::new()
            } else {
                vec![Event::default()
                    .event("results")
                    .data(serde_json::to_string(&all).unwrap_or_default())]
            }
        } else {
            done.iter().map(|d| result_event(d)).collect()
        };
        Some((events, st))
    });
    let flat = futures_util::StreamExt::flat_map(s, |evs| {
        futures_util::stream::iter(evs.into_iter().map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(flat)
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct StreamState {
    watch: Watch,
    first: Vec<Done>,
    open: HashSet<u64>,
    seen: HashSet<u64>,
    endless: bool,
    ended: bool,
}

impl StreamState {
    fn take(&mut self, d: Done, done: &mut Vec<Done>) {
        let was_open = self.open.remove(&d.id);
        // A follower of all tasks hears of tasks it never read; each is sent once (the ones
        // read as finished went out first).
        if was_open || (self.endless && !self.seen.contains(&d.id)) {
            done.push(d);
        }
    }
}

fn result_event(d: &TaskInfo) -> Event {
    Event::default()
        .event("result")
        .data(serde_json::to_string(d).unwrap_or_default())
}

/// Stream results as server-sent events (`event: result`, data a task; or with `grouped`,
/// `event: results`, data an array of the tasks finished together) as the followed tasks
/// finish, then `event: end`. Follow `ids` (at most 1,000), a `batch`, or `all` of your tasks
/// (that stream does not end). Tasks already finished are sent first.
#[utoipa::path(get, path = "/v1/tasks/stream", params(StreamQuery),
    responses((status = 200, description = "text/event-stream of task results", content_type = "text/event-stream"),
              (status = 401, body = super::types::ErrorBody), (status = 404, body = super::types::ErrorBody),
              (status = 413, body = super::types::ErrorBody), (status = 414, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn stream(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    let ids = match &q.ids {
        Some(s) => parse_ids(s)?,
        None => Vec::new(),
    };
    let f = Follow {
        ids,
        batches: q.batch.into_iter().collect(),
        all: q.all.unwrap_or(false),
        grouped: q.grouped.unwrap_or(false),
    };
    follow(broker, user.id, f).await
}

/// Stream results as server-sent events, naming what to follow in the body: task `ids` (up to
/// 10,000), `batches`, or `all`.
#[utoipa::path(post, path = "/v1/tasks/stream", request_body = StreamBody,
    responses((status = 200, description = "text/event-stream of task results", content_type = "text/event-stream"),
              (status = 400, body = super::types::ErrorBody), (status = 401, body = super::types::ErrorBody),
              (status = 404, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 415, body = super::types::ErrorBody), (status = 422, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
pub async fn stream_post(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiJson(body): ApiJson<StreamBody>,
) -> Result<Response, ApiError> {
    let f = Follow {
        ids: body.ids,
        batches: body.batches,
        all: body.all,
        grouped: body.grouped,
    };
    follow(broker, user.id, f).await
}

/// Cancel tasks: those still at the broker fail as `cancelled` at once; those already at an
/// endpoint are cancelled there if they have not started.
#[utoipa::path(post, path = "/v1/tasks/cancel", request_body = IdsBody,
    responses((status = 200, body = Cancelled), (status = 400, body = super::types::ErrorBody),
              (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 415, body = super::types::ErrorBody), (status = 422, body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
pub async fn cancel(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiJson(body): ApiJson<IdsBody>,
) -> Result<Json<Cancelled>, ApiError> {
    check_ids(&broker, &body.ids)?;
    let mine: Vec<u64> = load(&broker, user.id, body.ids)
        .await?
        .into_iter()
        .filter(|t| t.completed_ms.is_none())
        .map(|t| t.id)
        .collect();
    let removed = {
        let mut hub = broker.hub();
        let mut removed = hub.cancel(&mine);
        if broker.shared {
            // Held by the broker linked to their endpoint, which hears of the result.
            removed.extend(mine.iter().filter(|id| hub.live_state(**id).is_none()));
        }
        removed
    };
    let results = removed
        .iter()
        .map(|id| {
            TaskResult::failure(
                TaskId(*id),
                FailureKind::Cancelled,
                "cancelled before it was sent to an endpoint",
            )
        })
        .collect();
    if let Err(e) = broker.record(results).await {
        broker.hub().reopen(&removed);
        return Err(e.into());
    }
    Ok(Json(Cancelled { cancelled: removed }))
}
