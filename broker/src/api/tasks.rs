//! Task submission, lookup, waiting, streaming and cancellation.

use super::types::{
    Cancelled, IdsBody, SubmitBody, Submitted, TaskError, TaskInfo, TasksResponse, WaitBody,
};
use super::{ApiError, ApiJson, Caller};
use crate::store::{NewTask, TaskRow};
use crate::Broker;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use fxr_protocol::{FailureKind, Task, TaskId, TaskResult, MAX_BODY};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

fn task_info(broker: &Broker, t: TaskRow) -> TaskInfo {
    let state = if t.state == "pending" {
        broker
            .hub()
            .live_state(t.id)
            .map_or("pending", |s| s.name())
            .to_string()
    } else {
        t.state
    };
    let result = t.result.map(|r| {
        serde_json::from_slice(&r)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&r).into_owned()))
    });
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
        result,
        error,
        created_ms: t.created_ms,
        completed_ms: t.completed_ms,
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

/// Tasks of `user` among `ids`, in the order asked; other users' tasks are left out.
async fn load(broker: &Broker, user: i64, ids: Vec<u64>) -> Result<Vec<TaskRow>, ApiError> {
    let rows = broker.db(move |s| s.tasks(&ids)).await?;
    Ok(rows.into_iter().filter(|t| t.owner == user).collect())
}

/// Submit tasks (at most 10,000 per request). Each names a function and either one endpoint or
/// several with a routing policy. The tasks are stored before the answer is sent.
#[utoipa::path(post, path = "/v1/tasks", request_body = SubmitBody,
    responses((status = 202, body = Submitted), (status = 403, body = super::types::ErrorBody),
              (status = 404, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody)))]
pub async fn submit(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiJson(body): ApiJson<SubmitBody>,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
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
    let mut plan = Vec::with_capacity(n);
    let mut checked_eps: HashSet<String> = HashSet::new();
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
        plan.push((
            frow.id,
            func,
            candidates,
            spec.policy.unwrap_or_default(),
            args,
        ));
    }
    let mut routed = Vec::with_capacity(n);
    {
        let mut hub = broker.hub();
        for (fid, func, candidates, policy, args) in plan {
            let ep = hub.route(&candidates, policy).unwrap_or_default();
            routed.push((
                NewTask {
                    owner: user.id,
                    function_id: fid,
                    endpoint_id: ep,
                    args,
                },
                func,
            ));
        }
    }
    let rows: Vec<NewTask> = routed.iter().map(|(t, _)| t.clone()).collect();
    let ids = broker.db(move |s| s.insert_tasks(&rows)).await?;
    {
        let mut hub = broker.hub();
        let mut touched = HashSet::new();
        for ((t, func), id) in routed.into_iter().zip(&ids) {
            touched.insert(t.endpoint_id.clone());
            hub.enqueue(
                &t.endpoint_id,
                Task {
                    id: TaskId(*id),
                    function: func,
                    args: t.args,
                    attempt: 0,
                    container: None,
                },
            );
        }
        for ep in touched {
            hub.pump(&ep);
        }
    }
    Ok((StatusCode::ACCEPTED, Json(Submitted { task_ids: ids })))
}

/// Get one task.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = u64, Path, description = "task id")),
    responses((status = 200, body = TaskInfo), (status = 404, body = super::types::ErrorBody)))]
pub async fn get_one(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    let n: u64 = id
        .parse()
        .map_err(|_| ApiError::bad(format!("`{id}` is not a task id (a non-negative integer)")))?;
    let row = load(&broker, user.id, vec![n])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no task {n}")))?;
    Ok(Json(task_info(&broker, row)))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct IdsQuery {
    /// Comma-separated task ids.
    ids: String,
}

fn parse_ids(s: &str) -> Result<Vec<u64>, ApiError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse()
                .map_err(|_| ApiError::bad(format!("`{p}` is not a task id")))
        })
        .collect()
}

/// Get many tasks: `GET /v1/tasks?ids=1,2,3`.
#[utoipa::path(get, path = "/v1/tasks", params(IdsQuery), responses((status = 200, body = TasksResponse)))]
pub async fn get_many(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    q: Result<Query<IdsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TasksResponse>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let ids = parse_ids(&q.ids)?;
    check_ids(&broker, &ids)?;
    let rows = load(&broker, user.id, ids).await?;
    let tasks: Vec<TaskInfo> = rows.into_iter().map(|t| task_info(&broker, t)).collect();
    let pending = tasks.iter().filter(|t| t.completed_ms.is_none()).count() as u64;
    Ok(Json(TasksResponse { tasks, pending }))
}

