//! `fxr bench routing` and `fxr bench cold-start`: the paper's container-routing experiment, and
//! the cold-start cost of each container runtime on this machine.
//!
//! The routing benchmark submits N sleep functions spread round-robin over K container types to
//! an endpoint started for it, with one dispatch policy, and reports the completion time and
//! what the managers counted: cold starts and container switches. With `--mode real` the
//! workers are processes inside real containers (one image; the types differ by an option the
//! runtime passes into the container, so each type needs workers of its own); with
//! `--mode simulated` they are in-process workers that take `--cold-start` seconds to start.

use crate::bench::{endpoint_with, shutdown, Common};
use crate::exit;
use anyhow::{bail, Context};
use fxr_interchange::client;
use fxr_interchange::dispatch::Policy;
use fxr_pilot::event::Event;
use fxr_pilot::pool::{ProcessPool, WorkerPool};
use fxr_protocol::{Builtin, ContainerSpec, FromWorker, Function, Task, TaskId};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct RoutingArgs {
    /// Functions (tasks) to run.
    #[arg(long, default_value_t = 3000)]
    pub functions: usize,
    /// Container types they are spread over.
    #[arg(long, default_value_t = 4)]
    pub container_types: usize,
    /// random | warm | warm-hard | least-loaded | round-robin
    #[arg(long, default_value = "warm")]
    pub policy: Policy,
    /// real (worker processes in containers) or simulated (in-process workers).
    #[arg(long, default_value = "simulated")]
    pub mode: String,
    /// How long each function sleeps, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub duration_ms: u64,
    /// Managers (nodes).
    #[arg(long, default_value_t = 4)]
    pub managers: u32,
    /// Workers per manager.
    #[arg(long, default_value_t = 4)]
    pub workers: u32,
    /// The container runtime (real mode: bwrap, podman or charliecloud).
    #[arg(long, default_value = "bwrap")]
    pub runtime: String,
    /// The image, in the runtime's terms (real mode; see `fxr container image`).
    #[arg(long)]
    pub image: Option<String>,
    /// Simulated mode: each container worker's cold start, SECONDS or @FILE of samples.
    #[arg(long, default_value = "1.92")]
    pub cold_start: String,
    /// Under `warm`, how often one task may force a container switch.
    #[arg(long, value_parser = crate::opts::duration, default_value = "1s")]
    pub cold_routing_interval: Duration,
    /// Simulated mode: run time-scaled, every duration (task, cold start, cold routing
    /// interval) divided by this; `seconds` is scaled back, `wall_seconds` is what passed.
    #[arg(long, default_value_t = 1)]
    pub time_scale: u32,
    /// Give up after this long.
    #[arg(long, value_parser = crate::opts::duration, default_value = "30m")]
    pub timeout: Duration,
}

/// A cold-start cost divided by `scale`: a number of seconds, or `@FILE` of samples (written
/// scaled to a file in `dir`).
fn scaled_cost(cost: &str, scale: f64, dir: &std::path::Path) -> anyhow::Result<String> {
    use fxr_pilot::pool::Cost;
    if scale == 1.0 {
        return Ok(cost.to_string());
    }
    match Cost::parse(cost).map_err(anyhow::Error::msg)? {
        Cost::Fixed(d) => Ok(format!("{}", d.as_secs_f64() / scale)),
        Cost::Samples(s) => {
            let path = dir.join("cold-start-samples");
            let text: String = s
                .iter()
                .map(|d| format!("{}\n", d.as_secs_f64() / scale))
                .collect();
            std::fs::write(&path, text)?;
            Ok(format!("@{}", path.display()))
        }
    }
}

/// An option that makes container type `k` distinct without changing the image.
fn type_option(runtime: &str, k: usize) -> Vec<String> {
    match runtime {
        "bwrap" => vec!["--setenv".into(), "FXR_TYPE".into(), k.to_string()],
        "podman" | "docker" => vec![format!("--env=FXR_TYPE={k}")],
        "charliecloud" => vec![format!("--set-env=FXR_TYPE={k}")],
        // Simulated containers are never started: the option only names the type.
        _ => vec![format!("type-{k}")],
    }
}

