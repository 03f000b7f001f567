//! The interchange's core loop: one thread that owns the [`Dispatcher`] and every piece of
//! connection state, fed by a channel of [`Event`]s from the socket threads.
//!
//! Why one thread and a channel rather than tokio: the hot path is "decode a batch, update maps,
//! encode a batch", which is CPU work on data owned in one place. A single owner needs no locks,
//! and draining every waiting event before dispatching batches results and tasks naturally: the
//! busier the endpoint, the larger each message.

use crate::dispatch::{Outbox, Sharded};
pub use crate::event::{ClientId, Event};
use fxr_protocol::{
    ClientMsg, EndpointStatus, FrontMsg, InterchangeMsg, ManagerId, ManagerMsg, TaskId, TaskResult,
    WorkerSettings,
};
use rustc_hash::FxHashMap as HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// What the core does to the world: the only I/O it asks for. The nng manager link and the
/// client channels implement it in production ([`Links`]); tests record the calls.
pub trait Comm {
    /// Sends one frame to a manager pipe; never blocks (a full pipe drops it). Takes the frame
    /// whole: the link queues it for its sending thread as it is.
    fn send(&mut self, pipe: u32, frame: Vec<u8>);
    /// Sends one message to a manager pipe, encoding it on the way: in production on the
    /// link's sending thread, off the dispatch thread. Never blocks.
    fn send_msg(&mut self, pipe: u32, msg: InterchangeMsg) {
        match fxr_protocol::encode(&msg) {
            Ok(frame) => self.send(pipe, frame),
            Err(e) => tracing::error!(pipe, error = %e, "cannot encode a message for a manager"),
        }
    }
    /// Closes a manager pipe.
    fn close_pipe(&mut self, pipe: u32);
    /// A client connected: its replies go to `tx`.
    fn client_connected(&mut self, client: ClientId, tx: Sender<FrontMsg>);
    fn client_gone(&mut self, client: ClientId);
    /// Replies to a client; a client that is gone is forgotten.
    fn reply(&mut self, client: ClientId, msg: FrontMsg);
    /// Closes the manager socket at shutdown.
    fn close(&mut self);
}

/// The production [`Comm`]: the nng manager link and the clients' channels.
pub(crate) struct Links {
    pub link: Option<crate::links::managers::ManagerLink>,
    pub clients: HashMap<ClientId, Sender<FrontMsg>>,
}

impl Comm for Links {
    fn send(&mut self, pipe: u32, frame: Vec<u8>) {
        if let Some(l) = &self.link {
            l.send(pipe, frame);
        }
    }
    fn send_msg(&mut self, pipe: u32, msg: InterchangeMsg) {
        if let Some(l) = &self.link {
            l.send_msg(pipe, msg);
        }
    }
    fn close_pipe(&mut self, pipe: u32) {
        crate::links::managers::close_pipe_id(pipe);
    }
    fn client_connected(&mut self, client: ClientId, tx: Sender<FrontMsg>) {
        self.clients.insert(client, tx);
    }
    fn client_gone(&mut self, client: ClientId) {
        self.clients.remove(&client);
    }
    fn reply(&mut self, client: ClientId, msg: FrontMsg) {
        if let Some(tx) = self.clients.get(&client) {
            if tx.send(msg).is_err() {
                self.clients.remove(&client);
            }
        }
    }
    fn close(&mut self) {
        if let Some(l) = self.link.take() {
            l.close();
        }
    }
}

#[derive(Debug)]
struct PipeState {
    manager: Option<ManagerId>,
    refused_at: Option<Instant>,
    /// When the connection opened: one that has not registered within `register_timeout`
    /// is closed.
    opened: Instant,
    /// The manager's nonce and ours, once it said `Hello`.
    hello: Option<(fxr_protocol::auth::Nonce, fxr_protocol::auth::Nonce)>,
    /// With `encrypt`, from `Welcome` on: what we send is sealed, what we receive opened.
    seal: Option<fxr_protocol::auth::Cipher>,
    open: Option<fxr_protocol::auth::Cipher>,
    /// Something went to it since the last heartbeat round, which then skips it.
    sent: bool,
}

