//! The broker's live state: which tasks wait for which endpoint, which endpoints are connected,
//! how much credit each has granted. Persistent state is in the [`crate::store`]; this is
//! rebuilt from it at start-up (every task without a result is queued again).
//!
//! Like the interchange's dispatcher, it is plain data with no I/O: sending means pushing onto
//! an endpoint's outgoing channel, and every cost here is per task touched, never a scan of all
//! open tasks on the result path.
//!
//! Flow to an endpoint is bounded three ways: by the credit (in tasks) it grants, by the bytes of
//! tasks sent to it and not yet finished (`max_inflight_bytes`), and per message
//! (`max_message_bytes`, so every message fits a frame).

use fxr_protocol::{BrokerMsg, EndpointStatus, Task, TaskId, TaskResult};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

/// Most tasks in one message to an endpoint.
const MAX_PUSH: usize = 2000;

/// Bounds the hub keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest task message to an endpoint, in estimated bytes (one task always fits).
    pub max_message_bytes: u64,
    /// Most bytes of tasks sent to one endpoint and not finished.
    pub max_inflight_bytes: u64,
    /// Most tasks without a result routed to one endpoint.
    pub max_backlog_endpoint: u64,
    /// Most tasks without a result owned by one user.
    pub max_backlog_user: u64,
    /// Most functions one user may register.
    pub max_functions_user: u64,
    /// Most endpoints one user may register.
    pub max_endpoints_user: u64,
    /// Requests per second one user may make (twice that in a burst); 0 for no limit.
    pub max_requests_per_sec: u32,
}

impl Limits {
    /// Whether a user with `user_open` open tasks may add `per_endpoint` more, given each
    /// endpoint's open tasks.
    pub fn admit(
        &self,
        user_open: u64,
        per_endpoint: &HashMap<String, u64>,
        endpoint_open: impl Fn(&str) -> u64,
    ) -> Result<(), Refusal> {
        let adding: u64 = per_endpoint.values().sum();
        if user_open + adding > self.max_backlog_user {
            return Err(Refusal {
                what: "user".into(),
                open: user_open,
                adding,
                limit: self.max_backlog_user,
            });
        }
        for (ep, n) in per_endpoint {
            let open = endpoint_open(ep);
            if open + n > self.max_backlog_endpoint {
                return Err(Refusal {
                    what: format!("endpoint {ep}"),
                    open,
                    adding: *n,
                    limit: self.max_backlog_endpoint,
                });
            }
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: 4 << 20,
            max_inflight_bytes: 256 << 20,
            max_backlog_endpoint: 2_000_000,
            max_backlog_user: 2_000_000,
            max_functions_user: 1000,
            max_endpoints_user: 100,
            max_requests_per_sec: 2000,
        }
    }
}

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

    fn index(self) -> usize {
        self as usize
    }
}

/// What the broker knows of an open task besides the task itself.
#[derive(Clone, Debug)]
pub struct Meta {
    pub owner: i64,
    pub batch: u64,
    pub function_id: Arc<str>,
    pub created_ms: i64,
}

#[derive(Debug)]
struct Live {
    endpoint: Arc<str>,
    task: Task,
    state: LiveState,
    meta: Meta,
    bytes: u64,
    /// A result is being recorded for it by the broker itself (cancel, expiry, deleted
    /// function): it is not sent again.
    closing: bool,
}

/// A task that got its result, as the hub knew it.
#[derive(Debug)]
pub struct Finished {
    pub id: u64,
    pub endpoint: Arc<str>,
    pub meta: Meta,
}

/// One endpoint's link state.
#[derive(Debug)]
pub struct EndpointRuntime {
    name: Arc<str>,
    queue: VecDeque<u64>,
    credit: u64,
    tx: Option<UnboundedSender<BrokerMsg>>,
    kick: Option<oneshot::Sender<()>>,
    generation: u64,
    pub status: Option<EndpointStatus>,
    pub status_at: Option<Instant>,
    offline_since: Instant,
    /// Tasks routed here without a result.
    open: u64,
    /// Estimated bytes of tasks sent and not finished.
    inflight_bytes: u64,
    /// Python functions whose source went down this connection already.
    python_sent: std::collections::HashSet<String>,
    /// Mean run time of its recent tasks, in milliseconds (a moving average).
    task_ms: Option<f64>,
}

