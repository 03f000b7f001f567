//! The local front door: clients submit tasks and receive results, in-process or over a Unix
//! socket.
//!
//! It exists so the endpoint is usable before (and without) a broker. Both kinds of client speak
//! [`ClientMsg`]/[`FrontMsg`]; over the socket each is one protocol frame. The socket is a file
//! (mode 0600, in a directory only its owner can enter), and every connection's peer must be
//! the endpoint's own user (`SO_PEERCRED`): what a client may do — run commands, stop the
//! endpoint — no other user of the machine can. Each connection has a reading thread (frames to
//! core events) and a writing thread (results to frames), so a slow client never stalls the
//! core: its results queue in its own channel.

use crate::event::{ClientId, Event};
use fxr_protocol::{read_frame, ClientMsg, FrameError, FrontMsg};
use std::io::{self, BufWriter, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

fn invalid(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Something that speaks to the interchange as a client.
pub trait FrontDoor: Send {
    fn send(&mut self, msg: ClientMsg) -> io::Result<()>;
    /// The next message, or `None` after `timeout`.
    fn recv(&mut self, timeout: Duration) -> io::Result<Option<FrontMsg>>;
}

/// A client inside the interchange's own process.
#[derive(Debug)]
pub struct LocalClient {
    id: ClientId,
    events: Sender<Event>,
    rx: Receiver<FrontMsg>,
    /// Split into sender and receiver: the halves now own the registration.
    detached: bool,
}

impl LocalClient {
    pub(crate) fn connect(events: Sender<Event>) -> LocalClient {
        let id = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let _ = events.send(Event::ClientConnected(id, tx));
        LocalClient {
            id,
            events,
            rx,
            detached: false,
        }
    }
}

/// The sending half of a [`LocalClient`], usable from any thread.
#[derive(Clone, Debug)]
pub struct LocalSender {
    id: ClientId,
    events: Sender<Event>,
}

impl LocalSender {
    pub fn send(&self, msg: ClientMsg) -> io::Result<()> {
        self.events
            .send(Event::Client(self.id, msg))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the interchange has stopped"))
    }
}

impl LocalClient {
    /// Splits into a sender and the receiver of this client's messages. The client stays
    /// registered until the receiver is dropped and the core notices.
    pub fn split(mut self) -> (LocalSender, Receiver<FrontMsg>) {
        self.detached = true;
        let rx = std::mem::replace(&mut self.rx, mpsc::channel().1);
        (
            LocalSender {
                id: self.id,
                events: self.events.clone(),
            },
            rx,
        )
    }
}

impl Drop for LocalClient {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let _ = self.events.send(Event::ClientGone(self.id));
    }
}

impl FrontDoor for LocalClient {
    fn send(&mut self, msg: ClientMsg) -> io::Result<()> {
        self.events
            .send(Event::Client(self.id, msg))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the interchange has stopped"))
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Option<FrontMsg>> {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => Ok(Some(m)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the interchange has stopped",
            )),
        }
    }
}

/// A client connected to a front door's socket.
#[derive(Debug)]
pub struct SocketClient {
    writer: BufWriter<UnixStream>,
    rx: Receiver<io::Result<FrontMsg>>,
    frame: Vec<u8>,
}

/// Whether `addr` names a front door's socket (a path, or `unix:PATH`).
pub fn is_socket_path(addr: &str) -> bool {
    addr.starts_with("unix:") || addr.contains('/')
}

impl SocketClient {
    /// Connects to the front door whose socket is at `path` (optionally `unix:PATH`).
    pub fn connect(path: &str) -> io::Result<SocketClient> {
        let path = path.strip_prefix("unix:").unwrap_or(path);
        if !is_socket_path(path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{path}` is not a front door: give the path of its socket (`fxr endpoint start` prints it)"),
            ));
        }
        let stream = UnixStream::connect(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {path}: {e}")))?;
        let mut reader = stream.try_clone()?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("client-recv".into())
            .spawn(move || {
                let mut buf = Vec::new();
                loop {
                    match read_frame::<FrontMsg>(&mut reader, &mut buf) {
                        Ok(Some(m)) => {
                            if tx.send(Ok(m)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            let _ = tx.send(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "endpoint closed the connection",
                            )));
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })?;
        Ok(SocketClient {
            writer: BufWriter::new(stream),
            rx,
            frame: Vec::new(),
        })
    }
}

impl FrontDoor for SocketClient {
    fn send(&mut self, msg: ClientMsg) -> io::Result<()> {
        self.frame.clear();
        fxr_protocol::encode_into(&mut self.frame, &msg).map_err(invalid)?;
        self.writer.write_all(&self.frame)?;
        self.writer.flush()
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Option<FrontMsg>> {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => m.map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection lost"))
            }
        }
    }
}

/// The user at the other end of a Unix socket.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt(2) fills a ucred of the size given, on a socket we own.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        if libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(cred.uid)
    }
}

/// Accepts clients until the listener fails or `stop` is set; a client of another user is
/// turned away.
pub(crate) fn serve(
    listener: UnixListener,
    events: Sender<Event>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    secret: Arc<str>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "front door accept failed");
                continue;
            }
        };
        // SAFETY: geteuid(2) has no failure mode.
        let me = unsafe { libc::geteuid() };
        match peer_uid(&stream) {
            Ok(uid) if uid == me => {}
            Ok(uid) => {
                tracing::warn!(uid, "front door: a client of another user refused");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "front door: cannot tell the client's user; refused");
                continue;
            }
        }
        let events = events.clone();
        let secret = secret.clone();
        let _ = std::thread::Builder::new()
            .name("front-conn".into())
            .spawn(move || connection(stream, events, &secret));
    }
}

fn connection(stream: UnixStream, events: Sender<Event>, secret: &str) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let id = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<FrontMsg>();
    if events.send(Event::ClientConnected(id, tx.clone())).is_err() {
        return;
    }
    let writer = std::thread::Builder::new()
        .name("front-write".into())
        .spawn(move || write_loop(write_half, rx));
    let mut reader = io::BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        match read_frame::<ClientMsg>(&mut reader, &mut buf) {
            // Reading a stored object is this connection's own business: the core never waits
            // on a node's data service.
            Ok(Some(ClientMsg::Fetch { data, offset, len })) => {
                let reply = super::data::fetch_chunk(secret, &data, offset, len);
                if tx.send(FrontMsg::Data(reply)).is_err() {
                    break;
                }
            }
            Ok(Some(msg)) => {
                if events.send(Event::Client(id, msg)).is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "bad frame from a client; closing its connection");
                let _ = tx.send(FrontMsg::Error {
                    message: format!("bad frame: {e}"),
                });
                break;
            }
        }
    }
    let _ = events.send(Event::ClientGone(id));
    drop(tx);
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

fn write_loop(stream: UnixStream, rx: Receiver<FrontMsg>) {
    let mut w = BufWriter::with_capacity(1 << 16, stream);
    let mut frame = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            frame.clear();
            if fxr_protocol::encode_into(&mut frame, &msg).is_err() || w.write_all(&frame).is_err()
            {
                return;
            }
            next = rx.try_recv().ok();
        }
        if w.flush().is_err() {
            return;
        }
    }
    let _ = w.flush();
    let _ = w.get_ref().shutdown(std::net::Shutdown::Write);
}
