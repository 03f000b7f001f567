//! The broker's side of provisioning: which endpoints hold more open tasks than their workers
//! can run, how many blocks would run them, and how long a new task would wait at each
//! endpoint. Plain data with time passed in; the hub sends what [`Provisioner::tick`] decides
//! over the endpoints' links (`BrokerMsg::Provision`).
//!
//! The endpoint stays in charge: it never runs more than its own `max_blocks`, and a request
//! lapses unless renewed ([`VALID`]), so a broker that goes away leaves the endpoint to its own
//! rules.

use fxr_protocol::{EndpointStatus, ProvisionRequest};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a request holds at the endpoint; the broker renews one it still means every half
/// of that.
pub const VALID: Duration = Duration::from_secs(30);
/// What a task is assumed to take before an endpoint has reported any.
const DEFAULT_TASK_MS: f64 = 1000.0;
/// What a block is assumed to take to start before an endpoint has started one.
const DEFAULT_START_MS: f64 = 30_000.0;
/// Most blocks one request names.
const MAX_ASK: u64 = 100_000;

/// What the broker knows of one endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub connected: bool,
    /// Whether it has sent a status report on this link (before one, nothing is known).
    pub reported: bool,
    /// Tasks routed to it without a result.
    pub open: u64,
    pub workers: u64,
    pub max_blocks: u32,
    pub slots_per_block: u32,
    pub block_start_ms: Option<u64>,
    /// Mean run time of its recent tasks.
    pub task_ms: Option<f64>,
}

impl View {
    /// The view of an endpoint from its last status report.
    pub fn new(
        connected: bool,
        open: u64,
        status: Option<&EndpointStatus>,
        task_ms: Option<f64>,
    ) -> View {
        let mut v = View {
            connected,
            open,
            task_ms,
            ..View::default()
        };
        if let Some(s) = status {
            v.reported = true;
            v.workers = s.managers.iter().map(|m| u64::from(m.workers)).sum();
            v.max_blocks = s.provider.max_blocks;
            v.slots_per_block = s.provider.slots_per_block;
            v.block_start_ms = s.provider.block_start_ms;
        }
        v
    }

    /// Blocks that would run every open task at once, when there are more open tasks than
    /// workers; 0 otherwise.
    pub fn wanted(&self) -> u32 {
        if self.open <= self.workers || self.slots_per_block == 0 {
            return 0;
        }
        self.open
            .div_ceil(u64::from(self.slots_per_block))
            .min(MAX_ASK) as u32
    }

    /// Milliseconds a task routed here now would wait before it starts, with `ahead` tasks
    /// before it: none while a worker is free; otherwise a block's start-up (while the endpoint
    /// may still add blocks) plus the waves of tasks ahead of it over every worker it can have.
    pub fn expected_wait_ms(&self, ahead: u64) -> f64 {
        if !self.connected {
            return f64::INFINITY;
        }
        if ahead < self.workers {
            return 0.0;
        }
        let most = u64::from(self.max_blocks) * u64::from(self.slots_per_block);
        let capacity = most.max(self.workers).max(1);
        let start = if self.workers < capacity {
            self.block_start_ms.map_or(DEFAULT_START_MS, |ms| ms as f64)
        } else {
            0.0
        };
        let waves = (ahead + 1 - self.workers) as f64 / capacity as f64;
        start + waves * self.task_ms.unwrap_or(DEFAULT_TASK_MS)
    }
}

/// What the broker has asked of each endpoint, and when.
#[derive(Debug, Default)]
pub struct Provisioner {
    asked: HashMap<String, (u32, Instant)>,
}