impl EndpointRuntime {
    fn new(name: &str) -> EndpointRuntime {
        EndpointRuntime {
            name: Arc::from(name),
            queue: VecDeque::new(),
            credit: 0,
            tx: None,
            kick: None,
            generation: 0,
            status: None,
            status_at: None,
            offline_since: Instant::now(),
            open: 0,
            inflight_bytes: 0,
            python_sent: Default::default(),
            task_ms: None,
        }
    }

    pub fn connected(&self) -> bool {
        self.tx.is_some()
    }

    /// Tasks waiting at the broker (not yet sent).
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }

    /// Tasks routed here that have no result.
    pub fn open(&self) -> u64 {
        self.open
    }

    pub fn credit(&self) -> u64 {
        self.credit
    }

    pub fn inflight_bytes(&self) -> u64 {
        self.inflight_bytes
    }
}

/// A submission refused because a backlog limit would be passed.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `endpoint ID` or `user`.
    pub what: String,
    pub open: u64,
    pub adding: u64,
    pub limit: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Hub {
    endpoints: HashMap<String, EndpointRuntime>,
    live: HashMap<u64, Live>,
    open_by_user: HashMap<i64, u64>,
    counts: [u64; 3],
    rr: usize,
    limits: Limits,
    provisioner: crate::provision::Provisioner,
}

impl Hub {
    pub fn new(limits: Limits) -> Hub {
        Hub {
            limits,
            ..Hub::default()
        }
    }

    pub fn endpoint(&self, id: &str) -> Option<&EndpointRuntime> {
        self.endpoints.get(id)
    }

    /// Every endpoint the hub has seen, with its runtime.
    pub fn endpoints(&self) -> impl Iterator<Item = (&String, &EndpointRuntime)> {
        self.endpoints.iter()
    }

    fn ep(&mut self, id: &str) -> &mut EndpointRuntime {
        self.endpoints
            .entry(id.to_string())
            .or_insert_with(|| EndpointRuntime::new(id))
    }

    /// State of a task that has no result yet.
    pub fn live_state(&self, id: u64) -> Option<LiveState> {
        self.live.get(&id).map(|l| l.state)
    }

    /// Open tasks by state: pending, dispatched, queued.
    pub fn counts(&self) -> [u64; 3] {
        self.counts
    }

    /// Open tasks of a user.
    pub fn open_of_user(&self, user: i64) -> u64 {
        self.open_by_user.get(&user).copied().unwrap_or(0)
    }

    fn set_state(counts: &mut [u64; 3], l: &mut Live, s: LiveState) {
        counts[l.state.index()] -= 1;
        counts[s.index()] += 1;
        l.state = s;
    }

    /// Whether `user` may add `per_endpoint` tasks without passing a backlog limit.
    pub fn admit(&self, user: i64, per_endpoint: &HashMap<String, u64>) -> Result<(), Refusal> {
        self.limits
            .admit(self.open_of_user(user), per_endpoint, |ep| {
                self.endpoints.get(ep).map_or(0, |e| e.open)
            })
    }

    /// Queues a task for an endpoint; [`Hub::pump`] sends what credit allows.
    pub fn enqueue(&mut self, endpoint: &str, task: Task, meta: Meta) {
        let id = task.id.0;
        let bytes = task.approx_size() as u64;
        *self.open_by_user.entry(meta.owner).or_default() += 1;
        let ep = self.ep(endpoint);
        ep.queue.push_back(id);
        ep.open += 1;
        let name = ep.name.clone();
        self.counts[LiveState::Pending.index()] += 1;
        if let Some(old) = self.live.insert(
            id,
            Live {
                endpoint: name,
                task,
                state: LiveState::Pending,
                meta,
                bytes,
                closing: false,
            },
        ) {
            // Queued twice: undo the first entry's counts.
            self.forget(old);
        }
    }

