//! `fxr bench`: throughput and latency of an endpoint started for the measurement.
//!
//! The interchange runs in this process (so its peak memory is this process's); pilots run as
//! separate processes, as they would on compute nodes.

use crate::endpoint::{start_local, LocalEndpoint, StartArgs};
use crate::exit;
use crate::procstat;
use anyhow::Context;
use fxr_interchange::client;
use fxr_interchange::dispatch::Policy;
use fxr_protocol::{Builtin, Function, ShellSpec, Task, TaskId};
use hdrhistogram::Histogram;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Tasks per second for N tasks.
    Throughput(ThroughputArgs),
    /// Round-trip latency of one task at a time.
    Latency(LatencyArgs),
    /// Completion time, cold starts and container switches of functions spread over
    /// container types, under one dispatch policy (the paper's routing experiment).
    Routing(crate::routing::RoutingArgs),
    /// Time from starting a worker in a container to the worker being ready.
    ColdStart(crate::routing::ColdStartArgs),
    /// Moving one object from a producer to a consumer: the node's store, another node's store,
    /// a file system, or Redis.
    Data(crate::databench::DataArgs),
    /// The paper's MapReduce workloads (Sort, WordCount), with the intermediate data through
    /// the node's store, a file system, or Redis; time per phase.
    Mapreduce(crate::databench::MapReduceArgs),
    /// The interchange's dispatcher alone, without sockets: memory per queued task and CPU
    /// per task from submission to result.
    Queue(crate::queuebench::QueueArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Real worker processes (per block).
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Simulated workers per manager instead of processes.
    #[arg(long)]
    pub simulate_workers: Option<u32>,
    /// Managers per pilot process.
    #[arg(long, default_value_t = 1)]
    pub managers: u32,
    /// Pilot processes.
    #[arg(long, default_value_t = 1)]
    pub blocks: u32,
    /// noop | sleep:MS | shell-true | python-noop
    #[arg(long, default_value = "noop")]
    pub function: String,
    #[arg(long, default_value_t = 4)]
    pub prefetch: u32,
    /// Dispatch shards in the interchange, each on its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub dispatch_shards: u32,
    /// Go through a broker (started in this process): client → REST API → broker → endpoint
    /// link → interchange → workers and back.
    #[arg(long)]
    pub via_broker: bool,
    /// The broker's store with --via-broker: `sqlite` (a file in a temporary directory) or
    /// `postgres` (a throwaway PostgreSQL cluster with its durable defaults, started for the run).
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// Seal every message between the interchange and its managers.
    #[arg(long)]
    pub encrypt: bool,
    /// Instead of local pilots, one block of this many nodes on the Slurm cluster that
    /// `SLURM_CONF` points at (pilots launched by srun), with --workers per node.
    #[arg(long)]
    pub slurm_nodes: Option<u32>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

/// A broker in this process, with a user, a function and the endpoint connected to it. Its
/// runtime's threads are named `fxr-broker`, so its CPU time can be told apart from the
/// interchange's and the clients' in the same process.
struct ViaBroker {
    api: crate::api::Api,
    function_id: String,
    endpoint_id: String,
    url: String,
    credential: String,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
    /// Dropped after the runtime (fields drop in order), so the broker goes first.
    _pg: Option<fxr_broker::store::pgcluster::TempCluster>,
}

/// A benchmark function's arguments as JSON (`null` when there are none).
fn json_args(args: &[u8]) -> anyhow::Result<serde_json::Value> {
    if args.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_slice(args)?)
}

/// Name of the broker's runtime threads.
const BROKER_THREADS: &str = "fxr-broker";

/// The interchange's core (dispatch) thread and its dispatch shards' threads (`dispatch-N`).
fn dispatch_cpu() -> f64 {
    procstat::threads_cpu_seconds(|n| n == "interchange" || n.starts_with("dispatch-"))
}

/// The interchange's manager link's sending thread (it encodes batches). Receiving and
/// decoding run in NNG's callback threads (`nng:task`), counted with the rest of NNG's.
fn link_threads_cpu() -> f64 {
    procstat::thread_cpu_seconds("ix-send")
}

