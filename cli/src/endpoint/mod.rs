//! `fxr endpoint`: start a local endpoint (interchange plus local pilots), stop it, ask its status.

use crate::exit;
use crate::storedir::{configured_store_dir, default_store_dir, StoreDir};
use anyhow::{bail, Context};
use fxr_interchange::dispatch::{DispatchConfig, Policy};
use fxr_interchange::providers::local::LocalBlocks;
use fxr_interchange::{client, FrontDoor, Interchange, InterchangeConfig, TcpClient};
use fxr_protocol::ClientMsg;
use std::net::TcpListener;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum EndpointCmd {
    /// Register an endpoint with the broker and write its configuration and credential.
    Create(CreateArgs),
    /// Start an endpoint in the foreground until `fxr endpoint stop` or a signal: a configured
    /// one by NAME, or an ad-hoc local one with `--local`.
    Start(Box<StartArgs>),
    /// Drain and stop a running endpoint (by NAME, or a local one by `--endpoint HOST:PORT`).
    Stop(AddrArgs),
    /// List the endpoints you may use (from the broker).
    List,
    /// Show an endpoint's managers and queues (by NAME or id at the broker, or `--endpoint HOST:PORT`).
    Status(AddrArgs),
}

#[derive(clap::Args, Debug)]
pub struct AddrArgs {
    /// The endpoint's name (or id, for status).
    pub name: Option<String>,
    /// A local endpoint's front door, HOST:PORT.
    #[arg(long, conflicts_with = "name")]
    pub endpoint: Option<String>,
    /// The endpoint's directory (default: $FXR_HOME/endpoints/NAME).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Users who may send tasks to it (repeatable).
    #[arg(long = "share")]
    pub share: Vec<String>,
    #[arg(long)]
    pub workers_per_node: Option<u32>,
    #[arg(long, default_value_t = 1)]
    pub blocks: u32,
}

fn endpoint_dir(name: &str, dir: Option<&std::path::Path>) -> std::path::PathBuf {
    dir.map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| crate::api::home().join("endpoints").join(name))
}

#[derive(clap::Args, Debug, Clone)]
pub struct StartArgs {
    /// A configured endpoint (see `fxr endpoint create`).
    pub name: Option<String>,
    /// The endpoint's directory (default: $FXR_HOME/endpoints/NAME).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Run an ad-hoc endpoint with the local front door and the local provider (no broker).
    #[arg(long, conflicts_with = "name")]
    pub local: bool,
    /// Front door address for clients.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Address managers dial.
    #[arg(long, default_value = "tcp://127.0.0.1:0")]
    pub manager_url: String,
    /// Blocks (pilot processes) to start.
    #[arg(long, default_value_t = 1)]
    pub blocks: u32,
    /// Workers per node (default: the node's cores).
    #[arg(long)]
    pub workers_per_node: Option<u32>,
    #[arg(long, default_value_t = 4)]
    pub prefetch: u32,
    /// Simulated workers per manager instead of processes.
    #[arg(long)]
    pub simulate_workers: Option<u32>,
    /// Managers per block (simulation).
    #[arg(long, default_value_t = 1)]
    pub managers: u32,
    /// random | round-robin | least-loaded | warm | warm-hard
    #[arg(long, default_value = "least-loaded")]
    pub dispatch: Policy,
    /// Under `warm`, how often one task may go where it forces a container switch.
    #[arg(long, value_parser = crate::opts::duration, default_value = "1s")]
    pub cold_routing_interval: Duration,
    /// A worker idle this long is stopped, freeing its slot for another container type
    /// (0s keeps idle workers).
    #[arg(long, value_parser = crate::opts::duration, default_value = "2m")]
    pub worker_max_idletime: Duration,
    /// A container runtime's command template, NAME=TEMPLATE (repeatable); overrides the
    /// built-in template of that name.
    #[arg(long = "container-runtime", value_parser = runtime_arg)]
    pub container_runtimes: Vec<(String, String)>,
    /// Cold-start cost of simulated container workers: [RUNTIME=]SECONDS or [RUNTIME=]@FILE of
    /// samples (repeatable).
    #[arg(long = "simulate-cold-start")]
    pub simulate_cold_start: Vec<String>,
    /// The node's object store (default: /dev/shm/fxr-NAME, or /dev/shm/fxr-local-PID for an
    /// ad-hoc endpoint); removed when the endpoint stops.
    #[arg(long)]
    pub store_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub node: crate::opts::NodeArgs,
    /// Nodes per block (set from the provider's `nodes_per_block`; local blocks have one).
    #[arg(skip = 1u32)]
    pub block_nodes: u32,
    #[arg(long, default_value_t = 2)]
    pub max_retries: u32,
    #[arg(long, value_parser = crate::opts::duration, default_value = "5s")]
    pub heartbeat_period: Duration,
    #[arg(long, value_parser = crate::opts::duration, default_value = "20s")]
    pub heartbeat_threshold: Duration,
    /// Write the front door's address to this file once listening.
    #[arg(long)]
    pub address_file: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (read-only counts).
    #[arg(long)]
    pub metrics: Option<String>,
}

