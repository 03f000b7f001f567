//! The manager's side of the nng link: a raw REQ socket that dials the interchange.
//!
//! Raw mode lets the manager send without waiting for replies and receive messages the
//! interchange sends unprompted. Every outgoing message carries a `0x8000_0000 | n` header, as the
//! REP side expects of a request; its body is one protocol frame.

use crate::event::Event;
use fxr_protocol::auth::Cipher;
use fxr_protocol::ManagerMsg;
use nng::options::{Options, ReconnectMaxTime, ReconnectMinTime, RecvMaxSize, SendTimeout};
use nng::{PipeEvent, Protocol, RawSocket};
use std::time::Duration;

/// Errors of the manager's link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open the manager socket: {0}")]
    Open(#[source] nng::Error),
    #[error("cannot dial {url}: {source}")]
    Dial { url: String, source: nng::Error },
    #[error("cannot start a manager thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Encryption of the current connection, shared by the sending side and the receive callback.
/// Keys arrive (`pending`) before `Register` is sent; the receive callback turns them on when
/// it reads the plain `Welcome`, so everything after it is sealed both ways. A new connection
/// starts in clear again.
#[derive(Debug, Default)]
struct Crypto {
    pending: Option<(Cipher, Cipher)>,
    send: Option<Cipher>,
    recv: Option<Cipher>,
}

type Shared = std::sync::Arc<std::sync::Mutex<Crypto>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Crypto> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A connection to the interchange that reconnects by itself.
#[derive(Debug)]
pub struct Link {
    socket: nng::Socket,
    /// The receive in progress.
    aio: nng::Aio,
    counter: u32,
    frame: Vec<u8>,
    crypto: Shared,
}

impl Link {
    /// Dials `url` in the background (retrying until the interchange answers) and forwards
    /// messages and connection changes to `events`.
    pub fn dial(url: &str, events: crate::event::Sink) -> Result<Link, LinkError> {
        let socket = RawSocket::new(Protocol::Req0)
            .map_err(LinkError::Open)?
            .socket;
        socket
            .set_opt::<RecvMaxSize>(fxr_protocol::MAX_FRAME + 64)
            .map_err(LinkError::Open)?;
        socket
            .set_opt::<ReconnectMinTime>(Some(Duration::from_millis(50)))
            .map_err(LinkError::Open)?;
        socket
            .set_opt::<ReconnectMaxTime>(Some(Duration::from_secs(2)))
            .map_err(LinkError::Open)?;
        // Results must not be dropped on a busy pipe, so sends wait for room, but not forever:
        // a link down for this long means the interchange has already re-queued our tasks.
        socket
            .set_opt::<SendTimeout>(Some(Duration::from_secs(5)))
            .map_err(LinkError::Open)?;
        let crypto = Shared::default();
        let notify = events.clone();
        let reset = crypto.clone();
        socket
            .pipe_notify(move |_, ev| {
                if matches!(ev, PipeEvent::AddPost | PipeEvent::RemovePost) {
                    *lock(&reset) = Crypto::default();
                }
                let e = match ev {
                    PipeEvent::AddPost => {
                        // From the OS's generator; without it there is no handshake to make.
                        let mut nonce = [0u8; fxr_protocol::auth::NONCE];
                        if let Err(e) = getrandom::fill(&mut nonce) {
                            tracing::error!(error = %e, "no random nonce for the handshake");
                            return;
                        }
                        Event::LinkUp { nonce }
                    }
                    PipeEvent::RemovePost => Event::LinkDown,
                    _ => return,
                };
                notify(e);
            })
            .map_err(LinkError::Open)?;
        socket.dial_async(url).map_err(|source| LinkError::Dial {
            url: url.to_string(),
            source,
        })?;
        // Receiving is asynchronous: NNG calls back when a message arrives, and the callback
        // starts the next receive. No thread of our own waits on the socket, and nothing wakes
        // while the link is idle; closing the socket ends the chain (`Closed`).
        let rx = socket.clone();
        let rx_crypto = crypto.clone();
        let aio = nng::Aio::new(move |aio, res| match res {
            nng::AioResult::Recv(Ok(msg)) => {
                match open(&rx_crypto, msg.as_slice()) {
                    Ok(m) => {
                        if !events(Event::FromInterchange(m)) {
                            // The manager has gone: receive no more.
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable message from the interchange")
                    }
                }
                if let Err(e) = rx.recv_async(&aio) {
                    tracing::debug!(error = %e, "cannot receive again");
                }
            }
            nng::AioResult::Recv(Err(nng::Error::Closed | nng::Error::Canceled)) => {}
            nng::AioResult::Recv(Err(e)) => {
                tracing::debug!(error = %e, "receive failed");
                if let Err(e) = rx.recv_async(&aio) {
                    tracing::debug!(error = %e, "cannot receive again");
                }
            }
            _ => {}
        })
        .map_err(LinkError::Open)?;
        socket.recv_async(&aio).map_err(LinkError::Open)?;
        Ok(Link {
            socket,
            aio,
            counter: 0,
            frame: Vec::with_capacity(4096),
            crypto,
        })
    }

    /// Keys for this connection, used from the coming `Welcome` on.
    pub fn secure(&self, send_key: &[u8; 32], recv_key: &[u8; 32]) {
        lock(&self.crypto).pending = Some((Cipher::new(send_key), Cipher::new(recv_key)));
    }

    /// Sends one message, waiting for room on the pipe for up to the send timeout.
    pub fn send(&mut self, msg: &ManagerMsg) {
        self.frame.clear();
        if let Err(e) = fxr_protocol::encode_into(&mut self.frame, msg) {
            tracing::error!(error = %e, "cannot encode a message for the interchange");
            return;
        }
        let mut m = nng::Message::with_capacity(self.frame.len() + 16);
        match lock(&self.crypto).send.as_mut() {
            Some(c) => m.push_back(&c.seal(&self.frame)),
            None => m.push_back(&self.frame),
        }
        self.counter = self.counter.wrapping_add(1);
        m.as_mut_header()
            .push_back(&(0x8000_0000 | self.counter).to_be_bytes());
        if let Err((_, e)) = self.socket.send(m) {
            tracing::debug!(error = %e, "send to the interchange dropped");
        }
    }

    pub fn close(&self) {
        self.aio.cancel();
        self.socket.close();
        // A callback in flight holds the last handle to the aio once the link is dropped, and
        // NNG 1.4 cannot free an aio from inside its own callback: keep one handle for the life
        // of the process (a few hundred bytes per closed link).
        std::mem::forget(self.aio.clone());
    }
}

/// A message from the interchange: opened with the connection's key once encryption is on;
/// a plain `Welcome` turns on the keys that were waiting for it.
fn open(crypto: &Shared, body: &[u8]) -> Result<fxr_protocol::InterchangeMsg, String> {
    let mut c = lock(crypto);
    if let Some(recv) = c.recv.as_mut() {
        let plain = recv
            .open(body)
            .map_err(|_| "a message that does not open".to_string())?;
        return fxr_protocol::decode(&plain).map_err(|e| e.to_string());
    }
    let msg: fxr_protocol::InterchangeMsg =
        fxr_protocol::decode(body).map_err(|e| e.to_string())?;
    if matches!(msg, fxr_protocol::InterchangeMsg::Welcome { .. }) {
        if let Some((send, recv)) = c.pending.take() {
            c.send = Some(send);
            c.recv = Some(recv);
        }
    }
    Ok(msg)
}
