//! The endpoint's side of the broker link: a WebSocket the interchange opens to the broker
//! (outbound only, as login nodes allow), with credit-based flow control and resume.
//!
//! The link is a client of the interchange's core like any other, holding it for its whole life
//! across reconnects. It keeps two sets: the broker's tasks handed to the core and not finished
//! (`inflight`), and results sent to the broker and not yet acknowledged as stored (`unacked`).
//! After a reconnect it grants fresh credit and sends every unacknowledged result again; tasks the
//! broker re-sends that are in either set are not run twice. Credit returns to the broker as it
//! stores results, so both sets together stay within the window, and every message is cut to
//! a bounded size.

use crate::links::front::{LocalClient, LocalSender};
use futures_util::{SinkExt, StreamExt};
use fxr_protocol::{BrokerMsg, ClientMsg, FailureKind, FrontMsg, LinkMsg, TaskId, TaskResult};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Where and how to reach the broker.
#[derive(Clone, Debug)]
pub struct BrokerLinkConfig {
    /// The broker's base URL, `http://HOST:PORT`.
    pub broker: String,
    pub endpoint_id: String,
    pub credential: String,
    /// Most broker tasks held at this endpoint at once, or one per worker when it has more
    /// workers than that (the window grows as blocks come up, so new workers have tasks).
    pub window: u64,
    pub status_period: Duration,
    /// A site's own CA bundle (PEM) for a `https://` broker; the web PKI's roots otherwise.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Told the outcome of each attempt to connect (the broker's refusal in its own words),
    /// without ever blocking the link: how `fxr endpoint start` knows the endpoint is ready.
    pub connected: Option<std::sync::mpsc::SyncSender<Result<(), String>>>,
}

/// Errors that stop the link for good.
#[derive(Debug, thiserror::Error)]
pub enum BrokerLinkError {
    #[error("bad broker URL `{0}` (expected http://HOST:PORT)")]
    BadUrl(String),
    #[error("cannot start the link: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(String),
}

/// Most Python functions whose source the link keeps.
const MAX_PYTHON_FUNCTIONS: usize = 100_000;

struct State {
    cfg: BrokerLinkConfig,
    /// Python sources by function id: the broker sends each once per connection.
    python_sources: HashMap<String, std::sync::Arc<str>>,
    /// The endpoint's secret, to read stored results from the nodes for the broker.
    secret: Arc<str>,
    /// How `wss://` brokers are checked.
    tls: Arc<rustls::ClientConfig>,
    core: LocalSender,
    inflight: HashSet<TaskId>,
    unacked: HashMap<TaskId, TaskResult>,
    /// The window now: the configured one, or the most workers seen if more.
    window: u64,
}

/// Runs the link on a thread of its own until the interchange stops.
pub(crate) fn start(
    client: LocalClient,
    cfg: BrokerLinkConfig,
    secret: Arc<str>,
) -> Result<std::thread::JoinHandle<()>, BrokerLinkError> {
    let url = ws_url(&cfg)?;
    let tls = tls_client(cfg.ca_cert.as_deref()).map_err(BrokerLinkError::Tls)?;
    let (core, results) = client.split();
    let (tx, rx) = mpsc::unbounded_channel();
    // The core's channel is a blocking one: a small thread moves its messages into tokio.
    std::thread::Builder::new()
        .name("link-bridge".into())
        .spawn(move || {
            while let Ok(m) = results.recv() {
                if tx.send(m).is_err() {
                    return;
                }
            }
        })?;
    let handle = std::thread::Builder::new()
        .name("broker-link".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the broker link runtime");
                    return;
                }
            };
            let mut st = State {
                window: cfg.window,
                cfg,
                python_sources: HashMap::new(),
                secret,
                tls,
                core,
                inflight: HashSet::new(),
                unacked: HashMap::new(),
            };
            rt.block_on(st.run(url, rx));
        })?;
    Ok(handle)
}

fn ws_url(cfg: &BrokerLinkConfig) -> Result<String, BrokerLinkError> {
    let base = cfg.broker.trim_end_matches('/');
    let rest = base
        .strip_prefix("http://")
        .map(|r| format!("ws://{r}"))
        .or_else(|| base.strip_prefix("https://").map(|r| format!("wss://{r}")))
        .ok_or_else(|| BrokerLinkError::BadUrl(cfg.broker.clone()))?;
    Ok(format!("{rest}/v1/endpoints/{}/link", cfg.endpoint_id))
}