pub fn routing(a: RoutingArgs, json: bool) -> anyhow::Result<u8> {
    let real = match a.mode.as_str() {
        "real" => true,
        "simulated" => false,
        m => bail!("--mode `{m}` is neither real nor simulated"),
    };
    anyhow::ensure!(
        a.functions > 0 && a.container_types > 0,
        "--functions and --container-types must be at least 1"
    );
    anyhow::ensure!(
        a.managers > 0 && a.workers > 0,
        "--managers and --workers must be at least 1"
    );
    anyhow::ensure!(
        a.time_scale >= 1 && (a.time_scale == 1 || !real),
        "--time-scale is for simulated mode, and at least 1"
    );
    let scale = f64::from(a.time_scale);
    anyhow::ensure!(
        a.duration_ms.is_multiple_of(u64::from(a.time_scale)),
        "--duration-ms must be a multiple of --time-scale"
    );
    let scratch = tempfile::tempdir()?;
    let cold_start = scaled_cost(&a.cold_start, scale, scratch.path())?;
    let image = match (&a.image, real) {
        (Some(i), _) => i.clone(),
        (None, false) => "routing".into(),
        (None, true) => bail!("--mode real needs --image (build one with `fxr container image`)"),
    };
    let common = Common {
        workers: a.workers,
        simulate_workers: (!real).then_some(a.workers),
        managers: if real { 1 } else { a.managers },
        blocks: if real { a.managers } else { 1 },
        function: "noop".into(),
        prefetch: 0,
        dispatch_shards: 1,
        via_broker: false,
        store: crate::bench::StoreKind::Sqlite,
        encrypt: false,
        slurm_nodes: None,
    };
    let (ep, workers) = endpoint_with(&common, |s| {
        s.dispatch = a.policy;
        s.cold_routing_interval = a.cold_routing_interval.div_f64(scale);
        s.worker_max_idletime = Duration::ZERO;
        s.heartbeat_period = Duration::from_secs(1);
        if !real {
            s.simulate_cold_start = vec![cold_start.clone()];
        }
    })?;
    let mut door = ep.interchange.local_client();
    let outcome = (|| -> anyhow::Result<serde_json::Value> {
        client::wait_for_workers(&mut door, workers, Duration::from_secs(120))?;
        let args = format!("{{\"ms\":{}}}", a.duration_ms / u64::from(a.time_scale)).into_bytes();
        let tasks: Vec<Task> = (0..a.functions)
            .map(|i| Task {
                id: TaskId(i as u64),
                function: Function::Builtin(Builtin::Sleep),
                args: args.clone(),
                attempt: 0,
                container: Some(Box::new(ContainerSpec {
                    runtime: if real {
                        a.runtime.clone()
                    } else {
                        "sim".into()
                    },
                    image: image.clone(),
                    options: type_option(
                        if real { &a.runtime } else { "sim" },
                        i % a.container_types,
                    ),
                })),
            })
            .collect();
        let start = Instant::now();
        let results = client::submit_and_wait(&mut door, tasks, 10_000, a.timeout, &mut |_, _| {})?;
        let wall = start.elapsed().as_secs_f64();
        let failed: Vec<_> = results.iter().filter(|r| !r.is_success()).collect();
        if let Some(r) = failed.first() {
            eprintln!(
                "{} of {} tasks failed; the first: {:?}",
                failed.len(),
                a.functions,
                r.outcome
            );
        }
        let status = client::status(&mut door, Duration::from_secs(10))?;
        let sum = |f: fn(&fxr_protocol::WorkerCounters) -> u64| -> u64 {
            status.managers.iter().map(|m| f(&m.counters)).sum()
        };
        Ok(serde_json::json!({
            "seconds": wall * scale,
            "wall_seconds": wall,
            "time_scale": a.time_scale,
            "cold_starts": sum(|c| c.cold_starts),
            "container_switches": sum(|c| c.container_switches),
            "container_errors": sum(|c| c.container_errors),
            "policy": a.policy.name(),
            "mode": a.mode,
            "functions": a.functions,
            "container_types": a.container_types,
            "duration_ms": a.duration_ms,
            "managers": a.managers,
            "workers": workers,
            "runtime": if real { a.runtime.clone() } else { "simulated".into() },
            "cold_start": if real { String::new() } else { a.cold_start.clone() },
            "failed": failed.len(),
        }))
    })();
    drop(door);
    shutdown(ep);
    let v = outcome?;
    if json {
        println!("{v}");
    } else {
        println!(
            "{} functions over {} types, {} policy, {} mode: {:.2} s, {} cold starts, {} container switches",
            a.functions,
            a.container_types,
            v["policy"].as_str().unwrap_or(""),
            a.mode,
            v["seconds"].as_f64().unwrap_or(0.0),
            v["cold_starts"],
            v["container_switches"]
        );
    }
    Ok(if v["failed"] == 0 {
        exit::OK
    } else {
        exit::TASK_FAILED
    })
}

