//! The PostgreSQL store, which several brokers share.
//!
//! The schema is the SQLite one in PostgreSQL types. Batches travel as arrays: a submission is
//! one `INSERT ... SELECT FROM unnest(...)` and a result batch one `UPDATE ... FROM unnest(...)`,
//! so a thousand tasks cost one round trip, not a thousand. Writes that other brokers must hear
//! of send a `NOTIFY` in the same transaction, which PostgreSQL delivers only on commit:
//!
//! | channel        | payload                                   | sent by                  |
//! |----------------|-------------------------------------------|--------------------------|
//! | `fxr_tasks`    | `origin endpoint batch`                   | `insert_tasks`           |
//! | `fxr_done`     | `origin owner:batch:id,owner:batch:id...` | `complete` (chunked)     |
//! | `fxr_registry` | `origin`                                  | function/endpoint writes |
//!
//! `origin` is the writing broker's random identity, so a broker can skip its own notices.
//! Checks that must hold across brokers (a function name unique per owner, quotas) run under a
//! transaction-scoped advisory lock on the owner.

use super::{
    ids_to_text, now_ms, text_to_ids, Completion, EndpointRow, FunctionRow, NewTask, Result,
    StoreError, TaskFilter, TaskRow, TaskStats, TaskStore, UserRow,
};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS functions (
    id TEXT PRIMARY KEY, owner BIGINT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
    spec TEXT NOT NULL, public BOOLEAN NOT NULL, shared_with TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS functions_name ON functions(owner, name);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY, owner BIGINT NOT NULL, name TEXT NOT NULL, credential_hash TEXT NOT NULL,
    shared_with TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id BIGSERIAL PRIMARY KEY, owner BIGINT NOT NULL, size BIGINT NOT NULL,
    created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id BIGSERIAL PRIMARY KEY, owner BIGINT NOT NULL, function_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL, args BYTEA NOT NULL, state TEXT NOT NULL, result BYTEA,
    error_kind TEXT, error_message TEXT, created_ms BIGINT NOT NULL, completed_ms BIGINT,
    batch BIGINT NOT NULL, data_ref TEXT);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks(endpoint_id, batch) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS tasks_done ON tasks(completed_ms) WHERE completed_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_batch ON tasks(batch);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks(owner, id);
CREATE TABLE IF NOT EXISTS backlog (key TEXT PRIMARY KEY, open BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
    endpoint_id TEXT PRIMARY KEY, broker TEXT NOT NULL, connected BOOLEAN NOT NULL,
    since_ms BIGINT NOT NULL, seen_ms BIGINT NOT NULL);
";

/// Advisory lock keys (the first of two int4 keys).
const LOCK_SCHEMA: i32 = 0x6678_0001;
const LOCK_OWNER: i32 = 0x6678_0002;

const TASK_COLS: &str = "id, owner, function_id, endpoint_id, args, state, result, error_kind, \
     error_message, created_ms, completed_ms, batch, data_ref";

/// The PostgreSQL store: one connection.
pub struct PgStore {
    client: Conn,
    origin: String,
}

/// A blocking client, which must not be dropped on an async runtime's thread (its drop runs a
/// runtime of its own): there it is dropped on a thread of its own.
struct Conn(std::mem::ManuallyDrop<Client>);

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.0
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: taken once, here, and never used again.
        let c = unsafe { std::mem::ManuallyDrop::take(&mut self.0) };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("fxr-pg-close".into())
                .spawn(move || drop(c));
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The connection target without its password, for messages.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        // postgres://user:password@host/db
        if let Some((auth, host)) = rest.split_once('@') {
            let user = auth.split(':').next().unwrap_or_default();
            return format!("{scheme}://{user}@{host}");
        }
        return url.to_string();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn connect(url: &str) -> Result<Client> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Config(format!("bad PostgreSQL target `{}`: {e}", redact(url))))?;
    config.connect_timeout(Duration::from_secs(10));
    config.application_name("fxr-broker");
    Ok(config.connect(NoTls)?)
}

