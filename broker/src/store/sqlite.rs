//! The SQLite store, in WAL mode with `synchronous = FULL`: one fsync per committed batch. One
//! broker owns the file (a second writer would wait on its lock, and nothing tells it what the
//! first did).

use super::{
    ids_to_text, now_ms, text_to_ids, Completion, EndpointRow, FunctionRow, NewTask, Result,
    StoreError, TaskFilter, TaskRow, TaskStats, TaskStore, UserRow,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_hash TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS functions (
    id TEXT PRIMARY KEY, owner INTEGER NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
    spec TEXT NOT NULL, public INTEGER NOT NULL, shared_with TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY, owner INTEGER NOT NULL, name TEXT NOT NULL, credential_hash TEXT NOT NULL,
    shared_with TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, owner INTEGER NOT NULL, function_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL, args BLOB NOT NULL, state TEXT NOT NULL, result BLOB,
    error_kind TEXT, error_message TEXT, created_ms INTEGER NOT NULL, completed_ms INTEGER);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks(state) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS tasks_done ON tasks(completed_ms) WHERE completed_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, owner INTEGER NOT NULL, size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL);
";

/// Added after the first release: tasks remember the submission (batch) they came in.
const MIGRATE_BATCH: &str = "
ALTER TABLE tasks ADD COLUMN batch INTEGER NOT NULL DEFAULT 0;
";
/// Added with large results by reference: where such a result is kept.
const MIGRATE_DATA_REF: &str = "ALTER TABLE tasks ADD COLUMN data_ref TEXT;";
const BATCH_INDEX: &str = "CREATE INDEX IF NOT EXISTS tasks_batch ON tasks(batch);";
/// Listing a user's tasks newest first, and functions by name.
const OWNER_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks(owner, id);
CREATE INDEX IF NOT EXISTS functions_name ON functions(owner, name);
";

/// Most ids in one `IN (...)` list.
const IN_CHUNK: usize = 500;

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.execute_batch(SCHEMA)?;
        let has_batch: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'batch'")?
            .exists([])?;
        if !has_batch {
            conn.execute_batch(MIGRATE_BATCH)?;
        }
        conn.execute_batch(BATCH_INDEX)?;
        conn.execute_batch(OWNER_INDEXES)?;
        let has_data_ref = conn
            .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'data_ref'")?
            .exists([])?;
        if !has_data_ref {
            conn.execute_batch(MIGRATE_DATA_REF)?;
        }
        Ok(SqliteStore { conn })
    }

    /// Opens a second, read-only connection to the same database. In WAL mode its reads run
    /// beside the writer's commits instead of queueing behind their fsyncs.
    pub fn open_reader(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        Ok(SqliteStore { conn })
    }

    fn function_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<(FunctionRow, String)> {
        Ok((
            FunctionRow {
                id: r.get(0)?,
                owner: r.get(1)?,
                name: r.get(2)?,
                description: r.get(3)?,
                spec: r.get(4)?,
                public: r.get(5)?,
                shared_with: Vec::new(),
            },
            r.get(6)?,
        ))
    }

    /// Endpoints matching `condition` (with `?1` bound to `arg` when given).
    fn endpoints_where(&self, condition: &str, arg: Option<&str>) -> Result<Vec<EndpointRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, owner, name, credential_hash, shared_with FROM endpoints WHERE {condition}"
        ))?;
        let read = |r: &rusqlite::Row<'_>| {
            Ok((
                EndpointRow {
                    id: r.get(0)?,
                    owner: r.get(1)?,
                    name: r.get(2)?,
                    credential_hash: r.get(3)?,
                    shared_with: vec![],
                },
                r.get::<_, String>(4)?,
            ))
        };
        let rows = match arg {
            Some(a) => stmt.query_map([a], read)?.collect::<Vec<_>>(),
            None => stmt.query_map([], read)?.collect::<Vec<_>>(),
        };
        rows.into_iter()
            .map(|r| {
                let (mut e, shared) = r?;
                e.shared_with = text_to_ids(&shared)?;
                Ok(e)
            })
            .collect()
    }

    /// Refuses a new row of `table` when `owner` has `max` already.
    fn within_quota(&self, table: &str, owner: i64, max: u64) -> Result<()> {
        let n: i64 = self.conn.query_row(
            &format!("SELECT COUNT(*) FROM {table} WHERE owner = ?1"),
            [owner],
            |r| r.get(0),
        )?;
        if n as u64 >= max {
            return Err(StoreError::Quota(format!(
                "you have {n} {table}, the most this broker allows; delete some first"
            )));
        }
        Ok(())
    }

    fn task_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
        Ok(TaskRow {
            id: r.get::<_, i64>(0)? as u64,
            owner: r.get(1)?,
            function_id: r.get(2)?,
            endpoint_id: r.get(3)?,
            args: r.get(4)?,
            state: r.get(5)?,
            result: r.get(6)?,
            error_kind: r.get(7)?,
            error_message: r.get(8)?,
            created_ms: r.get(9)?,
            completed_ms: r.get(10)?,
            batch: r.get::<_, i64>(11)? as u64,
            data_ref: r.get(12)?,
        })
    }

    const TASK_COLS: &'static str =
        "id, owner, function_id, endpoint_id, args, state, result, error_kind, error_message, created_ms, completed_ms, batch, data_ref";
}

