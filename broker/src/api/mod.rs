//! The REST API: routes, errors, the JSON and authentication extractors, and the OpenAPI
//! document generated from the handlers' annotations.

mod data;
mod endpoints;
mod functions;
mod history;
pub mod tasks;
pub mod types;

use crate::{Broker, UserRow};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use types::{ErrorBody, ErrorDetail};
use utoipa::OpenApi;

/// An error answer: a status and a JSON body naming the problem.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds to wait before trying again (`Retry-After`), for refusals that pass.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    pub fn forbidden(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", what)
    }
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the broker could not complete the request: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Taken(m) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", m)
            }
            crate::store::StoreError::Quota(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", m)
            }
            e => ApiError::internal(e),
        }
    }
}

/// What a caller may do to a registered function or endpoint: the owner may change it; a user
/// who may only use it gets 403; anyone else 404, so that private things are not revealed.
pub fn owner_only(
    found: Option<(i64, bool)>,
    user: i64,
    what: &str,
    id: &str,
) -> Result<(), ApiError> {
    match found {
        Some((owner, _)) if owner == user => Ok(()),
        Some((_, true)) => Err(ApiError::forbidden(format!(
            "only the owner may change this {what}"
        ))),
        _ => Err(ApiError::not_found(format!("no {what} `{id}`"))),
    }
}

/// Query parameters whose rejections are [`ApiError`]s that name the problem. A parameter
/// given without a value (`?limit=`) is refused rather than read as absent, where it would
/// silently take its default.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.query().unwrap_or("");
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if value.is_empty() {
                return Err(ApiError::bad(format!("parameter `{name}` has no value")));
            }
        }
        let axum::extract::Query(q) = axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad(e.body_text()))?;
        Ok(ApiQuery(q))
    }
}

/// A JSON body whose rejections are turned into [`ApiError`]s that name the problem.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let (status, code) = match &rejection {
                    JsonRejection::JsonDataError(_) => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
                    }
                    JsonRejection::JsonSyntaxError(_) => {
                        (StatusCode::BAD_REQUEST, "malformed_json")
                    }
                    JsonRejection::MissingJsonContentType(_) => {
                        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_json")
                    }
                    JsonRejection::BytesRejection(_) => {
                        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
                    }
                    _ => (StatusCode::BAD_REQUEST, "invalid_body"),
                };
                let mut message = rejection.body_text();
                if code == "body_too_large" {
                    message = format!("the request body exceeds the limit: {message}");
                }
                Err(ApiError::new(status, code, message))
            }
        }
    }
}

/// The authenticated caller.
#[derive(Debug)]
pub struct Caller(pub UserRow);

impl FromRequestParts<Arc<Broker>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        broker: &Arc<Broker>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing `Authorization: Bearer TOKEN` header",
                )
            })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the Authorization header must be `Bearer TOKEN`",
            )
        })?;
        let user = broker.user_by_token(token.trim()).await?.ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")
        })?;
        let allowed = broker
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(user.id, std::time::Instant::now());
        if let Err(secs) = allowed {
            broker
                .metrics
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} requests per second; retry in {secs} s",
                    broker.config.limits.max_requests_per_sec
                ),
            );
            e.retry_after = Some(secs);
            return Err(e);
        }
        Ok(Caller(user))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "fxr broker", description = "Federated function-as-a-service: register functions and endpoints, submit tasks, fetch results."),
    paths(
        whoami,
        functions::register, functions::list, functions::get_one, functions::delete,
        endpoints::register, endpoints::list, endpoints::status, endpoints::delete, endpoints::link,
        tasks::submit, tasks::get_one, tasks::get_many, history::stats, tasks::query, tasks::wait, tasks::stream, tasks::stream_post, tasks::cancel, data::get_data,
    ),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// Who am I?
#[utoipa::path(get, path = "/v1/whoami", responses((status = 200, body = types::WhoAmI), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn whoami(Caller(u): Caller) -> Json<types::WhoAmI> {
    Json(types::WhoAmI {
        id: u.id,
        name: u.name,
    })
}

async fn openapi_json() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(s) => ([(axum::http::header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// Prometheus metrics (text format 0.0.4). Counts only, no names of users or functions.
async fn metrics(axum::extract::State(broker): axum::extract::State<Arc<Broker>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&broker),
    )
        .into_response()
}

/// The dashboard: one page, no build step; it asks for the same token as the API and reads
/// everything through the API.
async fn dashboard() -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("../dashboard.html"),
    )
        .into_response()
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such route; see /v1/openapi.json")
}

/// The router with every route.
pub fn router(broker: Arc<Broker>) -> Router {
    let limit = broker.config.max_body_bytes;
    Router::new()
        .route("/v1/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics))
        .route("/v1/whoami", get(whoami))
        .route(
            "/v1/functions",
            post(functions::register).get(functions::list),
        )
        .route(
            "/v1/functions/{id}",
            get(functions::get_one).delete(functions::delete),
        )
        .route(
            "/v1/endpoints",
            post(endpoints::register).get(endpoints::list),
        )
        .route(
            "/v1/endpoints/{id}",
            get(endpoints::status).delete(endpoints::delete),
        )
        .route("/v1/endpoints/{id}/link", get(endpoints::link))
        .route("/v1/tasks", post(tasks::submit).get(tasks::get_many))
        .route("/v1/tasks/query", post(tasks::query))
        .route("/v1/tasks/wait", post(tasks::wait))
        .route(
            "/v1/tasks/stream",
            get(tasks::stream).post(tasks::stream_post),
        )
        .route("/v1/tasks/cancel", post(tasks::cancel))
        .route("/v1/tasks/stats", get(history::stats))
        .route("/dashboard", get(dashboard))
        .route("/v1/tasks/{id}", get(tasks::get_one))
        .route("/v1/tasks/{id}/data", get(data::get_data))
        .fallback(fallback)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| {
            refuse_oversized(limit, req, next)
        }))
        .with_state(broker)
}

/// The most of an oversized body the broker reads (and discards) before it answers 413.
const DRAIN_MAX: u64 = 64 * 1024 * 1024;
/// How long it reads for.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers 413 to a request whose declared length exceeds the body limit, after reading the
/// body it declared (at most [`DRAIN_MAX`] bytes for at most [`DRAIN_TIME`]).
///
/// Why read what it refuses: a server that answers and closes while the client is still
/// writing leaves unread bytes in its socket, and the kernel then resets the connection, which
/// can destroy the answer before the client reads it; the client sees a broken pipe instead of
/// the 413 that says what is wrong. A body without a declared length is still cut at the limit
/// by the extractors.
async fn refuse_oversized(limit: usize, req: Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(len) = declared.filter(|&n| n > limit as u64) else {
        return next.run(req).await;
    };
    if len <= DRAIN_MAX {
        use futures_util::StreamExt;
        let mut body = req.into_body().into_data_stream();
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut read = 0u64;
            while let Some(Ok(chunk)) = body.next().await {
                read += chunk.len() as u64;
                if read >= len {
                    break;
                }
            }
        })
        .await;
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body exceeds the limit: {len} bytes declared, {limit} allowed"),
    )
    .into_response()
}