impl ViaBroker {
    /// Starts the broker; `connect` also connects the endpoint (otherwise call [`Self::connect`]).
    fn start(
        ep: &LocalEndpoint,
        function: &str,
        connect: bool,
        store: StoreKind,
    ) -> anyhow::Result<ViaBroker> {
        let dir = tempfile::tempdir()?;
        let (db, pg) = match store {
            StoreKind::Sqlite => (
                fxr_broker::store::Db::Sqlite(dir.path().join("broker.db")),
                None,
            ),
            StoreKind::Postgres => {
                let cluster = fxr_broker::store::pgcluster::TempCluster::start(true)
                    .context("cannot start PostgreSQL")?;
                let url = cluster.create_database()?;
                (fxr_broker::store::Db::Postgres(url), Some(cluster))
            }
        };
        let token = fxr_broker::auth::new_secret()?;
        db.open()?
            .add_user("bench", &fxr_broker::auth::hash(&token))?;
        let broker = fxr_broker::Broker::open(fxr_broker::BrokerConfig::new(db))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(BROKER_THREADS)
            // Blocking threads that exit take their CPU time with them; keep them for the run.
            .thread_keep_alive(Duration::from_secs(3600))
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(fxr_broker::serve(listener, broker, async move {
            let _ = stopped.await;
        }));
        let api = crate::api::Api::new(&url, &token)?;
        let body = if function == "shell-true" {
            serde_json::json!({"name": "f", "kind": "shell", "command": "/bin/true"})
        } else if function == "python-noop" {
            serde_json::json!({"name": "f", "kind": "python", "source": PYTHON_NOOP, "entry": "noop"})
        } else {
            let name = function.split(':').next().unwrap_or("noop");
            serde_json::json!({"name": "f", "kind": "builtin", "builtin": name})
        };
        let f: serde_json::Value = api.post("/v1/functions", &body)?;
        let e: serde_json::Value =
            api.post("/v1/endpoints", &serde_json::json!({"name": "bench"}))?;
        let endpoint_id = e["id"].as_str().context("no endpoint id")?.to_string();
        let v = ViaBroker {
            api,
            function_id: f["id"].as_str().unwrap_or_default().to_string(),
            endpoint_id,
            url,
            credential: e["credential"]
                .as_str()
                .context("no credential")?
                .to_string(),
            rt,
            stop: Some(stop),
            _dir: dir,
            _pg: pg,
        };
        if connect {
            v.connect(ep)?;
        }
        Ok(v)
    }

    /// Connects the endpoint's link and waits until the broker sees it.
    fn connect(&self, ep: &LocalEndpoint) -> anyhow::Result<()> {
        ep.interchange
            .start_broker_link(fxr_interchange::links::broker::BrokerLinkConfig {
                broker: self.url.clone(),
                endpoint_id: self.endpoint_id.clone(),
                credential: self.credential.clone(),
                window: 100_000,
                status_period: Duration::from_millis(500),
                connected: None,
                ca_cert: std::env::var_os("FXR_CA_CERT").map(std::path::PathBuf::from),
            })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s: serde_json::Value = self
                .api
                .get(&format!("/v1/endpoints/{}", self.endpoint_id))?;
            if s["connected"] == true {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the endpoint did not connect to the broker"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Posts `n` copies of one task in requests of at most `batch`; returns the answers.
    fn post(
        &self,
        n: usize,
        batch: usize,
        args: &serde_json::Value,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let task = serde_json::json!({"function_id": self.function_id, "endpoint_id": self.endpoint_id, "args": args});
        let mut answers = Vec::new();
        let mut left = n;
        while left > 0 {
            let k = left.min(batch.clamp(1, 10_000));
            left -= k;
            answers.push(self.api.post(
                "/v1/tasks",
                &serde_json::json!({"tasks": vec![task.clone(); k]}),
            )?);
        }
        Ok(answers)
    }

    /// Submits `n` tasks in batches of `batch`; returns the batch ids.
    fn submit(&self, n: usize, batch: usize, args: &[u8]) -> anyhow::Result<Vec<u64>> {
        self.post(n, batch, &json_args(args)?)?
            .iter()
            .map(|r| r["batch_id"].as_u64().context("no batch id"))
            .collect()
    }

    /// Follows `batches` to the end over the event stream; returns how many tasks failed.
    fn follow(&self, batches: &[u64], n: usize) -> anyhow::Result<usize> {
        let mut failed = 0;
        let mut seen = 0;
        self.api.follow(
            &serde_json::json!({ "batches": batches }),
            Duration::from_secs(600),
            &mut |t| {
                seen += 1;
                if t["state"] != "succeeded" {
                    failed += 1;
                }
                Ok(())
            },
        )?;
        anyhow::ensure!(seen == n, "{seen} of {n} results arrived");
        Ok(failed)
    }

    /// Submits `n` tasks in batches and follows them to the end; returns (seconds, failed).
    /// One task is waited for with `POST /v1/tasks/wait` on the client's open connection.
    fn run(&self, n: usize, batch: usize, args: &[u8]) -> anyhow::Result<(f64, usize)> {
        if n == 1 {
            return self.run_clients(1, 1, 1, args);
        }
        let start = Instant::now();
        let batches = self.submit(n, batch, args)?;
        let failed = self.follow(&batches, n)?;
        Ok((start.elapsed().as_secs_f64(), failed))
    }

    /// `clients` threads at once, each submitting its share in batches and waiting on its ids
    /// with `POST /v1/tasks/wait`; returns (seconds, failed).
    fn run_clients(
        &self,
        clients: usize,
        n: usize,
        batch: usize,
        args: &[u8],
    ) -> anyhow::Result<(f64, usize)> {
        let args = json_args(args)?;
        let start = Instant::now();
        let failed = std::thread::scope(|scope| -> anyhow::Result<usize> {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let share = n / clients + usize::from(c < n % clients);
                    let args = &args;
                    scope.spawn(move || -> anyhow::Result<usize> {
                        let ids: Vec<u64> = self
                            .post(share, batch, args)?
                            .iter()
                            .flat_map(|r| r["task_ids"].as_array().cloned().unwrap_or_default())
                            .filter_map(|v| v.as_u64())
                            .collect();
                        let done = crate::client::broker_wait(
                            &self.api,
                            &ids,
                            Duration::from_secs(600),
                            &mut |_, _| {},
                        )?;
                        let failed = done.iter().filter(|t| t["state"] != "succeeded").count();
                        Ok(failed)
                    })
                })
                .collect();
            let mut failed = 0;
            for h in handles {
                failed += h
                    .join()
                    .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
            }
            Ok(failed)
        })?;
        Ok((start.elapsed().as_secs_f64(), failed))
    }
}

