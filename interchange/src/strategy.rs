//! The scaling strategy: how many blocks to run, which to drain, which to cancel. A state
//! machine over plain data, driven by observations and scheduler events, tested without a
//! scheduler.
//!
//! Rules, after Parsl's and Globus Compute's strategies:
//! - start `init_blocks`; never run fewer than `min_blocks` or more than `max_blocks`;
//! - scale out when outstanding tasks exceed the slots of the running and pending blocks times
//!   `parallelism`;
//! - drain a block idle for `max_idletime` (while more than `min_blocks` run), and any block
//!   whose walltime is about to end, so no task is cut off; cancel a drained block once its
//!   managers have gone;
//! - a block whose job fails or vanishes before its managers register counts as a failure;
//!   after `max_failures` failures in a row the strategy gives up: no block is submitted until
//!   `retry_after` has passed, then one is tried again (a block whose managers register resets
//!   the count). Every failure is kept, with its time, for status reports;
//! - the broker may ask for blocks ([`Strategy::set_request`]): while its request holds, at
//!   least that many blocks run (up to `max_blocks`, the site's ceiling) and none of them is
//!   drained for being idle; a request for 0 blocks, or none, leaves the rules above alone.
//!   Every block records who asked for it and why.

use crate::providers::JobState;
use fxr_protocol::{BlockReport, ProviderStatus, SchedulerError};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct StrategyConfig {
    pub init_blocks: u32,
    pub min_blocks: u32,
    pub max_blocks: u32,
    pub nodes_per_block: u32,
    pub workers_per_node: u32,
    pub parallelism: f64,
    pub max_idletime: Duration,
    pub walltime: Duration,
    /// Drain a block this long before its walltime ends.
    pub drain_margin: Duration,
    pub max_failures: u32,
    /// A block still pending (no manager registered) after this long is cancelled and counted
    /// as a failure.
    pub pending_timeout: Duration,
    /// After giving up, try one block again after this long.
    pub retry_after: Duration,
}

/// How many scheduler errors a status report carries.
const KEEP_ERRORS: usize = 5;
/// How many ended blocks a status report carries.
const KEEP_ENDED: usize = 10;

/// What the endpoint sees of one block right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockLoad {
    pub managers: u32,
    pub tasks: u32,
}

/// What the strategy wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Submit(String),
    Drain(String),
    Cancel(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Submitted (or being submitted), not yet running.
    Pending,
    Running,
    Draining,
    /// Finished, cancelled or failed: kept only for reports.
    Gone,
}

#[derive(Clone, Debug)]
pub struct Block {
    /// N of its id `NAME-N`.
    pub number: u32,
    pub job: Option<String>,
    pub phase: Phase,
    pub submitted: Instant,
    pub running_since: Option<Instant>,
    pub idle_since: Option<Instant>,
    pub ever_registered: bool,
    pub cancel_sent: bool,
    /// Why it failed, in the scheduler's words.
    pub failure: Option<String>,
    /// Who asked for it and why.
    pub reason: String,
}

/// The broker's request as the strategy keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    pub blocks: u32,
    pub reason: String,
}

/// How many recent block start-up times the median is taken over.
const KEEP_STARTS: usize = 5;

#[derive(Debug)]
pub struct Strategy {
    cfg: StrategyConfig,
    prefix: String,
    next: u32,
    pub blocks: BTreeMap<String, Block>,
    failures_in_a_row: u32,
    /// The scheduler's most recent errors, oldest first: when, which block, what it said.
    errors: VecDeque<(Instant, String, String)>,
    started: bool,
    /// After a failure, no submission before this time (doubling backoff).
    hold_until: Option<Instant>,
    /// When the strategy gave up submitting blocks (after `max_failures` in a row).
    gave_up_at: Option<Instant>,
    /// The broker's request in force, if any.
    asked: Option<Asked>,
    /// How long the most recent blocks took from submission to their first manager.
    starts: VecDeque<Duration>,
}

impl Strategy {
    pub fn new(cfg: StrategyConfig, prefix: &str) -> Strategy {
        Strategy {
            cfg,
            prefix: prefix.to_string(),
            next: 0,
            blocks: BTreeMap::new(),
            failures_in_a_row: 0,
            errors: VecDeque::new(),
            started: false,
            hold_until: None,
            gave_up_at: None,
            asked: None,
            starts: VecDeque::new(),
        }
    }