/// A connection to the broker, in clear (`ws://`) or over TLS (`wss://`).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// The certificates a `wss://` broker is checked against: the web PKI's roots, or only the
/// CA bundle (PEM) at `ca_cert`, for a site's own CA.
pub fn tls_client(ca_cert: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect())
                .map_err(|e| {
                    format!("cannot read the CA certificates in {}: {e}", path.display())
                })?;
            if certs.is_empty() {
                return Err(format!("{} holds no certificate", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("a CA certificate in {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

impl State {
    async fn run(&mut self, url: String, mut core_rx: mpsc::UnboundedReceiver<FrontMsg>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected = match self.connect(&url).await {
                Ok(ws) => {
                    if let Some(tx) = &self.cfg.connected {
                        let _ = tx.try_send(Ok(()));
                    }
                    backoff = Duration::from_millis(100);
                    tracing::info!(endpoint_id = %self.cfg.endpoint_id, "connected to the broker");
                    self.serve(ws, &mut core_rx).await
                }
                Err(e) => {
                    if let Some(tx) = &self.cfg.connected {
                        let _ = tx.try_send(Err(e.clone()));
                    }
                    tracing::warn!(endpoint_id = %self.cfg.endpoint_id, error = %e, "cannot reach the broker; retrying");
                    true
                }
            };
            if !connected {
                return;
            }
            // Keep taking results while waiting to reconnect, so the core never backs up.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    m = core_rx.recv() => match m {
                        Some(m) => {
                            // Not connected: results are kept in `unacked` and sent on reconnect.
                            let _ = self.on_core_message(m);
                        }
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn connect(&self, url: &str) -> Result<Ws, String> {
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        let value = format!("Bearer {}", self.cfg.credential)
            .parse()
            .map_err(|_| "credential is not a valid header".to_string())?;
        req.headers_mut().insert("Authorization", value);
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(fxr_protocol::MAX_FRAME + 64))
            .max_frame_size(Some(fxr_protocol::MAX_FRAME + 64));
        let uri = req.uri().clone();
        let secure = uri.scheme_str() == Some("wss");
        let host = uri.host().ok_or("the broker URL has no host")?.to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Io> = if secure {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("`{host}`: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {host}: {e}"))?;
                Box::new(tls)
            } else {
                Box::new(tcp)
            };
            tokio_tungstenite::client_async_with_config(req, stream, Some(config))
                .await
                .map_err(|e| e.to_string())
        };
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), handshake)
            .await
            .map_err(|_| "timed out".to_string())??;
        Ok(ws)
    }

    /// Records a core message; returns messages to forward, results cut to fit.
    fn on_core_message(&mut self, m: FrontMsg) -> Vec<LinkMsg> {
        match m {
            FrontMsg::Results { results } => {
                for r in &results {
                    self.inflight.remove(&r.id);
                    self.unacked.insert(r.id, r.clone());
                }
                split_results(results)
            }
            FrontMsg::Status(s) => {
                let workers: u64 = s.managers.iter().map(|m| u64::from(m.workers)).sum();
                let mut out = Vec::with_capacity(2);
                if workers > self.window {
                    // More workers than tasks to hold: widen the window so each has one.
                    out.push(LinkMsg::Credit {
                        tasks: workers - self.window,
                    });
                    self.window = workers;
                }
                out.push(LinkMsg::Status(s));
                out
            }
            FrontMsg::Accepted { .. } | FrontMsg::Data(_) => Vec::new(),
            FrontMsg::Error { message } => {
                tracing::error!(%message, "the interchange refused a request from the broker link");
                Vec::new()
            }
        }
    }

    /// Serves one connection. Returns false when the interchange has stopped.
    ///
    /// Reading and writing are independent: everything to send goes to a writer task through
    /// a channel, so this loop never waits on the socket while the broker waits on it. Credit
    /// goes back to the broker when it has stored results (not when they are sent), so tasks
    /// held here plus results not yet stored never pass the window.
    async fn serve(&mut self, ws: Ws, core_rx: &mut mpsc::UnboundedReceiver<FrontMsg>) -> bool {
        let (sink, mut stream) = ws.split();
        let (out, out_rx) = mpsc::unbounded_channel::<LinkMsg>();
        let mut writer = tokio::spawn(write(sink, out_rx));
        let held = (self.inflight.len() + self.unacked.len()) as u64;
        let _ = out.send(LinkMsg::Credit {
            tasks: self.window.saturating_sub(held),
        });
        for m in split_results(self.unacked.values().cloned().collect()) {
            let _ = out.send(m);
        }
        let mut status = tokio::time::interval(self.cfg.status_period);
        // When the last task held here finishes, the broker hears so at once (not a status
        // period later), at most every QUIET_REPORT.
        const QUIET_REPORT: Duration = Duration::from_millis(250);
        let mut last_quiet = std::time::Instant::now() - QUIET_REPORT;
        loop {
            tokio::select! {
                _ = status.tick() => {
                    if self.core.send(ClientMsg::Status).is_err() {
                        return false;
                    }
                }
                m = core_rx.recv() => {
                    let Some(m) = m else { return false };
                    let results = matches!(m, FrontMsg::Results { .. });
                    for msg in self.on_core_message(m) {
                        let _ = out.send(msg);
                    }
                    if results && self.inflight.is_empty() && last_quiet.elapsed() >= QUIET_REPORT {
                        last_quiet = std::time::Instant::now();
                        if self.core.send(ClientMsg::Status).is_err() {
                            return false;
                        }
                    }
                }
                incoming = stream.next() => {
                    let bytes = match incoming {
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
                        Some(Ok(_)) => continue,
                    };
                    let msg = match fxr_protocol::decode::<BrokerMsg>(&bytes) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable message from the broker; reconnecting");
                            return true;
                        }
                    };
                    if !self.on_broker_message(msg, &out) {
                        return false;
                    }
                }
                _ = &mut writer => return true,
            }
        }
    }

    /// Handles one message from the broker; false when the interchange has stopped.
    fn on_broker_message(&mut self, msg: BrokerMsg, out: &mpsc::UnboundedSender<LinkMsg>) -> bool {
        match msg {
            BrokerMsg::Tasks { tasks } => {
                let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
                let mut fresh = Vec::with_capacity(tasks.len());
                let mut again = Vec::new();
                let mut freed = 0u64;
                for mut t in tasks {
                    if let Some(r) = self.unacked.get(&t.id) {
                        again.push(r.clone());
                        freed += 1;
                    } else if self.inflight.contains(&t.id) {
                        freed += 1;
                    } else if let Err(e) = fxr_protocol::PythonSpec::fill_known(
                        &mut t,
                        &mut self.python_sources,
                        MAX_PYTHON_FUNCTIONS,
                    ) {
                        // Answered at once; its credit returns when the broker stores it.
                        let r = TaskResult::failure(t.id, FailureKind::Rejected, e);
                        self.unacked.insert(t.id, r.clone());
                        again.push(r);
                    } else {
                        self.inflight.insert(t.id);
                        fresh.push(t);
                    }
                }
                if !fresh.is_empty() && self.core.send(ClientMsg::Submit { tasks: fresh }).is_err()
                {
                    return false;
                }
                let _ = out.send(LinkMsg::Received { tasks: ids });
                for m in split_results(again) {
                    let _ = out.send(m);
                }
                if freed > 0 {
                    let _ = out.send(LinkMsg::Credit { tasks: freed });
                }
            }
            BrokerMsg::ResultsStored { tasks } => {
                let stored = tasks
                    .iter()
                    .filter(|t| self.unacked.remove(t).is_some())
                    .count() as u64;
                if stored > 0 {
                    let _ = out.send(LinkMsg::Credit { tasks: stored });
                }
            }
            BrokerMsg::Cancel { tasks } => {
                let _ = self.core.send(ClientMsg::Cancel { tasks });
            }
            BrokerMsg::Provision(r) => {
                let _ = self.core.send(ClientMsg::Provision(r));
            }
            BrokerMsg::Fetch {
                request,
                data,
                offset,
                len,
            } => {
                // Off this loop: a slow node must not hold up tasks and results.
                let (secret, out) = (self.secret.clone(), out.clone());
                tokio::task::spawn_blocking(move || {
                    let reply =
                        super::data::fetch_chunk(&secret, &data, offset, len.min(MAX_FETCH));
                    let _ = out.send(LinkMsg::Data { request, reply });
                });
            }
        }
        true
    }
}

