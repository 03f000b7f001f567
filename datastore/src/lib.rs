//! fxr-datastore: the per-node object store that workers share through memory-mapped files.
//!
//! One store per node, in a directory on a memory file system (`/dev/shm/fxr-ENDPOINT` by
//! default). Every object is a file `objects/<hex of key>`: a 32-byte header (magic, size,
//! CRC-32 of the data, flags, creation time) followed by the data. Readers map the file and read
//! the data in place ([`Object::bytes`]): nothing is copied through the manager.
//!
//! Rules:
//! - **Atomic publication**: an object is written to `tmp/` and renamed into `objects/` only
//!   when whole, so a reader sees a whole object or none, even if the writer is killed mid-write
//!   (its temporary file is removed by the next [`Store::open`] or [`Store::sweep`]).
//! - **Bounded**: a capacity in bytes, enforced under an exclusive lock at publication by
//!   evicting the least recently used unpinned objects; an object that cannot fit is refused
//!   with [`StoreError::TooLarge`]. Objects older than the TTL are removed by [`Store::sweep`].
//! - **Checked**: every object carries a CRC-32; a local read checks the header and size, and
//!   [`Object::verify`] (used for every remote fetch) checks the data.

use memmap2::Mmap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod remote;
pub mod tenancy;

const MAGIC: &[u8; 8] = b"FXRDATA1";
/// Bytes of the header before an object's data.
pub const HEADER: usize = 32;
/// Longest key, in bytes.
pub const MAX_KEY: usize = 200;
const PINNED: u32 = 1;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bad key `{0}`: keys are 1 to 200 bytes of letters, digits, `.`, `_`, `-` and `/`, not starting with `.` or `/`")]
    BadKey(String),
    #[error("object `{key}` of {size} bytes cannot fit in the store ({capacity} bytes, {pinned} of them pinned)")]
    TooLarge {
        key: String,
        size: u64,
        capacity: u64,
        pinned: u64,
    },
    #[error("no object `{0}`")]
    NotFound(String),
    #[error("object `{key}` is corrupt: {why}")]
    Corrupt { key: String, why: String },
    #[error("cannot fetch `{key}`: {why}")]
    Remote { key: String, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// What a store may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of object data (headers not counted).
    pub capacity: u64,
    /// Objects older than this are removed by [`Store::sweep`]; none when `None`.
    pub ttl: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            capacity: 1 << 30,
            ttl: None,
        }
    }
}

/// An object's description.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub key: String,
    pub size: u64,
    pub checksum: u32,
    pub pinned: bool,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// A store directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    limits: Limits,
}

/// An object mapped for reading.
#[derive(Debug)]
pub struct Object {
    map: Mmap,
    meta: Meta,
}

impl Object {
    /// The data, read in place from the mapping.
    pub fn bytes(&self) -> &[u8] {
        &self.map[HEADER..HEADER + self.meta.size as usize]
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Checks the data against its checksum.
    pub fn verify(&self) -> Result<(), StoreError> {
        let sum = crc32fast::hash(self.bytes());
        if sum == self.meta.checksum {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                key: self.meta.key.clone(),
                why: format!(
                    "checksum {sum:08x} does not match {:08x}",
                    self.meta.checksum
                ),
            })
        }
    }
}

/// Checks a key.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY
        && !key.starts_with('.')
        && !key.starts_with('/')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadKey(key.chars().take(64).collect()))
    }
}

fn file_name(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn key_of(name: &str) -> Option<String> {
    if !name.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..name.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(name.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn header(size: u64, checksum: u32, flags: u32, created_ms: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&size.to_le_bytes());
    h[16..20].copy_from_slice(&checksum.to_le_bytes());
    h[20..24].copy_from_slice(&flags.to_le_bytes());
    h[24..32].copy_from_slice(&created_ms.to_le_bytes());
    h
}

fn parse_header(key: &str, h: &[u8], file_len: u64) -> Result<Meta, StoreError> {
    let bad = |why: &str| StoreError::Corrupt {
        key: key.to_string(),
        why: why.to_string(),
    };
    if h.len() < HEADER || &h[..8] != MAGIC {
        return Err(bad("not an fxr object"));
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&h[r]);
        u64::from_le_bytes(b)
    };
    let size = word(8..16);
    if size.checked_add(HEADER as u64) != Some(file_len) {
        return Err(bad("its size does not match its file"));
    }
    Ok(Meta {
        key: key.to_string(),
        size,
        checksum: word(16..20) as u32,
        pinned: word(20..24) as u32 & PINNED != 0,
        created_ms: word(24..32),
    })
}

/// A lock on the store's directory, held while objects are published, evicted or swept.
struct Lock(File);

impl Lock {
    fn take(root: &Path) -> Result<Lock, StoreError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .map_err(io("cannot open the store's lock"))?;
        // SAFETY: flock(2) on a descriptor we own.
        let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
        if r != 0 {
            return Err(io("cannot lock the store")(std::io::Error::last_os_error()));
        }
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: flock(2) on a descriptor we own.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&self.0), libc::LOCK_UN) };
    }
}

