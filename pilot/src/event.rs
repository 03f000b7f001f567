//! Everything that can happen to a manager, as its link, its workers and signals report it.
//! Plain data, so the link and the manager loop depend on this module and not on each other.

use fxr_protocol::{FromWorker, InterchangeMsg};

/// Everything that can happen to a manager.
#[derive(Debug)]
pub enum Event {
    /// Connected (again), with a fresh random nonce for this connection's handshake.
    LinkUp {
        nonce: fxr_protocol::auth::Nonce,
    },
    LinkDown,
    FromInterchange(InterchangeMsg),
    Worker {
        slot: usize,
        generation: u64,
        msg: FromWorker,
    },
    /// A worker ended (or could not start); `reason` is its exit status and the last lines it
    /// or its container runtime wrote to stderr.
    WorkerGone {
        slot: usize,
        generation: u64,
        reason: String,
    },
    /// SIGTERM: drain and exit.
    Terminate,
}

/// Where a manager's events go: its own channel, or its group's with its index. False when
/// nobody listens any more.
pub type Sink = std::sync::Arc<dyn Fn(Event) -> bool + Send + Sync>;
