//! `fxr bench queue`: the interchange's dispatcher alone, in this process, without sockets or
//! encoding: how much memory a queued task costs, and how much CPU a task costs from
//! submission through dispatch to its result. It isolates the dispatcher from the wire and the
//! pilots, which `fxr bench throughput` measures together. With `--shards N` the dispatcher is
//! sharded across N threads (`[engine] dispatch_shards`), and the figures are those of the
//! whole sharded dispatcher: the tasks waiting in front of the shards, and every thread.

use fxr_interchange::dispatch::{DispatchConfig, Outbox, Sharded};
use fxr_protocol::{
    BlockId, Builtin, Function, InterchangeMsg, ManagerId, ManagerMsg, Outcome, Registration, Task,
    TaskId, TaskResult, WorkerCounters,
};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    /// Tasks queued (and then run) per repetition.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// Bytes of arguments per task.
    #[arg(long, default_value_t = 0)]
    pub args_bytes: usize,
    /// Simulated managers taking the tasks.
    #[arg(long, default_value_t = 64)]
    pub managers: u64,
    /// Workers per manager.
    #[arg(long, default_value_t = 64)]
    pub workers: u32,
    #[arg(long, default_value_t = 5)]
    pub repeat: u32,
    /// Dispatch shards, each on its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
}

/// CPU seconds of each dispatch shard's thread, by thread id.
fn shard_cpu() -> Vec<(u64, f64)> {
    crate::procstat::each_thread_cpu_seconds(|n| n.starts_with("dispatch-"))
}

/// Resident memory of this process now, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        // SAFETY: sysconf only reads a constant.
        .map_or(0, |pages| {
            pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
        })
}

fn registration(id: u64, workers: u32) -> Registration {
    Registration {
        manager_id: ManagerId(id),
        block_id: BlockId("bench".into()),
        rank: 0,
        block_size: 1,
        hostname: "bench".into(),
        cores: workers,
        memory_bytes: 0,
        workers,
        prefetch: 0,
        containers: vec![],
        version: env!("CARGO_PKG_VERSION").into(),
        proof: [0; 32],
        simulated: true,
    }
}

fn queue(d: &mut Sharded, from: u64, n: u64, args_bytes: usize, out: &mut Outbox) {
    d.submit(
        (from..from + n).map(|i| Task {
            id: TaskId(i),
            function: Function::Builtin(Builtin::Noop),
            args: vec![b'x'; args_bytes],
            attempt: 0,
            container: None,
        }),
        out,
    );
}

/// Dispatches until every task has its result, answering each batch at once; returns the
/// results seen.
fn run_all(d: &mut Sharded, n: u64, out: &mut Outbox) -> u64 {
    let mut done = 0;
    let mut idle_turns = 0;
    while done < n {
        d.dispatch(Instant::now(), out);
        let sent: Vec<(ManagerId, InterchangeMsg)> = out.to_managers.drain(..).collect();
        done += out.results.len() as u64;
        out.results.clear();
        if sent.is_empty() {
            // Nothing sent: finished, or (a bug) stuck; a few turns tell which.
            idle_turns += 1;
            if d.outstanding() == 0 || idle_turns > 1000 {
                break;
            }
        } else {
            idle_turns = 0;
        }
        for (m, msg) in sent {
            if let InterchangeMsg::Tasks { seq, tasks } = msg {
                d.on_message(m, ManagerMsg::Ack { seq }, Instant::now(), out);
                let results = tasks
                    .iter()
                    .map(|t| TaskResult {
                        id: t.id,
                        outcome: Outcome::Success(Vec::new()),
                        run_us: 1,
                    })
                    .collect();
                let msg = ManagerMsg::Results {
                    results,
                    capacity: vec![],
                    counters: WorkerCounters::default(),
                    acks: Vec::new(),
                };
                d.on_message(m, msg, Instant::now(), out);
            }
        }
        done += out.results.len() as u64;
        out.results.clear();
    }
    done
}

pub fn queue_bench(a: QueueArgs, json: bool) -> anyhow::Result<u8> {
    anyhow::ensure!(
        a.tasks > 0 && a.managers > 0 && a.workers > 0,
        "--tasks, --managers and --workers must be at least 1"
    );
    let mut d = Sharded::new(DispatchConfig {
        shards: a.shards as usize,
        ..DispatchConfig::default()
    })?;
    let mut out = Outbox::default();
    // Memory: the first fill of a fresh dispatcher, before any manager takes a task.
    let before = rss();
    queue(&mut d, 1, a.tasks, a.args_bytes, &mut out);
    let after = rss();
    let per_task = after.saturating_sub(before) as f64 / a.tasks as f64;
    for m in 1..=a.managers {
        d.register(registration(m, a.workers), Instant::now(), &mut out);
    }
    out.to_managers.clear();
    // CPU: submit, dispatch and results, per repetition (the first drains the queue above).
    let mut next = a.tasks + 1;
    let mut runs = Vec::new();
    let caller0 = crate::procstat::this_thread_cpu_seconds();
    let shards0 = shard_cpu();
    for rep in 0..a.repeat.max(1) {
        let t0 = Instant::now();
        if rep > 0 {
            queue(&mut d, next, a.tasks, a.args_bytes, &mut out);
            next += a.tasks;
        }
        let done = run_all(&mut d, a.tasks, &mut out);
        anyhow::ensure!(done == a.tasks, "{done} results for {} tasks", a.tasks);
        runs.push(t0.elapsed().as_secs_f64() * 1e6 / a.tasks as f64);
    }
    let total = a.tasks as f64 * f64::from(a.repeat.max(1)) / 1e6;
    let caller_us = (crate::procstat::this_thread_cpu_seconds() - caller0) / total;
    let shard_us: Vec<f64> = shard_cpu()
        .iter()
        .map(|(tid, s)| {
            let before = shards0.iter().find(|(t, _)| t == tid).map_or(0.0, |x| x.1);
            (s - before) / total
        })
        .collect();
    let busiest_shard_us = shard_us.iter().copied().fold(0.0, f64::max);
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let v = serde_json::json!({
        "tasks": a.tasks, "args_bytes": a.args_bytes, "managers": a.managers, "workers": a.workers,
        "shards": a.shards,
        "bytes_per_queued_task": per_task,
        "bytes_per_queued_task_beyond_args": per_task - a.args_bytes as f64,
        "us_per_task": median, "runs_us_per_task": runs,
        "caller_cpu_us_per_task": caller_us, "shard_threads_cpu_us_per_task": shard_us,
        "busiest_thread_cpu_us_per_task": caller_us.max(busiest_shard_us),
    });
    if json {
        println!("{v}");
    } else {
        println!(
            "{} queued tasks: {per_task:.0} bytes each ({:.0} beyond their arguments); submit → dispatch → result: median {median:.3} µs per task (first run included)",
            a.tasks,
            per_task - a.args_bytes as f64
        );
        println!(
            "CPU per task: {caller_us:.3} µs on the calling thread (the simulated managers, and the hand-out when sharded); shard threads: {}",
            shard_us
                .iter()
                .map(|u| format!("{u:.3} µs"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(crate::exit::OK)
}