impl Drop for ViaBroker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = &self.rt;
    }
}

#[derive(clap::Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// Tasks per submission message.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Runs to make; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// With --via-broker: submit N tasks before the endpoint connects (the backlog is built
    /// first), then the rest of --tasks; time from the moment it connects to the last result.
    #[arg(long, value_name = "N")]
    pub backlog: Option<usize>,
    /// With --via-broker: this many clients at once, each submitting its share and waiting on
    /// its task ids (`POST /v1/tasks/wait`).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
}

#[derive(clap::Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
}

/// The Python no-op of the `python-noop` benchmark function.
const PYTHON_NOOP: &str = "def noop():\n    return None\n";

fn function(name: &str) -> anyhow::Result<(Function, Vec<u8>)> {
    if name == "python-noop" {
        return Ok((
            Function::Python(Box::new(fxr_protocol::PythonSpec {
                id: fxr_protocol::PythonSpec::identity(PYTHON_NOOP, "noop"),
                source: PYTHON_NOOP.into(),
                entry: "noop".into(),
                walltime_ms: 0,
                python_version: String::new(),
            })),
            vec![],
        ));
    }
    if name == "shell-true" {
        return Ok((
            Function::Shell(Box::new(ShellSpec {
                command: "/bin/true".into(),
                env: vec![],
                cwd: None,
                walltime_ms: 0,
            })),
            vec![],
        ));
    }
    if let Some(ms) = name.strip_prefix("sleep:") {
        let ms: u64 = ms
            .parse()
            .with_context(|| format!("bad sleep time in `{name}`"))?;
        return Ok((
            Function::Builtin(Builtin::Sleep),
            format!("{{\"ms\":{ms}}}").into_bytes(),
        ));
    }
    let b = Builtin::from_name(name).with_context(|| format!("unknown bench function `{name}`"))?;
    Ok((Function::Builtin(b), vec![]))
}

fn endpoint(c: &Common) -> anyhow::Result<(LocalEndpoint, u64)> {
    endpoint_with(c, |_| {})
}