impl PipeState {
    fn new(now: Instant) -> PipeState {
        PipeState {
            manager: None,
            refused_at: None,
            opened: now,
            hello: None,
            seal: None,
            open: None,
            sent: false,
        }
    }
}

pub(crate) struct CoreSettings {
    pub secret: String,
    pub heartbeat_period: Duration,
    pub heartbeat_threshold: Duration,
    pub drain_timeout: Duration,
    pub workers: WorkerSettings,
    /// A connection that has not registered within this long is closed.
    pub register_timeout: Duration,
    /// Seal every message on manager connections after the handshake.
    pub encrypt: bool,
}

/// Longest a broker's request for blocks holds without being renewed (10 minutes).
const MAX_REQUEST_MS: u64 = 600_000;
/// Most events the loop takes in before it dispatches.
const EVENTS_BEFORE_DISPATCH: usize = 100_000;
/// Most submitted tasks the loop takes in before it dispatches: a client's burst of millions
/// is handed out while the rest of it is still being queued, so idle workers do not wait for
/// the whole burst (taking in 4 million tasks costs the loop more than a second).
const SUBMITTED_BEFORE_DISPATCH: usize = 65_536;
/// Most bytes of a request's reason that are kept.
const MAX_REASON: usize = 1000;

/// How much the loop has taken in since it last dispatched.
#[derive(Debug, Default)]
pub(crate) struct Intake {
    events: usize,
    tasks: usize,
}

impl Intake {
    /// Counts `ev`; whether the loop may take another event before dispatching.
    pub(crate) fn take(&mut self, ev: &Event) -> bool {
        self.events += 1;
        if let Event::Client(_, ClientMsg::Submit { tasks }) = ev {
            self.tasks += tasks.len();
        }
        self.events < EVENTS_BEFORE_DISPATCH && self.tasks < SUBMITTED_BEFORE_DISPATCH
    }
}

