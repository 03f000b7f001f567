//! The manager's side of the nng link: a raw REQ socket that dials the interchange.
//!
//! Raw mode lets the manager send without waiting for replies and receive messages the
//! interchange sends unprompted. Every outgoing message carries a `0x8000_0000 | n` header, as the
//! REP side expects of a request; its body is one protocol frame.

use crate::event::Event;
use fxr_protocol::ManagerMsg;
use nng::options::{
    Options, ReconnectMaxTime, ReconnectMinTime, RecvMaxSize, RecvTimeout, SendTimeout,
};
use nng::{PipeEvent, Protocol, RawSocket};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Errors of the manager's link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open the manager socket: {0}")]
    Open(#[source] nng::Error),
    #[error("cannot dial {url}: {source}")]
    Dial { url: String, source: nng::Error },
    #[error("cannot start the receiving thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A connection to the interchange that reconnects by itself.
#[derive(Debug)]
pub struct Link {
    socket: nng::Socket,
    counter: u32,
    frame: Vec<u8>,
}

impl Link {
    /// Dials `url` in the background (retrying until the interchange answers) and forwards
    /// messages and connection changes to `events`.
    pub fn dial(url: &str, events: Sender<Event>) -> Result<Link, LinkError> {
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
        // Closing does not always wake a blocked receive (NNG 1.4): wake up now and then, and
        // stop once the manager has gone (its event channel is closed).
        socket
            .set_opt::<RecvTimeout>(Some(Duration::from_millis(500)))
            .map_err(LinkError::Open)?;
        let notify = events.clone();
        socket
            .pipe_notify(move |_, ev| {
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
                let _ = notify.send(e);
            })
            .map_err(LinkError::Open)?;
        socket.dial_async(url).map_err(|source| LinkError::Dial {
            url: url.to_string(),
            source,
        })?;
        let rx = socket.clone();
        std::thread::Builder::new()
            .name("mgr-recv".into())
            .stack_size(256 * 1024)
            .spawn(move || loop {
                match rx.recv() {
                    Ok(msg) => match fxr_protocol::decode(msg.as_slice()) {
                        Ok(m) => {
                            if events.send(Event::FromInterchange(m)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable message from the interchange")
                        }
                    },
                    Err(nng::Error::Closed) => return,
                    Err(nng::Error::TimedOut) => {
                        if events.send(Event::Wake).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "receive failed"),
                }
            })
            .map_err(LinkError::Thread)?;
        Ok(Link {
            socket,
            counter: 0,
            frame: Vec::with_capacity(4096),
        })
    }

    /// Sends one message, waiting for room on the pipe for up to the send timeout.
    pub fn send(&mut self, msg: &ManagerMsg) {
        self.frame.clear();
        if let Err(e) = fxr_protocol::encode_into(&mut self.frame, msg) {
            tracing::error!(error = %e, "cannot encode a message for the interchange");
            return;
        }
        let mut m = nng::Message::with_capacity(self.frame.len());
        m.push_back(&self.frame);
        self.counter = self.counter.wrapping_add(1);
        m.as_mut_header()
            .push_back(&(0x8000_0000 | self.counter).to_be_bytes());
        if let Err((_, e)) = self.socket.send(m) {
            tracing::debug!(error = %e, "send to the interchange dropped");
        }
    }

    pub fn close(&self) {
        self.socket.close();
    }
}
