//! Everything that can happen to the interchange, as the socket threads and clients report it
//! to the core. Plain data: a pipe is named by its number, never by a socket handle.

use fxr_protocol::{ClientMsg, FrontMsg, ManagerMsg};
use std::sync::mpsc::Sender;

/// A client of the interchange, in-process or behind the TCP front door.
pub type ClientId = u64;

/// See the module documentation.
#[derive(Debug)]
pub enum Event {
    /// A message arrived on a manager pipe.
    FromPipe { pipe_id: u32, body: Vec<u8> },
    /// A message arrived on a manager pipe of an interchange that does not encrypt, and the
    /// link's receive callback decoded it (off the dispatch thread).
    Decoded { pipe_id: u32, msg: ManagerMsg },
    /// A manager connection opened (it must register within a deadline).
    PipeOpened(u32),
    /// A manager pipe closed.
    PipeClosed(u32),
    /// A client connected; results for it go to this sender.
    ClientConnected(ClientId, Sender<FrontMsg>),
    /// A client sent a request.
    Client(ClientId, ClientMsg),
    /// A client went away.
    ClientGone(ClientId),
    /// Stop at once (used when the process is told to exit).
    Stop,
}
