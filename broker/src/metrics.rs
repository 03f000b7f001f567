//! The broker's `/metrics`: counters kept as tasks flow, and gauges read from the hub when
//! scraped, in the Prometheus text format.

use crate::Broker;
use fxr_protocol::metrics::{Histogram, Text, SECONDS};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and histograms updated on the hot paths.
#[derive(Debug)]
pub struct Metrics {
    pub submitted: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Submissions refused by a backlog limit.
    pub refused: AtomicU64,
    /// Requests refused by the per-user rate limit.
    pub rate_limited: AtomicU64,
    /// Results from an endpoint link for tasks that were not routed to that endpoint.
    pub foreign_results: AtomicU64,
    /// Link connections replaced by a newer one of the same endpoint.
    pub links_replaced: AtomicU64,
    /// Link connections closed for silence.
    pub links_silent: AtomicU64,
    /// Tasks failed because they could not be encoded for the link.
    pub unsendable: AtomicU64,
    pub commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            submitted: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            foreign_results: AtomicU64::new(0),
            links_replaced: AtomicU64::new(0),
            links_silent: AtomicU64::new(0),
            unsendable: AtomicU64::new(0),
            commit_seconds: Histogram::new(SECONDS),
        }
    }
}

fn get(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

/// Per-endpoint figures, read from the hub under its lock.
struct EndpointFigures {
    id: String,
    connected: bool,
    backlog: u64,
    open: u64,
    inflight_bytes: u64,
    lag: Option<f64>,
}

/// The text of `/metrics`.
pub fn render(broker: &Broker) -> String {
    let m = &broker.metrics;
    let (counts, endpoints) = {
        let hub = broker.hub();
        let eps: Vec<EndpointFigures> = hub
            .endpoints()
            .map(|(id, e)| EndpointFigures {
                id: id.clone(),
                connected: e.connected(),
                backlog: e.backlog() as u64,
                open: e.open(),
                inflight_bytes: e.inflight_bytes(),
                lag: e.status_at.map(|t| t.elapsed().as_secs_f64()),
            })
            .collect();
        (hub.counts(), eps)
    };
    let watchers = broker.watchers().len() as f64;
    let mut t = Text::default();
    t.family(
        "fxr_broker_tasks",
        "gauge",
        "Open tasks (no result yet) by where they are.",
    );
    for (state, n) in ["pending", "dispatched", "queued"].iter().zip(counts) {
        t.sample("fxr_broker_tasks", &[("state", state)], n as f64);
    }
    t.family(
        "fxr_broker_tasks_finished_total",
        "counter",
        "Tasks that got their result since the broker started, by outcome.",
    );
    for (state, v) in [("succeeded", &m.succeeded), ("failed", &m.failed)] {
        t.sample(
            "fxr_broker_tasks_finished_total",
            &[("state", state)],
            get(v),
        );
    }
    let singles: [(&str, &str, &str, f64); 9] = [
        (
            "fxr_broker_tasks_submitted_total",
            "counter",
            "Tasks accepted since the broker started.",
            get(&m.submitted),
        ),
        (
            "fxr_broker_submissions_refused_total",
            "counter",
            "Submissions answered 429 because a backlog limit would be passed.",
            get(&m.refused),
        ),
        (
            "fxr_broker_requests_rate_limited_total",
            "counter",
            "Requests answered 429 because a user passed the per-user request rate.",
            get(&m.rate_limited),
        ),
        (
            "fxr_broker_foreign_results_total",
            "counter",
            "Results an endpoint reported for tasks not routed to it (ignored).",
            get(&m.foreign_results),
        ),
        (
            "fxr_broker_links_replaced_total",
            "counter",
            "Endpoint link connections closed because a newer one of the same endpoint opened.",
            get(&m.links_replaced),
        ),
        (
            "fxr_broker_links_silent_total",
            "counter",
            "Endpoint link connections closed because the endpoint fell silent.",
            get(&m.links_silent),
        ),
        (
            "fxr_broker_tasks_unsendable_total",
            "counter",
            "Tasks failed because they could not be encoded for the endpoint link.",
            get(&m.unsendable),
        ),
        (
            "fxr_broker_watchers",
            "gauge",
            "Clients waiting on or following results.",
            watchers,
        ),
        (
            "fxr_broker_endpoints",
            "gauge",
            "Endpoints the broker has seen since it started.",
            endpoints.len() as f64,
        ),
    ];
    for (name, kind, help, v) in singles {
        t.single(name, kind, help, v);
    }
    type Figure = fn(&EndpointFigures) -> Option<f64>;
    let per_endpoint: [(&str, &str, Figure); 5] = [
        (
            "fxr_broker_endpoint_connected",
            "1 if the endpoint's link is connected.",
            |e| Some(f64::from(u8::from(e.connected))),
        ),
        (
            "fxr_broker_endpoint_backlog",
            "Tasks waiting at the broker for the endpoint (not yet sent).",
            |e| Some(e.backlog as f64),
        ),
        (
            "fxr_broker_endpoint_open_tasks",
            "Tasks routed to the endpoint without a result.",
            |e| Some(e.open as f64),
        ),
        (
            "fxr_broker_endpoint_inflight_bytes",
            "Estimated bytes of tasks sent to the endpoint and not finished.",
            |e| Some(e.inflight_bytes as f64),
        ),
        (
            "fxr_broker_endpoint_link_lag_seconds",
            "Seconds since the endpoint's last status report.",
            |e| e.lag,
        ),
    ];
    for (name, help, figure) in per_endpoint {
        t.family(name, "gauge", help);
        for e in &endpoints {
            if let Some(v) = figure(e) {
                t.sample(name, &[("endpoint", &e.id)], v);
            }
        }
    }
    t.histogram(
        "fxr_broker_store_commit_seconds",
        "Time to commit one batch of submissions or results to SQLite (with fsync).",
        &m.commit_seconds,
    );
    t.finish()
}