    /// The broker's request now: `None` when there is none or it has lapsed.
    pub fn set_request(&mut self, r: Option<&fxr_protocol::ProvisionRequest>) {
        self.asked = r.filter(|r| r.blocks > 0).map(|r| Asked {
            blocks: r.blocks,
            reason: r.reason.clone(),
        });
    }

    /// The median time recent blocks took to start, once one has.
    pub fn block_start(&self) -> Option<Duration> {
        let mut v: Vec<Duration> = self.starts.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }

    /// Numbers new blocks after `n` (the highest an earlier run of the endpoint used), so block
    /// ids stay unique across restarts.
    pub fn number_after(&mut self, n: u64) {
        self.next = self
            .next
            .max(u32::try_from(n).unwrap_or(u32::MAX).min(u32::MAX / 2));
    }

    fn active(&self) -> impl Iterator<Item = (&String, &Block)> {
        self.blocks
            .iter()
            .filter(|(_, b)| matches!(b.phase, Phase::Pending | Phase::Running))
    }

    /// Whether the strategy has given up submitting blocks after repeated failures.
    pub fn stalled(&self) -> bool {
        self.gave_up_at.is_some()
    }

    /// How long ago the strategy gave up, while it has.
    pub fn given_up_for(&self, now: Instant) -> Option<Duration> {
        self.gave_up_at.map(|t| now.saturating_duration_since(t))
    }

    /// The most recent scheduler error.
    pub fn last_error(&self) -> Option<&str> {
        self.errors.back().map(|(_, _, m)| m.as_str())
    }

    fn new_block(&mut self, now: Instant, reason: String, out: &mut Vec<Action>) {
        self.next += 1;
        let id = format!("{}-{}", self.prefix, self.next);
        self.blocks.insert(
            id.clone(),
            Block {
                number: self.next,
                job: None,
                phase: Phase::Pending,
                submitted: now,
                running_since: None,
                idle_since: None,
                ever_registered: false,
                cancel_sent: false,
                failure: None,
                reason,
            },
        );
        out.push(Action::Submit(id));
    }

    /// The scheduler accepted a block.
    pub fn submitted(&mut self, block: &str, job: String) {
        if let Some(b) = self.blocks.get_mut(block) {
            b.job = Some(job);
        }
    }

    /// The scheduler refused a block; `message` is its own words.
    pub fn submit_failed(&mut self, now: Instant, block: &str, message: String) {
        if let Some(b) = self.blocks.get_mut(block) {
            b.phase = Phase::Gone;
        }
        self.failed(now, block, message);
    }

    /// A block failed: count it, keep the reason for status reports, and hold back further
    /// submissions for a doubling delay; after `max_failures` in a row, give up.
    fn failed(&mut self, now: Instant, block: &str, message: String) {
        if let Some(b) = self.blocks.get_mut(block) {
            b.failure = Some(message.clone());
        }
        self.failures_in_a_row += 1;
        if self.errors.len() == KEEP_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back((now, block.to_string(), message));
        let secs = 1u64 << self.failures_in_a_row.min(6);
        self.hold_until = Some(now + Duration::from_secs(secs));
        if self.failures_in_a_row >= self.cfg.max_failures.max(1) && self.gave_up_at.is_none() {
            self.gave_up_at = Some(now);
        }
        self.forget_ended();
    }

    /// The scheduler's state of a block's job.
    pub fn job_state(&mut self, now: Instant, block: &str, state: &JobState) {
        let Some(b) = self.blocks.get_mut(block) else {
            return;
        };
        match state {
            JobState::Running if b.phase == Phase::Pending => {
                b.phase = Phase::Running;
                b.running_since = Some(now);
            }
            JobState::Done | JobState::Failed(_) if b.phase != Phase::Gone => {
                let never_started = !b.ever_registered && b.phase != Phase::Draining;
                b.phase = Phase::Gone;
                if never_started {
                    let message = match state {
                        JobState::Failed(why) => {
                            format!("block {block} failed before its managers started: {why}")
                        }
                        _ => format!("block {block} ended before its managers started"),
                    };
                    self.failed(now, block, message);
                }
            }
            _ => {}
        }
        self.forget_ended();
    }

