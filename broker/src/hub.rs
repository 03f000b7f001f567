//! The broker's live state: which tasks wait for which endpoint, which endpoints are connected,
//! how much credit each has granted. Persistent state is in the [`crate::store`]; this is
//! rebuilt from it at start-up (every task without a result is queued again).
//!
//! Like the interchange's dispatcher, it is plain data with no I/O: sending means pushing onto
//! an endpoint's outgoing channel.

use fxr_protocol::{BrokerMsg, EndpointStatus, Task, TaskId};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Most tasks in one message to an endpoint.
const MAX_PUSH: usize = 2000;

/// Where a live task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveState {
    /// Waiting at the broker for its endpoint.
    Pending,
    /// Sent to the endpoint, receipt not yet acknowledged.
    Dispatched,
    /// The endpoint has it.
    Queued,
}

impl LiveState {
    pub fn name(self) -> &'static str {
        match self {
            LiveState::Pending => "pending",
            LiveState::Dispatched => "dispatched",
            LiveState::Queued => "queued",
        }
    }
}

#[derive(Debug)]
struct Live {
    endpoint: String,
    task: Task,
    state: LiveState,
}

/// One endpoint's link state.
#[derive(Debug)]
pub struct EndpointRuntime {
    queue: VecDeque<u64>,
    credit: u64,
    tx: Option<UnboundedSender<BrokerMsg>>,
    generation: u64,
    pub status: Option<EndpointStatus>,
    pub status_at: Option<Instant>,
    offline_since: Instant,
}

impl EndpointRuntime {
    fn new() -> EndpointRuntime {
        EndpointRuntime {
            queue: VecDeque::new(),
            credit: 0,
            tx: None,
            generation: 0,
            status: None,
            status_at: None,
            offline_since: Instant::now(),
        }
    }

    pub fn connected(&self) -> bool {
        self.tx.is_some()
    }

    /// Tasks waiting at the broker.
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Hub {
    endpoints: HashMap<String, EndpointRuntime>,
    live: HashMap<u64, Live>,
    rr: usize,
}

impl Hub {
    pub fn endpoint(&self, id: &str) -> Option<&EndpointRuntime> {
        self.endpoints.get(id)
    }

    fn ep(&mut self, id: &str) -> &mut EndpointRuntime {
        self.endpoints
            .entry(id.to_string())
            .or_insert_with(EndpointRuntime::new)
    }

    /// State of a task that has no result yet.
    pub fn live_state(&self, id: u64) -> Option<LiveState> {
        self.live.get(&id).map(|l| l.state)
    }

    /// Queues a task for an endpoint and sends what credit allows.
    pub fn enqueue(&mut self, endpoint: &str, task: Task) {
        let id = task.id.0;
        self.ep(endpoint).queue.push_back(id);
        self.live.insert(
            id,
            Live {
                endpoint: endpoint.to_string(),
                task,
                state: LiveState::Pending,
            },
        );
    }

