//! fxr-interchange: the endpoint agent that runs on a cluster's login node.
//!
//! It accepts managers over nng ([`links::managers`]), accepts work from clients
//! ([`links::front`]; later the broker), and decides who runs what ([`dispatch`]). The
//! [`core`] thread owns all state; socket threads only translate bytes into events.

pub mod client;
pub mod config;
pub mod core;
pub mod dispatch;
pub mod event;
pub mod idmap;
mod lanes;
pub mod links;
pub mod metrics;
pub mod providers;
pub mod scaling;
pub mod strategy;

use crate::core::{Core, CoreSettings, Event};
use crate::dispatch::{DispatchConfig, Sharded};
use crate::links::front::LocalClient;
use crate::links::managers::{LinkError, ManagerLink};
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use links::front::{is_socket_path, FrontDoor, SocketClient};

/// How to run an interchange.
#[derive(Clone, Debug)]
pub struct InterchangeConfig {
    /// Where managers dial, for example `tcp://127.0.0.1:0`.
    pub manager_url: String,
    /// The secret managers must present. Must not be empty.
    pub secret: String,
    pub dispatch: DispatchConfig,
    pub heartbeat_period: Duration,
    /// How long a shutdown waits for managers to drain.
    pub drain_timeout: Duration,
    /// Container runtimes and idle retirement, passed to every manager.
    pub workers: fxr_protocol::WorkerSettings,
    /// A manager connection that has not registered within this long is closed.
    pub register_timeout: Duration,
    /// Seal every message on manager connections (ChaCha20-Poly1305) after the handshake.
    pub encrypt: bool,
}

impl Default for InterchangeConfig {
    fn default() -> Self {
        InterchangeConfig {
            manager_url: "tcp://127.0.0.1:0".into(),
            secret: String::new(),
            dispatch: DispatchConfig::default(),
            heartbeat_period: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            register_timeout: Duration::from_secs(10),
            encrypt: false,
            workers: fxr_protocol::WorkerSettings::default(),
        }
    }
}

/// Why an interchange could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the endpoint secret is empty; managers could register without one")]
    EmptySecret,
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot start the interchange thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running interchange.
#[derive(Debug)]
pub struct Interchange {
    events: Sender<Event>,
    port: u16,
    core: Option<JoinHandle<()>>,
    front_stop: Arc<AtomicBool>,
    metrics: Arc<metrics::Metrics>,
    /// The endpoint's secret, with which objects are read from the nodes' stores.
    secret: Arc<str>,
}

impl Interchange {
    /// Binds the manager socket and starts the core thread.
    pub fn start(config: InterchangeConfig) -> Result<Interchange, StartError> {
        if config.secret.is_empty() {
            return Err(StartError::EmptySecret);
        }
        let (tx, rx) = mpsc::channel();
        let link = ManagerLink::listen(
            &config.manager_url,
            fxr_protocol::MAX_FRAME,
            tx.clone(),
            !config.encrypt,
        )?;
        let port = link.port();
        let secret: Arc<str> = config.secret.as_str().into();
        let settings = CoreSettings {
            secret: config.secret,
            heartbeat_period: config.heartbeat_period,
            heartbeat_threshold: config.dispatch.heartbeat_threshold,
            drain_timeout: config.drain_timeout,
            workers: config.workers,
            register_timeout: config.register_timeout,
            encrypt: config.encrypt,
        };
        let metrics = Arc::new(metrics::Metrics::default());
        let comm = crate::core::Links {
            link: Some(link),
            clients: Default::default(),
        };
        let dispatcher = Sharded::new(config.dispatch).map_err(StartError::Thread)?;
        let core = Core::new(settings, dispatcher, comm, metrics.clone());
        let handle = std::thread::Builder::new()
            .name("interchange".into())
            .spawn(move || core.run(rx))
            .map_err(StartError::Thread)?;
        tracing::info!(port, "interchange listening for managers");
        Ok(Interchange {
            events: tx,
            port,
            core: Some(handle),
            front_stop: Arc::new(AtomicBool::new(false)),
            metrics,
            secret,
        })
    }

    /// The TCP port managers dial.
    pub fn manager_port(&self) -> u16 {
        self.port
    }

    /// A client in this process.
    pub fn local_client(&self) -> LocalClient {
        LocalClient::connect(self.events.clone())
    }

    /// Serves the TCP front door on an already-bound listener, on a thread of its own.
    pub fn serve_front_door(
        &self,
        listener: std::os::unix::net::UnixListener,
    ) -> std::io::Result<()> {
        let events = self.events.clone();
        let stop = self.front_stop.clone();
        let secret = self.secret.clone();
        std::thread::Builder::new()
            .name("front-door".into())
            .spawn(move || links::front::serve(listener, events, stop, secret))?;
        Ok(())
    }

    /// Connects this interchange to a broker (see [`links::broker`]), on a thread of its own.
    pub fn start_broker_link(
        &self,
        cfg: links::broker::BrokerLinkConfig,
    ) -> Result<JoinHandle<()>, links::broker::BrokerLinkError> {
        links::broker::start(self.local_client(), cfg, self.secret.clone())
    }

    /// The interchange's metrics, shared with its scaling loop.
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.metrics.clone()
    }

    /// Serves `GET /metrics` on an already-bound listener, on a thread of its own.
    pub fn serve_metrics(&self, listener: TcpListener) -> std::io::Result<()> {
        let m = self.metrics.clone();
        let stop = self.front_stop.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || metrics::serve(listener, m, stop))?;
        Ok(())
    }

    /// Waits until the core has stopped (after a client's `Shutdown` drained the managers).
    pub fn join(mut self) {
        if let Some(h) = self.core.take() {
            let _ = h.join();
        }
        self.front_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops at once, without draining.
    pub fn stop(self) {
        let _ = self.events.send(Event::Stop);
        self.join();
    }
}