/// A local endpoint for a benchmark, with `adjust` applied to its settings.
pub(crate) fn endpoint_with(
    c: &Common,
    adjust: impl FnOnce(&mut StartArgs),
) -> anyhow::Result<(LocalEndpoint, u64)> {
    let mut args = StartArgs {
        name: None,
        dir: None,
        local: true,
        listen: None,
        manager_url: "tcp://127.0.0.1:0".into(),
        blocks: if c.slurm_nodes.is_some() { 0 } else { c.blocks },
        workers_per_node: Some(c.workers),
        prefetch: c.prefetch,
        simulate_workers: c.simulate_workers,
        managers: c.managers,
        dispatch: Policy::LeastLoaded,
        max_retries: 2,
        dispatch_shards: c.dispatch_shards,
        register_timeout: Duration::from_secs(10),
        encrypt: c.encrypt,
        heartbeat_period: Duration::from_secs(5),
        heartbeat_threshold: Duration::from_secs(60),
        address_file: None,
        metrics: None,
        cold_routing_interval: Duration::from_secs(1),
        worker_max_idletime: Duration::ZERO,
        container_runtimes: Vec::new(),
        simulate_cold_start: Vec::new(),
        store_dir: None,
        node: crate::opts::NodeArgs::default(),
        block_nodes: 1,
        limits: Default::default(),
        foreground: true,
        skip_checks: false,
        wait: Duration::from_secs(120),
    };
    adjust(&mut args);
    let mut ep = start_local(&args)?;
    if let Some(nodes) = c.slurm_nodes {
        let dir = tempfile::tempdir()?;
        let mut cfg = fxr_interchange::config::EndpointConfig {
            name: "bench".into(),
            broker: None,
            endpoint_id: None,
            ca_cert: None,
            engine: Default::default(),
            provider: Default::default(),
            containers: Default::default(),
            python: Default::default(),
        };
        cfg.engine.workers_per_node = Some(c.workers);
        cfg.engine.prefetch = c.prefetch;
        cfg.engine.dispatch_shards = c.dispatch_shards;
        cfg.provider.kind = "slurm".into();
        cfg.provider.nodes_per_block = nodes;
        cfg.provider.init_blocks = 1;
        cfg.provider.min_blocks = 1;
        cfg.provider.max_blocks = 1;
        cfg.provider.max_idletime = "1h".into();
        cfg.provider.launcher = "srun".into();
        let scaler =
            crate::endpoint::start_scaler(&cfg, dir.path(), &ep.interchange, &ep.secret, false)?;
        ep.batch = Some(scaler);
        ep.scratch.push(dir);
        return Ok((ep, u64::from(nodes) * u64::from(c.workers)));
    }
    let per_manager = u64::from(c.simulate_workers.unwrap_or(c.workers));
    let workers = per_manager * u64::from(c.managers) * u64::from(c.blocks);
    Ok((ep, workers))
}

pub(crate) fn shutdown(mut ep: LocalEndpoint) {
    let mut c = ep.interchange.local_client();
    let _ = fxr_interchange::FrontDoor::send(&mut c, fxr_protocol::ClientMsg::Shutdown);
    drop(c);
    let mut scalers: Vec<fxr_interchange::scaling::Scaler> =
        ep.local_scaler.take().into_iter().collect();
    scalers.extend(ep.batch.take());
    let blocks = ep.blocks.clone();
    let LocalEndpoint { interchange, .. } = ep;
    interchange.join();
    for s in scalers {
        s.stop();
    }
    blocks.stop_all(Duration::from_secs(5));
}

pub fn run(cmd: BenchCmd, json: bool) -> anyhow::Result<u8> {
    match cmd {
        BenchCmd::Throughput(a) => throughput(a, json),
        BenchCmd::Latency(a) => latency(a, json),
        BenchCmd::Routing(a) => crate::routing::routing(a, json),
        BenchCmd::ColdStart(a) => crate::routing::cold_start(a, json),
        BenchCmd::Data(a) => crate::databench::data(a, json),
        BenchCmd::Mapreduce(a) => crate::databench::mapreduce(a, json),
        BenchCmd::Queue(a) => crate::queuebench::queue_bench(a, json),
    }
}

