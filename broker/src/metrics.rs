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

/// The text of `/metrics`.
pub fn render(broker: &Broker) -> String {
    let m = &broker.metrics;
    let mut t = Text::default();
    t.family(
        "fxr_broker_tasks",
        "gauge",
        "Open tasks (no result yet) by where they are.",
    );
    let (counts, endpoints, watchers) = {
        let hub = broker.hub();
        let eps: Vec<(String, bool, u64, u64, u64, Option<f64>)> = hub
            .endpoints()
            .map(|(id, e)| {
                (
                    id.clone(),
                    e.connected(),
                    e.backlog() as u64,
                    e.open(),
                    e.inflight_bytes(),
                    e.status_at.map(|t| t.elapsed().as_secs_f64()),
                )
            })
            .collect();
        (hub.counts(), eps, broker.watchers().len())
    };
    for (state, n) in ["pending", "dispatched", "queued"].iter().zip(counts) {
        t.sample("fxr_broker_tasks", &[("state", state)], n as f64);
    }
    t.family(
        "fxr_broker_tasks_finished_total",
        "counter",
        "Tasks that got their result since the broker started, by outcome.",
    );
    t.sample(
        "fxr_broker_tasks_finished_total",
        &[("state", "succeeded")],
        get(&m.succeeded),
    );
    t.sample(
        "fxr_broker_tasks_finished_total",
        &[("state", "failed")],
        get(&m.failed),
    );
    t.single(
        "fxr_broker_tasks_submitted_total",
        "counter",
        "Tasks accepted since the broker started.",
        get(&m.submitted),
    );
    t.single(
        "fxr_broker_submissions_refused_total",
        "counter",
        "Submissions answered 429 because a backlog limit would be passed.",
        get(&m.refused),
    );
    t.single(
        "fxr_broker_foreign_results_total",
        "counter",
        "Results an endpoint reported for tasks not routed to it (ignored).",
        get(&m.foreign_results),
    );
    t.single(
        "fxr_broker_links_replaced_total",
        "counter",
        "Endpoint link connections closed because a newer one of the same endpoint opened.",
        get(&m.links_replaced),
    );
    t.single(
        "fxr_broker_links_silent_total",
        "counter",
        "Endpoint link connections closed because the endpoint fell silent.",
        get(&m.links_silent),
    );
    t.single(
        "fxr_broker_tasks_unsendable_total",
        "counter",
        "Tasks failed because they could not be encoded for the endpoint link.",
        get(&m.unsendable),
    );
    t.single(
        "fxr_broker_watchers",
        "gauge",
        "Clients waiting on or following results.",
        watchers as f64,
    );
    t.family(
        "fxr_broker_endpoint_connected",
        "gauge",
        "1 if the endpoint's link is connected.",
    );
    for (id, c, ..) in &endpoints {
        t.sample(
            "fxr_broker_endpoint_connected",
            &[("endpoint", id)],
            f64::from(u8::from(*c)),
        );
    }
    t.family(
        "fxr_broker_endpoint_backlog",
        "gauge",
        "Tasks waiting at the broker for the endpoint (not yet sent).",
    );
    for (id, _, b, ..) in &endpoints {
        t.sample(
            "fxr_broker_endpoint_backlog",
            &[("endpoint", id)],
            *b as f64,
        );
    }
    t.family(
        "fxr_broker_endpoint_open_tasks",
        "gauge",
        "Tasks routed to the endpoint without a result.",
    );
    for (id, _, _, o, ..) in &endpoints {
        t.sample(
            "fxr_broker_endpoint_open_tasks",
            &[("endpoint", id)],
            *o as f64,
        );
    }
    t.family(
        "fxr_broker_endpoint_inflight_bytes",
        "gauge",
        "Estimated bytes of tasks sent to the endpoint and not finished.",
    );
    for (id, _, _, _, b, _) in &endpoints {
        t.sample(
            "fxr_broker_endpoint_inflight_bytes",
            &[("endpoint", id)],
            *b as f64,
        );
    }
    t.family(
        "fxr_broker_endpoint_link_lag_seconds",
        "gauge",
        "Seconds since the endpoint's last status report.",
    );
    for (id, _, _, _, _, lag) in &endpoints {
        if let Some(lag) = lag {
            t.sample(
                "fxr_broker_endpoint_link_lag_seconds",
                &[("endpoint", id)],
                *lag,
            );
        }
    }
    t.histogram(
        "fxr_broker_store_commit_seconds",
        "Time to commit one batch of submissions or results to SQLite (with fsync).",
        &m.commit_seconds,
    );
    t.finish()
}
