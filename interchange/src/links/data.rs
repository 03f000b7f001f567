//! Reading objects from the nodes' stores on behalf of clients and the broker: one chunk per
//! request, over nng, with the endpoint's secret (each node's data service checks it).
//!
//! This is how a result returned by reference reaches its owner: the broker (or a local client)
//! asks for it chunk by chunk, and the interchange fetches each chunk from the node that holds
//! it. The interchange keeps nothing: at most one chunk per request is in memory.

use fxr_protocol::{DataRef, DataReply, DataRequest, DATA_CHUNK};
use nng::options::{Options, RecvMaxSize, RecvTimeout, SendTimeout};
use nng::{Protocol, Socket};
use std::time::Duration;

/// How long a node has to answer one chunk.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads `len` bytes (at most [`DATA_CHUNK`]) of the object `data` from `offset`. Never fails
/// with a panic or an I/O error: every problem is a [`DataReply::Error`] that names it.
pub fn fetch_chunk(secret: &str, data: &DataRef, offset: u64, len: u64) -> DataReply {
    if !data.node.starts_with("tcp://") {
        return DataReply::Error(format!(
            "`{}` is not a node's data service (tcp://HOST:PORT)",
            data.node
        ));
    }
    let req = DataRequest::new(
        secret,
        &data.key,
        offset,
        len.min(DATA_CHUNK),
        fxr_protocol::data::now_ms(),
    );
    match call(&data.node, &req) {
        Ok(r) => r,
        Err(e) => DataReply::Error(format!("{}: {e}", data.node)),
    }
}

fn call(node: &str, req: &DataRequest) -> Result<DataReply, String> {
    let socket = Socket::new(Protocol::Req0).map_err(|e| e.to_string())?;
    let out = (|| {
        socket
            .set_opt::<RecvMaxSize>(fxr_protocol::MAX_FRAME + 64)
            .map_err(|e| e.to_string())?;
        socket
            .set_opt::<RecvTimeout>(Some(CHUNK_TIMEOUT))
            .map_err(|e| e.to_string())?;
        socket
            .set_opt::<SendTimeout>(Some(CHUNK_TIMEOUT))
            .map_err(|e| e.to_string())?;
        socket
            .dial(node)
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let bytes = fxr_protocol::encode(req).map_err(|e| e.to_string())?;
        socket
            .send(nng::Message::from(&bytes[..]))
            .map_err(|(_, e)| e.to_string())?;
        let msg = socket.recv().map_err(|e| e.to_string())?;
        fxr_protocol::decode::<DataReply>(msg.as_slice()).map_err(|e| e.to_string())
    })();
    socket.close();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_is_not_a_data_service_is_an_error_not_a_panic() {
        let r = DataRef {
            key: "k".into(),
            node: "/etc/passwd".into(),
            size: 1,
            checksum: 0,
        };
        match fetch_chunk("s", &r, 0, 1) {
            DataReply::Error(e) => assert!(e.contains("not a node's data service"), "{e}"),
            other => panic!("{other:?}"),
        }
        let nobody = DataRef {
            node: "tcp://127.0.0.1:1".into(),
            ..r
        };
        match fetch_chunk("s", &nobody, 0, 1) {
            DataReply::Error(e) => assert!(e.contains("127.0.0.1:1"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
