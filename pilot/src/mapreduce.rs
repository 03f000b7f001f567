//! The `map` and `reduce` built-ins: the steps of the paper's MapReduce workloads (Sort and
//! WordCount), with the intermediate data passed through the node's object store, a file
//! system, or Redis, and the time of each phase reported.
//!
//! Arguments (both steps): `{"workload": "sort"|"wordcount", "via": "store"|"fs"|"redis",
//! "dir": DIR, "redis": "HOST:PORT", "job": NAME, "mappers": M, "reducers": R}`, and `"mapper": i`
//! or `"reducer": j`. Inputs are `DIR/JOB/input-i` and outputs `DIR/JOB/output-j`, on the file
//! system in every case (as in the paper, where only the intermediate data moved); intermediate
//! partitions are `JOB/m-i/r-j` in the chosen medium.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Instant;

struct Job {
    workload: String,
    via: String,
    dir: PathBuf,
    redis: String,
    job: String,
    mappers: usize,
    reducers: usize,
}

fn job(v: &Value) -> Result<Job, String> {
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let n = |k: &str| {
        v[k].as_u64()
            .filter(|n| (1..=100_000).contains(n))
            .map(|n| n as usize)
            .ok_or(format!("`{k}` must be a count from 1 to 100000"))
    };
    let j = Job {
        workload: s("workload").ok_or("`workload` must be sort or wordcount")?,
        via: s("via").ok_or("`via` must be store, fs or redis")?,
        dir: PathBuf::from(s("dir").ok_or("`dir` (the job's directory) is missing")?),
        redis: s("redis").unwrap_or_default(),
        job: s("job").ok_or("`job` is missing")?,
        mappers: n("mappers")?,
        reducers: n("reducers")?,
    };
    if !["sort", "wordcount"].contains(&j.workload.as_str()) {
        return Err(format!(
            "workload `{}` is neither sort nor wordcount",
            j.workload
        ));
    }
    if !["store", "fs", "redis"].contains(&j.via.as_str()) {
        return Err(format!("via `{}` is not store, fs or redis", j.via));
    }
    if j.job.is_empty()
        || !j
            .job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("`job` must be letters, digits, `-` and `_`".into());
    }
    Ok(j)
}

/// The intermediate medium.
enum Medium {
    Store(fxr_datastore::Store),
    Fs(PathBuf),
    Redis(Redis),
}

impl Medium {
    fn open(j: &Job) -> Result<Medium, String> {
        Ok(match j.via.as_str() {
            "store" => Medium::Store(crate::store::open()?),
            "fs" => {
                let d = j.dir.join(&j.job).join("intermediate");
                std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
                Medium::Fs(d)
            }
            _ => Medium::Redis(Redis::connect(&j.redis)?),
        })
    }

    fn put(&mut self, key: &str, data: &[u8]) -> Result<(), String> {
        match self {
            Medium::Store(s) => s.put(key, data).map(|_| ()).map_err(|e| e.to_string()),
            Medium::Fs(d) => {
                let p = d.join(key.replace('/', "_"));
                let mut f =
                    std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                f.write_all(data)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| format!("{}: {e}", p.display()))
            }
            Medium::Redis(r) => r.set(key, data),
        }
    }

    /// Reads an object and hands its bytes to `f` (in place for the store).
    fn with<T>(&mut self, key: &str, f: impl FnOnce(&[u8]) -> T) -> Result<T, String> {
        match self {
            Medium::Store(s) => {
                let o = s.get(key).map_err(|e| e.to_string())?;
                Ok(f(o.bytes()))
            }
            Medium::Fs(d) => {
                let p = d.join(key.replace('/', "_"));
                let b = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                Ok(f(&b))
            }
            Medium::Redis(r) => Ok(f(&r.get(key)?)),
        }
    }
}

/// A minimal Redis client (RESP over one connection): SET and GET of binary values.
#[derive(Debug)]
pub struct Redis {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Redis {
    pub fn connect(addr: &str) -> Result<Redis, String> {
        let w =
            TcpStream::connect(addr).map_err(|e| format!("cannot reach Redis at {addr}: {e}"))?;
        let _ = w.set_nodelay(true);
        let r = BufReader::with_capacity(1 << 20, w.try_clone().map_err(|e| e.to_string())?);
        Ok(Redis { w, r })
    }

    fn command(&mut self, args: &[&[u8]]) -> Result<Option<Vec<u8>>, String> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            v.extend_from_slice(a);
            v.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&v).map_err(|e| format!("redis: {e}"))?;
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .map_err(|e| format!("redis: {e}"))?;
        match line.as_bytes().first() {
            Some(b'+') | Some(b':') => Ok(None),
            Some(b'-') => Err(format!("redis: {}", line.trim_end())),
            Some(b'$') => {
                let n: i64 = line[1..]
                    .trim()
                    .parse()
                    .map_err(|_| "redis: bad bulk length")?;
                if n < 0 {
                    return Ok(None);
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.r
                    .read_exact(&mut buf)
                    .map_err(|e| format!("redis: {e}"))?;
                buf.truncate(n as usize);
                Ok(Some(buf))
            }
            _ => Err(format!("redis: unexpected reply `{}`", line.trim_end())),
        }
    }