/// A 64-bit random identity, hex.
fn new_origin() -> Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b)
        .map_err(|e| StoreError::Config(format!("no randomness for the broker identity: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn task_from(r: &Row) -> Result<TaskRow> {
    Ok(TaskRow {
        id: r.try_get::<_, i64>(0)? as u64,
        owner: r.try_get(1)?,
        function_id: r.try_get(2)?,
        endpoint_id: r.try_get(3)?,
        args: r.try_get(4)?,
        state: r.try_get(5)?,
        result: r.try_get(6)?,
        error_kind: r.try_get(7)?,
        error_message: r.try_get(8)?,
        created_ms: r.try_get(9)?,
        completed_ms: r.try_get(10)?,
        batch: r.try_get::<_, i64>(11)? as u64,
        data_ref: r.try_get(12)?,
    })
}

fn tasks_from(rows: Vec<Row>) -> Result<Vec<TaskRow>> {
    rows.iter().map(task_from).collect()
}

fn function_from(r: &Row) -> Result<FunctionRow> {
    Ok(FunctionRow {
        id: r.try_get(0)?,
        owner: r.try_get(1)?,
        name: r.try_get(2)?,
        description: r.try_get(3)?,
        spec: r.try_get(4)?,
        public: r.try_get(5)?,
        shared_with: text_to_ids(r.try_get(6)?)?,
    })
}

fn endpoint_from(r: &Row) -> Result<EndpointRow> {
    Ok(EndpointRow {
        id: r.try_get(0)?,
        owner: r.try_get(1)?,
        name: r.try_get(2)?,
        credential_hash: r.try_get(3)?,
        shared_with: text_to_ids(r.try_get(4)?)?,
    })
}

fn user_from(r: &Row) -> Result<UserRow> {
    Ok(UserRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
    })
}

/// Ids as PostgreSQL's `bigint`.
fn as_i64(ids: &[u64]) -> Vec<i64> {
    ids.iter()
        .map(|i| (*i).min(i64::MAX as u64) as i64)
        .collect()
}

/// Adds to the open-task counters, one row at a time in key order (every transaction locks
/// them in the same order, so two cannot deadlock on them).
fn add_backlog(
    tx: &mut postgres::Transaction<'_>,
    deltas: &std::collections::BTreeMap<String, i64>,
) -> Result<()> {
    for (key, n) in deltas {
        tx.execute(
            "INSERT INTO backlog (key, open) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET open = backlog.open + EXCLUDED.open",
            &[key, n],
        )?;
    }
    Ok(())
}

/// Serialises writers that check a per-owner rule, until the transaction ends.
fn lock_owner(tx: &mut postgres::Transaction<'_>, owner: i64) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, ($2::bigint % 2147483647)::int)",
        &[&LOCK_OWNER, &owner],
    )?;
    Ok(())
}

fn within_quota(
    tx: &mut postgres::Transaction<'_>,
    table: &str,
    owner: i64,
    max: u64,
) -> Result<()> {
    let n: i64 = tx
        .query_one(
            &format!("SELECT COUNT(*) FROM {table} WHERE owner = $1"),
            &[&owner],
        )?
        .try_get(0)?;
    if n as u64 >= max {
        return Err(StoreError::Quota(format!(
            "you have {n} {table}, the most this broker allows; delete some first"
        )));
    }
    Ok(())
}

impl PgStore {
    /// Connects and creates the schema if needed (under a lock, so brokers starting together
    /// do not race on it).
    pub fn open(url: &str) -> Result<PgStore> {
        let mut client = connect(url)?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_SCHEMA])?;
        tx.batch_execute(SCHEMA)?;
        tx.commit()?;
        Ok(PgStore {
            client: Conn(std::mem::ManuallyDrop::new(client)),
            origin: new_origin()?,
        })
    }

    fn notify_registry(tx: &mut postgres::Transaction<'_>, origin: &str) -> Result<()> {
        tx.execute("SELECT pg_notify('fxr_registry', $1)", &[&origin])?;
        Ok(())
    }
}

impl TaskStore for PgStore {
    fn shared(&self) -> bool {
        true
    }

    fn origin(&self) -> &str {
        &self.origin
    }

    fn add_user(&mut self, name: &str, token_hash: &str) -> Result<i64> {
        Ok(self
            .client
            .query_one(
                "INSERT INTO users (name, token_hash) VALUES ($1, $2) RETURNING id",
                &[&name, &token_hash],
            )?
            .try_get(0)?)
    }

