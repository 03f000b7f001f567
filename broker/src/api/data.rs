//! `GET /v1/tasks/{id}/data`: a result too large to travel with the task, read from the store
//! of the node that ran it, through the task's endpoint, a chunk at a time.
//!
//! The broker keeps none of it: each chunk is asked of the endpoint when the client is ready
//! for it, so memory per download is one chunk whatever the size. The body's length is known
//! before it starts (`Content-Length`), its CRC-32 is in `X-Fxr-Checksum`, and every chunk is
//! checked against the reference: a changed or corrupted object ends the body early, which the
//! client sees as a short read.

use super::tasks::load_one;
use super::{ApiError, Caller};
use crate::Broker;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use fxr_protocol::DataRef;
use std::sync::Arc;
use std::time::Duration;

/// Bytes asked of the endpoint at a time (its link carries at most 4 MiB per message).
const CHUNK: u64 = 2 << 20;
/// How long the endpoint has to answer one chunk.
const CHUNK_WAIT: Duration = Duration::from_secs(60);

/// Download a result kept at the endpoint.
#[utoipa::path(get, path = "/v1/tasks/{id}/data", params(("id" = u64, Path, description = "task id")),
    responses((status = 200, description = "the result's JSON value, as the function returned it",
               content_type = "application/octet-stream", body = Vec<u8>),
              (status = 401, body = super::types::ErrorBody),
              (status = 404, description = "no such task, or its result is not kept at the endpoint", body = super::types::ErrorBody),
              (status = 409, description = "the task has not finished", body = super::types::ErrorBody),
              (status = 422, body = super::types::ErrorBody),
              (status = 502, description = "the endpoint could not read the result", body = super::types::ErrorBody),
              (status = 503, body = super::types::ErrorBody)))]
pub async fn get_data(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = load_one(&broker, user.id, &id).await?;
    let Some(text) = row.data_ref else {
        return Err(if row.state == "pending" {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_finished",
                format!("task {} has not finished", row.id),
            )
        } else if row.result.is_some() {
            ApiError::not_found(format!(
                "task {} returned its result whole: read it with GET /v1/tasks/{}",
                row.id, row.id
            ))
        } else {
            ApiError::not_found(format!("task {} failed and has no result", row.id))
        });
    };
    let r: DataRef = serde_json::from_str(&text).map_err(ApiError::internal)?;
    let endpoint = row.endpoint_id;
    // The first chunk before the answer, so a result the endpoint cannot read is an error
    // status rather than a body cut short.
    let first = next_chunk(&broker, &endpoint, &r, 0).await?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&first);
    let state = Download {
        broker: broker.clone(),
        endpoint,
        offset: first.len() as u64,
        first: Some(first),
        hasher,
        r: r.clone(),
    };
    let stream = futures_util::stream::unfold(state, |mut d| async move {
        if let Some(first) = d.first.take() {
            return Some((Ok(Bytes::from(first)), d));
        }
        if d.offset >= d.r.size {
            return None;
        }
        match next_chunk(&d.broker, &d.endpoint, &d.r, d.offset).await {
            Ok(bytes) => {
                d.offset += bytes.len() as u64;
                d.hasher.update(&bytes);
                if d.offset == d.r.size && d.hasher.clone().finalize() != d.r.checksum {
                    tracing::warn!(key = %d.r.key, node = %d.r.node, "stored result failed its checksum");
                    d.offset = u64::MAX;
                    return Some((Err(std::io::Error::other("checksum mismatch")), d));
                }
                Some((Ok(Bytes::from(bytes)), d))
            }
            Err(e) => {
                tracing::warn!(key = %d.r.key, error = %e.message, "reading a stored result failed");
                d.offset = u64::MAX;
                Some((Err(std::io::Error::other(e.message)), d))
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, r.size.to_string()),
            (
                header::HeaderName::from_static("x-fxr-checksum"),
                format!("{:08x}", r.checksum),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

struct Download {
    broker: Arc<Broker>,
    endpoint: String,
    r: DataRef,
    offset: u64,
    first: Option<Vec<u8>>,
    hasher: crc32fast::Hasher,
}

/// The chunk at `offset`, checked against the reference.
async fn next_chunk(
    broker: &Broker,
    endpoint: &str,
    r: &DataRef,
    offset: u64,
) -> Result<Vec<u8>, ApiError> {
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m);
    let bad_gateway = |m: String| ApiError::new(StatusCode::BAD_GATEWAY, "endpoint_error", m);
    if r.size == 0 {
        return Ok(Vec::new());
    }
    let len = CHUNK.min(r.size - offset);
    let reply = broker
        .fetch_chunk(endpoint, r, offset, len, CHUNK_WAIT)
        .await
        .map_err(unavailable)?;
    r.accept(reply, offset, len)
        .map_err(|e| bad_gateway(format!("the endpoint could not read the result: {e}")))
}