    pub fn set(&mut self, key: &str, data: &[u8]) -> Result<(), String> {
        self.command(&[b"SET", key.as_bytes(), data]).map(|_| ())
    }

    pub fn get(&mut self, key: &str) -> Result<Vec<u8>, String> {
        self.command(&[b"GET", key.as_bytes()])?
            .ok_or_else(|| format!("redis: no key `{key}`"))
    }
}

fn partition_key(j: &Job, m: usize, r: usize) -> String {
    format!("{}/m-{m}/r-{r}", j.job)
}

fn hash(w: &[u8]) -> u64 {
    // FNV-1a: stable across processes, so every mapper partitions alike.
    w.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One map step.
pub fn map(args: &[u8]) -> Result<Vec<u8>, String> {
    let v: Value =
        serde_json::from_slice(args).map_err(|e| format!("arguments are not JSON: {e}"))?;
    let j = job(&v)?;
    let i = v["mapper"].as_u64().ok_or("`mapper` is missing")? as usize;
    let t = Instant::now();
    let input = j.dir.join(&j.job).join(format!("input-{i}"));
    let data = std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
    let input_read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); j.reducers];
    if j.workload == "wordcount" {
        let mut counts: HashMap<&[u8], u64> = HashMap::new();
        for w in data
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
        {
            *counts.entry(w).or_default() += 1;
        }
        for (w, c) in counts {
            let p = &mut parts[(hash(w) % j.reducers as u64) as usize];
            p.extend_from_slice(w);
            p.push(b'\t');
            p.extend_from_slice(c.to_string().as_bytes());
            p.push(b'\n');
        }
    } else {
        // Sort: records are lines, partitioned by their first byte into key ranges.
        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let r = usize::from(line[0]) * j.reducers / 256;
            let p = &mut parts[r.min(j.reducers - 1)];
            p.extend_from_slice(line);
            p.push(b'\n');
        }
    }
    let map_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut medium = Medium::open(&j)?;
    let mut bytes = 0;
    for (r, p) in parts.iter().enumerate() {
        bytes += p.len();
        medium.put(&partition_key(&j, i, r), p)?;
    }
    let write_s = t.elapsed().as_secs_f64();
    serde_json::to_vec(&json!({"input_read": input_read, "map": map_s,
        "intermediate_write": write_s, "intermediate_bytes": bytes}))
    .map_err(|e| e.to_string())
}

/// One reduce step.
pub fn reduce(args: &[u8]) -> Result<Vec<u8>, String> {
    let v: Value =
        serde_json::from_slice(args).map_err(|e| format!("arguments are not JSON: {e}"))?;
    let j = job(&v)?;
    let r = v["reducer"].as_u64().ok_or("`reducer` is missing")? as usize;
    let mut medium = Medium::open(&j)?;
    let mut read_s = 0.0;
    let mut reduce_s = 0.0;
    let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for m in 0..j.mappers {
        let t = Instant::now();
        let key = partition_key(&j, m, r);
        // Reading is copying out (for the store, from the mapping) and reducing is what the
        // workload does with the records.
        let part = medium.with(&key, <[u8]>::to_vec)?;
        read_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for line in part.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if j.workload == "wordcount" {
                let mut it = line.rsplitn(2, |b| *b == b'\t');
                let c: u64 = it
                    .next()
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                *counts
                    .entry(it.next().unwrap_or_default().to_vec())
                    .or_default() += c;
            } else {
                lines.push(line.to_vec());
            }
        }
        reduce_s += t.elapsed().as_secs_f64();
    }
    let t = Instant::now();
    let mut out = Vec::new();
    if j.workload == "wordcount" {
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_unstable();
        for (w, c) in v {
            out.extend_from_slice(&w);
            out.push(b'\t');
            out.extend_from_slice(c.to_string().as_bytes());
            out.push(b'\n');
        }
    } else {
        lines.sort_unstable();
        for l in lines {
            out.extend_from_slice(&l);
            out.push(b'\n');
        }
    }
    reduce_s += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let path = j.dir.join(&j.job).join(format!("output-{r}"));
    let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(&out)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let write_s = t.elapsed().as_secs_f64();
    serde_json::to_vec(&json!({"intermediate_read": read_s, "reduce": reduce_s,
        "output_write": write_s, "output_bytes": out.len()}))
    .map_err(|e| e.to_string())
}