pub fn run(cmd: EndpointCmd, json: bool) -> anyhow::Result<u8> {
    match cmd {
        EndpointCmd::Create(a) => create(a, json),
        EndpointCmd::Start(a) => start(*a, json),
        EndpointCmd::Stop(a) => stop(a),
        EndpointCmd::List => {
            let api = crate::api::Api::from_profile()?;
            let all: Vec<serde_json::Value> = api.get("/v1/endpoints")?;
            if json {
                println!("{}", serde_json::Value::Array(all));
            } else {
                for e in all {
                    println!(
                        "{}  {:20} {:10} {:12} workers={} backlog={}",
                        e["id"].as_str().unwrap_or(""),
                        e["name"].as_str().unwrap_or(""),
                        e["owner"].as_str().unwrap_or(""),
                        if e["connected"] == true {
                            "connected"
                        } else {
                            "offline"
                        },
                        e["workers"],
                        e["backlog"]
                    );
                }
            }
            Ok(exit::OK)
        }
        EndpointCmd::Status(a) => match (a.endpoint, a.name) {
            (Some(addr), _) => local_status(&addr, json),
            (None, Some(name)) => {
                let api = crate::api::Api::from_profile()?;
                let id = api.endpoint_id(&name)?;
                let e: serde_json::Value = api.get(&format!("/v1/endpoints/{id}"))?;
                if json {
                    println!("{e}");
                } else {
                    for (k, v) in e.as_object().into_iter().flatten() {
                        println!("{k:24} {v}");
                    }
                }
                Ok(exit::OK)
            }
            (None, None) => bail!("name an endpoint, or give --endpoint HOST:PORT"),
        },
    }
}

fn create(a: CreateArgs, json: bool) -> anyhow::Result<u8> {
    let api = crate::api::Api::from_profile()?;
    let dir = endpoint_dir(&a.name, a.dir.as_deref());
    let config_path = dir.join("endpoint.toml");
    anyhow::ensure!(
        !config_path.exists(),
        "{} exists already",
        config_path.display()
    );
    let created: serde_json::Value = api.post(
        "/v1/endpoints",
        &serde_json::json!({"name": a.name, "shared_with": a.share}),
    )?;
    let id = created["id"]
        .as_str()
        .context("the broker returned no endpoint id")?
        .to_string();
    let credential = created["credential"]
        .as_str()
        .context("the broker returned no credential")?;
    let mut cfg = fxr_interchange::config::EndpointConfig {
        name: a.name.clone(),
        broker: Some(api.base.clone()),
        endpoint_id: Some(id.clone()),
        engine: Default::default(),
        provider: Default::default(),
        containers: Default::default(),
        python: Default::default(),
    };
    cfg.engine.workers_per_node = a.workers_per_node;
    cfg.provider.init_blocks = a.blocks;
    crate::api::write_private(&dir.join("credential"), credential)?;
    crate::api::write_private(&config_path, &cfg.to_toml())?;
    if json {
        println!(
            "{}",
            serde_json::json!({"id": id, "name": a.name, "dir": dir})
        );
    } else {
        println!("endpoint {} ({id}) created in {}", a.name, dir.display());
    }
    Ok(exit::OK)
}

