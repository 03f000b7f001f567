//! Function registration and lookup.

use super::types::{FunctionBody, FunctionInfo, Visibility};
use super::{ApiError, ApiJson, Caller};
use crate::{auth, runnable_of, Broker, FunctionRow};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use std::sync::Arc;

/// Whether `user` may run (and see) this function.
pub fn may_use(f: &FunctionRow, user: i64) -> bool {
    f.owner == user || f.public || f.shared_with.contains(&user)
}

async fn info(broker: &Broker, f: &FunctionRow) -> Result<FunctionInfo, ApiError> {
    let body: FunctionBody = serde_json::from_str(&f.spec).map_err(ApiError::internal)?;
    Ok(FunctionInfo::new(
        f.id.clone(),
        broker.user_name(f.owner).await,
        body,
    ))
}

/// Register a function.
#[utoipa::path(post, path = "/v1/functions", request_body = FunctionBody,
    responses((status = 201, body = FunctionInfo), (status = 200, description = "the same function was registered already: its id", body = FunctionInfo), (status = 400, body = super::types::ErrorBody), (status = 401, body = super::types::ErrorBody), (status = 413, body = super::types::ErrorBody), (status = 415, body = super::types::ErrorBody), (status = 422, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn register(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    ApiJson(body): ApiJson<FunctionBody>,
) -> Result<(StatusCode, Json<FunctionInfo>), ApiError> {
    if body.name.trim().is_empty() || body.name.len() > 128 {
        return Err(ApiError::bad("`name` must be 1 to 128 characters"));
    }
    if body.description.len() > 4096 {
        return Err(ApiError::bad(
            "`description` must be at most 4096 characters",
        ));
    }
    // Fields of another kind are refused at registration (stored functions are read back as
    // they were accepted).
    use super::types::FunctionKind;
    if body.kind != FunctionKind::Mpi && (body.num_nodes.is_some() || body.ranks_per_node.is_some())
    {
        return Err(ApiError::bad(
            "`num_nodes` and `ranks_per_node` are for mpi functions",
        ));
    }
    if body.kind == FunctionKind::Builtin
        && (body.walltime_ms.is_some() || body.env.is_some() || body.cwd.is_some())
    {
        return Err(ApiError::bad(
            "`walltime_ms`, `env` and `cwd` are for shell and mpi functions",
        ));
    }
    if body.kind == FunctionKind::Python && (body.env.is_some() || body.cwd.is_some()) {
        return Err(ApiError::bad(
            "`env` and `cwd` are for shell and mpi functions",
        ));
    }
    if body.kind != FunctionKind::Python
        && (body.source.is_some() || body.entry.is_some() || body.python_version.is_some())
    {
        return Err(ApiError::bad(
            "`source`, `entry` and `python_version` are for python functions",
        ));
    }
    let func = runnable_of(&body).map_err(ApiError::bad)?;
    let shared_with = broker.user_ids(&body.shared_with).await?;
    let row = FunctionRow {
        id: auth::new_id().map_err(ApiError::internal)?,
        owner: user.id,
        name: body.name.clone(),
        description: body.description.clone(),
        spec: serde_json::to_string(&body).map_err(ApiError::internal)?,
        public: body.visibility == Visibility::Public,
        shared_with,
    };
    match broker.add_function(row.clone(), func).await? {
        None => Ok((StatusCode::CREATED, Json(info(&broker, &row).await?))),
        Some(id) => match broker
            .refresh([id.clone()], [])
            .await
            .map(|()| broker.function(&id))?
        {
            Some((f, _)) => Ok((StatusCode::OK, Json(info(&broker, &f).await?))),
            None => Err(ApiError::not_found(format!("no function `{id}`"))),
        },
    }
}

/// List the functions the caller may run.
#[utoipa::path(get, path = "/v1/functions", responses((status = 200, body = Vec<FunctionInfo>), (status = 401, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn list(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
) -> Result<Json<Vec<FunctionInfo>>, ApiError> {
    let mut out = Vec::new();
    let mut rows: Vec<FunctionRow> = broker
        .functions()
        .into_iter()
        .filter(|f| may_use(f, user.id))
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    for f in rows {
        out.push(info(&broker, &f).await?);
    }
    Ok(Json(out))
}

/// Get one function.
#[utoipa::path(get, path = "/v1/functions/{id}", params(("id" = String, Path, description = "function id")),
    responses((status = 200, body = FunctionInfo), (status = 401, body = super::types::ErrorBody), (status = 404, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn get_one(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    broker.refresh([id.clone()], []).await?;
    match broker.function(&id) {
        Some((f, _)) if may_use(&f, user.id) => Ok(Json(info(&broker, &f).await?)),
        _ => Err(ApiError::not_found(format!("no function `{id}`"))),
    }
}

/// Delete a function (owner only).
#[utoipa::path(delete, path = "/v1/functions/{id}", params(("id" = String, Path, description = "function id")),
    responses((status = 204), (status = 401, body = super::types::ErrorBody), (status = 403, body = super::types::ErrorBody), (status = 404, body = super::types::ErrorBody), (status = 503, body = super::types::ErrorBody)))]
pub async fn delete(
    State(broker): State<Arc<Broker>>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    broker.refresh([id.clone()], []).await?;
    let found = broker
        .function(&id)
        .map(|(f, _)| (f.owner, may_use(&f, user.id)));
    super::owner_only(found, user.id, "function", &id)?;
    broker.remove_function(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