    fn user_by_token(&mut self, token_hash: &str) -> Result<Option<UserRow>> {
        self.client
            .query_opt(
                "SELECT id, name FROM users WHERE token_hash = $1",
                &[&token_hash],
            )?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    fn user_by_name(&mut self, name: &str) -> Result<Option<UserRow>> {
        self.client
            .query_opt("SELECT id, name FROM users WHERE name = $1", &[&name])?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    fn user_name(&mut self, id: i64) -> Result<Option<String>> {
        Ok(self
            .client
            .query_opt("SELECT name FROM users WHERE id = $1", &[&id])?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    fn put_function(&mut self, f: &FunctionRow, max: u64) -> Result<Option<String>> {
        let mut tx = self.client.transaction()?;
        lock_owner(&mut tx, f.owner)?;
        let taken = tx.query_opt(
            "SELECT id, spec FROM functions WHERE owner = $1 AND name = $2",
            &[&f.owner, &f.name],
        )?;
        if let Some(row) = taken {
            let (id, spec): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if spec == f.spec {
                return Ok(Some(id));
            }
            return Err(StoreError::Taken(format!(
                "you already have a different function named `{}` ({id}); delete it first or choose another name",
                f.name
            )));
        }
        within_quota(&mut tx, "functions", f.owner, max)?;
        tx.execute(
            "INSERT INTO functions (id, owner, name, description, spec, public, shared_with) VALUES ($1,$2,$3,$4,$5,$6,$7)",
            &[&f.id, &f.owner, &f.name, &f.description, &f.spec, &f.public, &ids_to_text(&f.shared_with)],
        )?;
        Self::notify_registry(&mut tx, &self.origin)?;
        tx.commit()?;
        Ok(None)
    }

    fn function(&mut self, id: &str) -> Result<Option<FunctionRow>> {
        self.client
            .query_opt(
                "SELECT id, owner, name, description, spec, public, shared_with FROM functions WHERE id = $1",
                &[&id],
            )?
            .as_ref()
            .map(function_from)
            .transpose()
    }

    fn functions(&mut self) -> Result<Vec<FunctionRow>> {
        self.client
            .query(
                "SELECT id, owner, name, description, spec, public, shared_with FROM functions ORDER BY name",
                &[],
            )?
            .iter()
            .map(function_from)
            .collect()
    }

    fn delete_function(&mut self, id: &str) -> Result<bool> {
        let mut tx = self.client.transaction()?;
        let n = tx.execute("DELETE FROM functions WHERE id = $1", &[&id])?;
        Self::notify_registry(&mut tx, &self.origin)?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn put_endpoint(&mut self, e: &EndpointRow, max: u64) -> Result<()> {
        let mut tx = self.client.transaction()?;
        lock_owner(&mut tx, e.owner)?;
        within_quota(&mut tx, "endpoints", e.owner, max)?;
        tx.execute(
            "INSERT INTO endpoints (id, owner, name, credential_hash, shared_with) VALUES ($1,$2,$3,$4,$5)",
            &[&e.id, &e.owner, &e.name, &e.credential_hash, &ids_to_text(&e.shared_with)],
        )?;
        Self::notify_registry(&mut tx, &self.origin)?;
        tx.commit()?;
        Ok(())
    }

    fn endpoints(&mut self) -> Result<Vec<EndpointRow>> {
        self.client
            .query(
                "SELECT id, owner, name, credential_hash, shared_with FROM endpoints ORDER BY name",
                &[],
            )?
            .iter()
            .map(endpoint_from)
            .collect()
    }

    fn endpoint(&mut self, id: &str) -> Result<Option<EndpointRow>> {
        self.client
            .query_opt(
                "SELECT id, owner, name, credential_hash, shared_with FROM endpoints WHERE id = $1",
                &[&id],
            )?
            .as_ref()
            .map(endpoint_from)
            .transpose()
    }

    fn delete_endpoint(&mut self, id: &str) -> Result<bool> {
        let mut tx = self.client.transaction()?;
        let n = tx.execute("DELETE FROM endpoints WHERE id = $1", &[&id])?;
        Self::notify_registry(&mut tx, &self.origin)?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn insert_tasks(&mut self, owner: i64, tasks: &[NewTask]) -> Result<(u64, i64, Vec<u64>)> {
        let now = now_ms();
        let mut tx = self.client.transaction()?;
        let batch: i64 = tx
            .query_one(
                "INSERT INTO batches (owner, size, created_ms) VALUES ($1, $2, $3) RETURNING id",
                &[&owner, &(tasks.len() as i64), &now],
            )?
            .try_get(0)?;
        // Ids first, so they follow the submission's order.
        let mut ids: Vec<i64> = tx
            .query(
                "SELECT nextval(pg_get_serial_sequence('tasks', 'id')) FROM generate_series(1, $1::bigint)",
                &[&(tasks.len() as i64)],
            )?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        ids.sort_unstable();
        let owners: Vec<i64> = tasks.iter().map(|t| t.owner).collect();
        let functions: Vec<&str> = tasks.iter().map(|t| t.function_id.as_str()).collect();
        let endpoints: Vec<&str> = tasks.iter().map(|t| t.endpoint_id.as_str()).collect();
        let args: Vec<&[u8]> = tasks.iter().map(|t| t.args.as_slice()).collect();
        tx.execute(
            "INSERT INTO tasks (id, owner, function_id, endpoint_id, args, state, created_ms, batch)
             SELECT u.id, u.owner, u.function_id, u.endpoint_id, u.args, 'pending', $6, $7
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bytea[])
                  AS u(id, owner, function_id, endpoint_id, args)",
            &[&ids, &owners, &functions, &endpoints, &args, &now, &batch],
        )?;
        let mut bumps: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for t in tasks {
            *bumps.entry(format!("u:{}", t.owner)).or_default() += 1;
            *bumps.entry(format!("e:{}", t.endpoint_id)).or_default() += 1;
        }
        add_backlog(&mut tx, &bumps)?;
        let mut notified: Vec<&str> = Vec::new();
        for ep in endpoints {
            if !notified.contains(&ep) {
                notified.push(ep);
                let payload = format!("{} {ep} {batch}", self.origin);
                tx.execute("SELECT pg_notify('fxr_tasks', $1)", &[&payload])?;
            }
        }
        tx.commit()?;
        Ok((
            batch as u64,
            now,
            ids.into_iter().map(|i| i as u64).collect(),
        ))
    }

    fn batch_owner(&mut self, batch: u64) -> Result<Option<i64>> {
        Ok(self
            .client
            .query_opt(
                "SELECT owner FROM batches WHERE id = $1",
                &[&(batch.min(i64::MAX as u64) as i64)],
            )?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    fn batch_tasks(&mut self, batch: u64) -> Result<Vec<TaskRow>> {
        tasks_from(self.client.query(
            &format!("SELECT {TASK_COLS} FROM tasks WHERE batch = $1 ORDER BY id"),
            &[&(batch.min(i64::MAX as u64) as i64)],
        )?)
    }

    fn complete(&mut self, done: &[Completion]) -> Result<Vec<bool>> {
        let now = now_ms();
        let ids: Vec<i64> = as_i64(&done.iter().map(|c| c.id).collect::<Vec<_>>());
        let states: Vec<&str> = done
            .iter()
            .map(|c| {
                if c.error.is_none() {
                    "succeeded"
                } else {
                    "failed"
                }
            })
            .collect();
        let results: Vec<Option<&[u8]>> = done.iter().map(|c| c.result.as_deref()).collect();
        let kinds: Vec<Option<&str>> = done
            .iter()
            .map(|c| c.error.as_ref().map(|(k, _)| k.as_str()))
            .collect();
        let messages: Vec<Option<&str>> = done
            .iter()
            .map(|c| c.error.as_ref().map(|(_, m)| m.as_str()))
            .collect();
        let refs: Vec<Option<&str>> = done.iter().map(|c| c.data_ref.as_deref()).collect();
        let mut tx = self.client.transaction()?;
        let rows = tx.query(
            "UPDATE tasks t SET state = u.state, result = u.result, error_kind = u.kind,
                 error_message = u.message, completed_ms = $7, data_ref = u.data_ref
             FROM (SELECT DISTINCT ON (id) * FROM unnest($1::bigint[], $2::text[], $3::bytea[],
                   $4::text[], $5::text[], $6::text[]) WITH ORDINALITY
                   AS v(id, state, result, kind, message, data_ref, n) ORDER BY id, n) u
             WHERE t.id = u.id AND t.state = 'pending'
             RETURNING t.id, t.owner, t.batch, t.endpoint_id",
            &[&ids, &states, &results, &kinds, &messages, &refs, &now],
        )?;
        let mut fresh = std::collections::HashSet::with_capacity(rows.len());
        let mut notes = Vec::with_capacity(rows.len());
        let mut drops: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for r in &rows {
            let id = r.try_get::<_, i64>(0)? as u64;
            let owner: i64 = r.try_get(1)?;
            fresh.insert(id);
            notes.push((owner, r.try_get::<_, i64>(2)? as u64, id));
            *drops.entry(format!("u:{owner}")).or_default() -= 1;
            *drops
                .entry(format!("e:{}", r.try_get::<_, &str>(3)?))
                .or_default() -= 1;
        }
        add_backlog(&mut tx, &drops)?;
        for payload in super::notices::done_payloads(&self.origin, &notes) {
            tx.execute("SELECT pg_notify('fxr_done', $1)", &[&payload])?;
        }
        tx.commit()?;
        // The first completion of each id that was recorded says so; a repeat does not.
        Ok(done.iter().map(|c| fresh.remove(&c.id)).collect())
    }

    fn tasks(&mut self, ids: &[u64]) -> Result<Vec<TaskRow>> {
        tasks_from(self.client.query(
            &format!("SELECT {TASK_COLS} FROM tasks WHERE id = ANY($1)"),
            &[&as_i64(ids)],
        )?)
    }

    fn list_tasks(&mut self, f: &TaskFilter) -> Result<Vec<TaskRow>> {
        let mut sql = format!("SELECT {TASK_COLS} FROM tasks WHERE owner = $1");
        let mut args: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(f.owner)];
        let mut add = |clause: &str, v: Box<dyn ToSql + Sync>| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ${}", args.len()));
        };
        if let Some(s) = &f.state {
            add("state =", Box::new(s.clone()));
        }
        if let Some(x) = &f.function_id {
            add("function_id =", Box::new(x.clone()));
        }
        if let Some(x) = &f.endpoint_id {
            add("endpoint_id =", Box::new(x.clone()));
        }
        if let Some(t) = f.since_ms {
            add("created_ms >=", Box::new(t));
        }
        if let Some(t) = f.until_ms {
            add("created_ms <", Box::new(t));
        }
        if let Some(c) = f.cursor {
            let c = c.min(i64::MAX as u64) as i64;
            add(if f.oldest_first { "id >" } else { "id <" }, Box::new(c));
        }
        sql.push_str(if f.oldest_first {
            " ORDER BY id ASC"
        } else {
            " ORDER BY id DESC"
        });
        sql.push_str(&format!(" LIMIT {}", f.limit));
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|b| b.as_ref()).collect();
        tasks_from(self.client.query(&sql, &params)?)
    }

    fn task_stats(&mut self, owner: i64, since_ms: i64, bucket_ms: i64) -> Result<TaskStats> {
        let count = |r: &Row, i: usize| -> Result<u64> { Ok(r.try_get::<_, i64>(i)? as u64) };
        let mut out = TaskStats::default();
        for r in self.client.query(
            "SELECT state, COUNT(*) FROM tasks WHERE owner = $1 GROUP BY state",
            &[&owner],
        )? {
            out.by_state.push((r.try_get(0)?, count(&r, 1)?));
        }
        for r in self.client.query(
            "SELECT error_kind, COUNT(*) FROM tasks WHERE completed_ms >= $2 AND owner = $1 \
             AND error_kind IS NOT NULL GROUP BY error_kind",
            &[&owner, &since_ms],
        )? {
            out.failures.push((r.try_get(0)?, count(&r, 1)?));
        }
        let bucket = bucket_ms.max(1);
        for r in self.client.query(
            "SELECT (completed_ms / $3) * $3 AS b,
                    COUNT(*) FILTER (WHERE error_kind IS NULL),
                    COUNT(*) FILTER (WHERE error_kind IS NOT NULL)
             FROM tasks WHERE completed_ms >= $2 AND owner = $1 GROUP BY b ORDER BY b",
            &[&owner, &since_ms, &bucket],
        )? {
            out.finished
                .push((r.try_get(0)?, count(&r, 1)?, count(&r, 2)?));
        }
        Ok(out)
    }

    fn open_tasks(&mut self) -> Result<Vec<TaskRow>> {
        tasks_from(self.client.query(
            &format!("SELECT {TASK_COLS} FROM tasks WHERE state = 'pending' ORDER BY id"),
            &[],
        )?)
    }

    fn open_tasks_of(
        &mut self,
        endpoint: &str,
        batch: Option<u64>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TaskRow>> {
        let batch = batch.map(|b| b.min(i64::MAX as u64) as i64);
        tasks_from(self.client.query(
            &format!(
                "SELECT {TASK_COLS} FROM tasks WHERE state = 'pending' AND endpoint_id = $1
                 AND ($2::bigint IS NULL OR batch = $2) AND id > $3 ORDER BY id LIMIT $4"
            ),
            &[
                &endpoint,
                &batch,
                &(after.min(i64::MAX as u64) as i64),
                &(limit as i64),
            ],
        )?)
    }

    fn open_counts(&mut self, owner: i64, endpoints: &[String]) -> Result<Option<(u64, Vec<u64>)>> {
        let mut keys = vec![format!("u:{owner}")];
        keys.extend(endpoints.iter().map(|e| format!("e:{e}")));
        let rows = self.client.query(
            "SELECT key, open FROM backlog WHERE key = ANY($1)",
            &[&keys],
        )?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            found.insert(
                r.try_get::<_, String>(0)?,
                r.try_get::<_, i64>(1)?.max(0) as u64,
            );
        }
        let get = |k: &String| found.get(k).copied().unwrap_or(0);
        Ok(Some((get(&keys[0]), keys[1..].iter().map(get).collect())))
    }

    fn open_task_ids_of_function(&mut self, function_id: &str) -> Result<Vec<u64>> {
        self.client
            .query(
                "SELECT id FROM tasks WHERE state = 'pending' AND function_id = $1 ORDER BY id",
                &[&function_id],
            )?
            .iter()
            .map(|r| Ok(r.try_get::<_, i64>(0)? as u64))
            .collect()
    }

    fn purge(&mut self, before_ms: i64) -> Result<usize> {
        Ok(self.client.execute(
            "DELETE FROM tasks WHERE completed_ms IS NOT NULL AND completed_ms < $1",
            &[&before_ms],
        )? as usize)
    }

    fn link_up(&mut self, endpoint: &str) -> Result<()> {
        self.client.execute(
            "INSERT INTO links (endpoint_id, broker, connected, since_ms, seen_ms) VALUES ($1, $2, TRUE, $3, $3)
             ON CONFLICT (endpoint_id) DO UPDATE SET broker = $2, connected = TRUE, since_ms = $3, seen_ms = $3",
            &[&endpoint, &self.origin, &now_ms()],
        )?;
        Ok(())
    }

    fn link_down(&mut self, endpoint: &str) -> Result<()> {
        // Only if no other broker took the link since.
        self.client.execute(
            "UPDATE links SET connected = FALSE, since_ms = $3 WHERE endpoint_id = $1 AND broker = $2",
            &[&endpoint, &self.origin, &now_ms()],
        )?;
        Ok(())
    }

    fn links_alive(&mut self, endpoints: &[String]) -> Result<()> {
        if endpoints.is_empty() {
            return Ok(());
        }
        self.client.execute(
            "UPDATE links SET seen_ms = $3 WHERE broker = $2 AND connected AND endpoint_id = ANY($1)",
            &[&endpoints, &self.origin, &now_ms()],
        )?;
        Ok(())
    }

    fn stranded(&mut self, cutoff_ms: i64, limit: usize) -> Result<Vec<u64>> {
        let stale = now_ms() - super::LINK_STALE_MS;
        self.client
            .query(
                "WITH offline AS (
                     SELECT e.id AS endpoint_id, l.endpoint_id IS NULL AS never,
                            COALESCE(GREATEST(l.since_ms, l.seen_ms), 0) AS since
                     FROM endpoints e LEFT JOIN links l ON l.endpoint_id = e.id
                     WHERE l.endpoint_id IS NULL OR NOT (l.connected AND l.seen_ms >= $2))
                 SELECT t.id FROM tasks t JOIN offline o ON t.endpoint_id = o.endpoint_id
                 WHERE t.state = 'pending'
                   AND (CASE WHEN o.never THEN t.created_ms ELSE o.since END) < $1
                 ORDER BY t.id LIMIT $3",
                &[&cutoff_ms, &stale, &(limit as i64)],
            )?
            .iter()
            .map(|r| Ok(r.try_get::<_, i64>(0)? as u64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://fxr:s3cret@db.example.org/fxr"),
            "postgres://fxr@db.example.org/fxr"
        );
        assert_eq!(
            redact("host=/tmp/x user=fxr password=s3cret dbname=fxr"),
            "host=/tmp/x user=fxr password=*** dbname=fxr"
        );
    }
}
