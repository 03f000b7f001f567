//! The persistent store, behind one trait with two implementations: SQLite (one file, one
//! broker) and PostgreSQL (a server that several brokers share).
//!
//! Every write that the broker acknowledges is committed first, and writes come in batches — a
//! submission of a thousand tasks is one transaction, a result batch from an endpoint another —
//! so durability costs one commit per batch, not per task. The broker calls the store from
//! blocking threads, one writer and one reader connection each behind a mutex.
//!
//! A shared store ([`TaskStore::shared`]) also tells every broker using it what the others
//! did, as [`Notice`]s: which submissions arrived for which endpoint, which tasks finished, that
//! the registry changed. See `ARCHITECTURE.md` for how brokers use them.

mod notices;
mod pg;
pub mod pgcluster;
mod sqlite;

pub use pg::PgStore;
pub use sqlite::SqliteStore;

use std::path::PathBuf;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Pg(#[from] postgres::Error),
    /// `--db` names nothing this broker can open.
    #[error("{0}")]
    Config(String),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    /// A name the owner already uses.
    #[error("{0}")]
    Taken(String),
    /// The owner has as many of these as allowed.
    #[error("{0}")]
    Quota(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone, Debug)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct FunctionRow {
    pub id: String,
    pub owner: i64,
    pub name: String,
    pub description: String,
    /// JSON of `api::FunctionBody`.
    pub spec: String,
    pub public: bool,
    pub shared_with: Vec<i64>,
}

#[derive(Clone, Debug)]
pub struct EndpointRow {
    pub id: String,
    pub owner: i64,
    pub name: String,
    pub credential_hash: String,
    pub shared_with: Vec<i64>,
}

/// A task as stored.
#[derive(Clone, Debug)]
pub struct TaskRow {
    pub id: u64,
    pub owner: i64,
    pub function_id: String,
    pub endpoint_id: String,
    pub args: Vec<u8>,
    pub state: String,
    pub result: Option<Vec<u8>>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub created_ms: i64,
    pub completed_ms: Option<i64>,
    /// The submission it came in.
    pub batch: u64,
    /// Where a result too large to travel is kept (JSON of a `DataRef`).
    pub data_ref: Option<String>,
}

/// A new task to insert.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub owner: i64,
    pub function_id: String,
    pub endpoint_id: String,
    pub args: Vec<u8>,
}

/// A finished task to record.
#[derive(Clone, Debug)]
pub struct Completion {
    pub id: u64,
    pub result: Option<Vec<u8>>,
    /// A result kept in its node's store, as JSON of its `DataRef`.
    pub data_ref: Option<String>,
    pub error: Option<(String, String)>,
}

/// Which of a user's tasks to list, and where to start.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub owner: i64,
    pub state: Option<String>,
    pub function_id: Option<String>,
    pub endpoint_id: Option<String>,
    /// Created at or after (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Created before.
    pub until_ms: Option<i64>,
    /// Only ids below this (newest first) or above it (oldest first).
    pub cursor: Option<u64>,
    pub oldest_first: bool,
    pub limit: usize,
}

/// Counts over a user's recent tasks, for the dashboard.
#[derive(Clone, Debug, Default)]
pub struct TaskStats {
    /// Tasks by state, over all the user's tasks.
    pub by_state: Vec<(String, u64)>,
    /// Failures by kind, among tasks finished in the window.
    pub failures: Vec<(String, u64)>,
    /// Tasks finished per bucket in the window: (bucket start ms, succeeded, failed).
    pub finished: Vec<(i64, u64, u64)>,
}

pub(crate) fn ids_to_text(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

pub(crate) fn text_to_ids(s: &str) -> Result<Vec<i64>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse()
                .map_err(|_| StoreError::Corrupt(format!("bad user list `{s}`")))
        })
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where the broker keeps its state: `--db PATH` (SQLite) or `--db postgres://...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    /// A PostgreSQL URL or connection string (`postgres://`, `postgresql://`, `host=...`) or else
    /// the path of a SQLite file.
    pub fn parse(s: &str) -> Db {
        let pg = s.starts_with("postgres://")
            || s.starts_with("postgresql://")
            || s.split_whitespace()
                .any(|kv| kv.starts_with("host=") || kv.starts_with("dbname="));
        if pg {
            Db::Postgres(s.to_string())
        } else {
            Db::Sqlite(PathBuf::from(s))
        }
    }

    /// For messages: the path, or the PostgreSQL target without its password.
    pub fn describe(&self) -> String {
        match self {
            Db::Sqlite(p) => p.display().to_string(),
            Db::Postgres(url) => pg::redact(url),
        }
    }

    /// Opens (creating the schema if needed) the writer connection.
    pub fn open(&self) -> Result<Store> {
        Ok(match self {
            Db::Sqlite(p) => Box::new(SqliteStore::open(p)?),
            Db::Postgres(url) => Box::new(PgStore::open(url)?),
        })
    }

    /// Opens a second connection for reads, so they do not queue behind commits.
    pub fn open_reader(&self) -> Result<Store> {
        Ok(match self {
            Db::Sqlite(p) => Box::new(SqliteStore::open_reader(p)?),
            Db::Postgres(url) => Box::new(PgStore::open(url)?),
        })
    }
}

impl std::fmt::Display for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A store, whichever implementation.
pub type Store = Box<dyn TaskStore>;

