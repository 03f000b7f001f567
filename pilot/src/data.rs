//! The node's data service: other nodes fetch objects of this node's store over nng, in chunks
//! ([`fxr_datastore::remote`]), with the endpoint's secret. Workers fetch with [`fetch`].

use fxr_datastore::remote::{self, DataRef, Reply, Request};
use fxr_datastore::{Meta, Store, StoreError};
use nng::options::{Options, RecvMaxSize, RecvTimeout, SendTimeout};
use nng::{Protocol, Socket};
use std::time::Duration;

/// Largest request accepted (a key and a secret).
const MAX_REQUEST: usize = 64 * 1024;
/// How often the service sweeps objects past their TTL.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A running data service; stopped when dropped.
#[derive(Debug)]
pub struct DataService {
    url: String,
    /// `None` on it stops the service thread.
    stop: std::sync::mpsc::Sender<Option<nng::Message>>,
    thread: Option<std::thread::JoinHandle<()>>,
    socket: Socket,
    aio: nng::Aio,
}

impl DataService {
    /// Listens on `listen` (`tcp://HOST:PORT`, port 0 for any) and serves `store`.
    pub fn start(store: Store, secret: String, listen: &str) -> Result<DataService, String> {
        let socket = Socket::new(Protocol::Rep0).map_err(|e| e.to_string())?;
        socket
            .set_opt::<RecvMaxSize>(MAX_REQUEST)
            .map_err(|e| e.to_string())?;
        socket
            .set_opt::<SendTimeout>(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let listener = nng::Listener::new(&socket, listen)
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let port = match listener.get_opt::<nng::options::transport::tcp::BoundPort>() {
            Ok(p) => p,
            Err(e) => return Err(format!("cannot read the bound port: {e}")),
        };
        let host = listen
            .trim_start_matches("tcp://")
            .rsplit_once(':')
            .map_or("127.0.0.1", |(h, _)| h);
        let host = if host == "0.0.0.0" || host == "*" {
            crate::node::hostname()
        } else {
            host.to_string()
        };
        let url = format!("tcp://{host}:{port}");
        // NNG calls back when a request arrives and the callback hands it to the service
        // thread, which answers and then asks for the next one (REP answers each request
        // before taking another). The thread waits on a channel, so nothing wakes while no
        // request comes (only the TTL sweep, when there is a TTL), and stopping is a message
        // on that channel rather than a socket close NNG 1.4 may not deliver to a blocked
        // receive.
        let (tx, rx) = std::sync::mpsc::channel::<Option<nng::Message>>();
        let to_thread = tx.clone();
        let aio = nng::Aio::new(move |_, res| match res {
            nng::AioResult::Recv(Ok(m)) => {
                let _ = to_thread.send(Some(m));
            }
            nng::AioResult::Recv(Err(nng::Error::Closed | nng::Error::Canceled)) => {}
            nng::AioResult::Recv(Err(e)) => {
                tracing::debug!(error = %e, "data service receive failed");
                // An empty message: the thread asks for the next request.
                let _ = to_thread.send(Some(nng::Message::new()));
            }
            _ => {}
        })
        .map_err(|e| e.to_string())?;
        socket.recv_async(&aio).map_err(|e| e.to_string())?;
        let (s2, aio2) = (socket.clone(), aio.clone());
        let sweep = store.limits().ttl.is_some();
        let thread = std::thread::Builder::new()
            .name("data-service".into())
            .spawn(move || {
                // The service also sweeps the store of objects past their TTL, now and then.
                let mut swept = std::time::Instant::now();
                loop {
                    let next = if sweep {
                        match rx.recv_timeout(SWEEP_EVERY.saturating_sub(swept.elapsed())) {
                            Ok(m) => m,
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                                swept = std::time::Instant::now();
                                if let Err(e) = store.sweep() {
                                    tracing::warn!(error = %e, "cannot sweep the object store");
                                }
                                continue;
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
                        }
                    } else {
                        rx.recv().ok().flatten()
                    };
                    let Some(msg) = next else { return };
                    if !msg.as_slice().is_empty() {
                        let reply = match fxr_protocol::decode::<Request>(msg.as_slice()) {
                            Ok(req) => remote::serve(&store, &secret, &req),
                            Err(e) => Reply::Error(format!("bad request: {e}")),
                        };
                        match fxr_protocol::encode(&reply) {
                            Ok(bytes) => {
                                let _ = s2.send(nng::Message::from(&bytes[..]));
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot encode a data reply"),
                        }
                    }
                    if s2.recv_async(&aio2).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(DataService {
            url,
            stop: tx,
            thread: Some(thread),
            socket,
            aio,
        })
    }

    /// Where peers reach it.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for DataService {
    fn drop(&mut self) {
        let _ = self.stop.send(None);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.aio.cancel();
        self.socket.close();
        // As for the manager link: never free an aio a callback may still hold.
        std::mem::forget(self.aio.clone());
    }
}

/// Fetches the object `r` names from its node into `store`, unless it is there already.
pub fn fetch(store: &Store, r: &DataRef, secret: &str) -> Result<Meta, StoreError> {
    let remote_err = |why: String| StoreError::Remote {
        key: r.key.clone(),
        why,
    };
    let socket = Socket::new(Protocol::Req0).map_err(|e| remote_err(e.to_string()))?;
    let set = || -> Result<(), nng::Error> {
        socket.set_opt::<RecvMaxSize>(fxr_protocol::MAX_FRAME + 64)?;
        socket.set_opt::<RecvTimeout>(Some(Duration::from_secs(30)))?;
        socket.set_opt::<SendTimeout>(Some(Duration::from_secs(30)))?;
        socket.dial(&r.node)
    };
    let mut dialled = false;
    let mut call = |req: &Request| -> Result<Reply, String> {
        if !dialled {
            set().map_err(|e| format!("cannot reach {}: {e}", r.node))?;
            dialled = true;
        }
        let bytes = fxr_protocol::encode(req).map_err(|e| e.to_string())?;
        socket
            .send(nng::Message::from(&bytes[..]))
            .map_err(|(_, e)| e.to_string())?;
        let msg = socket.recv().map_err(|e| e.to_string())?;
        fxr_protocol::decode::<Reply>(msg.as_slice()).map_err(|e| e.to_string())
    };
    let out = remote::fetch(store, r, secret, &mut call);
    socket.close();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_fetched_from_a_peer_over_nng_and_a_wrong_secret_is_refused() {
        let dir = std::env::temp_dir().join(format!("fxr-data-svc-{}", std::process::id()));
        let limits = fxr_datastore::Limits::default();
        let far = Store::open(dir.join("far"), limits).unwrap();
        let near = Store::open(dir.join("near"), limits).unwrap();
        let data: Vec<u8> = (0..(5 << 20)).map(|i| (i % 253) as u8).collect();
        let m = far.put("x", &data).unwrap();
        let svc = DataService::start(far.clone(), "s3".into(), "tcp://127.0.0.1:0").unwrap();
        let r = DataRef {
            key: "x".into(),
            node: svc.url().to_string(),
            size: m.size,
            checksum: m.checksum,
        };
        let e = fetch(&near, &r, "wrong").unwrap_err();
        assert!(e.to_string().contains("wrong endpoint secret"), "{e}");
        fetch(&near, &r, "s3").unwrap();
        assert_eq!(near.get("x").unwrap().bytes(), &data[..]);
        drop(svc);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
