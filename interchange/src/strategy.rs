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
//!   after `max_failures` failures in a row no more blocks are submitted until one succeeds.

use crate::providers::JobState;
use std::collections::BTreeMap;
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
}

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
    pub job: Option<String>,
    pub phase: Phase,
    pub submitted: Instant,
    pub running_since: Option<Instant>,
    pub idle_since: Option<Instant>,
    pub ever_registered: bool,
    pub cancel_sent: bool,
}

#[derive(Debug)]
pub struct Strategy {
    cfg: StrategyConfig,
    prefix: String,
    next: u32,
    pub blocks: BTreeMap<String, Block>,
    failures_in_a_row: u32,
    pub last_error: Option<String>,
    started: bool,
    /// After a failure, no submission before this time (doubling backoff).
    hold_until: Option<Instant>,
}

impl Strategy {
    pub fn new(cfg: StrategyConfig, prefix: &str) -> Strategy {
        Strategy {
            cfg,
            prefix: prefix.to_string(),
            next: 0,
            blocks: BTreeMap::new(),
            failures_in_a_row: 0,
            last_error: None,
            started: false,
            hold_until: None,
        }
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

    /// Whether submissions are held back after repeated failures.
    pub fn stalled(&self) -> bool {
        self.failures_in_a_row >= self.cfg.max_failures
    }

    fn new_block(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.next += 1;
        let id = format!("{}-{}", self.prefix, self.next);
        self.blocks.insert(
            id.clone(),
            Block {
                job: None,
                phase: Phase::Pending,
                submitted: now,
                running_since: None,
                idle_since: None,
                ever_registered: false,
                cancel_sent: false,
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
    pub fn submit_failed(&mut self, block: &str, message: String) {
        if let Some(b) = self.blocks.get_mut(block) {
            b.phase = Phase::Gone;
        }
        self.failed(Instant::now(), message);
    }

    /// A block failed: count it, keep the reason for status reports, and hold back further
    /// submissions for a doubling delay.
    fn failed(&mut self, now: Instant, message: String) {
        self.failures_in_a_row += 1;
        self.last_error = Some(message);
        let secs = 1u64 << self.failures_in_a_row.min(6);
        self.hold_until = Some(now + Duration::from_secs(secs));
    }

    /// The scheduler's state of a block's job.
    pub fn job_state(&mut self, block: &str, state: &JobState) {
        let Some(b) = self.blocks.get_mut(block) else {
            return;
        };
        match state {
            JobState::Running if b.phase == Phase::Pending => {
                b.phase = Phase::Running;
                b.running_since = Some(Instant::now());
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
                    self.failed(Instant::now(), message);
                }
            }
            _ => {}
        }
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
                    self.last_error = None;
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
            self.failed(now, message);
            out.push(Action::Cancel(id));
        }
        // Drain blocks near their walltime, and idle ones above the minimum.
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
            if b.phase == Phase::Running && (near_end || (idle && keep > self.cfg.min_blocks)) {
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
        let mut target = demand.max(self.cfg.min_blocks).min(self.cfg.max_blocks);
        if !self.started {
            self.started = true;
            target = target.max(self.cfg.init_blocks.min(self.cfg.max_blocks));
        }
        let held = self.hold_until.is_some_and(|t| now < t);
        if !self.stalled() && !held {
            for _ in active..target {
                self.new_block(now, &mut out);
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

    /// A one-line summary for status reports.
    pub fn summary(&self) -> String {
        let count = |p: Phase| self.blocks.values().filter(|b| b.phase == p).count();
        let mut s = format!(
            "blocks: {} pending, {} running, {} draining",
            count(Phase::Pending),
            count(Phase::Running),
            count(Phase::Draining)
        );
        if let Some(e) = &self.last_error {
            s.push_str(&format!("; last error: {e}"));
        }
        if self.stalled() {
            s.push_str(&format!(
                "; submissions paused after {} failures in a row",
                self.failures_in_a_row
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> StrategyConfig {
        StrategyConfig {
            init_blocks: 1,
            min_blocks: 0,
            max_blocks: 3,
            nodes_per_block: 2,
            workers_per_node: 2,
            parallelism: 1.0,
            max_idletime: Duration::from_secs(60),
            walltime: Duration::from_secs(3600),
            drain_margin: Duration::from_secs(120),
            max_failures: 2,
            pending_timeout: Duration::from_secs(600),
        }
    }

    fn load(pairs: &[(&str, u32, u32)]) -> BTreeMap<String, BlockLoad> {
        pairs
            .iter()
            .map(|(id, m, t)| {
                (
                    id.to_string(),
                    BlockLoad {
                        managers: *m,
                        tasks: *t,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn starts_init_blocks_and_scales_out_to_the_max() {
        let t0 = Instant::now();
        let mut s = Strategy::new(cfg(), "b");
        assert_eq!(
            s.decide(t0, 0, &load(&[])),
            vec![Action::Submit("b-1".into())]
        );
        s.submitted("b-1", "101".into());
        assert!(
            s.decide(t0, 4, &load(&[])).is_empty(),
            "4 tasks fit the 4 slots of one block"
        );
        let a = s.decide(t0, 100, &load(&[]));
        assert_eq!(
            a,
            vec![Action::Submit("b-2".into()), Action::Submit("b-3".into())],
            "capped at max_blocks"
        );
        assert!(s.decide(t0, 1000, &load(&[])).is_empty());
    }

    #[test]
    fn block_numbers_continue_after_an_earlier_run() {
        let mut s = Strategy::new(cfg(), "b");
        s.number_after(41);
        assert_eq!(
            s.decide(Instant::now(), 0, &load(&[])),
            vec![Action::Submit("b-42".into())]
        );
    }

    #[test]
    fn idle_blocks_drain_then_cancel_and_walltime_drains() {
        let t0 = Instant::now();
        let mut s = Strategy::new(cfg(), "b");
        s.decide(t0, 0, &load(&[]));
        s.submitted("b-1", "101".into());
        s.decide(t0, 0, &load(&[("b-1", 2, 0)]));
        assert!(s
            .decide(t0 + Duration::from_secs(30), 0, &load(&[("b-1", 2, 0)]))
            .is_empty());
        let a = s.decide(t0 + Duration::from_secs(61), 0, &load(&[("b-1", 2, 0)]));
        assert_eq!(a, vec![Action::Drain("b-1".into())]);
        assert!(
            s.decide(t0 + Duration::from_secs(62), 0, &load(&[("b-1", 1, 0)]))
                .is_empty(),
            "wait for managers to leave"
        );
        let a = s.decide(t0 + Duration::from_secs(63), 0, &load(&[]));
        assert_eq!(a, vec![Action::Cancel("b-1".into())]);

        let mut s = Strategy::new(
            StrategyConfig {
                min_blocks: 1,
                ..cfg()
            },
            "w",
        );
        s.decide(t0, 0, &load(&[]));
        s.decide(t0, 1, &load(&[("w-1", 2, 1)]));
        let a = s.decide(t0 + Duration::from_secs(3500), 1, &load(&[("w-1", 2, 1)]));
        assert!(
            a.contains(&Action::Drain("w-1".into())),
            "drained before the walltime ends: {a:?}"
        );
        assert!(
            a.contains(&Action::Submit("w-2".into())),
            "and replaced to keep min_blocks: {a:?}"
        );
    }

    #[test]
    fn failures_are_bounded() {
        let t0 = Instant::now();
        let mut s = Strategy::new(
            StrategyConfig {
                min_blocks: 1,
                ..cfg()
            },
            "f",
        );
        s.decide(t0, 0, &load(&[]));
        s.submit_failed("f-1", "sbatch: error: invalid partition".into());
        assert!(
            s.decide(Instant::now(), 0, &load(&[])).is_empty(),
            "backing off after a failure"
        );
        let later = Instant::now() + Duration::from_secs(3);
        assert_eq!(
            s.decide(later, 0, &load(&[])),
            vec![Action::Submit("f-2".into())]
        );
        s.submitted("f-2", "7".into());
        s.job_state("f-2", &JobState::Failed("NODE_FAIL".into()));
        assert!(s.stalled());
        assert!(
            s.decide(t0, 10, &load(&[])).is_empty(),
            "no endless resubmission"
        );
        assert!(s.summary().contains("NODE_FAIL"), "{}", s.summary());
    }

    #[test]
    fn a_block_that_never_starts_is_cancelled_and_replaced() {
        let t0 = Instant::now();
        let mut s = Strategy::new(
            StrategyConfig {
                min_blocks: 1,
                ..cfg()
            },
            "p",
        );
        s.decide(t0, 0, &load(&[]));
        s.submitted("p-1", "9".into());
        assert!(s
            .decide(t0 + Duration::from_secs(300), 0, &load(&[]))
            .is_empty());
        let a = s.decide(t0 + Duration::from_secs(601), 0, &load(&[]));
        assert_eq!(a, vec![Action::Cancel("p-1".into())]);
        assert!(s.summary().contains("did not start"));
        let a = s.decide(t0 + Duration::from_secs(700), 0, &load(&[]));
        assert_eq!(
            a,
            vec![Action::Submit("p-2".into())],
            "replaced after the backoff"
        );
    }
}
