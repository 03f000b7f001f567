//! `fxr broker`: run the broker, add users.

use crate::exit;
use anyhow::Context;
use fxr_broker::store::Db;
use fxr_broker::{auth, Broker, BrokerConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum BrokerCmd {
    /// Serve the REST API and the endpoint links.
    Serve(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
}

#[derive(clap::Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user and print their token (shown only this once).
    Add {
        name: String,
        /// The store: a SQLite file, or `postgres://...` (see `fxr broker serve --db`).
        #[arg(long, default_value = "fxr-broker.db", value_parser = db_arg)]
        db: Db,
    },
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The store: a SQLite file (created if missing), or a PostgreSQL database that several
    /// brokers may share (`postgres://user@host/db`, or `host=/run/postgresql dbname=fxr`).
    #[arg(long, default_value = "fxr-broker.db", value_parser = db_arg)]
    pub db: Db,
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: String,
    /// Write the bound address here once listening.
    #[arg(long)]
    pub address_file: Option<PathBuf>,
    /// How long tasks wait for an offline endpoint.
    #[arg(long, value_parser = crate::opts::duration, default_value = "1h")]
    pub endpoint_wait: Duration,
    /// How long results are kept.
    #[arg(long, value_parser = crate::opts::duration, default_value = "168h")]
    pub retention: Duration,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub max_body: usize,
    /// Most tasks without a result routed to one endpoint; submissions past it get 429.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_backlog_endpoint: u64,
    /// Most tasks without a result owned by one user; submissions past it get 429.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_backlog_user: u64,
    /// Most functions one user may register (more get 403 `quota_exceeded`).
    #[arg(long, default_value_t = 1000)]
    pub max_functions_per_user: u64,
    /// Most endpoints one user may register.
    #[arg(long, default_value_t = 100)]
    pub max_endpoints_per_user: u64,
    /// Requests per second one user may make, twice that in a burst (more get 429 with
    /// `Retry-After`); 0 for no limit.
    #[arg(long, default_value_t = 2000)]
    pub max_requests_per_user: u32,
    /// Most bytes of tasks sent to one endpoint and not yet finished.
    #[arg(long, default_value_t = 256 << 20)]
    pub max_link_inflight_bytes: u64,
    /// Serve HTTPS (and `wss://` links) with this PEM certificate chain (leaf first).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Close an endpoint link silent this long (endpoints report every 2 s).
    #[arg(long, value_parser = crate::opts::duration, default_value = "30s")]
    pub link_idle: Duration,
}

fn db_arg(s: &str) -> Result<Db, String> {
    if s.trim().is_empty() {
        return Err("give a SQLite file or a postgres:// URL".into());
    }
    Ok(Db::parse(s))
}

pub fn run(cmd: BrokerCmd, json: bool) -> anyhow::Result<u8> {
    match cmd {
        BrokerCmd::User(UserCmd::Add { name, db }) => {
            anyhow::ensure!(
                !name.trim().is_empty() && name.len() <= 64,
                "a user name must be 1 to 64 characters"
            );
            let mut store = db.open().with_context(|| format!("cannot open {db}"))?;
            let token = auth::new_secret()?;
            store
                .add_user(&name, &auth::hash(&token))
                .with_context(|| format!("cannot add user `{name}` (does it exist already?)"))?;
            if json {
                println!("{}", serde_json::json!({"user": name, "token": token}));
            } else {
                println!("{token}");
            }
            Ok(exit::OK)
        }
        BrokerCmd::Serve(a) => serve(a, json),
    }
}

fn serve(a: ServeArgs, json: bool) -> anyhow::Result<u8> {
    let mut config = BrokerConfig::new(a.db.clone());
    config.endpoint_wait = a.endpoint_wait;
    config.result_retention = a.retention;
    config.max_body_bytes = a.max_body;
    config.limits.max_backlog_endpoint = a.max_backlog_endpoint;
    config.limits.max_backlog_user = a.max_backlog_user;
    config.limits.max_functions_user = a.max_functions_per_user;
    config.limits.max_endpoints_user = a.max_endpoints_per_user;
    config.limits.max_requests_per_sec = a.max_requests_per_user;
    config.limits.max_inflight_bytes = a.max_link_inflight_bytes.max(1);
    config.link_idle = a.link_idle;
    // Checked before anything listens: a bad certificate is an error at start.
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(fxr_broker::tls::acceptor(c, k)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let broker = Broker::open(config).with_context(|| format!("cannot open the store {}", a.db))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        if let Some(f) = &a.address_file {
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, format!("{scheme}://{addr}")).and_then(|()| std::fs::rename(&tmp, f))?;
        }
        if json {
            println!("{}", serde_json::json!({"broker": format!("{scheme}://{addr}")}));
        } else {
            println!("broker listening on {scheme}://{addr}");
        }
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        match tls {
            Some(acceptor) => fxr_broker::serve_tls(listener, acceptor, broker, shutdown).await?,
            None => fxr_broker::serve(listener, broker, shutdown).await?,
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(exit::OK)
}
