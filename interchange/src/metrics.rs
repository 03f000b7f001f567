//! The interchange's `/metrics`: gauges the core thread refreshes on every tick, counters and a
//! histogram of dispatch batch sizes, exposed over a small HTTP listener of its own
//! (`fxr endpoint start --metrics ADDR`, or `[engine] metrics` in `endpoint.toml`).
//!
//! The listener serves read-only counts and nothing else: no request reaches the core.

use fxr_protocol::metrics::{Histogram, Text, COUNTS};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shared between the core, the scaling loop and the listener.
#[derive(Debug)]
pub struct Metrics {
    pub queued: AtomicU64,
    pub in_flight: AtomicU64,
    pub managers: AtomicU64,
    pub workers: AtomicU64,
    pub workers_busy: AtomicU64,
    pub submitted: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub blocks_pending: AtomicU64,
    pub blocks_running: AtomicU64,
    pub blocks_draining: AtomicU64,
    pub block_failures: AtomicU64,
    pub dispatch_batch: Histogram,
    /// Messages from managers (results, acknowledgements, heartbeats, handshakes).
    pub manager_messages: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let z = || AtomicU64::new(0);
        Metrics {
            queued: z(),
            in_flight: z(),
            managers: z(),
            workers: z(),
            workers_busy: z(),
            submitted: z(),
            completed: z(),
            failed: z(),
            retried: z(),
            blocks_pending: z(),
            blocks_running: z(),
            blocks_draining: z(),
            block_failures: z(),
            dispatch_batch: Histogram::new(COUNTS),
            manager_messages: z(),
        }
    }
}

fn get(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        let mut t = Text::default();
        t.single(
            "fxr_interchange_tasks_queued",
            "gauge",
            "Tasks waiting for a manager.",
            get(&self.queued),
        );
        t.single(
            "fxr_interchange_tasks_in_flight",
            "gauge",
            "Tasks held by managers.",
            get(&self.in_flight),
        );
        t.single(
            "fxr_interchange_managers",
            "gauge",
            "Registered managers.",
            get(&self.managers),
        );
        let workers = get(&self.workers);
        let busy = get(&self.workers_busy).min(workers);
        t.family("fxr_interchange_workers", "gauge", "Workers by state.");
        t.sample("fxr_interchange_workers", &[("state", "busy")], busy);
        t.sample(
            "fxr_interchange_workers",
            &[("state", "idle")],
            workers - busy,
        );
        t.family(
            "fxr_interchange_tasks_total",
            "counter",
            "Tasks since the interchange started, by what happened.",
        );
        for (what, v) in [
            ("submitted", &self.submitted),
            ("completed", &self.completed),
            ("failed", &self.failed),
            ("retried", &self.retried),
        ] {
            t.sample("fxr_interchange_tasks_total", &[("event", what)], get(v));
        }
        t.family("fxr_interchange_blocks", "gauge", "Blocks by state.");
        for (state, v) in [
            ("pending", &self.blocks_pending),
            ("running", &self.blocks_running),
            ("draining", &self.blocks_draining),
        ] {
            t.sample("fxr_interchange_blocks", &[("state", state)], get(v));
        }
        t.single(
            "fxr_interchange_manager_messages_total",
            "counter",
            "Messages received from managers.",
            get(&self.manager_messages),
        );
        t.single(
            "fxr_interchange_block_failures",
            "gauge",
            "Blocks that failed in a row (submissions pause at the strategy's limit).",
            get(&self.block_failures),
        );
        t.histogram(
            "fxr_interchange_dispatch_batch_tasks",
            "Tasks per batch sent to a manager.",
            &self.dispatch_batch,
        );
        t.finish()
    }
}

/// Answers `GET /metrics` on `listener` until `stop` is set. Requests are read with a size
/// bound and a timeout; anything else gets 404.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!(error = %e, "metrics listener unusable");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let (mut conn, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(_) => continue,
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 4096];
        let mut len = 0;
        while len < buf.len() {
            match conn.read(&mut buf[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
        let head = String::from_utf8_lossy(&buf[..len]);
        let first = head.lines().next().unwrap_or_default();
        let (status, ctype, body) = if first.starts_with("GET /metrics ") {
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(),
            )
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "only GET /metrics is served here\n".to_string(),
            )
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