fn stop(a: AddrArgs) -> anyhow::Result<u8> {
    if let Some(addr) = a.endpoint {
        let mut c = TcpClient::connect(&addr).with_context(|| format!("cannot reach {addr}"))?;
        c.send(ClientMsg::Shutdown)?;
        // The endpoint closes the connection once it has stopped.
        while c.recv(Duration::from_secs(60)).is_ok_and(|m| m.is_some()) {}
        return Ok(exit::OK);
    }
    let name = a
        .name
        .context("name an endpoint, or give --endpoint HOST:PORT")?;
    let pid_file = endpoint_dir(&name, a.dir.as_deref()).join("endpoint.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| {
            format!(
                "endpoint {name} is not running here (no {})",
                pid_file.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    // SAFETY: kill(2) with a pid read from our own pid file; a stale pid only yields ESRCH.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        let _ = std::fs::remove_file(&pid_file);
        bail!("endpoint {name} is not running (stale pid file removed)");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(exit::OK)
}

fn local_status(addr: &str, json: bool) -> anyhow::Result<u8> {
    let mut c = TcpClient::connect(addr).with_context(|| format!("cannot reach {addr}"))?;
    let s = client::status(&mut c, Duration::from_secs(10))?;
    if json {
        let managers: Vec<_> = s
            .managers
            .iter()
            .map(|m| {
                let containers: Vec<_> = m
                    .capacity
                    .iter()
                    .map(|c| {
                        serde_json::json!({"container": c.container, "total": c.total,
                            "warm": c.warm, "free": c.free, "unused": c.unused})
                    })
                    .collect();
                serde_json::json!({"manager_id": m.manager_id.to_string(), "block_id": m.block_id.0,
                    "hostname": m.hostname, "workers": m.workers, "in_flight": m.in_flight,
                    "draining": m.draining, "simulated": m.simulated, "containers": containers,
                    "cold_starts": m.counters.cold_starts,
                    "container_switches": m.counters.container_switches,
                    "container_errors": m.counters.container_errors})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"managers": managers, "queued": s.queued, "running": s.running,
                "completed": s.completed, "failed": s.failed})
        );
    } else {
        println!(
            "managers: {}  queued: {}  running: {}  completed: {}  failed: {}",
            s.managers.len(),
            s.queued,
            s.running,
            s.completed,
            s.failed
        );
        for m in &s.managers {
            println!(
                "  {} block={} host={} workers={} in_flight={}{}",
                m.manager_id,
                m.block_id,
                m.hostname,
                m.workers,
                m.in_flight,
                if m.draining { " draining" } else { "" }
            );
            for c in m.capacity.iter().filter(|c| c.total > 0) {
                let name = if c.container.is_empty() {
                    "(node)"
                } else {
                    c.container.as_str()
                };
                println!("    {name}: {} workers, {} idle", c.total, c.warm);
            }
            let k = m.counters;
            if k.cold_starts + k.container_switches + k.container_errors > 0 {
                println!(
                    "    cold starts {}, container switches {}, container errors {}",
                    k.cold_starts, k.container_switches, k.container_errors
                );
            }
        }
    }
    Ok(exit::OK)
}

/// A running local endpoint: the interchange in this process and its pilot processes.
pub struct LocalEndpoint {
    pub interchange: Interchange,
    /// The local blocks (pilot processes), shared with their scaling loop.
    pub blocks: LocalBlocks,
    /// The scaling loop that starts local blocks and replaces lost ones.
    pub local_scaler: Option<fxr_interchange::scaling::Scaler>,
    pub secret: String,
    /// A batch scheduler's scaling loop, when one was added.
    pub batch: Option<fxr_interchange::scaling::Scaler>,
    /// Directories of block scripts and secret files, removed with the endpoint.
    pub scratch: Vec<tempfile::TempDir>,
    /// This node's object store, removed with the endpoint.
    pub store: Option<StoreDir>,
}

/// Starts the interchange and the pilots of a local endpoint. Blocks are started by a scaling
/// loop over the local provider, which keeps `a.blocks` of them running: a block that exits
/// is reaped and replaced (within the strategy's failure limits).
pub fn start_local(a: &StartArgs) -> anyhow::Result<LocalEndpoint> {
    // From the OS's cryptographic generator.
    let secret = fxr_broker::auth::new_secret();
    let config = InterchangeConfig {
        manager_url: a.manager_url.clone(),
        secret: secret.clone(),
        dispatch: DispatchConfig {
            policy: a.dispatch,
            max_retries: a.max_retries,
            heartbeat_threshold: a.heartbeat_threshold,
            cold_routing_interval: a.cold_routing_interval,
            block_nodes: a.block_nodes,
            ..DispatchConfig::default()
        },
        heartbeat_period: a.heartbeat_period,
        drain_timeout: Duration::from_secs(30),
        workers: fxr_protocol::WorkerSettings {
            runtimes: a.container_runtimes.clone(),
            max_idle_ms: a.worker_max_idletime.as_millis() as u64,
        },
    };
    let interchange = Interchange::start(config)?;
    let blocks = LocalBlocks::default();
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
    let scratch = tempfile::Builder::new().prefix("fxr-local-").tempdir()?;
    let mut pilot_cmd = pilot_command(
        scratch.path(),
        &secret,
        "127.0.0.1",
        ep.interchange.manager_port(),
        a.prefetch,
    )?;
    pilot_cmd.push_str(&format!(" --managers {}", a.managers));
    pilot_cmd.push_str(&a.node.pilot_flags(&store_dir));
    if let Some(w) = a.workers_per_node {
        pilot_cmd.push_str(&format!(" --workers {w}"));
    }
    if let Some(s) = a.simulate_workers {
        pilot_cmd.push_str(&format!(" --simulate-workers {s}"));
        for c in &a.simulate_cold_start {
            pilot_cmd.push_str(&format!(
                " --cold-start {}",
                fxr_pilot::exec::shell_quote(c)
            ));
        }
    }
    let years = Duration::from_secs(10 * 365 * 24 * 3600);
    let cfg = fxr_interchange::scaling::ScalerConfig {
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
            max_failures: 3,
            pending_timeout: Duration::from_secs(120),
        },
        kind: "local".into(),
        launcher: "single-node".into(),
        template: None,
        vars: fxr_interchange::providers::template::ScriptVars {
            nodes: 1,
            walltime: "00:00:00".into(),
            log_dir: scratch.path().display().to_string(),
            ..Default::default()
        },
        pilot_cmd,
        dir: scratch.path().to_path_buf(),
        name: "local".into(),
        tick: Duration::from_millis(200),
        poll: Duration::from_millis(200),
        metrics: Some(ep.interchange.metrics()),
    };
    ep.local_scaler = Some(fxr_interchange::scaling::Scaler::start(
        ep.interchange.local_client(),
        Box::new(blocks.clone()),
        cfg,
    )?);
    ep.scratch.push(scratch);
    // The first blocks are started at once; wait for them so their pids can be reported.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while blocks.pids().len() < a.blocks as usize {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the local blocks did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(ep)
}