    /// Decides what to do given the tasks outstanding and each block's load.
    pub fn decide(
        &mut self,
        now: Instant,
        outstanding: u64,
        load: &BTreeMap<String, BlockLoad>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        // Registration marks a block running, whatever the scheduler said last.
        for (id, b) in self.blocks.iter_mut() {
            let l = load.get(id).copied().unwrap_or_default();
            if l.managers > 0 {
                if !b.ever_registered {
                    b.ever_registered = true;
                    self.failures_in_a_row = 0;
                    self.gave_up_at = None;
                    if self.starts.len() == KEEP_STARTS {
                        self.starts.pop_front();
                    }
                    self.starts
                        .push_back(now.saturating_duration_since(b.submitted));
                }
                if b.phase == Phase::Pending {
                    b.phase = Phase::Running;
                    b.running_since = Some(now);
                }
            }
            if b.phase == Phase::Running {
                if l.tasks == 0 && outstanding == 0 {
                    b.idle_since.get_or_insert(now);
                } else {
                    b.idle_since = None;
                }
            }
        }
        // A block that never starts is given up on, within the failure limit.
        let stuck: Vec<String> = self
            .blocks
            .iter()
            .filter(|(_, b)| {
                b.phase == Phase::Pending
                    && now.saturating_duration_since(b.submitted) > self.cfg.pending_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stuck {
            if let Some(b) = self.blocks.get_mut(&id) {
                b.phase = Phase::Draining;
                b.cancel_sent = true;
            }
            let message = format!(
                "block {id} did not start within {:?}; cancelled",
                self.cfg.pending_timeout
            );
            self.failed(now, &id, message);
            out.push(Action::Cancel(id));
        }
        // Drain blocks near their walltime, and idle ones above the minimum (and above what the
        // broker asked for).
        let asked = self.asked.as_ref().map_or(0, |a| a.blocks);
        let floor = self.cfg.min_blocks.max(asked.min(self.cfg.max_blocks));
        let running: Vec<String> = self.active().map(|(id, _)| id.clone()).collect();
        let mut keep = running.len() as u32;
        for id in &running {
            let Some(b) = self.blocks.get(id) else {
                continue;
            };
            let near_end = b.running_since.is_some_and(|t| {
                now.saturating_duration_since(t) + self.cfg.drain_margin >= self.cfg.walltime
            });
            let idle = b
                .idle_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.max_idletime);
            if b.phase == Phase::Running && (near_end || (idle && keep > floor)) {
                keep -= 1;
                if let Some(b) = self.blocks.get_mut(id) {
                    b.phase = Phase::Draining;
                }
                out.push(Action::Drain(id.clone()));
            }
        }
        // Cancel drained blocks whose managers have gone (or that never had any).
        for (id, b) in self.blocks.iter_mut() {
            if b.phase == Phase::Draining
                && !b.cancel_sent
                && load.get(id).map_or(0, |l| l.managers) == 0
            {
                b.cancel_sent = true;
                out.push(Action::Cancel(id.clone()));
            }
        }
        // Scale out.
        let active = self.active().count() as u32;
        let per_block = f64::from((self.cfg.nodes_per_block * self.cfg.workers_per_node).max(1));
        let demand = ((outstanding as f64 * self.cfg.parallelism) / per_block).ceil() as u32;
        // Who wants the most blocks names the new ones; the endpoint's own rules win ties.
        let mut wants = vec![
            (
                self.cfg.min_blocks,
                format!("min_blocks = {}", self.cfg.min_blocks),
            ),
            (
                demand,
                format!(
                    "{outstanding} tasks outstanding at the endpoint ({} workers per block)",
                    per_block as u64
                ),
            ),
        ];
        if !self.started {
            self.started = true;
            let init = self.cfg.init_blocks;
            wants.insert(0, (init, format!("init_blocks = {init}")));
        }
        if let Some(a) = &self.asked {
            let capped = if a.blocks > self.cfg.max_blocks {
                format!(" (capped at max_blocks = {})", self.cfg.max_blocks)
            } else {
                String::new()
            };
            wants.push((
                a.blocks,
                format!(
                    "the broker asked for {} blocks{capped}: {}",
                    a.blocks, a.reason
                ),
            ));
        }
        let (want, reason) = wants
            .into_iter()
            .reduce(|best, w| if w.0 > best.0 { w } else { best })
            .unwrap_or_default();
        let mut target = want.min(self.cfg.max_blocks);
        // After giving up, one block is tried again once `retry_after` has passed.
        if self
            .gave_up_at
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.retry_after)
        {
            self.gave_up_at = None;
            self.failures_in_a_row = self.cfg.max_failures.saturating_sub(1);
            target = target.min(active + 1);
        }
        self.forget_ended();
        let held = self.hold_until.is_some_and(|t| now < t);
        if !self.stalled() && !held {
            for _ in active..target {
                self.new_block(now, reason.clone(), &mut out);
            }
        }
        out
    }

