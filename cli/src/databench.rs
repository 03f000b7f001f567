//! `fxr bench data`: moving one object from a producer to a consumer, by each path the
//! data-transfer experiment compares.
//!
//! - `store`: the node's object store (memory-mapped files on /dev/shm): put, then get and read
//!   every byte in place;
//! - `store-remote`: put into one node's store, fetched by another node's store through the
//!   first node's data service (nng over loopback, 4 MiB chunks, checksum checked), then read;
//! - `fs`: a file on a disk file system, written and fsync'd, its pages dropped from the cache
//!   (as a reader on another node would not have them), then read back;
//! - `redis`: `SET` and `GET` on a `redis-server` this command starts on loopback.

use crate::exit;
use anyhow::{bail, Context};
use fxr_datastore::remote::DataRef;
use fxr_datastore::{Limits, Store};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Object size in bytes.
    #[arg(long)]
    pub size: u64,
    /// store | store-remote | fs | redis
    #[arg(long)]
    pub via: String,
    /// Transfers to time; the medians are reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Directory for `fs` (default: a temporary directory under /var/tmp, on disk).
    #[arg(long)]
    pub fs_dir: Option<std::path::PathBuf>,
}

const MAX_SIZE: u64 = 4 << 30;

/// One transfer's write and read times, in seconds.
type Sample = (f64, f64);

fn payload(size: u64) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// Reads every byte (so the time includes touching the data), returning a sum to keep it.
fn touch(b: &[u8]) -> u64 {
    b.iter().step_by(64).map(|x| u64::from(*x)).sum::<u64>() + b.len() as u64
}

fn shm_dir(tag: &str) -> anyhow::Result<tempfile::TempDir> {
    let base = crate::storedir::default_store_dir(None);
    let parent = base.parent().unwrap_or(std::path::Path::new("/tmp"));
    Ok(tempfile::Builder::new()
        .prefix(&format!("fxr-bench-{tag}-"))
        .tempdir_in(parent)?)
}

fn limits(size: u64) -> Limits {
    Limits {
        capacity: size.saturating_mul(2).max(1 << 20),
        ttl: None,
    }
}

fn via_store(data: &[u8], repeat: usize) -> anyhow::Result<Vec<Sample>> {
    let dir = shm_dir("store")?;
    let store = Store::open(dir.path(), limits(data.len() as u64))?;
    let mut out = Vec::new();
    for i in 0..repeat {
        let key = format!("obj{i}");
        let t0 = Instant::now();
        store.put(&key, data)?;
        let w = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let obj = store.get(&key)?;
        std::hint::black_box(touch(obj.bytes()));
        let r = t1.elapsed().as_secs_f64();
        drop(obj);
        store.delete(&key)?;
        out.push((w, r));
    }
    Ok(out)
}

fn via_store_remote(data: &[u8], repeat: usize) -> anyhow::Result<Vec<Sample>> {
    let (da, db) = (shm_dir("far")?, shm_dir("near")?);
    let far = Store::open(da.path(), limits(data.len() as u64))?;
    let near = Store::open(db.path(), limits(data.len() as u64))?;
    let secret = fxr_broker::auth::new_secret()?;
    let svc = fxr_pilot::data::DataService::start(far.clone(), secret.clone(), "tcp://127.0.0.1:0")
        .map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    for i in 0..repeat {
        let key = format!("obj{i}");
        let t0 = Instant::now();
        let m = far.put(&key, data)?;
        let w = t0.elapsed().as_secs_f64();
        let r = DataRef {
            key: key.clone(),
            node: svc.url().to_string(),
            size: m.size,
            checksum: m.checksum,
        };
        let t1 = Instant::now();
        fxr_pilot::data::fetch(&near, &r, &secret)?;
        let obj = near.get(&key)?;
        std::hint::black_box(touch(obj.bytes()));
        let rd = t1.elapsed().as_secs_f64();
        drop(obj);
        far.delete(&key)?;
        near.delete(&key)?;
        out.push((w, rd));
    }
    Ok(out)
}