/// A temporary file being written; removed unless published.
struct Draft {
    path: PathBuf,
    file: File,
    published: bool,
}

impl Drop for Draft {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Store {
    /// Opens (creating) the store at `root`, and removes temporary files that writers left
    /// behind (a writer killed mid-write).
    pub fn open(root: impl Into<PathBuf>, limits: Limits) -> Result<Store, StoreError> {
        let root = root.into();
        for d in ["objects", "tmp"] {
            std::fs::create_dir_all(root.join(d))
                .map_err(io(format!("cannot create {}", root.join(d).display())))?;
        }
        let s = Store { root, limits };
        s.clean_drafts()?;
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(file_name(key))
    }

    /// Removes drafts whose writer is gone (the writer's pid is in the name).
    fn clean_drafts(&self) -> Result<(), StoreError> {
        let dir = self.root.join("tmp");
        for e in std::fs::read_dir(&dir).map_err(io("cannot list the store's drafts"))? {
            let Ok(e) = e else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: Option<i32> = name.split('.').nth(1).and_then(|p| p.parse().ok());
            // SAFETY: kill(pid, 0) only asks whether the process exists.
            let alive = pid.is_some_and(|p| p > 0 && unsafe { libc::kill(p, 0) } == 0);
            if !alive {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    fn draft(&self, size: u64) -> Result<Draft, StoreError> {
        let name = format!("d.{}.{:016x}", std::process::id(), fastrand::u64(..));
        let path = self.root.join("tmp").join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("cannot create a draft object"))?;
        file.set_len(HEADER as u64 + size).map_err(io(
            "cannot size a draft object (is the store's file system full?)",
        ))?;
        Ok(Draft {
            path,
            file,
            published: false,
        })
    }

    /// Stores `bytes` under `key`, replacing an object of that key.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<Meta, StoreError> {
        check_key(key)?;
        let size = bytes.len() as u64;
        self.check_size(key, size)?;
        let mut d = self.draft(size)?;
        std::os::unix::fs::FileExt::write_all_at(&d.file, bytes, HEADER as u64).map_err(io(
            "cannot write a draft object (is the store's file system full?)",
        ))?;
        let meta = Meta {
            key: key.into(),
            size,
            checksum: crc32fast::hash(bytes),
            pinned: false,
            created_ms: now_ms(),
        };
        self.publish(&mut d, &meta)?;
        Ok(meta)
    }

    fn check_size(&self, key: &str, size: u64) -> Result<(), StoreError> {
        if size > self.limits.capacity {
            return Err(StoreError::TooLarge {
                key: key.into(),
                size,
                capacity: self.limits.capacity,
                pinned: 0,
            });
        }
        Ok(())
    }

    /// Stores `size` bytes read from `r` under `key`, written straight into the mapped draft.
    pub fn put_from(
        &self,
        key: &str,
        size: u64,
        r: &mut dyn Read,
        pinned: bool,
    ) -> Result<Meta, StoreError> {
        check_key(key)?;
        self.check_size(key, size)?;
        let mut d = self.draft(size)?;
        let mut hasher = crc32fast::Hasher::new();
        // Written with write(2) after the header's place: on a memory file system that is
        // cheaper than faulting in a writable mapping page by page. Reads are the zero-copy side.
        let mut file = std::io::BufWriter::with_capacity(0, &d.file);
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(HEADER as u64))
            .map_err(io("cannot write a draft object"))?;
        let mut buf = vec![0u8; (1 << 20).min(size as usize).max(1)];
        let mut at = 0u64;
        while at < size {
            let want = ((size - at) as usize).min(buf.len());
            let n = r
                .read(&mut buf[..want])
                .map_err(io(format!("cannot read the data of `{key}`")))?;
            if n == 0 {
                return Err(StoreError::Io {
                    what: format!("the data of `{key}` ended after {at} of {size} bytes"),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io(
                "cannot write a draft object (is the store's file system full?)",
            ))?;
            at += n as u64;
        }
        drop(file);
        let meta = Meta {
            key: key.into(),
            size,
            checksum: hasher.finalize(),
            pinned,
            created_ms: now_ms(),
        };
        self.publish(&mut d, &meta)?;
        Ok(meta)
    }

    /// Writes the header and renames the draft into place, evicting what must go first.
    fn publish(&self, d: &mut Draft, meta: &Meta) -> Result<(), StoreError> {
        let flags = if meta.pinned { PINNED } else { 0 };
        std::os::unix::fs::FileExt::write_all_at(
            &d.file,
            &header(meta.size, meta.checksum, flags, meta.created_ms),
            0,
        )
        .map_err(io("cannot write an object's header"))?;
        let _lock = Lock::take(&self.root)?;
        self.make_room(&meta.key, meta.size)?;
        std::fs::rename(&d.path, self.path(&meta.key))
            .map_err(io(format!("cannot publish `{}`", meta.key)))?;
        d.published = true;
        Ok(())
    }

    /// Evicts least recently used unpinned objects (not `key`) until `size` more bytes fit.
    fn make_room(&self, key: &str, size: u64) -> Result<(), StoreError> {
        let mut entries = self.scan()?;
        let replaced: u64 = entries
            .iter()
            .filter(|e| e.meta.key == key)
            .map(|e| e.meta.size)
            .sum();
        let mut used: u64 = entries.iter().map(|e| e.meta.size).sum::<u64>() - replaced;
        if used + size <= self.limits.capacity {
            return Ok(());
        }
        let pinned: u64 = entries
            .iter()
            .filter(|e| e.meta.pinned && e.meta.key != key)
            .map(|e| e.meta.size)
            .sum();
        entries.retain(|e| !e.meta.pinned && e.meta.key != key);
        entries.sort_by_key(|e| e.used);
        if pinned + size > self.limits.capacity {
            return Err(StoreError::TooLarge {
                key: key.into(),
                size,
                capacity: self.limits.capacity,
                pinned,
            });
        }
        for e in entries {
            if used + size <= self.limits.capacity {
                break;
            }
            if std::fs::remove_file(self.path(&e.meta.key)).is_ok() {
                used -= e.meta.size;
            }
        }
        Ok(())
    }

    /// Every object, with when it was last used.
    fn scan(&self) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let dir = self.root.join("objects");
        for e in std::fs::read_dir(&dir).map_err(io("cannot list the store"))? {
            let Ok(e) = e else { continue };
            let Some(key) = key_of(&e.file_name().to_string_lossy()) else {
                continue;
            };
            let Ok(mut f) = File::open(e.path()) else {
                continue; // deleted meanwhile
            };
            let Ok(md) = f.metadata() else { continue };
            let mut h = [0u8; HEADER];
            if f.read_exact(&mut h).is_err() {
                continue;
            }
            let Ok(meta) = parse_header(&key, &h, md.len()) else {
                continue;
            };
            let used = md.modified().unwrap_or(UNIX_EPOCH);
            out.push(Entry { meta, used });
        }
        Ok(out)
    }

    /// Maps an object for reading, and marks it used (for eviction).
    pub fn get(&self, key: &str) -> Result<Object, StoreError> {
        check_key(key)?;
        let path = self.path(key);
        let f = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(key.into()))
            }
            Err(e) => return Err(io(format!("cannot open `{key}`"))(e)),
        };
        let len = f.metadata().map_err(io("cannot stat an object"))?.len();
        if len < HEADER as u64 {
            return Err(StoreError::Corrupt {
                key: key.into(),
                why: "shorter than its header".into(),
            });
        }
        let _ = f.set_modified(SystemTime::now());
        // SAFETY: published objects are never written again: a new version of a key is a new
        // file renamed over the old name, so this mapping stays whole while it lives.
        let map = unsafe { Mmap::map(&f) }.map_err(io(format!("cannot map `{key}`")))?;
        let meta = parse_header(key, &map[..HEADER], len)?;
        Ok(Object { map, meta })
    }

    /// Gives an object another key (atomically replacing an object of that key).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        check_key(from)?;
        check_key(to)?;
        let _lock = Lock::take(&self.root)?;
        std::fs::rename(self.path(from), self.path(to)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NotFound(from.into())
            } else {
                io(format!("cannot rename `{from}` to `{to}`"))(e)
            }
        })
    }

    /// Removes an object; whether it was there.
    pub fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        match std::fs::remove_file(self.path(key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(format!("cannot delete `{key}`"))(e)),
        }
    }

    /// Every object's description, by key.
    pub fn list(&self) -> Result<Vec<Meta>, StoreError> {
        let mut v: Vec<Meta> = self.scan()?.into_iter().map(|e| e.meta).collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(v)
    }

    /// Bytes of object data held.
    pub fn used(&self) -> Result<u64, StoreError> {
        Ok(self.scan()?.iter().map(|e| e.meta.size).sum())
    }

    /// Removes objects past the TTL and drafts of writers that are gone; how many objects went.
    pub fn sweep(&self) -> Result<usize, StoreError> {
        self.clean_drafts()?;
        let Some(ttl) = self.limits.ttl else {
            return Ok(0);
        };
        let _lock = Lock::take(&self.root)?;
        let cutoff = now_ms().saturating_sub(ttl.as_millis() as u64);
        let mut n = 0;
        for e in self.scan()? {
            if e.meta.created_ms < cutoff && std::fs::remove_file(self.path(&e.meta.key)).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Removes the whole store directory.
    pub fn destroy(self) -> Result<(), StoreError> {
        std::fs::remove_dir_all(&self.root)
            .map_err(io(format!("cannot remove {}", self.root.display())))
    }
}

#[derive(Debug)]
struct Entry {
    meta: Meta,
    used: SystemTime,
}

#[cfg(test)]
mod tests;
