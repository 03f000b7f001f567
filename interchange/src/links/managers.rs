//! The manager link: one raw REP socket (nng over TCP) that every manager dials.
//!
//! Why a raw REP socket: the interchange must address each manager individually and never block
//! on a slow one. In raw mode, a received message's header starts with the id of the pipe it came
//! on, and writing `[pipe id][0x8000_0000]` into an outgoing header routes the message to that
//! pipe, unsolicited and as often as we like. Sends never block; nng drops a message when the
//! pipe's queue is full, which is why the dispatcher keeps a window of unacknowledged batches per
//! manager. The alternatives measured (pair1 polyamorous, which the `nng` crate cannot open, and a
//! socket per direction, which doubles the connections and file descriptors per manager) are
//! described in ARCHITECTURE.md.

use crate::event::Event;
use fxr_protocol::InterchangeMsg;
use nng::options::{Options, RecvMaxSize};
use nng::{Pipe, PipeEvent, Protocol, RawSocket};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

/// Errors of the manager link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open the manager socket: {0}")]
    Open(#[source] nng::Error),
    #[error("cannot listen on {url}: {source}")]
    Listen { url: String, source: nng::Error },
    #[error("the manager listener on {url} reports no bound TCP port")]
    NoPort { url: String },
    #[error("cannot start the sending thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The listening socket, its receive callback and its sending thread.
///
/// Receiving is asynchronous: NNG calls back on one of its own threads when a message arrives;
/// the callback decodes it, hands it to the core and starts the next receive. No thread of
/// ours waits on the socket (a blocking receive cost a thread hand-off per message on top of
/// NNG's own), and nothing wakes while the managers are quiet.
///
/// Sending has a thread of its own so that the core's dispatch thread does not encode batches
/// or wait on NNG's locks: the core hands over messages ([`ManagerLink::send_msg`]) and goes on.
/// Every send goes through that one thread in the order given, so a pipe's messages keep
/// their order. The queue needs no bound of its own: the dispatcher keeps at most
/// `max_unacked` batches unacknowledged per manager.
#[derive(Debug)]
pub struct ManagerLink {
    socket: nng::Socket,
    port: u16,
    /// The receive in progress.
    aio: nng::Aio,
    outgoing: Option<Sender<Outgoing>>,
    sender: Option<JoinHandle<()>>,
}

/// What the sending thread sends.
#[derive(Debug)]
enum Outgoing {
    /// A frame encoded (and, on a sealed connection, sealed) by the core.
    Frame(u32, Vec<u8>),
    /// A message the sending thread encodes.
    Msg(u32, InterchangeMsg),
}

/// The numeric id of a pipe, as it appears in message headers.
pub fn pipe_id(pipe: Pipe) -> u32 {
    // SAFETY: nng_pipe_id only reads the id field of a by-value handle; any handle, even a
    // closed one, gives a number (-1 for invalid).
    unsafe { nng_sys::nng_pipe_id(pipe.nng_pipe()) as u32 }
}

/// Closes a pipe by its number, ignoring the errors of one already closed (the crate's
/// `Pipe::close` panics on those).
pub fn close_pipe_id(pipe: u32) {
    // An nng pipe handle is its id (`nng_pipe_id` returns it).
    let handle = nng_sys::nng_pipe_s {
        _bindgen_opaque_blob: pipe,
    };
    // SAFETY: closing a stale or closed pipe handle only returns an error code.
    let _ = unsafe { nng_sys::nng_pipe_close(handle) };
}

impl ManagerLink {
    /// Listens on `url` (for example `tcp://127.0.0.1:0`) and forwards every message and every
    /// closed pipe to `events`.
    /// With `decode`, messages are decoded in the receive callback, off the core's thread,
    /// and reach the core as [`Event::Decoded`] (for an interchange whose connections are
    /// never sealed).
    pub fn listen(
        url: &str,
        max_frame: usize,
        events: Sender<Event>,
        decode: bool,
    ) -> Result<ManagerLink, LinkError> {
        let raw = RawSocket::new(Protocol::Rep0).map_err(LinkError::Open)?;
        let socket = raw.socket;
        socket
            .set_opt::<RecvMaxSize>(max_frame + 64)
            .map_err(LinkError::Open)?;
        let notify = events.clone();
        socket
            .pipe_notify(move |pipe, ev| {
                // The core may be gone at shutdown; nothing to do then.
                let _ = match ev {
                    PipeEvent::AddPost => notify.send(Event::PipeOpened(pipe_id(pipe))),
                    PipeEvent::RemovePost => notify.send(Event::PipeClosed(pipe_id(pipe))),
                    _ => Ok(()),
                };
            })
            .map_err(LinkError::Open)?;
        let listener = nng::Listener::new(&socket, url).map_err(|source| LinkError::Listen {
            url: url.to_string(),
            source,
        })?;
        let port = listener
            .get_opt::<nng::options::transport::tcp::BoundPort>()
            .map_err(|_| LinkError::NoPort {
                url: url.to_string(),
            })?;
        // `Listener` is a plain handle: dropping it does not close it; it closes with the socket.
        let _ = listener;
        let (outgoing, queue) = mpsc::channel();
        let tx_socket = socket.clone();
        let sender = match std::thread::Builder::new()
            .name("ix-send".into())
            .spawn(move || send_loop(tx_socket, queue))
        {
            Ok(h) => h,
            Err(e) => {
                socket.close();
                return Err(LinkError::Thread(e));
            }
        };
        let rx = socket.clone();
        let aio = nng::Aio::new(move |aio, res| match res {
            nng::AioResult::Recv(Ok(mut msg)) => {
                if !deliver(&events, &mut msg, decode) {
                    // The core has gone: receive no more.
                    return;
                }
                if let Err(e) = rx.recv_async(&aio) {
                    tracing::debug!(error = %e, "cannot receive again");
                }
            }
            nng::AioResult::Recv(Err(nng::Error::Closed | nng::Error::Canceled)) => {}
            nng::AioResult::Recv(Err(e)) => {
                tracing::warn!(error = %e, "manager socket receive failed");
                if let Err(e) = rx.recv_async(&aio) {
                    tracing::debug!(error = %e, "cannot receive again");
                }
            }
            _ => {}
        });
        let started = aio
            .and_then(|aio| socket.recv_async(&aio).map(|()| aio))
            .map_err(LinkError::Open);
        let aio = match started {
            Ok(aio) => aio,
            Err(e) => {
                drop(outgoing);
                let _ = sender.join();
                socket.close();
                return Err(e);
            }
        };
        Ok(ManagerLink {
            socket,
            port,
            aio,
            outgoing: Some(outgoing),
            sender: Some(sender),
        })
    }

    /// The TCP port managers dial.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one encoded frame to one pipe, on the sending thread. Never blocks; a full or
    /// closed pipe drops it.
    pub fn send(&self, pipe: u32, frame: Vec<u8>) {
        self.queue(Outgoing::Frame(pipe, frame));
    }

    /// Encodes and sends one message to one pipe, both on the sending thread.
    pub fn send_msg(&self, pipe: u32, msg: InterchangeMsg) {
        self.queue(Outgoing::Msg(pipe, msg));
    }

    fn queue(&self, out: Outgoing) {
        if let Some(q) = &self.outgoing {
            // The sending thread only ends when this side is dropped (in `close`).
            let _ = q.send(out);
        }
    }

    /// Sends what is queued and stops the sending thread, then cancels the receive and closes
    /// the socket.
    ///
    /// The receive has no timeout: a timed receive (the receiving thread this link once had)
    /// could expire on NNG 1.4's expiry thread just as the socket closed and lock its freed
    /// queue (`pthread_mutex_lock: Invalid argument`, an abort).
    pub fn close(mut self) {
        drop(self.outgoing.take());
        if let Some(h) = self.sender.take() {
            let _ = h.join();
        }
        self.aio.cancel();
        self.socket.close();
        // A callback in flight holds the last handle to the aio once the link is dropped, and
        // NNG 1.4 cannot free an aio from inside its own callback: keep one handle for the life
        // of the process (a few hundred bytes per link closed).
        std::mem::forget(self.aio.clone());
    }
}

/// The sending thread: encodes what needs it (into one reused buffer) and sends, in order,
/// until the link closes its queue.
fn send_loop(socket: nng::Socket, queue: Receiver<Outgoing>) {
    let mut buf = Vec::with_capacity(4096);
    for out in queue {
        let (pipe, frame) = match &out {
            Outgoing::Frame(pipe, frame) => (*pipe, frame.as_slice()),
            Outgoing::Msg(pipe, msg) => {
                buf.clear();
                if let Err(e) = fxr_protocol::encode_into(&mut buf, msg) {
                    tracing::error!(pipe, error = %e, "cannot encode a message for a manager");
                    continue;
                }
                (*pipe, buf.as_slice())
            }
        };
        let mut msg = nng::Message::with_capacity(frame.len());
        msg.push_back(frame);
        let header = msg.as_mut_header();
        header.push_back(&pipe.to_be_bytes());
        header.push_back(&0x8000_0000u32.to_be_bytes());
        if let Err((_, e)) = socket.send(msg) {
            tracing::debug!(pipe, error = %e, "send to manager dropped");
        }
    }
}

/// Hands one received message to the core, decoded when `decode`; false once the core has gone.
fn deliver(events: &Sender<Event>, msg: &mut nng::Message, decode: bool) -> bool {
    let Some(pipe) = msg.pipe() else { return true };
    let id = pipe_id(pipe);
    // What does not decode goes to the core as it came, which closes the connection.
    let ev = match decode
        .then(|| fxr_protocol::decode::<fxr_protocol::ManagerMsg>(msg.as_slice()).ok())
        .flatten()
    {
        Some(msg) => Event::Decoded { pipe_id: id, msg },
        None => Event::FromPipe {
            pipe_id: id,
            body: msg.as_slice().to_vec(),
        },
    };
    events.send(ev).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closing with a receive pending must not abort inside NNG (a timed receive expiring as
    /// the socket closed once did, seen in CI as `pthread_mutex_lock: Invalid argument`), nor
    /// when a message is being delivered: four threads open links side by side, half of
    /// the rounds with a peer that sends as the link closes, and the close falls at every
    /// phase of that.
    #[test]
    fn closing_with_a_receive_pending_does_not_abort() {
        let (tx, rx) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for round in 0..400u64 {
                        let link = ManagerLink::listen("tcp://127.0.0.1:0", 1024, tx.clone(), true)
                            .unwrap_or_else(|e| panic!("thread {t} round {round}: {e}"));
                        assert_ne!(link.port(), 0);
                        let peer = (round % 2 == 0).then(|| {
                            let s = nng::Socket::new(Protocol::Req0).expect("a peer socket");
                            s.dial(&format!("tcp://127.0.0.1:{}", link.port()))
                                .expect("the peer dials");
                            let _ = s.send(nng::Message::from(&b"not a frame"[..]));
                            s
                        });
                        // Not a wait for anything: the link stays open for 0 to 1.2 ms so that
                        // the close falls at every phase of a delivery.
                        std::thread::sleep(std::time::Duration::from_micros((round + t) % 9 * 150));
                        link.close();
                        drop(peer);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a link thread panicked");
        }
        drop(tx);
        // What came is what the peers did: connections and undecodable bodies, nothing else.
        // (A closed link's callback keeps its sender, so the channel never closes.)
        assert!(rx.try_iter().all(|e| matches!(
            e,
            Event::PipeOpened(_) | Event::PipeClosed(_) | Event::FromPipe { .. }
        )));
    }
}