fn via_fs(
    data: &[u8],
    repeat: usize,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<Vec<Sample>> {
    use std::os::fd::AsRawFd;
    let tmp = match dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir())?,
    };
    let mut out = Vec::new();
    for i in 0..repeat {
        let path = tmp.path().join(format!("obj{i}"));
        let t0 = Instant::now();
        let mut f = std::fs::File::create(&path)?;
        f.write_all(data)?;
        f.sync_all()?;
        let w = t0.elapsed().as_secs_f64();
        // SAFETY: posix_fadvise on a descriptor we own: drop the file's cached pages, as a
        // reader on another node would not have them.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        drop(f);
        let t1 = Instant::now();
        let mut buf = Vec::with_capacity(data.len());
        std::fs::File::open(&path)?.read_to_end(&mut buf)?;
        std::hint::black_box(touch(&buf));
        let r = t1.elapsed().as_secs_f64();
        std::fs::remove_file(&path)?;
        out.push((w, r));
    }
    Ok(out)
}

/// A redis-server on loopback, stopped (by its pid) when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(max: u64) -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let bulk = (max + (1 << 20)).max(512 << 20);
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--protected-mode", "yes"])
            .args(["--proto-max-bulk-len", &bulk.to_string()])
            .args(["--client-query-buffer-limit", &bulk.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server (Debian package redis-server)")?;
        let r = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start listening");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(r)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn via_redis(data: &[u8], repeat: usize) -> anyhow::Result<Vec<Sample>> {
    use fxr_pilot::mapreduce::Redis as Client;
    let server = Redis::start(data.len() as u64)?;
    let addr = format!("127.0.0.1:{}", server.port);
    // A producer and a consumer, each with its own connection, as two workers would be.
    let mut producer = Client::connect(&addr).map_err(anyhow::Error::msg)?;
    let mut consumer = Client::connect(&addr).map_err(anyhow::Error::msg)?;
    let mut out = Vec::new();
    for i in 0..repeat {
        let key = format!("obj{i}");
        let t0 = Instant::now();
        producer.set(&key, data).map_err(anyhow::Error::msg)?;
        let w = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let got = consumer.get(&key).map_err(anyhow::Error::msg)?;
        std::hint::black_box(touch(&got));
        let r = t1.elapsed().as_secs_f64();
        anyhow::ensure!(
            got.len() == data.len(),
            "redis returned {} bytes",
            got.len()
        );
        producer.set(&key, b"").map_err(anyhow::Error::msg)?;
        out.push((w, r));
    }
    Ok(out)
}

pub fn data(a: DataArgs, json: bool) -> anyhow::Result<u8> {
    anyhow::ensure!(
        a.size > 0 && a.size <= MAX_SIZE,
        "--size must be 1 to {MAX_SIZE} bytes"
    );
    anyhow::ensure!((1..=100).contains(&a.repeat), "--repeat must be 1 to 100");
    let data = payload(a.size);
    let samples = match a.via.as_str() {
        "store" => via_store(&data, a.repeat)?,
        "store-remote" => via_store_remote(&data, a.repeat)?,
        "fs" => via_fs(&data, a.repeat, a.fs_dir.as_deref())?,
        "redis" => via_redis(&data, a.repeat)?,
        v => bail!("--via `{v}` is not one of store, store-remote, fs, redis"),
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let write_s = median(samples.iter().map(|s| s.0).collect());
    let read_s = median(samples.iter().map(|s| s.1).collect());
    let total = median(samples.iter().map(|s| s.0 + s.1).collect());
    let mb = a.size as f64 / 1e6;
    let v = serde_json::json!({
        "size": a.size, "via": a.via, "repeat": a.repeat,
        "write_s": write_s, "read_s": read_s, "seconds": total,
        "mb_per_s": mb / total.max(1e-12),
        "write_mb_per_s": mb / write_s.max(1e-12), "read_mb_per_s": mb / read_s.max(1e-12),
    });
    if json {
        println!("{v}");
    } else {
        println!(
            "{} bytes via {}: write {:.6} s, read {:.6} s, {:.1} MB/s (median of {})",
            a.size,
            a.via,
            write_s,
            read_s,
            mb / total.max(1e-12),
            a.repeat
        );
    }
    Ok(exit::OK)
}

#[derive(clap::Args, Debug, Clone)]
pub struct MapReduceArgs {
    /// sort | wordcount
    #[arg(long, default_value = "wordcount")]
    pub workload: String,
    /// store | fs | redis: where the intermediate data goes.
    #[arg(long)]
    pub via: String,
    #[arg(long, default_value_t = 8)]
    pub mappers: usize,
    #[arg(long, default_value_t = 4)]
    pub reducers: usize,
    /// Input size in MiB (split evenly among the mappers).
    #[arg(long, default_value_t = 64)]
    pub input_mib: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
}

/// Deterministic input text: words from a vocabulary with a skewed distribution (WordCount), or
/// 100-byte records with a 10-byte key (Sort).
fn input_split(workload: &str, bytes: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(bytes as usize + 128);
    while (out.len() as u64) < bytes {
        if workload == "sort" {
            for _ in 0..10 {
                out.push(b'!' + rng.u8(0..94));
            }
            out.push(b' ');
            out.extend(std::iter::repeat_n(b'x', 88));
            out.push(b'\n');
        } else {
            // Zipf-like: small word ids are far more frequent.
            let id = (rng.f64().powi(3) * 50_000.0) as u32;
            out.extend_from_slice(format!("w{id} ").as_bytes());
            if rng.u8(..) < 16 {
                out.push(b'\n');
            }
        }
    }
    out
}

pub fn mapreduce(a: MapReduceArgs, json: bool) -> anyhow::Result<u8> {
    use fxr_protocol::{Builtin, Function, Outcome, Task, TaskId};
    anyhow::ensure!(
        ["sort", "wordcount"].contains(&a.workload.as_str()),
        "--workload must be sort or wordcount"
    );
    anyhow::ensure!(
        ["store", "fs", "redis"].contains(&a.via.as_str()),
        "--via must be store, fs or redis"
    );
    anyhow::ensure!(
        (1..=1024).contains(&a.mappers) && (1..=1024).contains(&a.reducers),
        "--mappers and --reducers must be 1 to 1024"
    );
    anyhow::ensure!(
        (1..=8192).contains(&a.input_mib),
        "--input-mib must be 1 to 8192"
    );
    let dir = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir())?;
    let job = "job";
    std::fs::create_dir_all(dir.path().join(job))?;
    let per = (a.input_mib << 20) / a.mappers as u64;
    let mut words = 0u64;
    let mut records = 0u64;
    for i in 0..a.mappers {
        let split = input_split(&a.workload, per, i as u64 + 1);
        words += split
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .count() as u64;
        records += split.iter().filter(|b| **b == b'\n').count() as u64;
        let p = dir.path().join(job).join(format!("input-{i}"));
        let mut f = std::fs::File::create(&p)?;
        f.write_all(&split)?;
        f.sync_all()?;
    }
    let redis = if a.via == "redis" {
        Some(Redis::start(4 << 30)?)
    } else {
        None
    };
    let common = crate::bench::Common {
        workers: a.workers,
        simulate_workers: None,
        managers: 1,
        blocks: 1,
        function: "noop".into(),
        prefetch: 0,
        dispatch_shards: 1,
        via_broker: false,
        store: crate::bench::StoreKind::Sqlite,
        encrypt: false,
        slurm_nodes: None,
    };
    let store = shm_dir("mapreduce")?;
    let (ep, workers) = crate::bench::endpoint_with(&common, |s| {
        s.store_dir = Some(store.path().join("store"));
        s.node.store_capacity = 16 << 30;
    })?;
    let mut door = ep.interchange.local_client();
    let outcome = (|| -> anyhow::Result<serde_json::Value> {
        fxr_interchange::client::wait_for_workers(&mut door, workers, Duration::from_secs(60))?;
        let base = serde_json::json!({
            "workload": a.workload, "via": a.via, "dir": dir.path(), "job": job,
            "redis": redis.as_ref().map(|r| format!("127.0.0.1:{}", r.port)).unwrap_or_default(),
            "mappers": a.mappers, "reducers": a.reducers,
        });
        let step = |b: Builtin, which: &str, n: usize, id0: u64| -> Vec<Task> {
            (0..n)
                .map(|i| {
                    let mut v = base.clone();
                    v[which] = i.into();
                    Task {
                        id: TaskId(id0 + i as u64),
                        function: Function::Builtin(b),
                        args: v.to_string().into_bytes(),
                        attempt: 0,
                        container: None,
                    }
                })
                .collect()
        };
        let mut phases: std::collections::BTreeMap<String, f64> = Default::default();
        let mut run = |tasks: Vec<Task>| -> anyhow::Result<f64> {
            let t = Instant::now();
            let results = fxr_interchange::client::submit_and_wait(
                &mut door,
                tasks,
                1000,
                Duration::from_secs(3600),
                &mut |_, _| {},
            )?;
            let secs = t.elapsed().as_secs_f64();
            for r in results {
                match r.outcome {
                    Outcome::Success(v) => {
                        let v: serde_json::Value = serde_json::from_slice(&v)?;
                        for (k, x) in v.as_object().into_iter().flatten() {
                            *phases.entry(k.clone()).or_default() += x.as_f64().unwrap_or(0.0);
                        }
                    }
                    Outcome::Failure { message, .. } => bail!("a step failed: {message}"),
                    Outcome::Stored(_) => bail!("a step's result was too large to return"),
                }
            }
            Ok(secs)
        };
        let map_s = run(step(Builtin::Map, "mapper", a.mappers, 0))?;
        let reduce_s = run(step(Builtin::Reduce, "reducer", a.reducers, 1_000_000))?;
        // The outputs must be the whole answer: every word counted, every record sorted.
        let mut counted = 0u64;
        let mut sorted = 0u64;
        for r in 0..a.reducers {
            let out = std::fs::read(dir.path().join(job).join(format!("output-{r}")))?;
            let lines: Vec<&[u8]> = out
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect();
            if a.workload == "wordcount" {
                for l in &lines {
                    let c = l.rsplit(|b| *b == b'\t').next().unwrap_or_default();
                    counted += std::str::from_utf8(c)?.parse::<u64>()?;
                }
            } else {
                anyhow::ensure!(
                    lines.windows(2).all(|w| w[0] <= w[1]),
                    "reducer {r}'s output is not sorted"
                );
                sorted += lines.len() as u64;
            }
        }
        if a.workload == "wordcount" {
            anyhow::ensure!(counted == words, "counted {counted} words of {words}");
        } else {
            anyhow::ensure!(sorted == records, "sorted {sorted} records of {records}");
        }
        let mut v = serde_json::json!({
            "workload": a.workload, "via": a.via, "mappers": a.mappers, "reducers": a.reducers,
            "input_bytes": a.input_mib << 20, "workers": workers,
            "seconds": map_s + reduce_s, "map_stage_s": map_s, "reduce_stage_s": reduce_s,
        });
        for k in [
            "input_read",
            "map",
            "intermediate_write",
            "intermediate_read",
            "reduce",
            "output_write",
        ] {
            v[format!("{k}_s")] = phases.get(k).copied().unwrap_or(0.0).into();
        }
        v["intermediate_bytes"] = phases
            .get("intermediate_bytes")
            .copied()
            .unwrap_or(0.0)
            .into();
        Ok(v)
    })();
    drop(door);
    crate::bench::shutdown(ep);
    drop(redis);
    let v = outcome?;
    if json {
        println!("{v}");
    } else {
        println!(
            "{} via {}: {:.3} s (map stage {:.3} s, reduce stage {:.3} s); task-seconds: input read {:.3}, map {:.3}, intermediate write {:.3}, intermediate read {:.3}, reduce {:.3}, output write {:.3}",
            a.workload, a.via, v["seconds"].as_f64().unwrap_or(0.0),
            v["map_stage_s"].as_f64().unwrap_or(0.0), v["reduce_stage_s"].as_f64().unwrap_or(0.0),
            v["input_read_s"].as_f64().unwrap_or(0.0), v["map_s"].as_f64().unwrap_or(0.0),
            v["intermediate_write_s"].as_f64().unwrap_or(0.0), v["intermediate_read_s"].as_f64().unwrap_or(0.0),
            v["reduce_s"].as_f64().unwrap_or(0.0), v["output_write_s"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(exit::OK)
}
