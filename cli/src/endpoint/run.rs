//! Running an endpoint in this process: the interchange, its blocks (local pilot processes, or
//! batch jobs submitted by a scaling loop), and the broker link or the local front door.

use super::lifecycle::Ready;
use super::{endpoint_dir, StartArgs};
use crate::exit;
use crate::storedir::{configured_store_dir, default_store_dir, StoreDir};
use anyhow::{bail, Context};
use fxr_interchange::config::{parse_duration, EndpointConfig};
use fxr_interchange::dispatch::DispatchConfig;
use fxr_interchange::providers::local::LocalBlocks;
use fxr_interchange::providers::BatchProvider;
use fxr_interchange::scaling::{preflight, Scaler, ScalerConfig};
use fxr_interchange::{FrontDoor, Interchange, InterchangeConfig};
use fxr_pilot::exec::shell_quote;
use fxr_protocol::ClientMsg;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A running local endpoint: the interchange in this process and its pilot processes.
pub struct LocalEndpoint {
    pub interchange: Interchange,
    /// The local blocks (pilot processes), shared with their scaling loop.
    pub blocks: LocalBlocks,
    /// The scaling loop that starts local blocks and replaces lost ones.
    pub local_scaler: Option<Scaler>,
    pub secret: String,
    /// A batch scheduler's scaling loop, when one was added.
    pub batch: Option<Scaler>,
    /// Directories of block scripts and secret files, removed with the endpoint.
    pub scratch: Vec<tempfile::TempDir>,
    /// This node's object store, removed with the endpoint.
    pub store: Option<StoreDir>,
}

/// The pilot command line of a local block, without `--block-id`.
pub(super) fn local_pilot_cmd(
    a: &StartArgs,
    secret_file: &Path,
    port: u16,
    store_dir: &Path,
) -> anyhow::Result<String> {
    let mut cmd = pilot_line(secret_file, "127.0.0.1", port, a.prefetch)?;
    cmd.push_str(&format!(" --managers {}", a.managers));
    cmd.push_str(&a.node.pilot_flags(store_dir));
    if let Some(w) = a.workers_per_node {
        cmd.push_str(&format!(" --workers {w}"));
    }
    if let Some(s) = a.simulate_workers {
        cmd.push_str(&format!(" --simulate-workers {s}"));
        for c in &a.simulate_cold_start {
            cmd.push_str(&format!(" --cold-start {}", shell_quote(c)));
        }
    }
    Ok(cmd)
}

/// The scaling loop of local blocks: `a.blocks` pilot processes, each replaced when it exits.
pub fn local_scaler_config(a: &StartArgs, dir: &Path, pilot_cmd: String) -> ScalerConfig {
    let years = Duration::from_secs(10 * 365 * 24 * 3600);
    ScalerConfig {
        strategy: fxr_interchange::strategy::StrategyConfig {
            init_blocks: a.blocks,
            min_blocks: a.blocks,
            max_blocks: a.blocks,
            nodes_per_block: 1,
            workers_per_node: a.workers_per_node.unwrap_or(1),
            parallelism: 1.0,
            max_idletime: years,
            walltime: years,
            drain_margin: Duration::ZERO,
            max_failures: a.limits.max_failures,
            pending_timeout: a.limits.pending_timeout,
            retry_after: a.limits.retry_after,
        },
        kind: "local".into(),
        launcher: "single-node".into(),
        template: None,
        vars: fxr_interchange::providers::template::ScriptVars {
            nodes: 1,
            walltime: "00:00:00".into(),
            log_dir: dir.display().to_string(),
            ..Default::default()
        },
        pilot_cmd,
        dir: dir.to_path_buf(),
        name: a.name.clone().unwrap_or_else(|| "local".into()),
        tick: Duration::from_millis(200),
        poll: Duration::from_millis(200),
        metrics: None,
        fail_tasks_after: a.limits.fail_tasks_after,
    }
}