#[derive(clap::Args, Debug, Clone)]
pub struct ColdStartArgs {
    /// bwrap, podman, charliecloud, or another runtime this machine has.
    #[arg(long)]
    pub runtime: String,
    /// The image, in the runtime's terms (see `fxr container image`).
    #[arg(long)]
    pub image: String,
    /// Starts to time.
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// Also write the samples, one per line in seconds (for `--cold-start @FILE`).
    #[arg(long)]
    pub samples_out: Option<std::path::PathBuf>,
}

/// Starts a worker in the container `repeat` times, timing each start until the worker says it
/// is ready, then stops it and waits for it to end.
pub fn cold_start(a: ColdStartArgs, json: bool) -> anyhow::Result<u8> {
    anyhow::ensure!((1..=1000).contains(&a.repeat), "--repeat must be 1 to 1000");
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pool = ProcessPool::new(exe, tx);
    let spec = ContainerSpec {
        runtime: a.runtime.clone(),
        image: a.image.clone(),
        options: Vec::new(),
    };
    let mut samples = Vec::with_capacity(a.repeat);
    for g in 1..=a.repeat as u64 {
        let t0 = Instant::now();
        pool.start(0, g, Some(&spec), t0);
        let deadline = t0 + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Event::Worker {
                    generation,
                    msg: FromWorker::Ready { .. },
                    ..
                }) if generation == g => break,
                Ok(Event::WorkerGone {
                    generation, reason, ..
                }) if generation == g => bail!("the worker did not start: {reason}"),
                Ok(_) => {}
                Err(_) => bail!("the worker did not start within 120 s"),
            }
        }
        samples.push(t0.elapsed().as_secs_f64());
        pool.stop(0, g);
        // Wait for it to end, so starts do not overlap.
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Event::WorkerGone { generation, .. }) if generation == g => break,
                Ok(_) => {}
                Err(_) => bail!("the worker did not stop within 120 s"),
            }
        }
    }
    pool.shutdown();
    if let Some(p) = &a.samples_out {
        let text: String = samples.iter().map(|s| format!("{s:.6}\n")).collect();
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let v = serde_json::json!({
        "runtime": a.runtime, "image": a.image, "repeat": a.repeat,
        "median_s": median, "min_s": sorted[0], "max_s": sorted[sorted.len() - 1],
        "samples_s": samples,
    });
    if json {
        println!("{v}");
    } else {
        println!(
            "{}: median cold start {:.3} s over {} starts (min {:.3}, max {:.3})",
            a.runtime,
            median,
            a.repeat,
            sorted[0],
            sorted[sorted.len() - 1]
        );
    }
    Ok(exit::OK)
}
