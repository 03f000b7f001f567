//! fxr-broker: the service that makes endpoints federated. Users register functions and
//! endpoints, submit tasks over a REST API, and fetch results; endpoints dial in over a
//! WebSocket link and receive tasks under credit-based flow control.
//!
//! - [`store`]: SQLite (WAL) — users, functions, endpoints, tasks and results survive restarts.
//! - [`hub`]: live routing state, rebuilt from the store at start-up.
//! - [`api`]: the REST routes and the OpenAPI document.
//! - [`link`]: the endpoint side of the WebSocket.
//! - [`watch`]: clients waiting for results, by task, batch and owner.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`tls`]: HTTPS, when the broker has a certificate.

pub mod api;
pub mod auth;
pub mod fetch;
pub mod hub;
pub mod link;
pub mod metrics;
pub mod provision;
pub mod rate;
mod shared;
pub mod store;
pub mod tls;
pub mod watch;

use api::types::FunctionBody;
use fxr_protocol::{
    Builtin, ContainerSpec, FailureKind, Function, Outcome, ShellSpec, Task, TaskId, TaskResult,
};
use hub::{Hub, Limits, Meta};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
pub use store::{EndpointRow, FunctionRow, Store, StoreError, UserRow};
use watch::Watchers;

/// Broker settings.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// The store: a SQLite file, or a PostgreSQL database that several brokers may share.
    pub db: store::Db,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Most tasks in one submission.
    pub max_tasks_per_request: usize,
    /// How long tasks wait for an offline endpoint before failing as `endpoint_unavailable`.
    pub endpoint_wait: Duration,
    /// How long finished tasks and their results are kept.
    pub result_retention: Duration,
    /// Backlog and link bounds.
    pub limits: Limits,
    /// An endpoint link silent this long is closed (endpoints report every few seconds).
    pub link_idle: Duration,
}

impl BrokerConfig {
    pub fn new(db: store::Db) -> BrokerConfig {
        BrokerConfig {
            db,
            max_body_bytes: 10 * 1024 * 1024,
            max_tasks_per_request: 10_000,
            endpoint_wait: Duration::from_secs(3600),
            result_retention: Duration::from_secs(7 * 24 * 3600),
            limits: Limits::default(),
            link_idle: Duration::from_secs(30),
        }
    }
}

/// Registered functions, endpoints and users, cached from the store.
#[derive(Debug, Default)]
struct Registry {
    functions: HashMap<String, (FunctionRow, Runnable)>,
    endpoints: HashMap<String, EndpointRow>,
    users_by_token: HashMap<String, UserRow>,
    user_names: HashMap<i64, String>,
}

impl Registry {
    /// Reads functions and endpoints from the store, replacing what was cached.
    fn load(&mut self, store: &mut Store) -> Result<(), StoreError> {
        let mut functions = HashMap::new();
        for f in store.functions()? {
            let func = runnable_from_row(&f)?;
            functions.insert(f.id.clone(), (f, func));
        }
        self.functions = functions;
        self.endpoints = store
            .endpoints()?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        Ok(())
    }

    /// Queues stored open tasks in the hub, skipping those it holds already; returns the
    /// failures to record for tasks whose function no longer exists.
    fn requeue(&self, hub: &mut Hub, rows: Vec<store::TaskRow>) -> Vec<store::Completion> {
        let mut orphans = Vec::new();
        let mut fids: HashMap<String, Arc<str>> = HashMap::new();
        for t in rows {
            if hub.live_state(t.id).is_some() {
                continue;
            }
            let Some((_, func)) = self.functions.get(&t.function_id) else {
                orphans.push(completion(TaskResult::failure(
                    TaskId(t.id),
                    FailureKind::FunctionDeleted,
                    format!("function {} was deleted before the task ran", t.function_id),
                )));
                continue;
            };
            let fid = fids
                .entry(t.function_id.clone())
                .or_insert_with(|| Arc::from(t.function_id.as_str()))
                .clone();
            hub.enqueue(
                &t.endpoint_id,
                func.task(TaskId(t.id), t.args),
                Meta {
                    owner: t.owner,
                    batch: t.batch,
                    function_id: fid,
                    created_ms: t.created_ms,
                },
            );
        }
        orphans
    }
}

/// What a stored function runs.
fn runnable_from_row(f: &FunctionRow) -> Result<Runnable, StoreError> {
    let body: FunctionBody = serde_json::from_str(&f.spec)
        .map_err(|e| StoreError::Corrupt(format!("function {}: {e}", f.id)))?;
    runnable_of(&body).map_err(|e| StoreError::Corrupt(format!("function {}: {e}", f.id)))
}