/// Wait until every listed task has finished, or the timeout passes; returns them all.
#[utoipa::path(post, path = "/v1/tasks/wait", request_body = WaitBody, responses((status = 200, body = TasksResponse)))]
pub async fn wait(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiJson(body): ApiJson<WaitBody>,
) -> Result<Json<TasksResponse>, ApiError> {
    check_ids(&broker, &body.ids)?;
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(30_000).min(300_000));
    let deadline = tokio::time::Instant::now() + timeout;
    // Each wake-up re-reads only the tasks still pending, so a wait on 10,000 tasks does not
    // re-read the finished ones for every result batch.
    let mut finished: Vec<TaskRow> = Vec::with_capacity(body.ids.len());
    let mut remaining = body.ids.clone();
    loop {
        let notified = broker.done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let rows = load(&broker, user.id, std::mem::take(&mut remaining)).await?;
        let (done, open): (Vec<TaskRow>, Vec<TaskRow>) =
            rows.into_iter().partition(|t| t.completed_ms.is_some());
        finished.extend(done);
        tracing::debug!(pending = open.len(), "wait checked");
        if open.is_empty() || tokio::time::Instant::now() >= deadline {
            let pending = open.len() as u64;
            finished.extend(open);
            let mut tasks: Vec<TaskInfo> = finished
                .into_iter()
                .map(|t| task_info(&broker, t))
                .collect();
            let order: std::collections::HashMap<u64, usize> = body
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, i))
                .collect();
            tasks.sort_by_key(|t| order.get(&t.id).copied().unwrap_or(usize::MAX));
            return Ok(Json(TasksResponse { tasks, pending }));
        }
        remaining = open.into_iter().map(|t| t.id).collect();
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// Stream results as server-sent events (`event: result`, data a task) as the listed tasks
/// finish, then `event: end`.
#[utoipa::path(get, path = "/v1/tasks/stream", params(IdsQuery),
    responses((status = 200, description = "text/event-stream of task results")))]
pub async fn stream(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    q: Result<Query<IdsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let ids = parse_ids(&q.ids)?;
    check_ids(&broker, &ids)?;
    let state = (broker, user.id, ids, false);
    let s =
        futures_util::stream::unfold(state, |(broker, user, mut remaining, ended)| async move {
            if ended {
                return None;
            }
            loop {
                if remaining.is_empty() {
                    return Some((
                        vec![Event::default().event("end").data("{}")],
                        (broker, user, remaining, true),
                    ));
                }
                let waker = broker.clone();
                let notified = waker.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let rows = match load(&broker, user, remaining.clone()).await {
                    Ok(r) => r,
                    Err(e) => {
                        let ev = Event::default().event("error").data(e.message);
                        return Some((vec![ev], (broker, user, remaining, true)));
                    }
                };
                // Tasks that are not the caller's are dropped from the stream.
                let known: HashSet<u64> = rows.iter().map(|t| t.id).collect();
                remaining.retain(|id| known.contains(id));
                let done: Vec<TaskRow> = rows
                    .into_iter()
                    .filter(|t| t.completed_ms.is_some())
                    .collect();
                if !done.is_empty() {
                    let finished: HashSet<u64> = done.iter().map(|t| t.id).collect();
                    remaining.retain(|id| !finished.contains(id));
                    let events = done
                        .into_iter()
                        .map(|t| {
                            let info = task_info(&broker, t);
                            Event::default()
                                .event("result")
                                .data(serde_json::to_string(&info).unwrap_or_default())
                        })
                        .collect();
                    return Some((events, (broker, user, remaining, false)));
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), notified).await;
            }
        });
    let flat = futures_util::StreamExt::flat_map(s, |evs| {
        futures_util::stream::iter(evs.into_iter().map(Ok))
    });
    Ok(Sse::new(flat).keep_alive(KeepAlive::default()))
}

/// Cancel tasks: those still at the broker fail as `cancelled` at once; those already at an
/// endpoint are cancelled there if they have not started.
#[utoipa::path(post, path = "/v1/tasks/cancel", request_body = IdsBody, responses((status = 200, body = Cancelled)))]
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
    let removed = broker.hub().cancel(&mine);
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
    broker.record(results).await?;
    Ok(Json(Cancelled { cancelled: removed }))
}