    /// Sends queued tasks of `endpoint` within its credit.
    pub fn pump(&mut self, endpoint: &str) {
        let Some(ep) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        let Some(tx) = ep.tx.clone() else { return };
        while ep.credit > 0 && !ep.queue.is_empty() {
            let n = (ep.credit as usize).min(MAX_PUSH);
            let mut batch = Vec::with_capacity(n.min(ep.queue.len()));
            while batch.len() < n {
                let Some(id) = ep.queue.pop_front() else {
                    break;
                };
                if let Some(l) = self.live.get_mut(&id) {
                    if l.state == LiveState::Pending && l.endpoint == endpoint {
                        l.state = LiveState::Dispatched;
                        batch.push(l.task.clone());
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            ep.credit = ep.credit.saturating_sub(batch.len() as u64);
            if tx.send(BrokerMsg::Tasks { tasks: batch }).is_err() {
                break;
            }
        }
    }

    /// An endpoint connected. Every task it was sent before and has not answered is sent again
    /// (it drops the duplicates). Returns this connection's generation.
    pub fn connect(&mut self, endpoint: &str, tx: UnboundedSender<BrokerMsg>) -> u64 {
        let mut resend: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| l.endpoint == endpoint && l.state != LiveState::Pending)
            .map(|(id, _)| *id)
            .collect();
        resend.sort_unstable();
        for id in &resend {
            if let Some(l) = self.live.get_mut(id) {
                l.state = LiveState::Pending;
            }
        }
        let ep = self.ep(endpoint);
        for id in resend.into_iter().rev() {
            ep.queue.push_front(id);
        }
        ep.tx = Some(tx);
        ep.credit = 0;
        ep.generation += 1;
        ep.generation
    }

    /// The connection of that generation closed.
    pub fn disconnect(&mut self, endpoint: &str, generation: u64) {
        if let Some(ep) = self.endpoints.get_mut(endpoint) {
            if ep.generation == generation {
                ep.tx = None;
                ep.credit = 0;
                ep.offline_since = Instant::now();
            }
        }
    }

    pub fn grant(&mut self, endpoint: &str, credit: u64) {
        let ep = self.ep(endpoint);
        ep.credit = ep.credit.saturating_add(credit).min(10_000_000);
        self.pump(endpoint);
    }

    pub fn received(&mut self, ids: &[TaskId]) {
        for id in ids {
            if let Some(l) = self.live.get_mut(&id.0) {
                if l.state == LiveState::Dispatched {
                    l.state = LiveState::Queued;
                }
            }
        }
    }

    pub fn set_status(&mut self, endpoint: &str, status: EndpointStatus) {
        let ep = self.ep(endpoint);
        ep.status = Some(status);
        ep.status_at = Some(Instant::now());
    }

    /// Forgets tasks that now have a result.
    pub fn finished(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.live.remove(&id);
        }
    }

    /// Cancels tasks still at the broker; returns those it removed. Tasks already sent are
    /// asked to stop at their endpoint.
    pub fn cancel(&mut self, ids: &[u64]) -> Vec<u64> {
        let mut removed = Vec::new();
        for id in ids {
            let Some(l) = self.live.get(id) else { continue };
            if l.state == LiveState::Pending {
                removed.push(*id);
            } else if let Some(tx) = self.endpoints.get(&l.endpoint).and_then(|e| e.tx.as_ref()) {
                let _ = tx.send(BrokerMsg::Cancel {
                    tasks: vec![TaskId(*id)],
                });
            }
        }
        for id in &removed {
            self.live.remove(id);
        }
        removed
    }

    /// Tasks whose endpoint has been offline longer than `wait`.
    pub fn expired(&mut self, wait: Duration) -> Vec<u64> {
        let now = Instant::now();
        let offline: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, e)| {
                e.tx.is_none() && now.saturating_duration_since(e.offline_since) > wait
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for ep in offline {
            let ids: Vec<u64> = self
                .live
                .iter()
                .filter(|(_, l)| l.endpoint == ep)
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                self.live.remove(id);
            }
            if let Some(e) = self.endpoints.get_mut(&ep) {
                e.queue.clear();
            }
            out.extend(ids);
        }
        out
    }

    /// Picks an endpoint among `candidates` by `policy`.
    pub fn route(&mut self, candidates: &[String], policy: Policy) -> Option<String> {
        if candidates.is_empty() {
            return None;
        }
        let i = match policy {
            Policy::Random => fastrand::usize(0..candidates.len()),
            Policy::RoundRobin => {
                self.rr = self.rr.wrapping_add(1);
                self.rr % candidates.len()
            }
            Policy::LeastLoaded => {
                let load = |id: &String| -> (bool, f64) {
                    let Some(e) = self.endpoints.get(id) else {
                        return (true, f64::MAX);
                    };
                    let (work, workers) = e.status.as_ref().map_or((0, 0), |s| {
                        (
                            s.queued + s.running,
                            s.managers.iter().map(|m| u64::from(m.workers)).sum::<u64>(),
                        )
                    });
                    let outstanding = (work + e.queue.len() as u64) as f64;
                    (!e.connected(), outstanding / (workers.max(1) as f64))
                };
                (0..candidates.len())
                    .min_by(|a, b| {
                        load(&candidates[*a])
                            .partial_cmp(&load(&candidates[*b]))
                            .unwrap_or(std::cmp::Ordering::Equal)
                    })
                    .unwrap_or(0)
            }
        };
        Some(candidates[i].clone())
    }
}

/// How a submission naming several endpoints picks one for each task.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    utoipa::ToSchema,
    Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    Random,
    RoundRobin,
    LeastLoaded,
}