fn throughput(a: ThroughputArgs, json: bool) -> anyhow::Result<u8> {
    let (f, args) = function(&a.common.function)?;
    let (ep, workers) = endpoint(&a.common)?;
    let mut door = ep.interchange.local_client();
    let ready = Instant::now();
    client::wait_for_workers(&mut door, workers, Duration::from_secs(120))?;
    let startup = ready.elapsed().as_secs_f64();
    let mut rates = Vec::new();
    let mut times = Vec::new();
    let mut failed = 0;
    let cpu0 = procstat::cpu_seconds();
    let pilots = ep.blocks.pids();
    let pilots_cpu0 = procstat::processes_cpu_seconds(&pilots);
    let metrics = ep.interchange.metrics();
    let dispatch_cpu0 = dispatch_cpu();
    let core_cpu0 = procstat::thread_cpu_seconds("interchange");
    // This thread is the in-process client: it builds, submits and collects the tasks.
    let client_cpu0 = procstat::this_thread_cpu_seconds();
    let link_cpu0 = link_threads_cpu();
    let batches0 = metrics.dispatch_batch.count();
    let messages0 = metrics.manager_messages.load(Ordering::Relaxed);
    anyhow::ensure!(
        a.common.via_broker || (a.backlog.is_none() && a.clients == 1),
        "--backlog and --clients need --via-broker"
    );
    anyhow::ensure!(
        !(a.backlog.is_some() && a.repeat > 1),
        "--backlog runs once (the endpoint connects once)"
    );
    anyhow::ensure!(
        a.backlog.is_none_or(|n| n <= a.tasks),
        "--backlog must not exceed --tasks"
    );
    anyhow::ensure!(a.clients >= 1, "--clients must be at least 1");
    let via = if a.common.via_broker {
        Some(ViaBroker::start(
            &ep,
            &a.common.function,
            a.backlog.is_none(),
            a.common.store,
        )?)
    } else {
        None
    };
    let broker_cpu0 = procstat::thread_cpu_seconds(BROKER_THREADS);
    let mut submit_s = 0.0;
    for rep in 0..a.repeat.max(1) {
        if let Some(v) = &via {
            let (secs, f) = if let Some(n) = a.backlog {
                let t0 = Instant::now();
                let mut batches = v.submit(n, a.batch, &args)?;
                submit_s = t0.elapsed().as_secs_f64();
                let start = Instant::now();
                v.connect(&ep)?;
                batches.extend(v.submit(a.tasks - n, a.batch, &args)?);
                let failed = v.follow(&batches, a.tasks)?;
                (start.elapsed().as_secs_f64(), failed)
            } else if a.clients > 1 {
                v.run_clients(a.clients, a.tasks, a.batch, &args)?
            } else {
                v.run(a.tasks, a.batch, &args)?
            };
            failed += f;
            times.push(secs);
            rates.push(a.tasks as f64 / secs);
            if !json {
                eprintln!(
                    "run {}: {} tasks in {secs:.3} s = {:.0} tasks/s (via broker)",
                    rep + 1,
                    a.tasks,
                    a.tasks as f64 / secs
                );
            }
            continue;
        }
        let base = (rep * a.tasks) as u64;
        let tasks: Vec<Task> = (0..a.tasks)
            .map(|i| Task {
                id: TaskId(base + i as u64),
                function: f.clone(),
                args: args.clone(),
                attempt: 0,
                container: None,
            })
            .collect();
        let start = Instant::now();
        // Results are counted and dropped as they come, as a client that stores them elsewhere
        // would: the run measures the endpoint, not this process keeping millions of results.
        client::submit_each(
            &mut door,
            tasks.into_iter(),
            a.batch,
            Duration::from_secs(600),
            &mut |r| failed += r.iter().filter(|r| !r.is_success()).count(),
        )?;
        let secs = start.elapsed().as_secs_f64();
        times.push(secs);
        rates.push(a.tasks as f64 / secs);
        if !json {
            eprintln!(
                "run {}: {} tasks in {secs:.3} s = {:.0} tasks/s",
                rep + 1,
                a.tasks,
                a.tasks as f64 / secs
            );
        }
    }
    let cpu = procstat::cpu_seconds() - cpu0;
    let pilots_cpu = procstat::processes_cpu_seconds(&pilots) - pilots_cpu0;
    let broker_cpu = procstat::thread_cpu_seconds(BROKER_THREADS) - broker_cpu0;
    let runs_total = (a.tasks * a.repeat.max(1)) as f64;
    // Messages each way per task: what NNG's per-message cost is paid on.
    let batches = metrics.dispatch_batch.count() - batches0;
    let messages = metrics.manager_messages.load(Ordering::Relaxed) - messages0;
    // The interchange process's CPU split: the dispatch thread alone, and the manager link's
    // receiving and sending threads (decoding and encoding); the rest is NNG's own threads
    // and the in-process client.
    let dispatch_cpu = dispatch_cpu() - dispatch_cpu0;
    // With dispatch shards, the core thread hands tasks out and the shards' threads dispatch.
    let core_cpu = procstat::thread_cpu_seconds("interchange") - core_cpu0;
    let link_cpu = link_threads_cpu() - link_cpu0;
    let client_cpu = procstat::this_thread_cpu_seconds() - client_cpu0;
    drop(via);
    drop(door);
    let rss = procstat::peak_rss();
    shutdown(ep);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let rate = median(&mut rates.clone());
    let secs = median(&mut times.clone());
    let mode = if a.common.slurm_nodes.is_some() {
        "slurm"
    } else if a.common.simulate_workers.is_some() {
        "simulated"
    } else {
        "processes"
    };
    let v = serde_json::json!({
        "tasks": a.tasks, "workers": workers, "managers": a.common.managers * a.common.blocks,
        "mode": mode, "function": a.common.function, "batch": a.batch, "via_broker": a.common.via_broker,
        "store": a.common.store.name(), "seconds": secs, "tasks_per_s": rate, "runs": rates, "failed": failed,
        "startup_s": startup, "interchange_peak_rss_bytes": rss, "interchange_cpu_s": cpu,
        // The endpoint's own CPU: the process's, less the benchmark's in-process client thread
        // (it builds, submits and counts the tasks) and the in-process broker's threads.
        "endpoint_cpu_s": (cpu - client_cpu - broker_cpu).max(0.0),
        "backlog": a.backlog.unwrap_or(0), "backlog_submit_s": submit_s, "clients": a.clients,
        "broker_cpu_s": broker_cpu, "task_batches": batches, "manager_messages": messages,
        "dispatch_cpu_s": dispatch_cpu, "core_thread_cpu_s": core_cpu,
        "dispatch_shards": a.common.dispatch_shards,
        "link_threads_cpu_s": link_cpu, "client_cpu_s": client_cpu,
        // Only pilots this process started (local blocks); a batch job's are not measured.
        "pilots_cpu_s": (!pilots.is_empty()).then_some(pilots_cpu),
        "broker_cpu_us_per_task": if a.common.via_broker { broker_cpu * 1e6 / runs_total } else { 0.0 },
    });
    if json {
        println!("{v}");
    } else {
        println!("{} tasks on {workers} {mode} workers: median {secs:.3} s, {rate:.0} tasks/s (peak RSS {} MiB)", a.tasks, rss >> 20);
    }
    Ok(if failed == 0 {
        exit::OK
    } else {
        exit::TASK_FAILED
    })
}

