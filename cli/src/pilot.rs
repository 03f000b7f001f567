//! `fxr pilot`: run one manager (or, for simulation, many) against an interchange.

use crate::exit;
use anyhow::Context;
use fxr_pilot::pool::{ColdStart, Cost};
use fxr_pilot::{Fleet, ManagerConfig, WorkerMode};
use fxr_protocol::{BlockId, ManagerId};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct PilotArgs {
    /// The interchange's manager address, tcp://HOST:PORT.
    #[arg(long)]
    pub interchange: String,
    /// File holding the endpoint secret (otherwise the FXR_SECRET environment variable).
    #[arg(long)]
    pub secret_file: Option<std::path::PathBuf>,
    /// Worker processes per manager (default: this node's cores).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Tasks queued at the manager beyond its idle workers.
    #[arg(long, default_value_t = 4)]
    pub prefetch: u32,
    /// Simulate this many in-process workers per manager instead of starting processes.
    #[arg(long)]
    pub simulate_workers: Option<u32>,
    /// Managers in this process (each with its own connection); for simulation.
    #[arg(long, default_value_t = 1)]
    pub managers: u32,
    /// Simulated managers that share one thread (1 gives each its own): they wait on one
    /// channel and a heap of their deadlines instead of a thread each.
    #[arg(long, default_value_t = 64)]
    pub managers_per_thread: usize,
    /// The block this pilot belongs to.
    #[arg(long, default_value = "local")]
    pub block_id: String,
    /// Use MPI to learn this pilot's rank and the block's inventory (one manager per rank).
    #[arg(long)]
    pub mpi: bool,
    /// The launcher that started this block (srun, mpiexec, aprun); `mpi` tasks use it.
    #[arg(long)]
    pub launcher: Option<String>,
    /// Cold-start cost of simulated container workers: [RUNTIME=]SECONDS, or [RUNTIME=]@FILE
    /// with one sample in seconds per line (repeatable; without RUNTIME it is the default).
    #[arg(long = "cold-start")]
    pub cold_start: Vec<String>,
    /// The node's object store: a directory on a memory file system, shared by the managers
    /// and workers of this node (none when absent).
    #[arg(long)]
    pub store: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub node: crate::opts::NodeArgs,
    /// Where the node's data service listens for peers (default: loopback when the
    /// interchange is on this machine, all interfaces otherwise).
    #[arg(long)]
    pub data_listen: Option<String>,
    /// Exit when the interchange has been unreachable this long.
    #[arg(long, value_parser = crate::opts::duration, default_value = "60s")]
    pub give_up_after: Duration,
}

pub fn run(a: PilotArgs) -> anyhow::Result<u8> {
    let secret = match &a.secret_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .trim()
            .to_string(),
        None => std::env::var("FXR_SECRET")
            .context("no endpoint secret: give --secret-file or set FXR_SECRET")?,
    };
    let exe = std::env::current_exe().context("cannot find this executable to start workers")?;
    let (mode, workers) = match a.simulate_workers {
        Some(n) => (
            WorkerMode::Simulated {
                cold_start: cold_start(&a.cold_start)?,
            },
            n,
        ),
        None => (
            WorkerMode::Processes { exe },
            a.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            }),
        ),
    };
    anyhow::ensure!(workers > 0, "a manager needs at least one worker");
    anyhow::ensure!(
        a.managers > 0 && a.managers <= 10_000,
        "--managers must be between 1 and 10000"
    );
    if let Some(l) = &a.launcher {
        // Inherited by the worker processes, which run `mpi` tasks with it.
        std::env::set_var("FXR_MPI_LAUNCHER", l);
    }
    let placement = if a.mpi {
        fxr_pilot::rank::with_mpi()
    } else {
        fxr_pilot::rank::from_env()
    };
    let (rank0, block_size) = if a.managers > 1 {
        (0, a.managers)
    } else {
        (placement.rank, placement.size)
    };
    // From the OS's generator: pilots of one block start at the same instant on the same host,
    // where a time-seeded generator could give two of them the same manager ids.
    let base = u64::from_str_radix(&fxr_broker::auth::new_id()?[..16], 16)
        .context("a manager id from the OS's generator")?
        & !0xffff;
    let configs = (0..a.managers)
        .map(|i| ManagerConfig {
            interchange: a.interchange.clone(),
            secret: secret.clone(),
            manager_id: ManagerId(base | u64::from(i)),
            block_id: BlockId(a.block_id.clone()),
            rank: rank0 + i,
            block_size,
            workers,
            prefetch: a.prefetch,
            mode: mode.clone(),
            heartbeat_period: Duration::from_secs(5),
            give_up_after: a.give_up_after,
            python: a.node.python.clone(),
            store: a.store.as_ref().map(|root| fxr_pilot::StoreConfig {
                root: root.clone(),
                capacity: a.node.store_capacity,
                ttl: a.node.store_ttl,
                inline_max: a.node.result_inline_max,
                listen: a.data_listen.clone().unwrap_or_else(|| {
                    let local =
                        a.interchange.contains("127.0.0.1") || a.interchange.contains("localhost");
                    if local {
                        "tcp://127.0.0.1:0"
                    } else {
                        "tcp://0.0.0.0:0"
                    }
                    .to_string()
                }),
            }),
        })
        .collect();
    let fleet = if a.simulate_workers.is_some() {
        Fleet::start_grouped(configs, a.managers_per_thread)?
    } else {
        Fleet::start(configs)?
    };
    let handles = fleet.handles.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            for h in &handles {
                h.terminate();
            }
        }
    });
    fleet.wait()?;
    drop(placement);
    Ok(exit::OK)
}

/// `--cold-start` values as simulated cold-start costs.
pub fn cold_start(values: &[String]) -> anyhow::Result<ColdStart> {
    let mut cs = ColdStart::default();
    for v in values {
        let (runtime, cost) = match v.split_once('=') {
            Some((r, c)) => (Some(r), c),
            None => (None, v.as_str()),
        };
        let cost = Cost::parse(cost).map_err(|e| anyhow::anyhow!("--cold-start {v}: {e}"))?;
        match runtime {
            Some(r) => cs.per_runtime.push((r.to_string(), cost)),
            None => cs.default = cost,
        }
    }
    Ok(cs)
}