    /// Sends queued tasks of `endpoint` within its credit and byte budget.
    pub fn pump(&mut self, endpoint: &str) {
        let Some(ep) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        let Some(tx) = ep.tx.clone() else { return };
        let limits = self.limits;
        while ep.credit > 0 && !ep.queue.is_empty() {
            let n = (ep.credit as usize).min(MAX_PUSH);
            let mut batch = Vec::with_capacity(n.min(ep.queue.len()));
            let mut bytes = 0u64;
            while batch.len() < n {
                let Some(&id) = ep.queue.front() else {
                    break;
                };
                let Some(l) = self.live.get_mut(&id) else {
                    ep.queue.pop_front();
                    continue;
                };
                if l.state != LiveState::Pending || l.closing || &*l.endpoint != endpoint {
                    ep.queue.pop_front();
                    continue;
                }
                // One task always fits an empty message, and an endpoint with nothing in
                // flight always gets one.
                let in_flight = ep.inflight_bytes + bytes;
                if (!batch.is_empty() && bytes + l.bytes > limits.max_message_bytes)
                    || (in_flight > 0 && in_flight + l.bytes > limits.max_inflight_bytes)
                {
                    break;
                }
                ep.queue.pop_front();
                Self::set_state(&mut self.counts, l, LiveState::Dispatched);
                bytes += l.bytes;
                let mut task = l.task.clone();
                fxr_protocol::PythonSpec::strip_known(&mut task, &mut ep.python_sent);
                batch.push(task);
            }
            if batch.is_empty() {
                break;
            }
            ep.credit = ep.credit.saturating_sub(batch.len() as u64);
            ep.inflight_bytes += bytes;
            if tx.send(BrokerMsg::Tasks { tasks: batch }).is_err() {
                break;
            }
        }
    }

    /// An endpoint connected. A connection already open for it is told to close (`kick`), and
    /// every task sent before and not answered is sent again (the endpoint drops duplicates).
    /// Returns this connection's generation.
    pub fn connect(
        &mut self,
        endpoint: &str,
        tx: UnboundedSender<BrokerMsg>,
        kick: oneshot::Sender<()>,
    ) -> u64 {
        let mut resend: Vec<u64> = Vec::new();
        for (id, l) in self.live.iter_mut() {
            if &*l.endpoint == endpoint && l.state != LiveState::Pending {
                Self::set_state(&mut self.counts, l, LiveState::Pending);
                if !l.closing {
                    resend.push(*id);
                }
            }
        }
        resend.sort_unstable();
        let ep = self.ep(endpoint);
        for id in resend.into_iter().rev() {
            ep.queue.push_front(id);
        }
        if let Some(old) = ep.kick.take() {
            let _ = old.send(());
        }
        ep.tx = Some(tx);
        ep.kick = Some(kick);
        ep.credit = 0;
        ep.inflight_bytes = 0;
        ep.python_sent.clear();
        ep.generation += 1;
        ep.generation
    }

    /// The connection of that generation closed. A newer connection is left alone.
    /// Sends `msg` on the endpoint's current link; false when it has none.
    pub fn send(&mut self, endpoint: &str, msg: BrokerMsg) -> bool {
        self.endpoints
            .get(endpoint)
            .and_then(|e| e.tx.as_ref())
            .is_some_and(|tx| tx.send(msg).is_ok())
    }

    pub fn disconnect(&mut self, endpoint: &str, generation: u64) {
        if let Some(ep) = self.endpoints.get_mut(endpoint) {
            if ep.generation == generation {
                ep.tx = None;
                ep.kick = None;
                ep.credit = 0;
                ep.offline_since = Instant::now();
            }
        }
    }

    /// Whether the endpoint has a link to this broker.
    pub fn linked(&self, endpoint: &str) -> bool {
        self.endpoints.get(endpoint).is_some_and(|e| e.tx.is_some())
    }