/// What another broker sharing the store did (only a shared store sends these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A submission added tasks for `endpoint` in `batch`.
    Tasks {
        origin: String,
        endpoint: String,
        batch: u64,
    },
    /// Tasks got their results: (owner, batch, task id) each.
    Done {
        origin: String,
        tasks: Vec<(i64, u64, u64)>,
    },
    /// Functions or endpoints were added or deleted.
    Registry { origin: String },
    /// The notice stream was interrupted (notices may be missing): read the state again.
    Resync,
}

/// The operations the broker needs from its store. Every method that writes commits before it
/// returns.
pub trait TaskStore: Send + std::fmt::Debug {
    /// Whether other brokers may use the same store at the same time.
    fn shared(&self) -> bool {
        false
    }

    /// This connection's broker identity in [`Notice`]s (empty for a store of one broker).
    fn origin(&self) -> &str {
        ""
    }

    fn add_user(&mut self, name: &str, token_hash: &str) -> Result<i64>;
    fn user_by_token(&mut self, token_hash: &str) -> Result<Option<UserRow>>;
    fn user_by_name(&mut self, name: &str) -> Result<Option<UserRow>>;
    fn user_name(&mut self, id: i64) -> Result<Option<String>>;

    /// Adds a function; a name is unique per owner, and registering the very same function
    /// again (same name, same definition) adds nothing and answers the existing id. Refused
    /// past `max` functions for the owner.
    fn put_function(&mut self, f: &FunctionRow, max: u64) -> Result<Option<String>>;
    fn function(&mut self, id: &str) -> Result<Option<FunctionRow>>;
    fn functions(&mut self) -> Result<Vec<FunctionRow>>;
    fn delete_function(&mut self, id: &str) -> Result<bool>;

    /// Adds an endpoint, within the owner's quota.
    fn put_endpoint(&mut self, e: &EndpointRow, max: u64) -> Result<()>;
    fn endpoints(&mut self) -> Result<Vec<EndpointRow>>;
    fn endpoint(&mut self, id: &str) -> Result<Option<EndpointRow>>;
    fn delete_endpoint(&mut self, id: &str) -> Result<bool>;

    /// Inserts one submission's tasks in one transaction, as a new batch; returns the batch id,
    /// the creation time and the task ids, in order.
    fn insert_tasks(&mut self, owner: i64, tasks: &[NewTask]) -> Result<(u64, i64, Vec<u64>)>;
    /// The owner of a batch, if it exists.
    fn batch_owner(&mut self, batch: u64) -> Result<Option<i64>>;
    /// Every task of a batch, in id order.
    fn batch_tasks(&mut self, batch: u64) -> Result<Vec<TaskRow>>;

    /// Records results in one transaction. A task already finished keeps its first result; the
    /// answer says, for each completion in order, whether it was newly recorded.
    fn complete(&mut self, done: &[Completion]) -> Result<Vec<bool>>;

    /// The tasks among `ids` that exist, in no particular order.
    fn tasks(&mut self, ids: &[u64]) -> Result<Vec<TaskRow>>;
    /// A page of one user's tasks, newest first (or oldest first), by the filter. Ids only
    /// grow, so a cursor walk sees every task once, also while tasks are being added.
    fn list_tasks(&mut self, f: &TaskFilter) -> Result<Vec<TaskRow>>;
    /// Counts for one user: tasks by state, and of the tasks finished since `since_ms`,
    /// failures by kind and completions per `bucket_ms`.
    fn task_stats(&mut self, owner: i64, since_ms: i64, bucket_ms: i64) -> Result<TaskStats>;

    /// Every task still waiting for a result, in id order (to queue again after a restart).
    fn open_tasks(&mut self) -> Result<Vec<TaskRow>>;
    /// The tasks for `endpoint` still waiting for a result, of one batch or all, in id order:
    /// at most `limit` with ids above `after`.
    fn open_tasks_of(
        &mut self,
        endpoint: &str,
        batch: Option<u64>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<TaskRow>>;
    /// Ids of the tasks of a function still waiting for a result.
    fn open_task_ids_of_function(&mut self, function_id: &str) -> Result<Vec<u64>>;

    /// Deletes finished tasks completed before `before_ms`.
    fn purge(&mut self, before_ms: i64) -> Result<usize>;

    /// Shared store: the open tasks of `owner`, and of each of `endpoints`, whichever broker
    /// holds them (`None` for a store of one broker, whose hub counts them).
    fn open_counts(
        &mut self,
        _owner: i64,
        _endpoints: &[String],
    ) -> Result<Option<(u64, Vec<u64>)>> {
        Ok(None)
    }

    /// Shared store: this broker took `endpoint`'s link (a store of one broker keeps links in
    /// memory only, so the default does nothing).
    fn link_up(&mut self, _endpoint: &str) -> Result<()> {
        Ok(())
    }

    /// Shared store: this broker lost `endpoint`'s link.
    fn link_down(&mut self, _endpoint: &str) -> Result<()> {
        Ok(())
    }

    /// Shared store: this broker still holds these links (sent every few seconds; a link not
    /// confirmed for [`LINK_STALE_MS`] counts as down, as after a broker crash).
    fn links_alive(&mut self, _endpoints: &[String]) -> Result<()> {
        Ok(())
    }

    /// Shared store: open tasks whose endpoint has had no link at any broker since before
    /// `cutoff_ms` (an endpoint never linked: tasks created before it), at most `limit`.
    fn stranded(&mut self, _cutoff_ms: i64, _limit: usize) -> Result<Vec<u64>> {
        Ok(Vec::new())
    }
}

/// How long a link's holder may go without confirming it before it counts as down.
pub const LINK_STALE_MS: i64 = 10_000;
