//! Your task history: listing tasks by filters a page at a time (`GET /v1/tasks`), and counts
//! over recent tasks (`GET /v1/tasks/stats`) for the dashboard.

use super::types::{FinishedBucket, TaskStats};
use super::{ApiError, ApiQuery, Caller};
use crate::store::TaskFilter;
use crate::Broker;
use axum::extract::State;
use axum::Json;
use std::sync::Arc;

/// Most tasks in one page.
pub const MAX_PAGE: u32 = 1000;

#[derive(Clone, Copy, Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateFilter {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Clone, Copy, Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Newest first.
    Desc,
    /// Oldest first: a walk that keeps up with tasks being added.
    Asc,
}

/// `GET /v1/tasks`: either `ids`, or filters.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Comma-separated task ids, at most 1,000 (use `POST /v1/tasks/query` for more): these
    /// tasks, in this order. Not combined with the filters.
    #[param(pattern = "^[0-9]{1,19}(,[0-9]{1,19}){0,999}$")]
    ids: Option<String>,
    /// Only tasks in this state.
    #[param(inline)]
    state: Option<StateFilter>,
    /// Only tasks of this function (its id).
    function: Option<String>,
    /// Only tasks sent to this endpoint (its id).
    endpoint: Option<String>,
    /// Only tasks created at or after this time (ms since the epoch).
    since_ms: Option<i64>,
    /// Only tasks created before this time (ms since the epoch).
    until_ms: Option<i64>,
    /// The previous page's `next_cursor`.
    cursor: Option<u64>,
    /// `desc` (newest first, the default) or `asc`.
    #[param(inline)]
    order: Option<Order>,
    /// Tasks per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

impl ListQuery {
    pub fn ids(&self) -> Option<&str> {
        self.ids.as_deref()
    }

    /// The store's filter for `owner`; a limit out of range, or ids mixed with filters, is
    /// refused naming the parameter.
    pub fn filter(&self, owner: i64) -> Result<TaskFilter, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::bad(format!(
                "`limit` must be 1 to {MAX_PAGE}, not {limit}"
            )));
        }
        if self.cursor.is_some_and(|c| c > i64::MAX as u64) {
            return Err(ApiError::bad("`cursor` is not a task id"));
        }
        for (name, s) in [("function", &self.function), ("endpoint", &self.endpoint)] {
            if s.as_ref().is_some_and(|s| s.len() > 128) {
                return Err(ApiError::bad(format!("`{name}` is not an id")));
            }
        }
        Ok(TaskFilter {
            owner,
            state: self.state.map(|s| {
                match s {
                    StateFilter::Pending => "pending",
                    StateFilter::Succeeded => "succeeded",
                    StateFilter::Failed => "failed",
                }
                .to_string()
            }),
            function_id: self.function.clone(),
            endpoint_id: self.endpoint.clone(),
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            cursor: self.cursor,
            oldest_first: matches!(self.order, Some(Order::Asc)),
            limit: limit as usize,
        })
    }

    /// Whether any filter is set (they do not combine with `ids`).
    pub fn has_filters(&self) -> bool {
        self.state.is_some()
            || self.function.is_some()
            || self.endpoint.is_some()
            || self.since_ms.is_some()
            || self.until_ms.is_some()
            || self.cursor.is_some()
            || self.order.is_some()
            || self.limit.is_some()
    }
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Seconds back from now to count finished tasks (default 600, at most 7 days).
    #[param(minimum = 1, maximum = 604800)]
    window_s: Option<u64>,
    /// Seconds per bucket of the finished-tasks series (default 10; at most 10,000 buckets).
    #[param(minimum = 1, maximum = 604800)]
    bucket_s: Option<u64>,
}

/// Counts over your tasks: all of them by state; those finished in the window by failure kind
/// and per bucket of time.
#[utoipa::path(get, path = "/v1/tasks/stats", params(StatsQuery),
    responses((status = 200, body = TaskStats), (status = 401, body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn stats(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<TaskStats>, ApiError> {
    let window_s = q.window_s.unwrap_or(600);
    let bucket_s = q.bucket_s.unwrap_or(10);
    if !(1..=604_800).contains(&window_s) || !(1..=604_800).contains(&bucket_s) {
        return Err(ApiError::bad(
            "`window_s` and `bucket_s` must be 1 to 604800 seconds",
        ));
    }
    if window_s / bucket_s > 10_000 {
        return Err(ApiError::bad(
            "`window_s / bucket_s` must be at most 10,000 buckets",
        ));
    }
    let now = crate::store::now_ms();
    let since = now - (window_s as i64) * 1000;
    let bucket_ms = (bucket_s as i64) * 1000;
    let s = broker
        .read(move |st| st.task_stats(user.id, since, bucket_ms))
        .await?;
    Ok(Json(TaskStats {
        by_state: s.by_state.into_iter().collect(),
        failures: s.failures.into_iter().collect(),
        finished: s
            .finished
            .into_iter()
            .map(|(t_ms, succeeded, failed)| FinishedBucket {
                t_ms,
                succeeded,
                failed,
            })
            .collect(),
        window_s,
        bucket_s,
        now_ms: now,
    }))
}
