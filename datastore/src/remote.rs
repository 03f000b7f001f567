//! Fetching objects from another node's store, in chunks, without the transport.
//!
//! The peer answers [`Request`]s with [`serve`]; a fetcher calls [`fetch`] with a function that
//! carries one request to the peer and brings its reply back (nng in the pilot, a plain call in
//! the tests). At most one chunk is in memory at a time: chunks are written straight into a
//! draft object, and the object is published only when its checksum matches the reference.

use crate::{check_key, Meta, Store, StoreError};
use std::io::Read;

pub use fxr_protocol::{DataRef, DataReply as Reply, DataRequest as Request, DATA_CHUNK as CHUNK};

/// Answers one request from `store`, if it proves the endpoint's `secret`.
pub fn serve(store: &Store, secret: &str, req: &Request) -> Reply {
    if !req.authentic(secret, fxr_protocol::data::now_ms()) {
        return Reply::Error(
            "wrong endpoint secret (or a request made too long ago: check the clocks)".into(),
        );
    }
    let obj = match store.get(&req.key) {
        Ok(o) => o,
        Err(e) => return Reply::Error(e.to_string()),
    };
    let data = obj.bytes();
    let start = req.offset.min(data.len() as u64) as usize;
    let end = (req.offset.saturating_add(req.len.min(CHUNK))).min(data.len() as u64) as usize;
    Reply::Chunk {
        size: obj.meta().size,
        checksum: obj.meta().checksum,
        offset: start as u64,
        bytes: data[start..end].to_vec(),
    }
}

/// Reads an object chunk by chunk through `call`.
struct ChunkReader<'a> {
    r: &'a DataRef,
    secret: &'a str,
    call: &'a mut dyn FnMut(&Request) -> Result<Reply, String>,
    offset: u64,
    buf: Vec<u8>,
    pos: usize,
    error: Option<String>,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.offset >= self.r.size {
                return Ok(0);
            }
            let req = Request::new(
                self.secret,
                &self.r.key,
                self.offset,
                CHUNK.min(self.r.size - self.offset),
                fxr_protocol::data::now_ms(),
            );
            let chunk = (self.call)(&req)
                .map_err(|e| format!("{}: {e}", self.r.node))
                .and_then(|reply| self.r.accept(reply, req.offset, req.len));
            match chunk {
                Ok(bytes) => {
                    self.offset += bytes.len() as u64;
                    self.buf = bytes;
                    self.pos = 0;
                }
                Err(e) => {
                    self.error = Some(e.clone());
                    return Err(std::io::Error::other(e));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fetches the object `r` names into `store` (under its own key) unless an identical copy is
/// there already; fails, publishing nothing, if the data does not match the reference's
/// checksum.
pub fn fetch(
    store: &Store,
    r: &DataRef,
    secret: &str,
    call: &mut dyn FnMut(&Request) -> Result<Reply, String>,
) -> Result<Meta, StoreError> {
    check_key(&r.key)?;
    if let Ok(local) = store.get(&r.key) {
        if local.meta().size == r.size && local.meta().checksum == r.checksum {
            return Ok(local.meta().clone());
        }
    }
    let mut reader = ChunkReader {
        r,
        secret,
        call,
        offset: 0,
        buf: Vec::new(),
        pos: 0,
        error: None,
    };
    let staged = format!("fetching/{}", r.key);
    let staged = if staged.len() <= crate::MAX_KEY {
        staged
    } else {
        r.key.clone()
    };
    let meta = store.put_from(&staged, r.size, &mut reader, false);
    let meta = match meta {
        Ok(m) => m,
        Err(e) => {
            return Err(match reader.error {
                Some(why) => StoreError::Remote {
                    key: r.key.clone(),
                    why,
                },
                None => e,
            })
        }
    };
    if meta.checksum != r.checksum {
        let _ = store.delete(&staged);
        return Err(StoreError::Corrupt {
            key: r.key.clone(),
            why: format!(
                "fetched from {}: checksum {:08x} does not match the reference's {:08x}",
                r.node, meta.checksum, r.checksum
            ),
        });
    }
    if staged != r.key {
        store.rename(&staged, &r.key)?;
    }
    store.get(&r.key).map(|o| o.meta().clone())
}
