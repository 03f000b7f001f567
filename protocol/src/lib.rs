//! fxr-protocol: every message that crosses a process boundary inside an endpoint, and the frame
//! that carries it.
//!
//! This crate is pure data and pure functions: it does no I/O and depends on neither tokio nor nng
//! (a test checks that with `cargo tree`). Every transport — nng between interchange and managers,
//! pipes between a manager and its workers, a Unix socket between a client and the interchange — moves the
//! same [`frame`]s, so there is exactly one decoder to harden against hostile input.

pub mod auth;
pub mod data;
pub mod frame;
pub mod ids;
pub mod messages;
pub mod metrics;
pub mod task;

pub use data::{fnv1a, DataRef, DataReply, DataRequest, DATA_CHUNK};
pub use frame::{
    decode, decode_body, encode, encode_into, parse_header, read_frame, FrameError,
    FRAME_HEADER_LEN, MAX_FRAME, PROTOCOL_VERSION,
};
pub use ids::{BlockId, ManagerId, TaskId};
pub use messages::*;
pub use task::*;

/// The largest task argument or result body accepted anywhere, in bytes (10 MiB).
pub const MAX_BODY: usize = 10 * 1024 * 1024;

/// The software version every process reports when it registers.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