/// Starts the interchange and the pilots of a local endpoint. Blocks are started by a scaling
/// loop over the local provider, which keeps `a.blocks` of them running: a block that exits
/// is reaped and replaced (within the strategy's failure limits). A configured endpoint
/// (`a.dir` set) keeps its block scripts and a log per block in its `blocks/` directory; an
/// ad-hoc one uses a temporary directory.
pub fn start_local(a: &StartArgs) -> anyhow::Result<LocalEndpoint> {
    // From the OS's cryptographic generator.
    let secret = fxr_broker::auth::new_secret()?;
    let config = InterchangeConfig {
        manager_url: a.manager_url.clone(),
        secret: secret.clone(),
        dispatch: DispatchConfig {
            policy: a.dispatch,
            max_retries: a.max_retries,
            heartbeat_threshold: a.heartbeat_threshold,
            cold_routing_interval: a.cold_routing_interval,
            block_nodes: a.block_nodes,
            shards: a.dispatch_shards as usize,
            ..DispatchConfig::default()
        },
        heartbeat_period: a.heartbeat_period,
        drain_timeout: Duration::from_secs(30),
        register_timeout: a.register_timeout,
        encrypt: a.encrypt,
        workers: fxr_protocol::WorkerSettings {
            runtimes: a.container_runtimes.clone(),
            max_idle_ms: a.worker_max_idletime.as_millis() as u64,
        },
    };
    let interchange = Interchange::start(config)?;
    let named = a.name.is_some() && a.dir.is_some();
    let blocks = if named {
        LocalBlocks::with_logs()
    } else {
        LocalBlocks::default()
    };
    let mut ep = LocalEndpoint {
        interchange,
        blocks: blocks.clone(),
        local_scaler: None,
        secret: secret.clone(),
        batch: None,
        scratch: Vec::new(),
        store: None,
    };
    let store_dir = a
        .store_dir
        .clone()
        .unwrap_or_else(|| default_store_dir(a.name.as_deref()));
    ep.store = Some(StoreDir(store_dir.clone()));
    if a.blocks == 0 {
        return Ok(ep);
    }
    let (dir, secret_file) = match (&a.dir, named) {
        (Some(d), true) => {
            std::fs::create_dir_all(d.join("blocks"))?;
            (d.join("blocks"), d.join("secret"))
        }
        _ => {
            let scratch = tempfile::Builder::new().prefix("fxr-local-").tempdir()?;
            let dir = scratch.path().to_path_buf();
            ep.scratch.push(scratch);
            (dir.clone(), dir.join("secret"))
        }
    };
    crate::api::write_private(&secret_file, &secret)?;
    let pilot_cmd = local_pilot_cmd(a, &secret_file, ep.interchange.manager_port(), &store_dir)?;
    let mut cfg = local_scaler_config(a, &dir, pilot_cmd);
    cfg.metrics = Some(ep.interchange.metrics());
    // The block script renders (a site's worker_init included) before anything starts.
    preflight(&mut blocks.clone(), &cfg)?;
    ep.local_scaler = Some(Scaler::start(
        ep.interchange.local_client(),
        Box::new(blocks.clone()),
        cfg,
    )?);
    // The first blocks are started at once; wait for them so their pids can be reported.
    let deadline = Instant::now() + Duration::from_secs(20);
    while blocks.pids().len() < a.blocks as usize {
        anyhow::ensure!(Instant::now() < deadline, "the local blocks did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(ep)
}

/// The pilot command line a block's job script runs: this executable, the interchange's manager
/// address, and the file holding the endpoint secret.
fn pilot_line(
    secret_file: &Path,
    address: &str,
    port: u16,
    prefetch: u32,
) -> anyhow::Result<String> {
    let exe =
        std::env::current_exe().context("cannot find this executable for the pilot command")?;
    Ok(format!(
        "{} pilot --interchange tcp://{address}:{port} --secret-file {} --prefetch {prefetch}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&secret_file.to_string_lossy()),
    ))
}

/// Takes the endpoint's lock, or says which process runs it already.
pub fn hold_endpoint(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    match super::lifecycle::try_lock(dir)? {
        Some(f) => Ok(f),
        None => {
            let pid = std::fs::read_to_string(dir.join("endpoint.pid")).unwrap_or_default();
            bail!(
                "endpoint {name} is already running (pid {}); stop it with `fxr endpoint stop {name}`",
                pid.trim()
            )
        }
    }
}

/// Settings of a configured endpoint, as `StartArgs`.
pub fn from_config(a: &StartArgs, cfg: &EndpointConfig) -> anyhow::Result<StartArgs> {
    let e = &cfg.engine;
    let local = cfg.provider.kind == "local";
    let duration = |v: &str| parse_duration(v).map_err(anyhow::Error::msg);
    Ok(StartArgs {
        // Batch providers get their blocks from the scaling loop instead.
        blocks: if local {
            cfg.provider.init_blocks.max(1)
        } else {
            0
        },
        manager_url: format!("tcp://{}:0", e.address),
        workers_per_node: e.workers_per_node,
        prefetch: e.prefetch,
        simulate_workers: e.simulate_workers,
        managers: e.managers_per_block.max(1),
        dispatch: e.dispatch.parse().map_err(anyhow::Error::msg)?,
        cold_routing_interval: duration(&e.cold_routing_interval)?,
        worker_max_idletime: duration(&e.worker_max_idletime)?,
        container_runtimes: cfg
            .containers
            .iter()
            .map(|(name, c)| (name.clone(), c.command.clone()))
            .collect(),
        simulate_cold_start: e.simulate_cold_start.clone(),
        store_dir: e.store_dir.clone().map(PathBuf::from),
        node: crate::opts::NodeArgs {
            python: a
                .node
                .python
                .clone()
                .or_else(|| cfg.python.executable.clone()),
            ..crate::opts::NodeArgs::from_config(cfg)?
        },
        block_nodes: if local {
            1
        } else {
            cfg.provider.nodes_per_block.max(1)
        },
        max_retries: e.max_retries,
        dispatch_shards: e.dispatch_shards,
        heartbeat_period: duration(&e.heartbeat_period)?,
        heartbeat_threshold: duration(&e.heartbeat_threshold)?,
        metrics: a.metrics.clone().or_else(|| e.metrics.clone()),
        limits: cfg.provider.limits().map_err(anyhow::Error::msg)?,
        encrypt: a.encrypt || e.encrypt,
        ..a.clone()
    })
}

/// A configured endpoint: its settings, directory, configuration and broker link.
pub struct Configured {
    pub args: StartArgs,
    pub dir: PathBuf,
    pub config: EndpointConfig,
    pub broker: Option<fxr_interchange::links::broker::BrokerLinkConfig>,
}

/// Loads endpoint NAME's configuration and credential.
pub fn configured(a: &StartArgs, name: &str) -> anyhow::Result<Configured> {
    let dir = endpoint_dir(name, a.dir.as_deref());
    let mut config = EndpointConfig::load(&dir.join("endpoint.toml"))?;
    if config.engine.store_dir.is_none() {
        let store = configured_store_dir(name, &dir);
        config.engine.store_dir = Some(store.to_string_lossy().into_owned());
    }
    let broker = match (&config.broker, &config.endpoint_id) {
        (Some(url), Some(id)) => {
            let credential = std::fs::read_to_string(dir.join("credential"))
                .with_context(|| format!("cannot read the credential in {}", dir.display()))?;
            Some(fxr_interchange::links::broker::BrokerLinkConfig {
                broker: url.clone(),
                endpoint_id: id.clone(),
                credential: credential.trim().to_string(),
                window: config.engine.broker_window,
                status_period: Duration::from_secs(2),
                connected: None,
                ca_cert: config
                    .ca_cert
                    .clone()
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("FXR_CA_CERT").map(PathBuf::from)),
            })
        }
        _ => None,
    };
    let mut args = from_config(a, &config)?;
    args.dir = Some(dir.clone());
    Ok(Configured {
        args,
        dir,
        config,
        broker,
    })
}

/// How long a starting endpoint waits for the broker to take its link.
const BROKER_WAIT: Duration = Duration::from_secs(30);

/// Runs an endpoint in this process until `fxr endpoint stop` or a signal. `ready` is told
/// when it is ready (checks passed, blocks started, the broker link up) or why it failed.
pub fn start(a: StartArgs, json: bool, mut ready: Ready) -> anyhow::Result<u8> {
    match run(a, json, &mut ready) {
        Ok(code) => Ok(code),
        Err(e) => {
            ready.fail(&format!("{e:#}"));
            Err(e)
        }
    }
}

fn run(a: StartArgs, json: bool, ready: &mut Ready) -> anyhow::Result<u8> {
    let (a, broker, dir, config) = match &a.name {
        Some(name) => {
            let c = configured(&a, name)?;
            (c.args, c.broker, Some(c.dir), Some(c.config))
        }
        None if a.local => (a, None, None, None),
        None => bail!("name a configured endpoint, or pass --local for an ad-hoc local one"),
    };
    // One running copy per endpoint: held until this process exits (the descriptor is
    // close-on-exec, so pilots never inherit it).
    let _running = match (&dir, &a.name) {
        (Some(d), Some(name)) => Some(hold_endpoint(d, name)?),
        _ => None,
    };
    let _pid_file = match &dir {
        Some(dir) => Some(RunFile::write(
            &dir.join("endpoint.pid"),
            &std::process::id().to_string(),
        )?),
        None => None,
    };
    let mut ep = start_local(&a)?;
    if let (Some(cfg), Some(dir)) = (&config, &dir) {
        if cfg.provider.kind != "local" {
            let scaler = start_scaler(cfg, dir, &ep.interchange, &ep.secret, a.skip_checks)?;
            ep.batch = Some(scaler);
        }
    }
    let mut front: Option<PathBuf> = None;
    match broker {
        Some(mut link) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(16);
            link.connected = Some(tx);
            let url = link.broker.clone();
            ep.interchange.start_broker_link(link)?;
            wait_for_broker(&rx, &url)?;
        }
        None => {
            let path = match (&a.listen, &dir) {
                (Some(p), _) => p.clone(),
                (None, Some(d)) => d.join("endpoint.sock"),
                (None, None) => {
                    let private = tempfile::Builder::new().prefix("fxr-front-").tempdir()?;
                    let p = private.path().join("endpoint.sock");
                    ep.scratch.push(private);
                    p
                }
            };
            ep.interchange.serve_front_door(front_socket(&path)?)?;
            front = Some(path);
        }
    }
    let interchange = &ep.interchange;
    if let Some(addr) = &a.metrics {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving metrics");
        interchange.serve_metrics(listener)?;
    }
    // A configured standalone endpoint's front door, for `fxr endpoint status NAME`.
    let front = front.map(|p| p.display().to_string());
    let _addr_file = match (&dir, &front) {
        (Some(d), Some(addr)) => Some(RunFile::write(&d.join("endpoint.addr"), addr)?),
        _ => None,
    };
    let _socket = front.as_ref().map(|p| RunFile(PathBuf::from(p)));
    if let (Some(f), Some(addr)) = (&a.address_file, &front) {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, addr).and_then(|()| std::fs::rename(&tmp, f))?;
    }
    let shown = front.clone().unwrap_or_else(|| "broker link".to_string());
    let info = serde_json::json!({"endpoint": shown, "manager_port": interchange.manager_port(),
        "pilot_pids": ep.blocks.pids(), "pid": std::process::id()});
    if json {
        println!("{info}");
    } else {
        println!(
            "endpoint ready at {shown} (managers dial tcp://127.0.0.1:{})",
            interchange.manager_port()
        );
    }
    tracing::info!(endpoint = %shown, "endpoint ready");
    ready.ready(&info);
    let mut local = interchange.local_client();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let sig_handle = signals.handle();
    let watcher = std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = local.send(ClientMsg::Shutdown);
        }
    });
    let LocalEndpoint {
        interchange,
        blocks,
        local_scaler,
        batch,
        ..
    } = ep;
    interchange.join();
    sig_handle.close();
    let _ = watcher.join();
    for s in local_scaler.into_iter().chain(batch) {
        s.stop();
    }
    blocks.stop_all(Duration::from_secs(5));
    tracing::info!("endpoint stopped");
    Ok(exit::OK)
}

