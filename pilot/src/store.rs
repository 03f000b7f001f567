//! The `put` and `get` built-ins: a task's view of its node's object store.
//!
//! A worker learns its store from its environment, which the manager sets: `FXR_STORE` (the
//! directory), `FXR_STORE_CAPACITY` (bytes), `FXR_DATA_NODE` (this node's data service, the
//! `node` of the references it hands out) and `FXR_SECRET` (to fetch from other nodes).

use fxr_datastore::remote::DataRef;
use fxr_datastore::{Limits, Store};
use fxr_protocol::{FailureKind, Outcome, TaskResult};
use serde_json::{json, Value};

/// Most bytes a `put` of `{"size": N}` may ask for.
const MAX_GENERATED: u64 = 4 << 30;
/// Most bytes a `get` returns as text.
const MAX_TEXT: u64 = 1 << 20;

pub(crate) fn open() -> Result<Store, String> {
    let root = std::env::var_os("FXR_STORE")
        .ok_or("this worker has no object store (the manager was started without one)")?;
    let capacity = std::env::var("FXR_STORE_CAPACITY")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(Limits::default().capacity);
    Store::open(
        std::path::PathBuf::from(root),
        Limits {
            capacity,
            ttl: None,
        },
    )
    .map_err(|e| e.to_string())
}

fn node() -> String {
    std::env::var("FXR_DATA_NODE").unwrap_or_default()
}

fn parse(args: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(args).map_err(|e| format!("arguments are not JSON: {e}"))
}

/// Stores a value; its reference as JSON.
pub fn put(args: &[u8]) -> Result<Vec<u8>, String> {
    let v = parse(args)?;
    let key = v["key"].as_str().ok_or("put needs a string `key`")?;
    let store = open()?;
    let meta = match (&v["value"], v["size"].as_u64()) {
        (Value::String(s), None) => store.put(key, s.as_bytes()),
        (Value::Null, Some(n)) if n <= MAX_GENERATED => {
            // A pattern the reader can check, generated straight into the mapping.
            let mut r = std::io::Read::take(Pattern(0), n);
            store.put_from(key, n, &mut r, false)
        }
        (Value::Null, Some(n)) => return Err(format!("`size` {n} is over {MAX_GENERATED}")),
        _ => return Err("put needs either a string `value` or a `size`".into()),
    }
    .map_err(|e| e.to_string())?;
    let r = DataRef {
        key: meta.key,
        node: node(),
        size: meta.size,
        checksum: meta.checksum,
    };
    serde_json::to_vec(&r).map_err(|e| e.to_string())
}

/// Results whose value is larger than this travel by reference when the node has a store,
/// unless the manager says otherwise (`FXR_RESULT_INLINE_MAX`).
pub const INLINE_RESULT_MAX: usize = 1 << 20;

fn inline_max() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("FXR_RESULT_INLINE_MAX")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(INLINE_RESULT_MAX)
    })
}

/// Keeps a large result's value in the node's store and turns the result into its reference
/// ([`Outcome::Stored`]), which the client fetches through the endpoint. A value that cannot be
/// kept stays inline if it fits a message, and fails the task, naming why, if it does not.
pub fn keep_large_result(result: &mut TaskResult) {
    let Outcome::Success(v) = &result.outcome else {
        return;
    };
    if v.len() <= inline_max() || std::env::var_os("FXR_STORE").is_none() {
        return;
    }
    // Task ids are the client's, so two clients may use the same one: a random suffix.
    let key = format!("results/{}-{:08x}", result.id.0, fastrand::u32(..));
    match open().and_then(|s| s.put(&key, v).map_err(|e| e.to_string())) {
        Ok(meta) => {
            result.outcome = Outcome::Stored(DataRef {
                key: meta.key,
                node: node(),
                size: meta.size,
                checksum: meta.checksum,
            })
        }
        Err(e) if v.len() > fxr_protocol::MAX_BODY => {
            let size = v.len();
            *result = TaskResult::failure(
                result.id,
                FailureKind::Rejected,
                format!("result of {size} bytes is over {} bytes and could not be kept in the node's store: {e}", fxr_protocol::MAX_BODY),
            );
        }
        Err(e) => tracing::warn!(error = %e, "a large result stays inline: the store refused it"),
    }
}

/// Bytes 0, 1, ..., 250, 0, 1, ...
struct Pattern(u64);

impl std::io::Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for b in buf.iter_mut() {
            *b = (self.0 % 251) as u8;
            self.0 += 1;
        }
        Ok(buf.len())
    }
}

/// Reads (fetching if it lives elsewhere) and checks an object.
pub fn get(args: &[u8]) -> Result<Vec<u8>, String> {
    let v = parse(args)?;
    let store = open()?;
    let key = match (&v["ref"], v["key"].as_str()) {
        (Value::Null, Some(k)) => k.to_string(),
        (r, None) if r.is_object() => {
            let r: DataRef =
                serde_json::from_value(r.clone()).map_err(|e| format!("bad `ref`: {e}"))?;
            if r.node != node() && !r.node.is_empty() {
                let secret = std::env::var("FXR_SECRET").unwrap_or_default();
                crate::data::fetch(&store, &r, &secret).map_err(|e| e.to_string())?;
            }
            r.key
        }
        _ => return Err("get needs a `key` or a `ref`".into()),
    };
    let obj = store.get(&key).map_err(|e| e.to_string())?;
    obj.verify().map_err(|e| e.to_string())?;
    let m = obj.meta();
    let mut out = json!({"key": m.key, "size": m.size, "checksum": m.checksum});
    if v["text"] == true {
        if m.size > MAX_TEXT {
            return Err(format!(
                "`{key}` is {} bytes; text is returned up to {MAX_TEXT}",
                m.size
            ));
        }
        out["value"] = Value::String(String::from_utf8_lossy(obj.bytes()).into_owned());
    }
    serde_json::to_vec(&out).map_err(|e| e.to_string())
}