/// `NAME=TEMPLATE`.
fn runtime_arg(s: &str) -> Result<(String, String), String> {
    let (name, template) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=TEMPLATE"))?;
    fxr_interchange::config::check_runtime(name, template)?;
    Ok((name.to_string(), template.to_string()))
}

/// The pilot command line a block's job script runs: this executable, the interchange's manager
/// address, and the endpoint secret in a private file written to `dir`.
fn pilot_command(
    dir: &std::path::Path,
    secret: &str,
    address: &str,
    port: u16,
    prefetch: u32,
) -> anyhow::Result<String> {
    use fxr_pilot::exec::shell_quote;
    let secret_file = dir.join("secret");
    crate::api::write_private(&secret_file, secret)?;
    let exe =
        std::env::current_exe().context("cannot find this executable for the pilot command")?;
    Ok(format!(
        "{} pilot --interchange tcp://{address}:{port} --secret-file {} --prefetch {prefetch}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&secret_file.to_string_lossy()),
    ))
}

/// Takes the endpoint's lock, or says which process runs it already.
fn hold_endpoint(dir: &std::path::Path, name: &str) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("endpoint.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(dir.join("endpoint.pid")).unwrap_or_default();
        bail!(
            "endpoint {name} is already running (pid {}); stop it with `fxr endpoint stop {name}`",
            pid.trim()
        );
    }
    Ok(f)
}