/// The broker's shared state.
#[derive(Debug)]
pub struct Broker {
    pub config: BrokerConfig,
    /// The writer connection.
    store: Arc<Mutex<Store>>,
    /// A read-only connection, so reads do not queue behind commits.
    reader: Arc<Mutex<Store>>,
    pub hub: Mutex<Hub>,
    registry: RwLock<Registry>,
    watchers: Mutex<Watchers>,
    pub metrics: metrics::Metrics,
    /// Set when the server is shutting down, so long-lived connections close.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Chunks of stored results asked of endpoints and not yet answered.
    pub fetches: Mutex<fetch::Fetches>,
    /// Requests per user.
    pub rate: Mutex<rate::RateLimiter>,
    /// Other brokers use the same store (see `ARCHITECTURE.md`, "Several brokers").
    pub shared: bool,
    /// This broker's identity in the shared store's notices.
    origin: String,
}

/// A finished task for the store, and what watchers are told of it.
fn completion(r: TaskResult) -> store::Completion {
    match r.outcome {
        Outcome::Success(v) => store::Completion {
            id: r.id.0,
            result: Some(v),
            data_ref: None,
            error: None,
        },
        Outcome::Stored(d) => store::Completion {
            id: r.id.0,
            result: None,
            data_ref: serde_json::to_string(&d).ok(),
            error: None,
        },
        Outcome::Failure { kind, message } => store::Completion {
            id: r.id.0,
            result: None,
            data_ref: None,
            error: Some((kind.as_str().to_string(), message)),
        },
    }
}

/// Turns a registered function's body into what workers run.
/// What a task of a registered function runs: the function, in its container if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runnable {
    pub function: Function,
    pub container: Option<ContainerSpec>,
}

impl Runnable {
    /// The container type (`""` for none), as endpoints report their warm workers.
    pub fn kind(&self) -> String {
        self.container
            .as_ref()
            .map(ContainerSpec::key)
            .unwrap_or_default()
    }

    /// A task of it.
    pub fn task(&self, id: TaskId, args: Vec<u8>) -> Task {
        Task {
            id,
            function: self.function.clone(),
            args,
            attempt: 0,
            container: self.container.clone().map(Box::new),
        }
    }
}

/// Checks a registration body and makes what its tasks run.
pub fn runnable_of(body: &FunctionBody) -> Result<Runnable, String> {
    let container = match &body.container {
        None => None,
        Some(c) => {
            let spec = ContainerSpec {
                runtime: c.runtime.clone(),
                image: c.image.clone(),
                options: c.options.clone(),
            };
            spec.check().map_err(|e| format!("`container`: {e}"))?;
            Some(spec)
        }
    };
    Ok(Runnable {
        function: function_of(body)?,
        container,
    })
}

