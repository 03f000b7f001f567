//! The scaling loop: a thread that watches the interchange and the batch scheduler, asks the
//! [`Strategy`] what to do, and does it — render and submit job scripts, drain blocks through the
//! core, cancel jobs. Stopping it cancels every job it still has.

use crate::client;
use crate::links::front::{FrontDoor, LocalClient};
use crate::providers::template::{render, ScriptVars};
use crate::providers::BatchProvider;
use crate::strategy::{Action, BlockLoad, Strategy, StrategyConfig};
use fxr_protocol::ClientMsg;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How to make blocks.
#[derive(Clone, Debug)]
pub struct ScalerConfig {
    pub strategy: StrategyConfig,
    /// slurm | pbs
    pub kind: String,
    pub launcher: String,
    pub template: Option<PathBuf>,
    /// Script variables shared by every block; `job_name`, `block_id` and `pilot_cmd` are filled in.
    pub vars: ScriptVars,
    /// The pilot command line without `--block-id`.
    pub pilot_cmd: String,
    /// Where job scripts are written.
    pub dir: PathBuf,
    pub name: String,
    pub tick: Duration,
    pub poll: Duration,
    /// Where to publish block counts.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// The running loop.
#[derive(Debug)]
pub struct Scaler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Scaler {
    pub fn start(
        door: LocalClient,
        provider: Box<dyn BatchProvider>,
        cfg: ScalerConfig,
    ) -> std::io::Result<Scaler> {
        std::fs::create_dir_all(&cfg.dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("scaling".into())
            .spawn(move || run(door, provider, cfg, &flag))?;
        Ok(Scaler {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the loop and cancels the jobs it still holds.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    mut door: LocalClient,
    mut provider: Box<dyn BatchProvider>,
    cfg: ScalerConfig,
    stop: &AtomicBool,
) {
    let mut strategy = Strategy::new(cfg.strategy.clone(), &cfg.name);
    let mut last_poll = Instant::now() - cfg.poll;
    let mut last_summary = String::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(status) = client::status(&mut door, Duration::from_secs(5)) else {
            break;
        };
        if status.stopping {
            // The endpoint is shutting down: replace nothing, cancel what is left.
            break;
        }
        let outstanding = status.queued + status.running;
        let mut load: BTreeMap<String, BlockLoad> = BTreeMap::new();
        for m in &status.managers {
            let l = load.entry(m.block_id.0.clone()).or_default();
            l.managers += 1;
            l.tasks += m.in_flight;
        }
        if last_poll.elapsed() >= cfg.poll {
            last_poll = Instant::now();
            let jobs: Vec<(String, String)> = strategy.jobs_to_cancel();
            let ids: Vec<String> = jobs.iter().map(|(_, j)| j.clone()).collect();
            match provider.status(&ids) {
                Ok(states) => {
                    for ((block, _), (_, st)) in jobs.iter().zip(states.iter()) {
                        strategy.job_state(block, st);
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = provider.name(), error = %e, "cannot poll the scheduler")
                }
            }
        }
        for action in strategy.decide(Instant::now(), outstanding, &load) {
            match action {
                Action::Submit(block) => match submit(&mut *provider, &cfg, &block) {
                    Ok(job) => {
                        tracing::info!(block_id = %block, job, provider = provider.name(), "block submitted");
                        strategy.submitted(&block, job);
                    }
                    Err(e) => {
                        tracing::error!(block_id = %block, provider = provider.name(), error = %e, "block submission failed");
                        strategy.submit_failed(&block, e.to_string());
                    }
                },
                Action::Drain(block) => {
                    tracing::info!(block_id = %block, "draining block");
                    for m in status.managers.iter().filter(|m| m.block_id.0 == block) {
                        let _ = door.send(ClientMsg::DrainManager {
                            manager_id: m.manager_id,
                        });
                    }
                }
                Action::Cancel(block) => {
                    if let Some(job) = strategy.blocks.get(&block).and_then(|b| b.job.clone()) {
                        tracing::info!(block_id = %block, job, "cancelling drained block");
                        if let Err(e) = provider.cancel(&job) {
                            tracing::warn!(block_id = %block, error = %e, "cancel failed");
                        }
                    }
                }
            }
        }
        if let Some(m) = &cfg.metrics {
            let [pending, running, draining, failures] = strategy.counts();
            m.blocks_pending.store(pending, Ordering::Relaxed);
            m.blocks_running.store(running, Ordering::Relaxed);
            m.blocks_draining.store(draining, Ordering::Relaxed);
            m.block_failures.store(failures, Ordering::Relaxed);
        }
        let summary = strategy.summary();
        if summary != last_summary {
            let _ = door.send(ClientMsg::ProviderReport {
                summary: summary.clone(),
            });
            last_summary = summary;
        }
        let until = Instant::now() + cfg.tick;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (block, job) in strategy.jobs_to_cancel() {
        tracing::info!(block_id = %block, job, "cancelling block at shutdown");
        if let Err(e) = provider.cancel(&job) {
            tracing::warn!(block_id = %block, error = %e, "cancel failed");
        }
    }
}

fn submit(
    provider: &mut dyn BatchProvider,
    cfg: &ScalerConfig,
    block: &str,
) -> Result<String, crate::providers::ProviderError> {
    let mut vars = cfg.vars.clone();
    vars.job_name = format!("fxr-{block}");
    vars.block_id = block.to_string();
    vars.pilot_cmd = format!("{} --block-id {block}", cfg.pilot_cmd);
    let script = render(&cfg.kind, &cfg.launcher, cfg.template.as_deref(), &vars)?;
    let path = cfg.dir.join(format!("{block}.sh"));
    std::fs::write(&path, script).map_err(|source| crate::providers::ProviderError::Write {
        path: path.display().to_string(),
        source,
    })?;
    provider.submit(&path)
}