/// Settings of a configured endpoint, as `StartArgs`.
fn from_config(
    a: &StartArgs,
    cfg: &fxr_interchange::config::EndpointConfig,
) -> anyhow::Result<StartArgs> {
    use fxr_interchange::config::parse_duration;
    let e = &cfg.engine;
    let local = cfg.provider.kind == "local";
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
        cold_routing_interval: parse_duration(&e.cold_routing_interval)
            .map_err(anyhow::Error::msg)?,
        worker_max_idletime: parse_duration(&e.worker_max_idletime).map_err(anyhow::Error::msg)?,
        container_runtimes: cfg
            .containers
            .iter()
            .map(|(name, c)| (name.clone(), c.command.clone()))
            .collect(),
        simulate_cold_start: e.simulate_cold_start.clone(),
        store_dir: e.store_dir.clone().map(std::path::PathBuf::from),
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
        heartbeat_period: parse_duration(&e.heartbeat_period).map_err(anyhow::Error::msg)?,
        heartbeat_threshold: parse_duration(&e.heartbeat_threshold).map_err(anyhow::Error::msg)?,
        metrics: a.metrics.clone().or_else(|| e.metrics.clone()),
        ..a.clone()
    })
}

fn start(a: StartArgs, json: bool) -> anyhow::Result<u8> {
    let (a, broker, dir, config) = match &a.name {
        Some(name) => {
            let dir = endpoint_dir(name, a.dir.as_deref());
            let mut cfg =
                fxr_interchange::config::EndpointConfig::load(&dir.join("endpoint.toml"))?;
            if cfg.engine.store_dir.is_none() {
                let store = configured_store_dir(name, &dir);
                cfg.engine.store_dir = Some(store.to_string_lossy().into_owned());
            }
            let broker = match (&cfg.broker, &cfg.endpoint_id) {
                (Some(url), Some(id)) => {
                    let credential =
                        std::fs::read_to_string(dir.join("credential")).with_context(|| {
                            format!("cannot read the credential in {}", dir.display())
                        })?;
                    Some(fxr_interchange::links::broker::BrokerLinkConfig {
                        broker: url.clone(),
                        endpoint_id: id.clone(),
                        credential: credential.trim().to_string(),
                        window: 100_000,
                        status_period: Duration::from_secs(2),
                    })
                }
                _ => None,
            };
            (from_config(&a, &cfg)?, broker, Some(dir), Some(cfg))
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
    let mut ep = start_local(&a)?;
    if let (Some(cfg), Some(dir)) = (&config, &dir) {
        if cfg.provider.kind != "local" {
            let scaler = start_scaler(cfg, dir, &ep.interchange, &ep.secret)?;
            ep.batch = Some(scaler);
        }
    }
    let interchange = &ep.interchange;
    let mut front = None;
    match broker {
        Some(link) => {
            interchange.start_broker_link(link)?;
        }
        None => {
            let listener = TcpListener::bind(&a.listen)
                .with_context(|| format!("cannot listen on {}", a.listen))?;
            front = Some(listener.local_addr()?);
            interchange.serve_front_door(listener)?;
        }
    }
    if let Some(addr) = &a.metrics {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving metrics");
        interchange.serve_metrics(listener)?;
    }
    if let Some(dir) = &dir {
        std::fs::write(dir.join("endpoint.pid"), std::process::id().to_string())?;
    }
    if let (Some(f), Some(addr)) = (&a.address_file, front) {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string()).and_then(|()| std::fs::rename(&tmp, f))?;
    }
    let shown = front.map_or_else(|| "broker link".to_string(), |a| a.to_string());
    if json {
        println!(
            "{}",
            serde_json::json!({"endpoint": shown, "manager_port": interchange.manager_port(), "pilot_pids": ep.blocks.pids(), "pid": std::process::id()})
        );
    } else {
        println!(
            "endpoint ready at {shown} (managers dial tcp://127.0.0.1:{})",
            interchange.manager_port()
        );
    }
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
    if let Some(dir) = &dir {
        let _ = std::fs::remove_file(dir.join("endpoint.pid"));
    }
    Ok(exit::OK)
}

/// Starts the scaling loop of a Slurm or PBS endpoint.
pub fn start_scaler(
    cfg: &fxr_interchange::config::EndpointConfig,
    dir: &std::path::Path,
    interchange: &Interchange,
    secret: &str,
) -> anyhow::Result<fxr_interchange::scaling::Scaler> {
    use fxr_interchange::config::parse_duration;
    use fxr_interchange::providers::{
        pbs::Pbs, slurm::Slurm, template::walltime_seconds, BatchProvider,
    };
    let p = &cfg.provider;
    let workers = cfg
        .engine
        .workers_per_node
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let mut pilot_cmd = pilot_command(
        dir,
        secret,
        &cfg.engine.address,
        interchange.manager_port(),
        cfg.engine.prefetch,
    )?;
    pilot_cmd.push_str(&format!(" --workers {workers} --launcher {}", p.launcher));
    let store = cfg.engine.store_dir.clone().map_or_else(
        || configured_store_dir(&cfg.name, dir),
        std::path::PathBuf::from,
    );
    pilot_cmd.push_str(&crate::opts::NodeArgs::from_config(cfg)?.pilot_flags(&store));
    if p.launcher != "single-node" {
        pilot_cmd.push_str(" --mpi");
    }
    let provider: Box<dyn BatchProvider> = match p.kind.as_str() {
        "slurm" => Box::new(Slurm::default()),
        "pbs" => Box::new(Pbs::default()),
        other => bail!("provider.kind `{other}` is not a batch scheduler"),
    };
    let walltime = std::time::Duration::from_secs(walltime_seconds(&p.walltime)?);
    let scaler_cfg = fxr_interchange::scaling::ScalerConfig {
        strategy: fxr_interchange::strategy::StrategyConfig {
            init_blocks: p.init_blocks,
            min_blocks: p.min_blocks,
            max_blocks: p.max_blocks,
            nodes_per_block: p.nodes_per_block,
            workers_per_node: workers,
            parallelism: p.parallelism,
            max_idletime: parse_duration(&p.max_idletime).map_err(anyhow::Error::msg)?,
            walltime,
            drain_margin: (walltime / 10).min(std::time::Duration::from_secs(300)),
            max_failures: 3,
            pending_timeout: std::time::Duration::from_secs(600),
        },
        kind: p.kind.clone(),
        launcher: p.launcher.clone(),
        template: (!p.template.is_empty()).then(|| std::path::PathBuf::from(&p.template)),
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
        tick: std::time::Duration::from_secs(1),
        poll: std::time::Duration::from_secs(2),
        metrics: Some(interchange.metrics()),
    };
    Ok(fxr_interchange::scaling::Scaler::start(
        interchange.local_client(),
        provider,
        scaler_cfg,
    )?)
}
