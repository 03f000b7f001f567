//! `fxr endpoint`: create, configure, start, stop, restart and delete endpoints, read their
//! status and logs.

mod configure;
mod lifecycle;
mod run;

pub use run::{start_local, start_scaler, LocalEndpoint};

use crate::exit;
use anyhow::{bail, Context};
use fxr_interchange::dispatch::Policy;
use fxr_interchange::{client, FrontDoor, SocketClient};
use fxr_protocol::ClientMsg;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum EndpointCmd {
    /// Register an endpoint with the broker and write its configuration and credential.
    Create(CreateArgs),
    /// Start an endpoint: a configured one by NAME (in the background, logging to its
    /// `endpoint.log`, once its checks pass; `--foreground` to stay), or an ad-hoc local one
    /// with `--local` (in the foreground).
    Start(Box<StartArgs>),
    /// Drain and stop a running endpoint (by NAME, or a local one by `--endpoint SOCKET`).
    Stop(AddrArgs),
    /// Stop endpoint NAME if it runs, then start it again in the background.
    Restart(RestartArgs),
    /// Stop endpoint NAME, remove it from the broker and delete its directory.
    Delete(DeleteArgs),
    /// Print endpoint NAME's log, or one block's.
    Logs(LogsArgs),
    /// Show or change endpoint NAME's settings, or print the job script a block would run.
    Configure(configure::ConfigureArgs),
    /// List the endpoints you may use (from the broker).
    List,
    /// Show an endpoint's blocks, workers, queues and scheduler errors (by NAME or id, or a
    /// standalone one by `--endpoint SOCKET`).
    Status(AddrArgs),
}

#[derive(clap::Args, Debug)]
pub struct RestartArgs {
    pub name: String,
    /// The endpoint's directory (default: $FXR_HOME/endpoints/NAME).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Start even when a pre-flight check fails.
    #[arg(long)]
    pub skip_checks: bool,
    /// How long to wait for the endpoint to be ready.
    #[arg(long, value_parser = crate::opts::duration, default_value = "2m")]
    pub wait: Duration,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    pub name: String,
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    pub yes: bool,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    pub name: String,
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// A block's log (its job output) instead of the endpoint's.
    #[arg(long)]
    pub block: Option<String>,
    /// Lines from the end to print first.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: usize,
    /// Keep printing what is appended until the endpoint stops.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(clap::Args, Debug)]
pub struct AddrArgs {
    /// The endpoint's name (or id, for status).
    pub name: Option<String>,
    /// A local endpoint's front door: the path of its socket.
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
    /// The front door's Unix socket (default: `endpoint.sock` in a configured endpoint's
    /// directory, or in a new private directory for an ad-hoc one). Only this user may connect.
    #[arg(long)]
    pub listen: Option<std::path::PathBuf>,
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
    /// When to give up starting blocks (from `[provider]`).
    #[arg(skip)]
    pub limits: fxr_interchange::config::FailureLimits,
    #[arg(long, default_value_t = 2)]
    pub max_retries: u32,
    /// Dispatch shards, each a dispatcher over a group of managers on its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub dispatch_shards: u32,
    /// A connection to the manager port that has not registered within this long is closed.
    #[arg(long, value_parser = crate::opts::duration, default_value = "10s")]
    pub register_timeout: Duration,
    /// Seal every message between the interchange and its managers (ChaCha20-Poly1305).
    #[arg(long)]
    pub encrypt: bool,
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
    /// Run a configured endpoint in this process instead of in the background.
    #[arg(long)]
    pub foreground: bool,
    /// Start even when a pre-flight check (the job script renders, the scheduler would accept
    /// it) fails; the scheduler's errors then show in `fxr endpoint status`.
    #[arg(long)]
    pub skip_checks: bool,
    /// How long `start` waits for a background endpoint to be ready.
    #[arg(long, value_parser = crate::opts::duration, default_value = "2m")]
    pub wait: Duration,
}

pub fn run(cmd: EndpointCmd, json: bool) -> anyhow::Result<u8> {
    match cmd {
        EndpointCmd::Create(a) => create(a, json),
        EndpointCmd::Start(a) => start(*a, json),
        EndpointCmd::Stop(a) => stop(a),
        EndpointCmd::Restart(a) => {
            let dir = endpoint_dir(&a.name, a.dir.as_deref());
            if lifecycle::stop(&a.name, &dir)? && !json {
                println!("endpoint {} stopped", a.name);
            }
            let mut args = start_args(&a.name, &dir, json, a.wait);
            if a.skip_checks {
                args.push("--skip-checks".into());
            }
            lifecycle::detach(&a.name, &dir, args, json, a.wait)
        }
        EndpointCmd::Delete(a) => delete(a, json),
        EndpointCmd::Logs(a) => {
            let dir = endpoint_dir(&a.name, a.dir.as_deref());
            lifecycle::logs(&dir, a.block.as_deref(), a.lines, a.follow)?;
            Ok(exit::OK)
        }
        EndpointCmd::Configure(a) => configure::run(a),
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
            (Some(addr), _) => local_status(&addr, "", json),
            (None, Some(name)) if standalone_addr(&name, a.dir.as_deref()).is_some() => {
                let addr = standalone_addr(&name, a.dir.as_deref()).unwrap_or_default();
                local_status(&addr, &name, json)
            }
            (None, Some(name)) => {
                let api = crate::api::Api::from_profile()?;
                let id = api.endpoint_id(&name)?;
                let e: fxr_broker::api::types::EndpointInfo =
                    api.get(&format!("/v1/endpoints/{id}"))?;
                crate::epstatus::print(&e, None, json)?;
                Ok(exit::OK)
            }
            (None, None) => bail!("name an endpoint, or give --endpoint SOCKET"),
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
        // The endpoint runs in the background: it keeps the CA this command trusted.
        ca_cert: std::env::var("FXR_CA_CERT").ok(),
        engine: Default::default(),
        provider: Default::default(),
        containers: Default::default(),
        python: Default::default(),
    };
    cfg.engine.workers_per_node = a.workers_per_node;
    cfg.provider.init_blocks = a.blocks;
    crate::api::private_dir(&crate::api::home())?;
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
        let mut c = SocketClient::connect(&addr).with_context(|| format!("cannot reach {addr}"))?;
        c.send(ClientMsg::Shutdown)?;
        // The endpoint closes the connection once it has stopped.
        while c.recv(Duration::from_secs(60)).is_ok_and(|m| m.is_some()) {}
        return Ok(exit::OK);
    }
    let name = a
        .name
        .context("name an endpoint, or give --endpoint SOCKET")?;
    let dir = endpoint_dir(&name, a.dir.as_deref());
    if !lifecycle::stop(&name, &dir)? {
        bail!("endpoint {name} is not running");
    }
    Ok(exit::OK)
}