    /// Every block that still has a job to cancel at shutdown.
    pub fn jobs_to_cancel(&self) -> Vec<(String, String)> {
        self.blocks
            .iter()
            .filter(|(_, b)| b.phase != Phase::Gone)
            .filter_map(|(id, b)| b.job.clone().map(|j| (id.clone(), j)))
            .collect()
    }

    /// Blocks pending, running and draining, and failures in a row.
    pub fn counts(&self) -> [u64; 4] {
        let count = |p: Phase| self.blocks.values().filter(|b| b.phase == p).count() as u64;
        [
            count(Phase::Pending),
            count(Phase::Running),
            count(Phase::Draining),
            u64::from(self.failures_in_a_row),
        ]
    }

    /// Drops ended blocks beyond the newest [`KEEP_ENDED`].
    fn forget_ended(&mut self) {
        let mut ended: Vec<(u32, String)> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.phase == Phase::Gone)
            .map(|(id, b)| (b.number, id.clone()))
            .collect();
        if ended.len() <= KEEP_ENDED {
            return;
        }
        ended.sort_unstable();
        for (_, id) in &ended[..ended.len() - KEEP_ENDED] {
            self.blocks.remove(id);
        }
    }

    /// The blocks and the scheduler's last errors, for status reports. `unix_ms` is the wall
    /// clock at `now`.
    pub fn report(&self, kind: &str, now: Instant, unix_ms: u64) -> ProviderStatus {
        let mut blocks: Vec<(&String, &Block)> = self.blocks.iter().collect();
        blocks.sort_by_key(|(_, b)| b.number);
        let ago = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        ProviderStatus {
            kind: kind.to_string(),
            blocks: blocks
                .into_iter()
                .map(|(id, b)| BlockReport {
                    id: id.clone(),
                    job: b.job.clone(),
                    state: match (b.phase, &b.failure) {
                        (Phase::Pending, _) => "pending",
                        (Phase::Running, _) => "running",
                        (Phase::Draining, _) => "draining",
                        (Phase::Gone, None) => "ended",
                        (Phase::Gone, Some(_)) => "failed",
                    }
                    .to_string(),
                    nodes: self.cfg.nodes_per_block,
                    age_ms: ago(b.submitted),
                    message: b.failure.clone(),
                    reason: b.reason.clone(),
                })
                .collect(),
            errors: self
                .errors
                .iter()
                .map(|(t, block, message)| SchedulerError {
                    at_ms: unix_ms.saturating_sub(ago(*t)),
                    block: block.clone(),
                    message: message.clone(),
                })
                .collect(),
            gave_up: self.gave_up_at.map(|t| {
                let left = self
                    .cfg
                    .retry_after
                    .saturating_sub(now.saturating_duration_since(t));
                format!(
                    "gave up submitting blocks after {} failures in a row (last: {}); trying again in {}s",
                    self.failures_in_a_row,
                    self.last_error().unwrap_or("unknown"),
                    left.as_secs()
                )
            }),
            max_blocks: self.cfg.max_blocks,
            slots_per_block: self.cfg.nodes_per_block * self.cfg.workers_per_node,
            block_start_ms: self.block_start().map(|d| d.as_millis() as u64),
        }
    }
}

#[cfg(test)]
mod tests;
