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

/// A fetcher's question: `len` bytes (at most [`DATA_CHUNK`]) of `key` from `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRequest {
    /// The endpoint's secret: only members of the endpoint may read its data.
    pub secret: String,
    pub key: String,
    pub offset: u64,
    pub len: u64,
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
