//! `fxr endpoint`: start a local endpoint (interchange plus local pilots), stop it, ask its status.

use crate::exit;
use anyhow::{bail, Context};
use fxr_interchange::dispatch::{DispatchConfig, Policy};
use fxr_interchange::providers::local::LocalProvider;
use fxr_interchange::{client, FrontDoor, Interchange, InterchangeConfig, TcpClient};
use fxr_protocol::ClientMsg;
use std::net::TcpListener;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum EndpointCmd {
    /// Start an endpoint in the foreground until `fxr endpoint stop` or a signal.
    Start(StartArgs),
    /// Drain and stop a running endpoint.
    Stop(AddrArgs),
    /// Show an endpoint's managers and queues.
    Status(AddrArgs),
}

#[derive(clap::Args, Debug)]
pub struct AddrArgs {
    /// The endpoint's front door, HOST:PORT.
    #[arg(long)]
    pub endpoint: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StartArgs {
    /// Run with the local front door and the local provider (no broker).
    #[arg(long)]
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
    /// random | round-robin | least-loaded
    #[arg(long, default_value = "least-loaded")]
    pub dispatch: Policy,
    #[arg(long, default_value_t = 2)]
    pub max_retries: u32,
    #[arg(long, value_parser = crate::opts::duration, default_value = "5s")]
    pub heartbeat_period: Duration,
    #[arg(long, value_parser = crate::opts::duration, default_value = "20s")]
    pub heartbeat_threshold: Duration,
    /// Write the front door's address to this file once listening.
    #[arg(long)]
    pub address_file: Option<std::path::PathBuf>,
}

pub fn run(cmd: EndpointCmd, json: bool) -> anyhow::Result<u8> {
    match cmd {
        EndpointCmd::Start(a) => start(a, json),
        EndpointCmd::Stop(a) => {
            let mut c = TcpClient::connect(&a.endpoint)
                .with_context(|| format!("cannot reach {}", a.endpoint))?;
            c.send(ClientMsg::Shutdown)?;
            // The endpoint closes the connection once it has stopped.
            while c.recv(Duration::from_secs(60)).is_ok_and(|m| m.is_some()) {}
            Ok(exit::OK)
        }
        EndpointCmd::Status(a) => {
            let mut c = TcpClient::connect(&a.endpoint)
                .with_context(|| format!("cannot reach {}", a.endpoint))?;
            let s = client::status(&mut c, Duration::from_secs(10))?;
            if json {
                let managers: Vec<_> = s
                    .managers
                    .iter()
                    .map(|m| {
                        serde_json::json!({"manager_id": m.manager_id.to_string(), "block_id": m.block_id.0,
                            "hostname": m.hostname, "workers": m.workers, "in_flight": m.in_flight,
                            "draining": m.draining, "simulated": m.simulated})
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
                }
            }
            Ok(exit::OK)
        }
    }
}

/// A running local endpoint: the interchange in this process and its pilot processes.
pub struct LocalEndpoint {
    pub interchange: Interchange,
    pub provider: LocalProvider,
}

/// Starts the interchange and the pilots of a local endpoint.
pub fn start_local(a: &StartArgs) -> anyhow::Result<LocalEndpoint> {
    let secret = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let config = InterchangeConfig {
        manager_url: a.manager_url.clone(),
        secret: secret.clone(),
        dispatch: DispatchConfig {
            policy: a.dispatch,
            max_retries: a.max_retries,
            heartbeat_threshold: a.heartbeat_threshold,
            ..DispatchConfig::default()
        },
        heartbeat_period: a.heartbeat_period,
        drain_timeout: Duration::from_secs(30),
    };
    let interchange = Interchange::start(config)?;
    let url = format!("tcp://127.0.0.1:{}", interchange.manager_port());
    let exe = std::env::current_exe().context("cannot find this executable to start pilots")?;
    let mut provider = LocalProvider::default();
    for b in 0..a.blocks {
        let mut cmd = vec![
            exe.to_string_lossy().into_owned(),
            "pilot".into(),
            "--interchange".into(),
            url.clone(),
            "--block-id".into(),
            format!("local-{b}"),
            "--prefetch".into(),
            a.prefetch.to_string(),
            "--managers".into(),
            a.managers.to_string(),
        ];
        if let Some(w) = a.workers_per_node {
            cmd.extend(["--workers".into(), w.to_string()]);
        }
        if let Some(s) = a.simulate_workers {
            cmd.extend(["--simulate-workers".into(), s.to_string()]);
        }
        provider.submit(
            &format!("local-{b}"),
            &cmd,
            &[("FXR_SECRET".into(), secret.clone())],
        )?;
    }
    Ok(LocalEndpoint {
        interchange,
        provider,
    })
}

fn start(a: StartArgs, json: bool) -> anyhow::Result<u8> {
    if !a.local {
        bail!("only local endpoints exist so far: pass --local");
    }
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let LocalEndpoint {
        interchange,
        mut provider,
    } = start_local(&a)?;
    interchange.serve_front_door(listener)?;
    if let Some(f) = &a.address_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string()).and_then(|()| std::fs::rename(&tmp, f))?;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"endpoint": addr.to_string(), "manager_port": interchange.manager_port(), "pilot_pids": provider.pids()})
        );
    } else {
        println!(
            "endpoint ready at {addr} (managers dial tcp://127.0.0.1:{})",
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
    interchange.join();
    sig_handle.close();
    let _ = watcher.join();
    provider.stop_all(Duration::from_secs(5));
    Ok(exit::OK)
}
