//! Endpoint registration, status, and the endpoint link's WebSocket upgrade.

use super::types::{EndpointBody, EndpointCreated, EndpointInfo};
use super::{ApiError, ApiJson, Caller};
use crate::{auth, Broker, EndpointRow};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use std::sync::Arc;

/// Whether `user` may send tasks to (and see) this endpoint.
pub fn may_use(e: &EndpointRow, user: i64) -> bool {
    e.owner == user || e.shared_with.contains(&user)
}

async fn info(broker: &Broker, e: &EndpointRow) -> EndpointInfo {
    let owner = broker.user_name(e.owner).await;
    let hub = broker.hub();
    let rt = hub.endpoint(&e.id);
    let info = EndpointInfo {
        id: e.id.clone(),
        name: e.name.clone(),
        owner,
        connected: rt.is_some_and(|r| r.connected()),
        backlog: rt.map_or(0, |r| r.backlog() as u64),
        last_heartbeat_ms_ago: rt
            .and_then(|r| r.status_at)
            .map(|t| t.elapsed().as_millis() as u64),
        ..EndpointInfo::default()
    };
    match rt.and_then(|r| r.status.as_ref()) {
        Some(s) => info.with_status(s),
        None => info,
    }
}

/// Register an endpoint; the answer holds its credential, shown only this once.
#[utoipa::path(post, path = "/v1/endpoints", request_body = EndpointBody,
    responses((status = 201, body = EndpointCreated), (status = 400, body = super::types::ErrorBody), (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody), (status = 415, body = super::types::ErrorBody), (status = 422, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn register(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiJson(body): ApiJson<EndpointBody>,
) -> Result<(StatusCode, Json<EndpointCreated>), ApiError> {
    if body.name.trim().is_empty() || body.name.len() > 128 {
        return Err(ApiError::bad("`name` must be 1 to 128 characters"));
    }
    let shared_with = broker.user_ids(&body.shared_with).await?;
    let credential = auth::new_secret().map_err(ApiError::internal)?;
    let row = EndpointRow {
        id: auth::new_id().map_err(ApiError::internal)?,
        owner: user.id,
        name: body.name.clone(),
        credential_hash: auth::hash(&credential),
        shared_with,
    };
    broker.add_endpoint(row.clone()).await?;
    Ok((
        StatusCode::CREATED,
        Json(EndpointCreated {
            id: row.id,
            name: row.name,
            credential,
        }),
    ))
}

/// List the endpoints the caller may use.
#[utoipa::path(get, path = "/v1/endpoints", responses((status = 200, body = Vec<EndpointInfo>), (status = 401, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn list(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
) -> Json<Vec<EndpointInfo>> {
    let mut rows: Vec<EndpointRow> = broker
        .endpoints()
        .into_iter()
        .filter(|e| may_use(e, user.id))
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let mut out = Vec::new();
    for e in rows {
        out.push(info(&broker, &e).await);
    }
    Json(out)
}

/// An endpoint's status.
#[utoipa::path(get, path = "/v1/endpoints/{id}", params(("id" = String, Path, description = "endpoint id")),
    responses((status = 200, body = EndpointInfo), (status = 401, body = super::types::ErrorBody), (status = 404, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn status(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<EndpointInfo>, ApiError> {
    broker.refresh([], [id.clone()]).await?;
    match broker.endpoint(&id) {
        Some(e) if may_use(&e, user.id) => Ok(Json(info(&broker, &e).await)),
        _ => Err(ApiError::not_found(format!("no endpoint `{id}`"))),
    }
}

/// Delete an endpoint (owner only).
#[utoipa::path(delete, path = "/v1/endpoints/{id}", params(("id" = String, Path, description = "endpoint id")),
    responses((status = 204), (status = 401, body = super::types::ErrorBody), (status = 403, body = super::types::ErrorBody), (status = 404, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn delete(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    broker.refresh([], [id.clone()]).await?;
    let found = broker
        .endpoint(&id)
        .map(|e| (e.owner, may_use(&e, user.id)));
    super::owner_only(found, user.id, "endpoint", &id)?;
    broker.remove_endpoint(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The endpoint link: a WebSocket the endpoint's interchange opens with its credential
/// (`Authorization: Bearer CREDENTIAL`). Binary frames carry protocol messages.
#[utoipa::path(get, path = "/v1/endpoints/{id}/link", params(("id" = String, Path, description = "endpoint id")),
    responses((status = 101, description = "switching to the WebSocket link"), (status = 400, body = super::types::ErrorBody), (status = 401, body = super::types::ErrorBody)))]
pub async fn link(
    State(broker): State<Arc<Broker>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let credential = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the link needs `Authorization: Bearer CREDENTIAL`",
            )
        })?;
    // An unknown id and a wrong credential get the same answer, so ids cannot be probed.
    let hashed = auth::hash(credential.trim());
    broker.refresh([], [id.clone()]).await?;
    if broker.endpoint(&id).is_none_or(|e| {
        !fxr_protocol::auth::same_bytes(hashed.as_bytes(), e.credential_hash.as_bytes())
    }) {
        tracing::warn!(endpoint_id = %id, "endpoint link refused: unknown endpoint or wrong credential");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown endpoint or wrong credential",
        ));
    }
    let ws =
        ws.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "not_websocket", e.to_string()))?;
    let max = broker.config.max_body_bytes.max(fxr_protocol::MAX_FRAME) + 64;
    Ok(ws
        .max_message_size(max)
        .on_upgrade(move |socket| crate::link::run(broker, id, socket)))
}