/// Binds the front door's socket at `path`: its directory private, the socket 0600, a stale
/// socket of an earlier run replaced (one that still answers is someone else's: refused).
fn front_socket(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        crate::api::private_dir(dir)?;
    }
    anyhow::ensure!(
        path.as_os_str().len() < 100,
        "the front door's socket path {} is too long for a Unix socket (under 100 bytes)",
        path.display()
    );
    if path.exists() {
        anyhow::ensure!(
            std::os::unix::net::UnixStream::connect(path).is_err(),
            "{} is in use by a running front door",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(listener)
}

/// A file that says something about the running endpoint (`endpoint.pid`, `endpoint.addr`),
/// removed when it stops (or fails to start).
struct RunFile(PathBuf);

impl RunFile {
    fn write(path: &Path, content: &str) -> anyhow::Result<RunFile> {
        std::fs::write(path, content)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunFile(path.to_path_buf()))
    }
}

impl Drop for RunFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits until the broker has taken the endpoint's link. A refusal (a wrong credential, an
/// endpoint deleted at the broker) fails at once; an unreachable broker after `BROKER_WAIT`.
fn wait_for_broker(
    rx: &std::sync::mpsc::Receiver<Result<(), String>>,
    url: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + BROKER_WAIT;
    let mut last = String::from("no answer");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => {
                if ["401", "403", "404"].iter().any(|c| e.contains(c)) {
                    bail!("the broker at {url} refused the endpoint's link: {e}");
                }
                last = e;
            }
            Err(_) => bail!("cannot reach the broker at {url} within {BROKER_WAIT:?}: {last}"),
        }
    }
}

