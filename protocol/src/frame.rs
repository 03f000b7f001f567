//! The frame: an 8-byte header and a postcard body.
//!
//! ```text
//! +------+------+---------+-------+----------------+----------------------+
//! | 'F'  | 'X'  | version | flags | body length LE | body (postcard)      |
//! | 1 B  | 1 B  |  1 B    |  1 B  |     4 B        | at most MAX_FRAME B  |
//! +------+------+---------+-------+----------------+----------------------+
//! ```
//!
//! Why postcard: it is serde-driven (one derive per message, no schema compiler), compact (varint
//! integers, no field names), and fast — a batch of 1,000 no-op tasks encodes in a few
//! microseconds. Its decoder borrows from the input, checks every length against the bytes that
//! remain and never trusts a length prefix for an allocation, so arbitrary bytes produce an error,
//! not a panic or an out-of-memory. The header lets a stream reader reject a wrong peer, a wrong
//! version or an oversized frame before reading the body.

use serde::{de::DeserializeOwned, Serialize};

/// The protocol version carried in every frame; a peer with another version is refused.
pub const PROTOCOL_VERSION: u8 = 2;
/// Length of the frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// The largest body a frame may carry (16 MiB: one 10 MiB task body plus room).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
const MAGIC: [u8; 2] = *b"FX";

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame too short: {len} bytes, the header alone is {FRAME_HEADER_LEN}")]
    Truncated { len: usize },
    #[error("not an fxr frame (magic {found:02x?})")]
    BadMagic { found: [u8; 2] },
    #[error("protocol version {found} is not supported (this build speaks {PROTOCOL_VERSION})")]
    BadVersion { found: u8 },
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame says its body is {declared} bytes but {actual} follow")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("malformed message body: {0}")]
    Body(String),
}

/// Appends one frame holding `msg` to `out`.
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, msg: &T) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[MAGIC[0], MAGIC[1], PROTOCOL_VERSION, 0, 0, 0, 0, 0]);
    let mut body = postcard::to_extend(msg, std::mem::take(out))
        .map_err(|e| FrameError::Body(e.to_string()))?;
    let len = body.len() - start - FRAME_HEADER_LEN;
    if len > MAX_FRAME {
        body.truncate(start);
        *out = body;
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    // The length fits in u32 because MAX_FRAME does.
    body[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    *out = body;
    Ok(())
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(64);
    encode_into(&mut out, msg)?;
    Ok(out)
}

/// Checks a frame header and returns the body length that follows it.
pub fn parse_header(header: &[u8]) -> Result<usize, FrameError> {
    if header.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Truncated { len: header.len() });
    }
    if header[0..2] != MAGIC {
        return Err(FrameError::BadMagic {
            found: [header[0], header[1]],
        });
    }
    if header[2] != PROTOCOL_VERSION {
        return Err(FrameError::BadVersion { found: header[2] });
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    Ok(len)
}

/// Decodes one whole frame (header and body, nothing else).
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let len = parse_header(frame)?;
    let body = &frame[FRAME_HEADER_LEN..];
    if body.len() != len {
        return Err(FrameError::LengthMismatch {
            declared: len,
            actual: body.len(),
        });
    }
    decode_body(body)
}

/// Decodes a frame body whose header was already checked with [`parse_header`].
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Body(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Body(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Reads one frame from any byte stream the caller owns (a pipe, a socket) and decodes it.
/// `Ok(None)` on a clean end of stream before a header. The crate opens nothing itself; this is
/// the codec applied to a reader, kept here so every stream transport shares one implementation.
pub fn read_frame<T: DeserializeOwned>(
    r: &mut impl std::io::Read,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<T>> {
    use std::io::{Error, ErrorKind};
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(Error::new(
                    ErrorKind::UnexpectedEof,
                    "stream ended inside a frame header",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = parse_header(&header).map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
    buf.resize(len, 0);
    r.read_exact(buf)?;
    decode_body(buf)
        .map(Some)
        .map_err(|e| Error::new(ErrorKind::InvalidData, e))
}
