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
