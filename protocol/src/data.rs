//! Objects of a node's store as they travel: the reference passed instead of the data, and the
//! chunk request and reply with which anyone holding the endpoint's secret reads an object from
//! the node that has it (another node's worker, the interchange on behalf of a client).

use serde::{Deserialize, Serialize};

/// Bytes per chunk.
pub const DATA_CHUNK: u64 = 4 * 1024 * 1024;

/// Where an object lives: passed in task arguments and results instead of the data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataRef {
    pub key: String,
    /// The address of the data service of the node that holds it (`tcp://HOST:PORT`).
    pub node: String,
    pub size: u64,
    /// CRC-32 (IEEE) of the data.
    pub checksum: u32,
}

/// A fetcher's question: `len` bytes (at most [`DATA_CHUNK`]) of `key` from `offset`, with
/// proof that the fetcher holds the endpoint's secret (which itself never travels): an
/// HMAC-SHA-256 over the request and the time it was made, accepted within
/// [`DataRequest::WINDOW_MS`] of the holder's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRequest {
    pub key: String,
    pub offset: u64,
    pub len: u64,
    /// When it was made, ms since the epoch.
    pub at_ms: u64,
    pub proof: crate::auth::Proof,
}

impl DataRequest {
    /// How far from the holder's clock a request may be made.
    pub const WINDOW_MS: u64 = 60_000;

    fn proof_for(secret: &str, key: &str, offset: u64, len: u64, at_ms: u64) -> crate::auth::Proof {
        crate::auth::mac_of(
            secret,
            b"fxr/data",
            &[
                key.as_bytes(),
                &offset.to_le_bytes(),
                &len.to_le_bytes(),
                &at_ms.to_le_bytes(),
            ],
        )
    }

    /// A request made at `now_ms` by a holder of `secret`.
    pub fn new(secret: &str, key: &str, offset: u64, len: u64, now_ms: u64) -> DataRequest {
        DataRequest {
            key: key.to_string(),
            offset,
            len,
            at_ms: now_ms,
            proof: DataRequest::proof_for(secret, key, offset, len, now_ms),
        }
    }

    /// Whether a holder of `secret` made this request, within the window of `now_ms`.
    pub fn authentic(&self, secret: &str, now_ms: u64) -> bool {
        now_ms.abs_diff(self.at_ms) <= DataRequest::WINDOW_MS
            && crate::auth::same(
                &self.proof,
                &DataRequest::proof_for(secret, &self.key, self.offset, self.len, self.at_ms),
            )
    }
}

/// The wall clock in ms since the epoch, for [`DataRequest`]s.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The holder's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataReply {
    Chunk {
        /// The whole object's size and checksum, so a fetcher notices a changed object.
        size: u64,
        checksum: u32,
        offset: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    Error(String),
}

impl DataRef {
    /// Checks the holder's answer to a request for `len` bytes at `offset`: the chunk's bytes,
    /// or why the answer cannot be used (the holder's own error, an object that is no longer
    /// the one referred to, a chunk out of order). Every reader of chunks goes through here.
    pub fn accept(&self, reply: DataReply, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        match reply {
            DataReply::Error(e) => Err(format!("{}: {e}", self.node)),
            DataReply::Chunk {
                size,
                checksum,
                offset: at,
                bytes,
            } => {
                if size != self.size || checksum != self.checksum {
                    Err(format!(
                        "{} changed at {}: now {size} bytes, checksum {checksum:08x}",
                        self.key, self.node
                    ))
                } else if at != offset || bytes.is_empty() || bytes.len() as u64 > len {
                    Err(format!(
                        "{} sent a chunk of {} out of order",
                        self.node, self.key
                    ))
                } else {
                    Ok(bytes)
                }
            }
        }
    }
}

/// FNV-1a (64 bits) of `bytes`: a stable hash for names (unlike the standard library's, it is
/// the same in every build and run).
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_request_proves_the_secret_for_itself_and_its_time() {
        let r = DataRequest::new("s3cret", "k", 0, 10, 1_000_000);
        assert!(r.authentic("s3cret", 1_000_000 + 59_000));
        assert!(!r.authentic("other", 1_000_000), "another secret");
        assert!(!r.authentic("s3cret", 1_000_000 + 61_000), "too old");
        let mut moved = r.clone();
        moved.offset = 10;
        assert!(!moved.authentic("s3cret", 1_000_000), "another chunk");
        let enc = crate::encode(&r).unwrap();
        assert!(
            !enc.windows(6).any(|w| w == b"s3cret"),
            "the secret is not in the request"
        );
    }

    fn r() -> DataRef {
        DataRef {
            key: "k".into(),
            node: "tcp://n:1".into(),
            size: 10,
            checksum: 7,
        }
    }

    fn chunk(size: u64, offset: u64, bytes: &[u8]) -> DataReply {
        DataReply::Chunk {
            size,
            checksum: 7,
            offset,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn a_chunk_is_taken_only_when_it_is_the_one_asked_for() {
        assert_eq!(r().accept(chunk(10, 4, b"abc"), 4, 4), Ok(b"abc".to_vec()));
        assert!(r()
            .accept(chunk(11, 4, b"abc"), 4, 4)
            .unwrap_err()
            .contains("changed"));
        assert!(r()
            .accept(chunk(10, 0, b"abc"), 4, 4)
            .unwrap_err()
            .contains("out of order"));
        assert!(r()
            .accept(chunk(10, 4, b""), 4, 4)
            .unwrap_err()
            .contains("out of order"));
        assert!(r()
            .accept(chunk(10, 4, b"abcde"), 4, 4)
            .unwrap_err()
            .contains("out of order"));
        let e = r()
            .accept(DataReply::Error("gone".into()), 0, 4)
            .unwrap_err();
        assert_eq!(e, "tcp://n:1: gone");
        assert_ne!(fnv1a(*b"ab"), fnv1a(*b"ba"));
    }
}