/// The front door of configured endpoint NAME when it runs standalone (without a broker).
fn standalone_addr(name: &str, dir: Option<&std::path::Path>) -> Option<String> {
    let dir = endpoint_dir(name, dir);
    lifecycle::running(&dir)?;
    std::fs::read_to_string(dir.join("endpoint.addr"))
        .ok()
        .map(|a| a.trim().to_string())
}

/// The command line of a detached `fxr endpoint start NAME`.
fn start_args(
    name: &str,
    dir: &std::path::Path,
    json: bool,
    wait: Duration,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if json {
        args.extend(["--output".into(), "json".into()]);
    }
    args.extend([
        "endpoint".into(),
        "start".into(),
        name.into(),
        "--dir".into(),
    ]);
    args.push(dir.into());
    args.extend([
        "--foreground".into(),
        "--wait".into(),
        format!("{}s", wait.as_secs()).into(),
    ]);
    args
}

fn start(a: StartArgs, json: bool) -> anyhow::Result<u8> {
    match &a.name {
        Some(name) if !a.foreground => {
            let dir = endpoint_dir(name, a.dir.as_deref());
            anyhow::ensure!(
                dir.join("endpoint.toml").exists(),
                "endpoint {name} is not configured here (no {}); create it with `fxr endpoint create {name}`",
                dir.join("endpoint.toml").display()
            );
            // The same command line, run in the foreground by the detached child.
            let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            args.push("--foreground".into());
            lifecycle::detach(name, &dir, args, json, a.wait)
        }
        _ => run::start(a, json, lifecycle::Ready::from_env()),
    }
}

fn delete(a: DeleteArgs, json: bool) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    let dir = endpoint_dir(&a.name, a.dir.as_deref());
    let cfg = fxr_interchange::config::EndpointConfig::load(&dir.join("endpoint.toml"))?;
    if !a.yes {
        anyhow::ensure!(
            std::io::stdin().is_terminal(),
            "deleting endpoint {} removes {} and its registration; pass --yes to confirm",
            a.name,
            dir.display()
        );
        eprint!("delete endpoint {} ({})? [y/N] ", a.name, dir.display());
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not deleted");
        }
    }
    let stopped = lifecycle::stop(&a.name, &dir)?;
    let mut unregistered = false;
    if let (Some(_), Some(id)) = (&cfg.broker, &cfg.endpoint_id) {
        match crate::api::Api::from_profile()?.delete(&format!("/v1/endpoints/{id}")) {
            Ok(()) => unregistered = true,
            // Already gone at the broker.
            Err(e) if format!("{e:#}").contains("404") => {}
            Err(e) => {
                return Err(e.context(format!("cannot remove endpoint {} from the broker", a.name)))
            }
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"name": a.name, "stopped": stopped, "unregistered": unregistered, "removed": dir})
        );
    } else {
        println!("endpoint {} deleted ({} removed)", a.name, dir.display());
    }
    Ok(exit::OK)
}

fn local_status(addr: &str, name: &str, json: bool) -> anyhow::Result<u8> {
    let mut c = SocketClient::connect(addr).with_context(|| format!("cannot reach {addr}"))?;
    let s = client::status(&mut c, Duration::from_secs(10))?;
    let info = fxr_broker::api::types::EndpointInfo {
        name: name.to_string(),
        ..Default::default()
    }
    .with_status(&s);
    crate::epstatus::print(&info, Some(addr), json)?;
    Ok(exit::OK)
}

/// `NAME=TEMPLATE`.
fn runtime_arg(s: &str) -> Result<(String, String), String> {
    let (name, template) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=TEMPLATE"))?;
    fxr_interchange::config::check_runtime(name, template)?;
    Ok((name.to_string(), template.to_string()))
}