    /// Shared store: the endpoint's link is gone, and it may come back at another broker,
    /// which takes its open tasks from the store; this hub forgets them. Returns how many.
    pub fn release(&mut self, endpoint: &str) -> usize {
        if self.linked(endpoint) {
            return 0;
        }
        let ids: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| &*l.endpoint == endpoint && !l.closing)
            .map(|(id, _)| *id)
            .collect();
        if let Some(ep) = self.endpoints.get_mut(endpoint) {
            ep.queue.clear();
        }
        self.finished(ids).len()
    }

    /// Shared store: another broker recorded results for these tasks. Those this hub sent to
    /// an endpoint are cancelled there; [`Hub::finished`] then forgets them.
    pub fn close_elsewhere(&mut self, ids: &[u64]) {
        self.close(ids, false);
    }

    /// Whether `generation` is still the endpoint's current connection.
    pub fn is_current(&self, endpoint: &str, generation: u64) -> bool {
        self.endpoints
            .get(endpoint)
            .is_some_and(|e| e.generation == generation && e.tx.is_some())
    }

    pub fn grant(&mut self, endpoint: &str, credit: u64) {
        let ep = self.ep(endpoint);
        ep.credit = ep.credit.saturating_add(credit).min(10_000_000);
        self.pump(endpoint);
    }

    pub fn received(&mut self, endpoint: &str, ids: &[TaskId]) {
        for id in ids {
            if let Some(l) = self.live.get_mut(&id.0) {
                if l.state == LiveState::Dispatched && &*l.endpoint == endpoint {
                    Self::set_state(&mut self.counts, l, LiveState::Queued);
                }
            }
        }
    }

    /// Folds the run times of results from `endpoint` into its mean.
    pub fn note_runs(&mut self, endpoint: &str, results: &[TaskResult]) {
        let Some(ep) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        for r in results.iter().filter(|r| r.run_us > 0) {
            let ms = r.run_us as f64 / 1000.0;
            ep.task_ms = Some(ep.task_ms.map_or(ms, |m| 0.9 * m + 0.1 * ms));
        }
    }

    /// What provisioning and routing know of an endpoint.
    pub fn view(&self, id: &str) -> crate::provision::View {
        match self.endpoints.get(id) {
            Some(e) => {
                crate::provision::View::new(e.connected(), e.open, e.status.as_ref(), e.task_ms)
            }
            None => crate::provision::View::default(),
        }
    }

    /// Asks endpoints for blocks where open tasks outnumber their workers, and lets them go
    /// when they no longer do (see [`crate::provision`]). Returns what was sent.
    pub fn provision(&mut self, now: Instant) -> Vec<(String, fxr_protocol::ProvisionRequest)> {
        let views: Vec<(String, crate::provision::View)> = self
            .endpoints
            .keys()
            .map(|id| (id.clone(), self.view(id)))
            .collect();
        let sent = self
            .provisioner
            .tick(now, views.iter().map(|(id, v)| (id.as_str(), v.clone())));
        for (id, r) in &sent {
            if let Some(tx) = self.endpoints.get(id).and_then(|e| e.tx.as_ref()) {
                let _ = tx.send(BrokerMsg::Provision(r.clone()));
            }
        }
        sent
    }

    /// The number of blocks last asked of `endpoint`, while the request stands.
    pub fn asked(&self, endpoint: &str) -> Option<u32> {
        self.provisioner.asked(endpoint)
    }

    pub fn set_status(&mut self, endpoint: &str, status: EndpointStatus) {
        let ep = self.ep(endpoint);
        ep.status = Some(status);
        ep.status_at = Some(Instant::now());
    }

    /// Splits results that arrived on `endpoint`'s link into those it may report (tasks routed
    /// to it and still open) and the ids of the rest, which are acknowledged but not recorded:
    /// tasks already finished, unknown, or routed to another endpoint (`foreign` counts those).
    pub fn screen(
        &self,
        endpoint: &str,
        results: Vec<TaskResult>,
    ) -> (Vec<TaskResult>, Vec<TaskId>, usize) {
        let mut ok = Vec::with_capacity(results.len());
        let mut ignored = Vec::new();
        let mut foreign = 0;
        for r in results {
            match self.live.get(&r.id.0) {
                Some(l) if &*l.endpoint == endpoint => ok.push(r),
                Some(_) => {
                    foreign += 1;
                    ignored.push(r.id);
                }
                None => ignored.push(r.id),
            }
        }
        (ok, ignored, foreign)
    }

    fn forget(&mut self, l: Live) {
        self.counts[l.state.index()] -= 1;
        if let Some(n) = self.open_by_user.get_mut(&l.meta.owner) {
            *n -= 1;
            if *n == 0 {
                self.open_by_user.remove(&l.meta.owner);
            }
        }
        if let Some(ep) = self.endpoints.get_mut(&*l.endpoint) {
            ep.open = ep.open.saturating_sub(1);
            if l.state != LiveState::Pending {
                ep.inflight_bytes = ep.inflight_bytes.saturating_sub(l.bytes);
            }
        }
    }

    /// Forgets tasks that now have a result; returns what it knew of them. Endpoints whose
    /// byte budget this frees are pumped.
    pub fn finished(&mut self, ids: impl IntoIterator<Item = u64>) -> Vec<Finished> {
        let mut out = Vec::new();
        let mut freed: Vec<Arc<str>> = Vec::new();
        for id in ids {
            if let Some(l) = self.live.remove(&id) {
                if l.state != LiveState::Pending && !freed.contains(&l.endpoint) {
                    freed.push(l.endpoint.clone());
                }
                let f = Finished {
                    id,
                    endpoint: l.endpoint.clone(),
                    meta: l.meta.clone(),
                };
                self.forget(l);
                out.push(f);
            }
        }
        for ep in freed {
            self.pump(&ep);
        }
        out
    }

    /// Marks open tasks as ending at the broker's own hand; tasks already at their endpoint are
    /// asked to stop there. Returns the ids marked.
    fn close(&mut self, ids: &[u64], only_pending: bool) -> Vec<u64> {
        let mut closed = Vec::new();
        let mut cancels: HashMap<Arc<str>, Vec<TaskId>> = HashMap::new();
        for id in ids {
            let Some(l) = self.live.get_mut(id) else {
                continue;
            };
            if l.closing {
                continue;
            }
            if l.state == LiveState::Pending {
                l.closing = true;
                closed.push(*id);
            } else {
                cancels
                    .entry(l.endpoint.clone())
                    .or_default()
                    .push(TaskId(*id));
                if !only_pending {
                    l.closing = true;
                    closed.push(*id);
                }
            }
        }
        for (ep, tasks) in cancels {
            if let Some(tx) = self.endpoints.get(&*ep).and_then(|e| e.tx.as_ref()) {
                let _ = tx.send(BrokerMsg::Cancel { tasks });
            }
        }
        closed
    }

    /// Cancels tasks: those still at the broker are returned, to be recorded as cancelled; those
    /// already sent are asked to stop at their endpoint (if they have not started, their result
    /// says `cancelled`).
    pub fn cancel(&mut self, ids: &[u64]) -> Vec<u64> {
        self.close(ids, true)
    }

    /// A function was deleted: every open task of it is returned, to be recorded as failed, and
    /// those already at an endpoint are asked to stop there.
    pub fn function_deleted(&mut self, function_id: &str) -> Vec<u64> {
        let ids: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| &*l.meta.function_id == function_id)
            .map(|(id, _)| *id)
            .collect();
        self.close(&ids, false)
    }

    /// A result the broker meant to record could not be stored: the tasks go on as before.
    pub fn reopen(&mut self, ids: &[u64]) {
        let mut touched = Vec::new();
        for id in ids {
            if let Some(l) = self.live.get_mut(id) {
                if l.closing {
                    l.closing = false;
                    if l.state == LiveState::Pending {
                        touched.push(l.endpoint.clone());
                        if let Some(ep) = self.endpoints.get_mut(&*l.endpoint) {
                            ep.queue.push_back(*id);
                        }
                    }
                }
            }
        }
        for ep in touched {
            self.pump(&ep);
        }
    }

    /// Tasks whose endpoint has been offline longer than `wait`, marked as ending.
    pub fn expired(&mut self, wait: Duration) -> Vec<u64> {
        let now = Instant::now();
        let offline: Vec<Arc<str>> = self
            .endpoints
            .values()
            .filter(|e| {
                e.tx.is_none()
                    && e.open > 0
                    && now.saturating_duration_since(e.offline_since) > wait
            })
            .map(|e| e.name.clone())
            .collect();
        if offline.is_empty() {
            return Vec::new();
        }
        let ids: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| !l.closing && offline.contains(&l.endpoint))
            .map(|(id, _)| *id)
            .collect();
        self.close(&ids, false)
    }

    /// Gives memory back after a large backlog has drained: tables far larger than what they
    /// hold are shrunk. Returns whether anything was.
    pub fn compact(&mut self) -> bool {
        fn oversized(cap: usize, len: usize) -> bool {
            cap > 4096 && cap > 4 * len
        }
        let mut shrunk = false;
        if oversized(self.live.capacity(), self.live.len()) {
            self.live.shrink_to(self.live.len() * 2);
            shrunk = true;
        }
        for ep in self.endpoints.values_mut() {
            if ep.open == 0 {
                ep.queue.clear();
            }
            if oversized(ep.queue.capacity(), ep.queue.len()) {
                ep.queue.shrink_to(ep.queue.len() * 2);
                shrunk = true;
            }
        }
        shrunk
    }
}

mod route;
pub use route::Policy;

#[cfg(test)]
mod tests;