/// Most bytes of a stored object in one message to the broker, so it stays within 4 MiB.
const MAX_FETCH: u64 = 2 << 20;

/// Most estimated bytes of results in one message to the broker (one result always goes).
const MAX_RESULTS_BYTES: usize = 4 << 20;

/// Cuts results into messages of at most [`MAX_RESULTS_BYTES`] (and 1,000 results).
fn split_results(results: Vec<TaskResult>) -> Vec<LinkMsg> {
    let mut out = Vec::new();
    let mut cur: Vec<TaskResult> = Vec::new();
    let mut bytes = 0;
    for r in results {
        let n = r.approx_size();
        if !cur.is_empty() && (bytes + n > MAX_RESULTS_BYTES || cur.len() >= 1000) {
            out.push(LinkMsg::Results {
                results: std::mem::take(&mut cur),
            });
            bytes = 0;
        }
        bytes += n;
        cur.push(r);
    }
    if !cur.is_empty() {
        out.push(LinkMsg::Results { results: cur });
    }
    out
}

/// Moves messages into the socket until it fails or the channel closes. A result that cannot
/// be encoded is replaced by a failure saying why, so the broker still hears of its task.
async fn write(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::UnboundedReceiver<LinkMsg>,
) {
    while let Some(msg) = rx.recv().await {
        let frame = match fxr_protocol::encode(&msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a link message");
                let LinkMsg::Results { results } = msg else {
                    continue;
                };
                let failed: Vec<TaskResult> = results
                    .iter()
                    .map(|r| {
                        TaskResult::failure(
                            r.id,
                            FailureKind::Rejected,
                            format!("the result cannot be sent to the broker: {e}"),
                        )
                    })
                    .collect();
                match fxr_protocol::encode(&LinkMsg::Results { results: failed }) {
                    Ok(f) => f,
                    Err(_) => continue,
                }
            }
        };
        if sink.send(Message::Binary(frame.into())).await.is_err() {
            return;
        }
    }
}