/// The scaling loop's settings and scheduler for a Slurm or PBS endpoint whose interchange
/// listens for managers on `port`.
pub fn batch_scaler_config(
    cfg: &EndpointConfig,
    dir: &Path,
    port: u16,
    secret_file: &Path,
) -> anyhow::Result<(ScalerConfig, Box<dyn BatchProvider>)> {
    use fxr_interchange::providers::{pbs::Pbs, slurm::Slurm, template::walltime_seconds};
    let p = &cfg.provider;
    let workers = cfg
        .engine
        .workers_per_node
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let mut pilot_cmd = pilot_line(secret_file, &cfg.engine.address, port, cfg.engine.prefetch)?;
    pilot_cmd.push_str(&format!(" --workers {workers} --launcher {}", p.launcher));
    let store = cfg
        .engine
        .store_dir
        .clone()
        .map_or_else(|| configured_store_dir(&cfg.name, dir), PathBuf::from);
    pilot_cmd.push_str(&crate::opts::NodeArgs::from_config(cfg)?.pilot_flags(&store));
    if p.launcher != "single-node" {
        pilot_cmd.push_str(" --mpi");
    }
    let provider: Box<dyn BatchProvider> = match p.kind.as_str() {
        "slurm" => Box::new(Slurm::default()),
        "pbs" => Box::new(Pbs::default()),
        other => bail!("provider.kind `{other}` is not a batch scheduler"),
    };
    let walltime = Duration::from_secs(walltime_seconds(&p.walltime)?);
    let limits = p.limits().map_err(anyhow::Error::msg)?;
    let scaler = ScalerConfig {
        strategy: fxr_interchange::strategy::StrategyConfig {
            init_blocks: p.init_blocks,
            min_blocks: p.min_blocks,
            max_blocks: p.max_blocks,
            nodes_per_block: p.nodes_per_block,
            workers_per_node: workers,
            parallelism: p.parallelism,
            max_idletime: parse_duration(&p.max_idletime).map_err(anyhow::Error::msg)?,
            walltime,
            drain_margin: (walltime / 10).min(Duration::from_secs(300)),
            max_failures: limits.max_failures,
            pending_timeout: limits.pending_timeout,
            retry_after: limits.retry_after,
        },
        kind: p.kind.clone(),
        launcher: p.launcher.clone(),
        template: (!p.template.is_empty()).then(|| PathBuf::from(&p.template)),
        vars: fxr_interchange::providers::template::ScriptVars {
            nodes: p.nodes_per_block,
            cores_per_node: workers,
            walltime: p.walltime.clone(),
            partition: p.partition.clone(),
            queue: p.queue.clone(),
            account: p.account.clone(),
            scheduler_options: p.scheduler_options.clone(),
            worker_init: p.worker_init.clone(),
            log_dir: dir.join("blocks").display().to_string(),
            exclusive: p.exclusive,
            memory: p.memory.clone(),
            gpus: p.gpus.clone(),
            qos: p.qos.clone(),
            constraint: p.constraint.clone(),
            ..Default::default()
        },
        pilot_cmd,
        dir: dir.join("blocks"),
        name: cfg.name.clone(),
        tick: Duration::from_secs(1),
        poll: Duration::from_secs(2),
        metrics: None,
        fail_tasks_after: limits.fail_tasks_after,
    };
    Ok((scaler, provider))
}

/// Starts the scaling loop of a Slurm or PBS endpoint, after its pre-flight checks (the job
/// script renders, the scheduler would accept it). With `skip_checks` a failed check is only
/// logged, and shows in `fxr endpoint status` once blocks fail the same way.
pub fn start_scaler(
    cfg: &EndpointConfig,
    dir: &Path,
    interchange: &Interchange,
    secret: &str,
    skip_checks: bool,
) -> anyhow::Result<Scaler> {
    let secret_file = dir.join("secret");
    crate::api::write_private(&secret_file, secret)?;
    let (mut scaler, mut provider) =
        batch_scaler_config(cfg, dir, interchange.manager_port(), &secret_file)?;
    scaler.metrics = Some(interchange.metrics());
    match preflight(&mut *provider, &scaler) {
        Ok(_) => tracing::info!(provider = provider.name(), "pre-flight checks passed"),
        Err(e) if skip_checks => {
            tracing::warn!(provider = provider.name(), error = %e, "pre-flight check failed; starting anyway (--skip-checks)")
        }
        Err(e) => {
            bail!("pre-flight check failed: {e} (fix endpoint.toml, or start with --skip-checks)")
        }
    }
    Ok(Scaler::start(interchange.local_client(), provider, scaler)?)
}
