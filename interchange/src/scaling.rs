//! The scaling loop: a thread that watches the interchange and the batch scheduler, asks the
//! [`Strategy`] what to do, and does it — render and submit job scripts, drain blocks through the
//! core, cancel jobs. Stopping it cancels every job it still has.

use crate::client;
use crate::links::front::{FrontDoor, LocalClient};
use crate::providers::template::{render, ScriptVars};
use crate::providers::{BatchProvider, ProviderError};
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
    /// Once the strategy has given up starting blocks for this long and no manager is left,
    /// queued tasks fail with the scheduler's reason instead of waiting.
    pub fail_tasks_after: Duration,
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

/// How many earlier blocks' scripts and job outputs an endpoint keeps.
const KEEP_BLOCKS: usize = 100;

/// The block number in a file name of block `NAME-N`: its script `NAME-N.sh`, or a job
/// output `fxr-NAME-N.JOB.out`.
fn block_number(file: &str, name: &str) -> Option<u64> {
    let file = file.strip_prefix("fxr-").unwrap_or(file);
    let rest = file.strip_prefix(name)?.strip_prefix('-')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    if digits.is_empty() || !after.starts_with('.') {
        return None;
    }
    digits.parse().ok()
}

/// The numbers of the blocks whose files are in `dir`, in increasing order.
fn earlier_blocks(dir: &std::path::Path, name: &str) -> Vec<u64> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| block_number(&e.file_name().into_string().ok()?, name))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// Removes the files of all but the newest [`KEEP_BLOCKS`] of `blocks`.
fn prune_blocks(dir: &std::path::Path, name: &str, blocks: &[u64]) {
    let old = blocks.len().saturating_sub(KEEP_BLOCKS);
    let gone: std::collections::HashSet<u64> = blocks[..old].iter().copied().collect();
    if gone.is_empty() {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(file) = e.file_name().into_string() else {
            continue;
        };
        if block_number(&file, name).is_some_and(|n| gone.contains(&n)) {
            let _ = std::fs::remove_file(e.path());
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
    // Earlier runs' scripts and job outputs stay (the newest KEEP_BLOCKS); numbering goes on.
    let earlier = earlier_blocks(&cfg.dir, &cfg.name);
    strategy.number_after(earlier.last().copied().unwrap_or(0));
    prune_blocks(&cfg.dir, &cfg.name, &earlier);
    let mut last_poll = Instant::now() - cfg.poll;
    let mut gave_up = false;
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
                        strategy.job_state(Instant::now(), block, st);
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = provider.name(), error = %e, "cannot poll the scheduler")
                }
            }
        }
        strategy.set_request(status.requested.as_ref());
        for action in strategy.decide(Instant::now(), outstanding, &load) {
            match action {
                Action::Submit(block) => match submit(&mut *provider, &cfg, &block) {
                    Ok(job) => {
                        let why = strategy
                            .blocks
                            .get(&block)
                            .map(|b| b.reason.clone())
                            .unwrap_or_default();
                        tracing::info!(block_id = %block, job, provider = provider.name(), reason = %why, "block submitted");
                        strategy.submitted(&block, job);
                    }
                    Err(e) => {
                        tracing::error!(block_id = %block, provider = provider.name(), error = %e, "block submission failed");
                        strategy.submit_failed(Instant::now(), &block, e.to_string());
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
        let now = Instant::now();
        let report = strategy.report(&cfg.kind, now, fxr_protocol::data::now_ms());
        if report.gave_up.is_some() != gave_up {
            gave_up = report.gave_up.is_some();
            match &report.gave_up {
                Some(why) => tracing::error!(provider = provider.name(), "{why}"),
                None => tracing::info!(provider = provider.name(), "submitting blocks again"),
            }
        }
        if let (Some(why), Some(down)) = (&report.gave_up, strategy.given_up_for(now)) {
            if down >= cfg.fail_tasks_after && status.managers.is_empty() && status.queued > 0 {
                tracing::warn!(
                    tasks = status.queued,
                    "failing queued tasks: no block can start"
                );
                let _ = door.send(ClientMsg::FailQueued {
                    reason: format!("endpoint {} cannot start blocks: {why}", cfg.name),
                });
            }
        }
        let _ = door.send(ClientMsg::ProviderReport { report });
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

/// The job script of block `block`.
pub fn render_block(cfg: &ScalerConfig, block: &str) -> Result<String, ProviderError> {
    let mut vars = cfg.vars.clone();
    vars.job_name = format!("fxr-{block}");
    vars.block_id = block.to_string();
    vars.pilot_cmd = format!("{} --block-id {block}", cfg.pilot_cmd);
    Ok(render(
        &cfg.kind,
        &cfg.launcher,
        cfg.template.as_deref(),
        &vars,
    )?)
}

/// The id the next block of this endpoint will get.
pub fn next_block_id(cfg: &ScalerConfig) -> String {
    let last = earlier_blocks(&cfg.dir, &cfg.name)
        .last()
        .copied()
        .unwrap_or(0);
    format!("{}-{}", cfg.name, last + 1)
}

/// Before the endpoint says it is ready: renders the job script a block would run (so a
/// template with an unknown variable, or one that cannot be read, is found now) and asks the
/// scheduler whether it would accept it, without submitting. Returns the script.
pub fn preflight(
    provider: &mut dyn BatchProvider,
    cfg: &ScalerConfig,
) -> Result<String, ProviderError> {
    let block = next_block_id(cfg);
    let script = render_block(cfg, &block)?;
    std::fs::create_dir_all(&cfg.dir).map_err(|source| ProviderError::Write {
        path: cfg.dir.display().to_string(),
        source,
    })?;
    // A dot file: never taken for a block's own script.
    let path = cfg.dir.join(format!(".check-{block}.sh"));
    std::fs::write(&path, &script).map_err(|source| ProviderError::Write {
        path: path.display().to_string(),
        source,
    })?;
    let checked = provider.check(&path);
    let _ = std::fs::remove_file(&path);
    checked.map(|()| script)
}

fn submit(
    provider: &mut dyn BatchProvider,
    cfg: &ScalerConfig,
    block: &str,
) -> Result<String, ProviderError> {
    let script = render_block(cfg, block)?;
    let path = cfg.dir.join(format!("{block}.sh"));
    std::fs::write(&path, script).map_err(|source| ProviderError::Write {
        path: path.display().to_string(),
        source,
    })?;
    provider.submit(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_blocks_are_found_and_the_oldest_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "ep-1.sh",
            "ep-3.sh",
            "fxr-ep-7.101.out",
            "epx-9.sh",
            "ep-.sh",
            "other",
        ] {
            std::fs::write(d.join(f), "").unwrap();
        }
        assert_eq!(earlier_blocks(d, "ep"), vec![1, 3, 7]);
        let many: Vec<u64> = (1..=KEEP_BLOCKS as u64 + 2).collect();
        for n in &many {
            std::fs::write(d.join(format!("ep-{n}.sh")), "").unwrap();
        }
        prune_blocks(d, "ep", &many);
        let left = earlier_blocks(d, "ep");
        assert_eq!(left.len(), KEEP_BLOCKS);
        assert_eq!(left.first(), Some(&3));
        assert!(!d.join("ep-1.sh").exists() && d.join("epx-9.sh").exists());
        assert!(d.join("fxr-ep-7.101.out").exists());
    }
}