impl Provisioner {
    /// The requests to send now, given every endpoint's view.
    pub fn tick<'a>(
        &mut self,
        now: Instant,
        views: impl IntoIterator<Item = (&'a str, View)>,
    ) -> Vec<(String, ProvisionRequest)> {
        let mut out = Vec::new();
        for (id, v) in views {
            if !v.connected || !v.reported {
                // Whatever was asked lapses at the endpoint by itself.
                self.asked.remove(id);
                continue;
            }
            let want = v.wanted();
            let before = self.asked.get(id).copied();
            let due = match before {
                None => want > 0,
                Some((n, at)) => n != want || now.saturating_duration_since(at) >= VALID / 2,
            };
            if !due {
                continue;
            }
            let reason = if want > 0 {
                format!(
                    "{} tasks open for {} workers; {want} blocks of {} workers would run them at once",
                    v.open, v.workers, v.slots_per_block
                )
            } else {
                format!(
                    "{} tasks open for {} workers: no more blocks needed, idle ones may go",
                    v.open, v.workers
                )
            };
            if want > 0 {
                self.asked.insert(id.to_string(), (want, now));
            } else {
                self.asked.remove(id);
            }
            out.push((
                id.to_string(),
                ProvisionRequest {
                    blocks: want,
                    backlog: v.open,
                    reason,
                    valid_ms: VALID.as_millis() as u64,
                },
            ));
        }
        out
    }

    /// What the broker last asked of `endpoint` while it still holds.
    pub fn asked(&self, endpoint: &str) -> Option<u32> {
        self.asked.get(endpoint).map(|(n, _)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(open: u64, workers: u64) -> View {
        View {
            connected: true,
            reported: true,
            open,
            workers,
            max_blocks: 4,
            slots_per_block: 2,
            block_start_ms: Some(5_000),
            task_ms: Some(2_000.0),
        }
    }

    #[test]
    fn asks_when_open_tasks_outnumber_workers_renews_and_lets_go() {
        let t0 = Instant::now();
        let mut p = Provisioner::default();
        assert!(p.tick(t0, [("a", view(2, 2))]).is_empty(), "workers enough");
        let out = p.tick(t0, [("a", view(9, 2))]);
        assert_eq!(out.len(), 1);
        let (id, r) = &out[0];
        assert_eq!((id.as_str(), r.blocks, r.backlog), ("a", 5, 9));
        assert!(
            r.reason.contains("9 tasks open for 2 workers"),
            "{}",
            r.reason
        );
        assert_eq!(p.asked("a"), Some(5));
        assert!(
            p.tick(t0 + Duration::from_secs(5), [("a", view(9, 2))])
                .is_empty(),
            "the same request is not sent again so soon"
        );
        let renewed = p.tick(t0 + VALID / 2, [("a", view(9, 2))]);
        assert_eq!(renewed[0].1.blocks, 5, "renewed before it lapses");
        let grown = p.tick(t0 + VALID / 2, [("a", view(20, 2))]);
        assert_eq!(
            grown[0].1.blocks, 10,
            "more than max_blocks: the endpoint caps it"
        );
        let done = p.tick(t0 + VALID, [("a", view(3, 8))]);
        assert_eq!(done[0].1.blocks, 0, "released once workers suffice");
        assert_eq!(p.asked("a"), None);
        assert!(p.tick(t0 + VALID, [("a", view(0, 8))]).is_empty());
    }

    #[test]
    fn nothing_is_asked_of_an_endpoint_offline_or_not_yet_heard_from() {
        let t0 = Instant::now();
        let mut p = Provisioner::default();
        let mut offline = view(50, 0);
        offline.connected = false;
        let mut silent = view(50, 0);
        silent.reported = false;
        assert!(p.tick(t0, [("a", offline), ("b", silent)]).is_empty());
    }

    #[test]
    fn the_expected_wait_counts_workers_start_up_and_waves_of_tasks() {
        let v = view(0, 2);
        assert_eq!(v.expected_wait_ms(1), 0.0, "a worker is free");
        // Two tasks ahead, two workers busy: a block must start (5 s), then 1 of 8 slots' worth.
        assert_eq!(v.expected_wait_ms(2), 5_000.0 + 2_000.0 / 8.0);
        let mut full = view(0, 8);
        full.max_blocks = 4;
        assert_eq!(
            full.expected_wait_ms(16),
            9.0 / 8.0 * 2_000.0,
            "no block to add"
        );
        let mut off = view(0, 8);
        off.connected = false;
        assert!(off.expected_wait_ms(0).is_infinite());
        assert!(view(0, 0).expected_wait_ms(3) > view(0, 0).expected_wait_ms(0));
    }
}