fn function_of(body: &FunctionBody) -> Result<Function, String> {
    use api::types::FunctionKind;
    match body.kind {
        FunctionKind::Builtin => {
            let name = body.builtin.as_deref().ok_or(
                "a builtin function needs `builtin` (noop, sleep, spin, echo, fail, put, get, map, reduce)",
            )?;
            if body.command.is_some() {
                return Err("`command` is for shell functions".into());
            }
            Builtin::from_name(name)
                .map(Function::Builtin)
                .ok_or_else(|| {
                    format!("unknown builtin `{name}` (noop, sleep, spin, echo, fail, put, get, map, reduce)")
                })
        }
        FunctionKind::Mpi => {
            let mut shell = body.clone();
            shell.kind = FunctionKind::Shell;
            let Function::Shell(spec) = function_of(&shell)? else {
                return Err("internal: not a shell spec".into());
            };
            let num_nodes = body.num_nodes.unwrap_or(1);
            let ranks_per_node = body.ranks_per_node.unwrap_or(1);
            if num_nodes == 0 || ranks_per_node == 0 || num_nodes > 100_000 || ranks_per_node > 1024
            {
                return Err("`num_nodes` and `ranks_per_node` must be at least 1 (and at most 100000 and 1024)".into());
            }
            Ok(Function::Mpi(Box::new(fxr_protocol::MpiSpec {
                shell: *spec,
                num_nodes,
                ranks_per_node,
            })))
        }
        FunctionKind::Python => {
            let source = body
                .source
                .clone()
                .filter(|s| !s.trim().is_empty())
                .ok_or("a python function needs a non-empty `source`")?;
            let entry = body.entry.clone().unwrap_or_default();
            let ok_entry = entry
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && entry.len() <= 256
                && entry.chars().all(|c| c.is_alphanumeric() || c == '_');
            if !ok_entry {
                return Err(format!(
                    "`entry` must name the Python function to call (an identifier), got `{entry}`"
                ));
            }
            if source.len() > 1 << 20 {
                return Err(format!("`source` is {} bytes; at most 1 MiB", source.len()));
            }
            if body.command.is_some() || body.builtin.is_some() {
                return Err("`command` and `builtin` are not for python functions".into());
            }
            let python_version = body.python_version.clone().unwrap_or_default();
            if python_version.len() > 32
                || !python_version
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.')
            {
                return Err(format!(
                    "`python_version` must look like 3.11.2, got `{python_version}`"
                ));
            }
            Ok(Function::Python(Box::new(fxr_protocol::PythonSpec {
                id: fxr_protocol::PythonSpec::identity(&source, &entry),
                source: source.into(),
                entry,
                walltime_ms: body.walltime_ms.unwrap_or(0),
                python_version,
            })))
        }
        FunctionKind::Shell => {
            let command = body
                .command
                .clone()
                .filter(|c| !c.trim().is_empty())
                .ok_or("a shell function needs a non-empty `command`")?;
            if body.builtin.is_some() {
                return Err("`builtin` is for builtin functions".into());
            }
            Ok(Function::Shell(Box::new(ShellSpec {
                command,
                env: body.env.clone().unwrap_or_default().into_iter().collect(),
                cwd: body.cwd.clone(),
                walltime_ms: body.walltime_ms.unwrap_or(0),
            })))
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data that is still consistent enough to
    // serve; recover it rather than cascade the panic.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Broker {
    /// Opens the store, loads the registry and re-queues every task that has no result. Tasks
    /// whose function no longer exists fail as `function_deleted`.
    pub fn open(config: BrokerConfig) -> Result<Arc<Broker>, StoreError> {
        let mut store = config.db.open()?;
        let reader = config.db.open_reader()?;
        let shared = store.shared();
        let origin = store.origin().to_string();
        let mut registry = Registry::default();
        registry.load(&mut store)?;
        let mut hub = Hub::new(config.limits);
        // With a shared store, a broker holds only the tasks of the endpoints linked to it,
        // taken from the store when they connect.
        if !shared {
            let open = store.open_tasks()?;
            let requeued = open.len();
            let orphans = registry.requeue(&mut hub, open);
            if !orphans.is_empty() {
                tracing::warn!(
                    count = orphans.len(),
                    "tasks of deleted functions failed as function_deleted"
                );
                store.complete(&orphans)?;
            }
            tracing::info!(requeued, "broker store opened");
        } else {
            tracing::info!(store = %config.db, origin, "shared broker store opened");
        }
        let rate = rate::RateLimiter::new(config.limits.max_requests_per_sec);
        Ok(Arc::new(Broker {
            config,
            store: Arc::new(Mutex::new(store)),
            reader: Arc::new(Mutex::new(reader)),
            hub: Mutex::new(hub),
            registry: RwLock::new(registry),
            watchers: Mutex::new(Watchers::default()),
            metrics: metrics::Metrics::default(),
            stopping: tokio::sync::watch::channel(false).0,
            fetches: Mutex::new(fetch::Fetches::default()),
            rate: Mutex::new(rate),
            shared,
            origin,
        }))
    }

    /// Runs `f` on the read-only connection in a blocking thread.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&store)))
            .await
            .map_err(|e| StoreError::Corrupt(format!("store thread failed: {e}")))?
    }

    /// The watchers, locked.
    pub fn watchers(&self) -> std::sync::MutexGuard<'_, Watchers> {
        lock(&self.watchers)
    }

    /// Runs `f` on the store in a blocking thread.
    pub async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&store)))
            .await
            .map_err(|e| StoreError::Corrupt(format!("store thread failed: {e}")))?
    }

    /// Reads `len` bytes from `offset` of an object `endpoint` keeps in one of its nodes'
    /// stores, through its link; waits at most `wait`.
    pub async fn fetch_chunk(
        &self,
        endpoint: &str,
        data: &fxr_protocol::DataRef,
        offset: u64,
        len: u64,
        wait: Duration,
    ) -> std::result::Result<fxr_protocol::DataReply, String> {
        let (request, rx) = lock(&self.fetches).open(endpoint);
        let msg = fxr_protocol::BrokerMsg::Fetch {
            request,
            data: data.clone(),
            offset,
            len,
        };
        if !self.hub().send(endpoint, msg) {
            lock(&self.fetches).forget(request);
            return Err(format!("endpoint {endpoint} is not connected"));
        }
        let out = tokio::time::timeout(wait, rx).await;
        lock(&self.fetches).forget(request);
        match out {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(format!("endpoint {endpoint} went away")),
            Err(_) => Err(format!(
                "endpoint {endpoint} did not answer within {} s",
                wait.as_secs()
            )),
        }
    }

    /// The hub, locked.
    pub fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        lock(&self.hub)
    }

    fn reg(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reg_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub async fn user_by_token(&self, token: &str) -> Result<Option<UserRow>, StoreError> {
        let h = auth::hash(token);
        if let Some(u) = self.reg().users_by_token.get(&h) {
            return Ok(Some(u.clone()));
        }
        let hh = h.clone();
        let found = self.db(move |s| s.user_by_token(&hh)).await?;
        if let Some(u) = &found {
            let mut reg = self.reg_mut();
            reg.users_by_token.insert(h, u.clone());
            reg.user_names.insert(u.id, u.name.clone());
        }
        Ok(found)
    }

    pub async fn user_name(&self, id: i64) -> String {
        if let Some(n) = self.reg().user_names.get(&id) {
            return n.clone();
        }
        let name = self
            .db(move |s| s.user_name(id))
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("user#{id}"));
        self.reg_mut().user_names.insert(id, name.clone());
        name
    }

    /// Resolves user names to ids; the error names the first unknown one.
    pub async fn user_ids(&self, names: &[String]) -> Result<Vec<i64>, api::ApiError> {
        let mut ids = Vec::with_capacity(names.len());
        for n in names {
            let nn = n.clone();
            match self.db(move |s| s.user_by_name(&nn)).await? {
                Some(u) => ids.push(u.id),
                None => {
                    return Err(api::ApiError::bad(format!(
                        "unknown user `{n}` in shared_with"
                    )))
                }
            }
        }
        Ok(ids)
    }

    pub fn function(&self, id: &str) -> Option<(FunctionRow, Runnable)> {
        self.reg().functions.get(id).cloned()
    }

    pub fn functions(&self) -> Vec<FunctionRow> {
        self.reg()
            .functions
            .values()
            .map(|(f, _)| f.clone())
            .collect()
    }

    pub fn endpoint(&self, id: &str) -> Option<EndpointRow> {
        self.reg().endpoints.get(id).cloned()
    }

    pub fn endpoints(&self) -> Vec<EndpointRow> {
        self.reg().endpoints.values().cloned().collect()
    }

    /// Registers a function; the id of an identical one already registered, if any (then
    /// nothing is added).
    pub async fn add_function(
        &self,
        row: FunctionRow,
        func: Runnable,
    ) -> Result<Option<String>, StoreError> {
        let r = row.clone();
        let max = self.config.limits.max_functions_user;
        let existing = self.db(move |s| s.put_function(&r, max)).await?;
        if existing.is_none() {
            self.reg_mut().functions.insert(row.id.clone(), (row, func));
        }
        Ok(existing)
    }

    /// Deletes a function; its open tasks fail as `function_deleted` (those already at an
    /// endpoint are asked to stop there).
    pub async fn remove_function(&self, id: &str) -> Result<(), StoreError> {
        let i = id.to_string();
        self.db(move |s| s.delete_function(&i)).await?;
        self.reg_mut().functions.remove(id);
        let mut open = self.hub().function_deleted(id);
        if self.shared {
            // Tasks held by other brokers: their results tell those brokers to drop them.
            let i = id.to_string();
            let stored = self.read(move |s| s.open_task_ids_of_function(&i)).await?;
            let hub = self.hub();
            open.extend(stored.into_iter().filter(|t| hub.live_state(*t).is_none()));
        }
        if !open.is_empty() {
            let results = open
                .iter()
                .map(|t| {
                    TaskResult::failure(
                        TaskId(*t),
                        FailureKind::FunctionDeleted,
                        format!("function {id} was deleted before the task finished"),
                    )
                })
                .collect();
            if let Err(e) = self.record(results).await {
                self.hub().reopen(&open);
                return Err(e);
            }
        }
        Ok(())
    }

    pub async fn add_endpoint(&self, row: EndpointRow) -> Result<(), StoreError> {
        let r = row.clone();
        let max = self.config.limits.max_endpoints_user;
        self.db(move |s| s.put_endpoint(&r, max)).await?;
        self.reg_mut().endpoints.insert(row.id.clone(), row);
        Ok(())
    }

    pub async fn remove_endpoint(&self, id: &str) -> Result<(), StoreError> {
        let i = id.to_string();
        self.db(move |s| s.delete_endpoint(&i)).await?;
        self.reg_mut().endpoints.remove(id);
        Ok(())
    }

    /// Records results (each task once), then forgets them in the hub and hands them to the
    /// clients watching them. Returns how many were newly recorded.
    pub async fn record(&self, results: Vec<TaskResult>) -> Result<usize, StoreError> {
        if results.is_empty() {
            return Ok(0);
        }
        let ids: Vec<u64> = results.iter().map(|r| r.id.0).collect();
        let done: Vec<store::Completion> = results.into_iter().map(completion).collect();
        let started = std::time::Instant::now();
        let (fresh, done, completed_ms) = self
            .db(move |s| {
                let fresh = s.complete(&done)?;
                Ok((fresh, done, store::now_ms()))
            })
            .await?;
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        let finished = self.hub().finished(ids);
        let recorded = || done.iter().zip(&fresh).filter(|(_, f)| **f).map(|(c, _)| c);
        let (mut ok, mut failed) = (0u64, 0u64);
        for c in recorded() {
            if c.error.is_none() {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        self.metrics.succeeded.fetch_add(ok, Ordering::Relaxed);
        self.metrics.failed.fetch_add(failed, Ordering::Relaxed);
        let mut watchers = self.watchers();
        if !watchers.is_empty() {
            // Only when someone follows results: what the hub knew of each task, by id.
            let known: HashMap<u64, hub::Finished> =
                finished.into_iter().map(|f| (f.id, f)).collect();
            for c in recorded() {
                let Some(f) = known.get(&c.id) else { continue };
                if watchers.interested(f.id, f.meta.batch, f.meta.owner) {
                    let info = Arc::new(api::tasks::finished_info(f, c, completed_ms));
                    watchers.notify(f.meta.owner, f.meta.batch, &info);
                }
            }
        }
        drop(watchers);
        let n = (ok + failed) as usize;
        tracing::debug!(count = n, "results recorded");
        Ok(n)
    }

    /// Fails tasks whose endpoint stayed offline too long, and purges old results.
    async fn housekeeping(&self) {
        if self.hub().compact() {
            trim_heap();
        }
        for (endpoint, r) in self.hub().provision(std::time::Instant::now()) {
            tracing::info!(endpoint_id = %endpoint, blocks = r.blocks, reason = %r.reason, "asking the endpoint for blocks");
        }
        let mut expired = self.hub().expired(self.config.endpoint_wait);
        let local = expired.len();
        if self.shared {
            match self.shared_housekeeping().await {
                Ok(stranded) => expired.extend(stranded),
                Err(e) => {
                    tracing::error!(error = %e, "cannot look after links in the shared store")
                }
            }
        }
        if !expired.is_empty() {
            tracing::warn!(
                count = expired.len(),
                "tasks failed: endpoint offline too long"
            );
            let results = expired
                .iter()
                .map(|&id| {
                    TaskResult::failure(
                        TaskId(id),
                        FailureKind::EndpointUnavailable,
                        "the endpoint stayed offline longer than the broker waits",
                    )
                })
                .collect();
            if let Err(e) = self.record(results).await {
                self.hub().reopen(&expired[..local]);
                tracing::error!(error = %e, "cannot record expired tasks");
            }
        }
        let before = store::now_ms() - self.config.result_retention.as_millis() as i64;
        if let Err(e) = self.db(move |s| s.purge(before)).await {
            tracing::error!(error = %e, "cannot purge old results");
        }
    }
}

/// Hands freed heap pages back to the OS after a large backlog drained.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves the API on an already-bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Small frames (one task, an acknowledgement) must not wait for Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    serve_on(listener, broker, shutdown).await
}

/// [`serve`] over HTTPS (and `wss://` for endpoint links) with `acceptor`'s certificate.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on(tls::TlsListener::new(listener, acceptor)?, broker, shutdown).await
}

async fn serve_on<L>(
    listener: L,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let follower = broker
        .follow_store()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let keeper = broker.clone();
    let housekeeping = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            keeper.housekeeping().await;
        }
    });
    let stopper = broker.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = stopper.stopping.send(true);
    };
    let app = api::router(broker);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    housekeeping.abort();
    if let Some(f) = follower {
        f.abort();
    }
    result
}