pub(crate) struct Core<C: Comm> {
    settings: CoreSettings,
    dispatcher: Sharded,
    comm: C,
    pipes: HashMap<u32, PipeState>,
    manager_pipe: HashMap<ManagerId, u32>,
    /// Interchange task id → (client, the client's own task id).
    routes: crate::idmap::IdMap<(ClientId, TaskId)>,
    next_task: u64,
    shutting_down: Option<Instant>,
    frame: Vec<u8>,
    provider: fxr_protocol::ProviderStatus,
    /// The broker's last request for blocks and when it came.
    requested: Option<(fxr_protocol::ProvisionRequest, Instant)>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl<C: Comm> Core<C> {
    pub(crate) fn new(
        settings: CoreSettings,
        dispatcher: Sharded,
        comm: C,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Core<C> {
        Core {
            settings,
            dispatcher,
            comm,
            pipes: HashMap::default(),
            manager_pipe: HashMap::default(),
            routes: Default::default(),
            next_task: 1,
            shutting_down: None,
            frame: Vec::with_capacity(4096),
            provider: fxr_protocol::ProviderStatus::default(),
            requested: None,
            metrics,
        }
    }

    /// Runs until a `Shutdown` request has drained every manager, or `Stop`.
    pub(crate) fn run(mut self, events: Receiver<Event>) {
        let tick_every = (self.settings.heartbeat_period / 2)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut next_tick = Instant::now() + tick_every;
        let mut next_heartbeat = Instant::now() + self.settings.heartbeat_period;
        let mut out = Outbox::default();
        'outer: loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut next = match events.recv_timeout(wait) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => events.try_recv().ok(),
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Take what is already waiting before dispatching, so work is batched, up to what
            // `Intake` allows.
            let mut intake = Intake::default();
            while let Some(ev) = next {
                if matches!(ev, Event::Stop) {
                    break 'outer;
                }
                let more = intake.take(&ev);
                self.handle(ev, Instant::now(), &mut out);
                next = if more { events.try_recv().ok() } else { None };
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + tick_every;
                self.dispatcher.tick(now, &mut out);
                self.reap_refused(now);
                self.publish_metrics();
                if now >= next_heartbeat {
                    next_heartbeat = now + self.settings.heartbeat_period;
                    self.heartbeats(&mut out);
                }
            }
            if self.shutting_down.is_none() {
                self.dispatcher.dispatch(now, &mut out);
            } else {
                self.dispatcher.settle(&mut out);
            }
            self.flush(&mut out);
            if let Some(since) = self.shutting_down {
                let drained = self.dispatcher.manager_ids().is_empty();
                if drained || now.saturating_duration_since(since) > self.settings.drain_timeout {
                    break;
                }
            }
        }
        self.comm.close();
    }

    /// One heartbeat round: a heartbeat to each manager that was sent nothing since the last
    /// round (anything it was sent tells it the interchange is alive).
    pub(crate) fn heartbeats(&mut self, out: &mut Outbox) {
        for m in self.dispatcher.manager_ids() {
            let sent = self
                .manager_pipe
                .get(&m)
                .and_then(|p| self.pipes.get_mut(p))
                .is_some_and(|s| std::mem::take(&mut s.sent));
            if !sent {
                out.to_managers.push((m, InterchangeMsg::Heartbeat));
            }
        }
    }

    /// Handles one event at time `now`; what must be sent goes to `out` (see [`Core::flush`]).
    pub(crate) fn handle(&mut self, ev: Event, now: Instant, out: &mut Outbox) {
        match ev {
            Event::FromPipe { pipe_id, body } => self.on_pipe_message(pipe_id, &body, now, out),
            Event::Decoded { pipe_id, msg } => {
                let sealed = self.pipes.get(&pipe_id).is_some_and(|s| s.open.is_some());
                if sealed {
                    // Only plain connections are decoded before the core; a sealed one never
                    // sends plain messages after its welcome.
                    tracing::warn!(
                        pipe_id,
                        "a plain message on a sealed connection; closing it"
                    );
                    self.close_unreadable(
                        pipe_id,
                        "sent a plain message on a sealed connection",
                        out,
                    );
                } else {
                    self.on_manager_msg(pipe_id, msg, now, out);
                }
            }
            Event::PipeOpened(pipe_id) => {
                self.pipes.entry(pipe_id).or_insert(PipeState::new(now));
            }
            Event::PipeClosed(pipe_id) => {
                if let Some(state) = self.pipes.remove(&pipe_id) {
                    if let Some(m) = state.manager {
                        tracing::info!(manager_id = %m, "manager disconnected");
                        self.manager_pipe.remove(&m);
                        self.dispatcher.lost(m, "connection closed", out);
                    }
                }
            }
            Event::ClientConnected(id, tx) => self.comm.client_connected(id, tx),
            Event::ClientGone(id) => self.comm.client_gone(id),
            Event::Client(id, msg) => self.on_client_message(id, msg, now, out),
            Event::Stop => {}
        }
    }

    fn on_pipe_message(&mut self, pipe_id: u32, body: &[u8], now: Instant, out: &mut Outbox) {
        let state = self.pipes.entry(pipe_id).or_insert(PipeState::new(now));
        if state.refused_at.is_some() {
            return;
        }
        let opened;
        let body = match state.open.as_mut().map(|c| c.open(body)) {
            None => body,
            Some(Ok(plain)) => {
                opened = plain;
                &opened[..]
            }
            Some(Err(_)) => {
                tracing::warn!(
                    pipe_id,
                    "a message that does not open with the connection's key; closing it"
                );
                self.close_unreadable(pipe_id, "sent a message that does not open", out);
                return;
            }
        };
        match fxr_protocol::decode::<ManagerMsg>(body) {
            Ok(m) => self.on_manager_msg(pipe_id, m, now, out),
            Err(e) => {
                tracing::warn!(pipe_id, error = %e, "undecodable message from a manager; closing its connection");
                self.close_unreadable(pipe_id, "sent an undecodable message", out);
            }
        }
    }

    /// Closes a connection that sent something unreadable, and loses its manager's tasks.
    fn close_unreadable(&mut self, pipe_id: u32, why: &str, out: &mut Outbox) {
        if let Some(m) = self.pipes.get(&pipe_id).and_then(|s| s.manager) {
            self.manager_pipe.remove(&m);
            self.dispatcher.lost(m, why, out);
        }
        self.pipes.remove(&pipe_id);
        self.comm.close_pipe(pipe_id);
    }

    /// A decoded message from a manager connection.
    fn on_manager_msg(&mut self, pipe_id: u32, msg: ManagerMsg, now: Instant, out: &mut Outbox) {
        self.metrics
            .manager_messages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = self.pipes.entry(pipe_id).or_insert(PipeState::new(now));
        if state.refused_at.is_some() {
            return;
        }
        match (state.manager, msg) {
            (Some(m), msg) => self.dispatcher.on_message(m, msg, now, out),
            (None, ManagerMsg::Hello { nonce }) => {
                use fxr_protocol::auth;
                let mut ours = [0u8; auth::NONCE];
                if let Err(e) = getrandom::fill(&mut ours) {
                    tracing::error!(error = %e, "no random nonce for a manager's handshake");
                    state.refused_at = Some(now);
                    return;
                }
                state.hello = Some((nonce, ours));
                let proof = auth::interchange_proof(&self.settings.secret, &nonce, &ours);
                let encrypt = self.settings.encrypt;
                self.send(
                    pipe_id,
                    &InterchangeMsg::Challenge {
                        nonce: ours,
                        proof,
                        encrypt,
                    },
                );
            }
            (None, ManagerMsg::Register(reg)) => {
                use fxr_protocol::auth;
                let hello = state.hello.take();
                let proven = hello.is_some_and(|(theirs, ours)| {
                    auth::same(
                        &reg.proof,
                        &auth::manager_proof(&self.settings.secret, &ours, &theirs),
                    )
                });
                if !proven {
                    tracing::warn!(manager_id = %reg.manager_id, host = %reg.hostname, "manager refused: no proof of the endpoint secret for this connection");
                    state.refused_at = Some(now);
                    self.send(
                        pipe_id,
                        &InterchangeMsg::Refused {
                            reason: "wrong or missing proof of the endpoint secret".into(),
                        },
                    );
                    return;
                }
                if self.shutting_down.is_some() {
                    state.refused_at = Some(now);
                    self.send(
                        pipe_id,
                        &InterchangeMsg::Refused {
                            reason: "endpoint is shutting down".into(),
                        },
                    );
                    return;
                }
                let id = reg.manager_id;
                tracing::info!(manager_id = %id, block_id = %reg.block_id, host = %reg.hostname, workers = reg.workers, "manager registered");
                state.manager = Some(id);
                if let Some(old) = self.manager_pipe.insert(id, pipe_id) {
                    if self.pipes.remove(&old).is_some() {
                        self.comm.close_pipe(old);
                    }
                }
                let (block, size) = (reg.block_id.clone(), reg.block_size);
                self.dispatcher.register(reg, now, out);
                let up = self.dispatcher.managers_of_block(&block).len() as u32;
                if up == size {
                    tracing::info!(block_id = %block, managers = up, "block complete: every node has registered");
                }
                self.send(
                    pipe_id,
                    &InterchangeMsg::Welcome {
                        heartbeat_period_ms: self.settings.heartbeat_period.as_millis() as u64,
                        heartbeat_threshold_ms: self.settings.heartbeat_threshold.as_millis()
                            as u64,
                        workers: self.settings.workers.clone(),
                    },
                );
                // Everything after `Welcome` is sealed, both ways.
                if let (true, Some((theirs, ours)), Some(st)) =
                    (self.settings.encrypt, hello, self.pipes.get_mut(&pipe_id))
                {
                    let (m2i, i2m) =
                        fxr_protocol::auth::session_keys(&self.settings.secret, &theirs, &ours);
                    st.open = Some(fxr_protocol::auth::Cipher::new(&m2i));
                    st.seal = Some(fxr_protocol::auth::Cipher::new(&i2m));
                }
            }
            (None, other) => {
                // Kept as refused, so what else is already on its way from this connection is
                // dropped quietly (a manager whose connection closed while it had messages
                // queued redials and sends them first; at shutdown hundreds do) until it closes.
                state.refused_at = Some(now);
                let kind = std::mem::discriminant(&other);
                if self.shutting_down.is_some() {
                    tracing::debug!(
                        pipe_id,
                        ?kind,
                        "message before registration while stopping; closing"
                    );
                } else {
                    tracing::warn!(pipe_id, ?kind, "message before registration; closing");
                }
                self.comm.close_pipe(pipe_id);
            }
        }
    }

    pub(crate) fn reap_refused(&mut self, now: Instant) {
        // Refused pipes are closed a moment later so the refusal itself can be delivered;
        // connections that never registered, after `register_timeout`.
        let limit = self.settings.register_timeout;
        let stale: Vec<u32> = self
            .pipes
            .iter()
            .filter(|(_, s)| {
                s.refused_at
                    .is_some_and(|t| now.saturating_duration_since(t) > Duration::from_millis(200))
                    || (s.manager.is_none() && now.saturating_duration_since(s.opened) > limit)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if self.pipes.remove(&id).is_some() {
                self.comm.close_pipe(id);
            }
        }
    }

    fn on_client_message(
        &mut self,
        client: ClientId,
        msg: ClientMsg,
        now: Instant,
        out: &mut Outbox,
    ) {
        match msg {
            ClientMsg::Submit { tasks } => {
                if self.shutting_down.is_some() {
                    self.reply(
                        client,
                        FrontMsg::Error {
                            message: "endpoint is shutting down".into(),
                        },
                    );
                    return;
                }
                let count = tasks.len() as u32;
                let tasks: Vec<_> = tasks
                    .into_iter()
                    .map(|mut t| {
                        let id = TaskId(self.next_task);
                        self.next_task += 1;
                        self.routes.insert(id, (client, t.id));
                        t.id = id;
                        t
                    })
                    .collect();
                self.dispatcher.submit(tasks, out);
                self.reply(client, FrontMsg::Accepted { count });
            }
            ClientMsg::Status => {
                let status = self.status(now);
                self.reply(client, FrontMsg::Status(status));
            }
            ClientMsg::DrainManager { manager_id } => {
                if !self.dispatcher.drain(manager_id, false, out) {
                    self.reply(
                        client,
                        FrontMsg::Error {
                            message: format!("no manager {manager_id}"),
                        },
                    );
                }
            }
            ClientMsg::Cancel { tasks } => {
                let wanted: std::collections::HashSet<TaskId> = tasks.into_iter().collect();
                let ours: Vec<TaskId> = self
                    .routes
                    .iter()
                    .filter(|(_, (c, original))| *c == client && wanted.contains(original))
                    .map(|(id, _)| id)
                    .collect();
                self.dispatcher.cancel(&ours, out);
            }
            ClientMsg::ProviderReport { report } => self.provider = report,
            ClientMsg::Provision(mut r) => {
                // Bounded whatever comes: the reason is shown in status reports, and the
                // validity is how long the request may hold the endpoint's blocks.
                r.valid_ms = r.valid_ms.min(MAX_REQUEST_MS);
                if r.reason.len() > MAX_REASON {
                    let mut end = MAX_REASON;
                    while !r.reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    r.reason.truncate(end);
                }
                let before = self.requested.as_ref().map(|(r, _)| r.blocks);
                if before == Some(r.blocks) {
                    tracing::debug!(
                        blocks = r.blocks,
                        "the broker renews its request for blocks"
                    );
                } else {
                    tracing::info!(blocks = r.blocks, backlog = r.backlog, reason = %r.reason, "the broker asks for blocks");
                }
                self.requested = Some((r, now));
            }
            ClientMsg::FailQueued { reason } => self.dispatcher.fail_queued(&reason, out),
            ClientMsg::Fetch { .. } => self.reply(
                client,
                FrontMsg::Error {
                    message: "stored objects are read through the front door or the broker link"
                        .into(),
                },
            ),
            ClientMsg::Shutdown => {
                tracing::info!("shutdown requested; draining managers");
                self.shutting_down = Some(now);
                for m in self.dispatcher.manager_ids() {
                    self.dispatcher.drain(m, true, out);
                }
            }
        }
    }

    /// Refreshes the gauges `/metrics` reads.
    fn publish_metrics(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        let c = self.dispatcher.counters();
        m.queued.store(self.dispatcher.queued() as u64, Relaxed);
        m.in_flight
            .store(self.dispatcher.in_flight() as u64, Relaxed);
        let (managers, workers, busy) = self.dispatcher.worker_load();
        m.managers.store(managers, Relaxed);
        m.workers.store(workers, Relaxed);
        m.workers_busy.store(busy, Relaxed);
        m.submitted.store(c.submitted, Relaxed);
        m.completed.store(c.completed, Relaxed);
        m.failed.store(c.failed, Relaxed);
        m.retried.store(c.retried, Relaxed);
    }

    /// A snapshot for status requests at `now`: the broker's request with what is left of its
    /// validity, while it holds.
    fn status(&mut self, now: Instant) -> EndpointStatus {
        let c = self.dispatcher.counters();
        let requested = self.requested.as_ref().and_then(|(r, at)| {
            let age = now.saturating_duration_since(*at).as_millis() as u64;
            (age < r.valid_ms).then(|| fxr_protocol::ProvisionRequest {
                valid_ms: r.valid_ms - age,
                ..r.clone()
            })
        });
        EndpointStatus {
            managers: self.dispatcher.manager_status(),
            provider: self.provider.clone(),
            queued: self.dispatcher.queued() as u64,
            running: self.dispatcher.in_flight() as u64,
            completed: c.completed,
            failed: c.failed,
            stopping: self.shutting_down.is_some(),
            requested,
        }
    }

    fn reply(&mut self, client: ClientId, msg: FrontMsg) {
        self.comm.reply(client, msg);
    }

    fn send(&mut self, pipe_id: u32, msg: &InterchangeMsg) {
        self.frame.clear();
        match fxr_protocol::encode_into(&mut self.frame, msg) {
            Ok(()) => self.send_frame(pipe_id, true),
            Err(e) => tracing::error!(pipe_id, error = %e, "cannot encode a message for a manager"),
        }
    }

    /// Sends `self.frame` on a pipe, sealed when the connection is encrypted; `news` marks the
    /// pipe as sent to since the last heartbeat round (a heartbeat itself does not).
    fn send_frame(&mut self, pipe_id: u32, news: bool) {
        let state = self.pipes.get_mut(&pipe_id);
        match state.and_then(|s| {
            s.sent |= news;
            s.seal.as_mut()
        }) {
            Some(c) => {
                let sealed = c.seal(&self.frame);
                self.comm.send(pipe_id, sealed);
            }
            None => self.comm.send(pipe_id, self.frame.clone()),
        }
    }

    /// Carries out what `out` holds: batches to managers, pipes to close, results to clients.
    pub(crate) fn flush(&mut self, out: &mut Outbox) {
        for (m, msg) in out.to_managers.drain(..) {
            if let InterchangeMsg::Tasks { tasks, .. } = &msg {
                self.metrics.dispatch_batch.observe(tasks.len() as f64);
            }
            let Some(&pipe) = self.manager_pipe.get(&m) else {
                continue;
            };
            let beat = matches!(msg, InterchangeMsg::Heartbeat);
            match self.pipes.get_mut(&pipe) {
                // A plain connection: encoded on the link's sending thread.
                Some(s) if s.seal.is_none() => {
                    s.sent |= !beat;
                    self.comm.send_msg(pipe, msg);
                }
                _ => {
                    self.frame.clear();
                    match fxr_protocol::encode_into(&mut self.frame, &msg) {
                        Ok(()) => self.send_frame(pipe, !beat),
                        Err(e) => {
                            tracing::error!(manager_id = %m, error = %e, "cannot encode a batch")
                        }
                    }
                }
            }
        }
        for m in out.close.drain(..) {
            if let Some(pipe) = self.manager_pipe.remove(&m) {
                if self.pipes.remove(&pipe).is_some() {
                    self.comm.close_pipe(pipe);
                }
            }
        }
        if out.results.is_empty() {
            return;
        }
        let mut per_client: HashMap<ClientId, Vec<TaskResult>> = HashMap::default();
        for mut r in out.results.drain(..) {
            if let Some((client, original)) = self.routes.remove(&r.id) {
                r.id = original;
                per_client.entry(client).or_default().push(r);
            }
        }
        for (client, results) in per_client {
            self.reply(client, FrontMsg::Results { results });
        }
    }
}

#[cfg(test)]
mod tests;