impl TaskStore for SqliteStore {
    fn add_user(&mut self, name: &str, token_hash: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO users (name, token_hash) VALUES (?1, ?2)",
            params![name, token_hash],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    fn user_by_token(&mut self, token_hash: &str) -> Result<Option<UserRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name FROM users WHERE token_hash = ?1",
                [token_hash],
                |r| {
                    Ok(UserRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn user_by_name(&mut self, name: &str) -> Result<Option<UserRow>> {
        Ok(self
            .conn
            .query_row("SELECT id, name FROM users WHERE name = ?1", [name], |r| {
                Ok(UserRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            })
            .optional()?)
    }

    fn user_name(&mut self, id: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT name FROM users WHERE id = ?1", [id], |r| r.get(0))
            .optional()?)
    }

    /// The name check runs on the one writer connection, so two registrations cannot both pass.
    fn put_function(&mut self, f: &FunctionRow, max: u64) -> Result<Option<String>> {
        let taken: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT id, spec FROM functions WHERE owner = ?1 AND name = ?2 LIMIT 1",
                params![f.owner, f.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match taken {
            Some((id, spec)) if spec == f.spec => return Ok(Some(id)),
            Some((id, _)) => {
                return Err(StoreError::Taken(format!(
                    "you already have a different function named `{}` ({id}); delete it first or choose another name",
                    f.name
                )))
            }
            None => {}
        }
        self.within_quota("functions", f.owner, max)?;
        self.conn.execute(
            "INSERT INTO functions (id, owner, name, description, spec, public, shared_with) VALUES (?1,?2,?3,?4,?5,?6,?7)",
            params![f.id, f.owner, f.name, f.description, f.spec, f.public, ids_to_text(&f.shared_with)],
        )?;
        Ok(None)
    }

    fn function(&mut self, id: &str) -> Result<Option<FunctionRow>> {
        let row = self
            .conn
            .query_row(
                "SELECT id, owner, name, description, spec, public, shared_with FROM functions WHERE id = ?1",
                [id],
                Self::function_from,
            )
            .optional()?;
        row.map(|(mut f, shared)| {
            f.shared_with = text_to_ids(&shared)?;
            Ok(f)
        })
        .transpose()
    }

    fn functions(&mut self) -> Result<Vec<FunctionRow>> {
        let mut stmt = self.conn.prepare("SELECT id, owner, name, description, spec, public, shared_with FROM functions ORDER BY name")?;
        let rows = stmt.query_map([], Self::function_from)?;
        rows.map(|r| {
            let (mut f, shared) = r?;
            f.shared_with = text_to_ids(&shared)?;
            Ok(f)
        })
        .collect()
    }

    fn delete_function(&mut self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM functions WHERE id = ?1", [id])?
            > 0)
    }

    fn put_endpoint(&mut self, e: &EndpointRow, max: u64) -> Result<()> {
        self.within_quota("endpoints", e.owner, max)?;
        self.conn.execute(
            "INSERT INTO endpoints (id, owner, name, credential_hash, shared_with) VALUES (?1,?2,?3,?4,?5)",
            params![e.id, e.owner, e.name, e.credential_hash, ids_to_text(&e.shared_with)],
        )?;
        Ok(())
    }

    fn endpoints(&mut self) -> Result<Vec<EndpointRow>> {
        self.endpoints_where("1 = 1 ORDER BY name", None)
    }

    fn endpoint(&mut self, id: &str) -> Result<Option<EndpointRow>> {
        Ok(self.endpoints_where("id = ?1", Some(id))?.pop())
    }

    fn delete_endpoint(&mut self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM endpoints WHERE id = ?1", [id])?
            > 0)
    }

    fn insert_tasks(&mut self, owner: i64, tasks: &[NewTask]) -> Result<(u64, i64, Vec<u64>)> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO batches (owner, size, created_ms) VALUES (?1, ?2, ?3)",
            params![owner, tasks.len() as i64, now],
        )?;
        let batch = tx.last_insert_rowid();
        let mut ids = Vec::with_capacity(tasks.len());
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tasks (owner, function_id, endpoint_id, args, state, created_ms, batch) VALUES (?1,?2,?3,?4,'pending',?5,?6)",
            )?;
            for t in tasks {
                stmt.execute(params![
                    t.owner,
                    t.function_id,
                    t.endpoint_id,
                    t.args,
                    now,
                    batch
                ])?;
                ids.push(tx.last_insert_rowid() as u64);
            }
        }
        tx.commit()?;
        Ok((batch as u64, now, ids))
    }

    fn batch_owner(&mut self, batch: u64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT owner FROM batches WHERE id = ?1",
                [batch as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn batch_tasks(&mut self, batch: u64) -> Result<Vec<TaskRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM tasks WHERE batch = ?1 ORDER BY id",
            Self::TASK_COLS
        ))?;
        let rows = stmt.query_map([batch as i64], Self::task_from)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn complete(&mut self, done: &[Completion]) -> Result<Vec<bool>> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        let mut recorded = Vec::with_capacity(done.len());
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE tasks SET state = ?2, result = ?3, error_kind = ?4, error_message = ?5, completed_ms = ?6,
                 data_ref = ?7 WHERE id = ?1 AND state = 'pending'",
            )?;
            for c in done {
                let (state, kind, msg) = match &c.error {
                    None => ("succeeded", None, None),
                    Some((k, m)) => ("failed", Some(k.as_str()), Some(m.as_str())),
                };
                recorded.push(
                    stmt.execute(params![
                        c.id as i64,
                        state,
                        c.result,
                        kind,
                        msg,
                        now,
                        c.data_ref
                    ])? > 0,
                );
            }
        }
        tx.commit()?;
        Ok(recorded)
    }

    /// The tasks among `ids` that exist, in no particular order. Reads go in chunks of
    /// `IN (...)` lists, a few hundred ids per statement.
    fn tasks(&mut self, ids: &[u64]) -> Result<Vec<TaskRow>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            // The ids are integers, so writing them into the statement is safe.
            let list = chunk
                .iter()
                .map(|id| (*id).min(i64::MAX as u64).to_string())
                .collect::<Vec<_>>()
                .join(",");
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {} FROM tasks WHERE id IN ({list})",
                Self::TASK_COLS
            ))?;
            let rows = stmt.query_map([], Self::task_from)?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }

    fn list_tasks(&mut self, f: &TaskFilter) -> Result<Vec<TaskRow>> {
        let mut sql = format!("SELECT {} FROM tasks WHERE owner = ?1", Self::TASK_COLS);
        let mut args: Vec<rusqlite::types::Value> = vec![f.owner.into()];
        let mut add = |clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(s) = &f.state {
            add("state =", s.clone().into());
        }
        if let Some(x) = &f.function_id {
            add("function_id =", x.clone().into());
        }
        if let Some(x) = &f.endpoint_id {
            add("endpoint_id =", x.clone().into());
        }
        if let Some(t) = f.since_ms {
            add("created_ms >=", t.into());
        }
        if let Some(t) = f.until_ms {
            add("created_ms <", t.into());
        }
        if let Some(c) = f.cursor {
            let c = c.min(i64::MAX as u64) as i64;
            add(if f.oldest_first { "id >" } else { "id <" }, c.into());
        }
        sql.push_str(if f.oldest_first {
            " ORDER BY id ASC"
        } else {
            " ORDER BY id DESC"
        });
        sql.push_str(&format!(" LIMIT {}", f.limit));
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), Self::task_from)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn task_stats(&mut self, owner: i64, since_ms: i64, bucket_ms: i64) -> Result<TaskStats> {
        let mut out = TaskStats::default();
        let mut stmt = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM tasks WHERE owner = ?1 GROUP BY state")?;
        for r in stmt.query_map([owner], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))? {
            out.by_state.push(r?);
        }
        let mut stmt = self.conn.prepare(
            "SELECT error_kind, COUNT(*) FROM tasks WHERE completed_ms >= ?2 AND owner = ?1 \
             AND error_kind IS NOT NULL GROUP BY error_kind",
        )?;
        for r in stmt.query_map(params![owner, since_ms], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
        })? {
            out.failures.push(r?);
        }
        let bucket = bucket_ms.max(1);
        let mut stmt = self.conn.prepare(
            "SELECT (completed_ms / ?3) * ?3 AS b, SUM(error_kind IS NULL), SUM(error_kind IS NOT NULL) \
             FROM tasks WHERE completed_ms >= ?2 AND owner = ?1 GROUP BY b ORDER BY b",
        )?;
        for r in stmt.query_map(params![owner, since_ms, bucket], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })? {
            out.finished.push(r?);
        }
        Ok(out)
    }

    fn open_tasks(&mut self) -> Result<Vec<TaskRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM tasks WHERE state = 'pending' ORDER BY id",
            Self::TASK_COLS
        ))?;
        let rows = stmt.query_map([], Self::task_from)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn purge(&mut self, before_ms: i64) -> Result<usize> {
        Ok(self.conn.execute(
            "DELETE FROM tasks WHERE completed_ms IS NOT NULL AND completed_ms < ?1",
            [before_ms],
        )?)
    }

    fn open_tasks_of(
        &mut self,
        endpoint: &str,
        batch: Option<u64>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TaskRow>> {
        let sql = format!(
            "SELECT {} FROM tasks WHERE state = 'pending' AND endpoint_id = ?1 AND (?2 IS NULL OR batch = ?2) \
             AND id > ?3 ORDER BY id LIMIT ?4",
            Self::TASK_COLS
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            params![
                endpoint,
                batch.map(|b| b as i64),
                after.min(i64::MAX as u64) as i64,
                limit as i64
            ],
            Self::task_from,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn open_task_ids_of_function(&mut self, function_id: &str) -> Result<Vec<u64>> {
        let mut stmt = self.conn.prepare(
            "SELECT id FROM tasks WHERE state = 'pending' AND function_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([function_id], |r| r.get::<_, i64>(0))?;
        rows.map(|r| Ok(r? as u64)).collect()
    }
}