fn latency(a: LatencyArgs, json: bool) -> anyhow::Result<u8> {
    let (f, args) = function(&a.common.function)?;
    let (ep, workers) = endpoint(&a.common)?;
    let mut door = ep.interchange.local_client();
    client::wait_for_workers(&mut door, workers, Duration::from_secs(120))?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?;
    let mut first_us = 0;
    let mut failed = 0;
    let via = if a.common.via_broker {
        Some(ViaBroker::start(
            &ep,
            &a.common.function,
            true,
            a.common.store,
        )?)
    } else {
        None
    };
    for i in 0..a.tasks {
        if let Some(v) = &via {
            let start = Instant::now();
            let (_, f) = v.run(1, 1, &args)?;
            let us = start.elapsed().as_micros() as u64;
            if i == 0 {
                first_us = us;
            }
            failed += f;
            hist.saturating_record(us.max(1));
            continue;
        }
        let t = Task {
            id: TaskId(i as u64),
            function: f.clone(),
            args: args.clone(),
            attempt: 0,
            container: None,
        };
        let start = Instant::now();
        let r = client::submit_and_wait(
            &mut door,
            vec![t],
            1,
            Duration::from_secs(60),
            &mut |_, _| {},
        )?;
        let us = start.elapsed().as_micros() as u64;
        if i == 0 {
            first_us = us;
        }
        failed += r.iter().filter(|r| !r.is_success()).count();
        hist.saturating_record(us.max(1));
    }
    drop(via);
    drop(door);
    shutdown(ep);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let v = serde_json::json!({
        "tasks": a.tasks, "workers": workers, "function": a.common.function, "via_broker": a.common.via_broker, "store": a.common.store.name(),
        "mode": if a.common.simulate_workers.is_some() { "simulated" } else { "processes" },
        "first_ms": first_us as f64 / 1000.0,
        "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
        "max_ms": hist.max() as f64 / 1000.0, "mean_ms": hist.mean() / 1000.0, "failed": failed,
    });
    if json {
        println!("{v}");
    } else {
        println!(
            "{} tasks one at a time: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            a.tasks,
            ms(0.5),
            ms(0.99),
            hist.max() as f64 / 1000.0
        );
    }
    Ok(if failed == 0 {
        exit::OK
    } else {
        exit::TASK_FAILED
    })
}
