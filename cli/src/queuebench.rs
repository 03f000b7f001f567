//! `fxr bench queue`: the interchange's dispatcher alone, in this process, without sockets or
//! encoding: how much memory a queued task costs, and how much CPU a task costs from
//! submission through dispatch to its result. It isolates the dispatcher from the wire and the
//! pilots, which `fxr bench throughput` measures together.

use fxr_interchange::dispatch::{DispatchConfig, Dispatcher, Outbox};
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

fn queue(d: &mut Dispatcher, from: u64, n: u64, args_bytes: usize, out: &mut Outbox) {
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
fn run_all(d: &mut Dispatcher, out: &mut Outbox) -> u64 {
    let mut done = 0;
    while d.outstanding() > 0 {
        d.dispatch(Instant::now(), out);
        let sent: Vec<(ManagerId, InterchangeMsg)> = out.to_managers.drain(..).collect();
        if sent.is_empty() {
            break;
        }
        for (m, msg) in sent {
            if let InterchangeMsg::Tasks { seq, tasks } = msg {
                d.on_message(m, ManagerMsg::Ack { seq }, Instant::now(), out);
                let results = tasks
                    .iter()
                    .map(|t| TaskResult {
                        id: t.id,
                        outcome: Outcome::Success(b"null".to_vec()),
                        run_us: 1,
                    })
                    .collect();
                let msg = ManagerMsg::Results {
                    results,
                    capacity: vec![],
                    counters: WorkerCounters::default(),
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
    let mut d = Dispatcher::new(DispatchConfig::default());
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
    for rep in 0..a.repeat.max(1) {
        let t0 = Instant::now();
        if rep > 0 {
            queue(&mut d, next, a.tasks, a.args_bytes, &mut out);
            next += a.tasks;
        }
        let done = run_all(&mut d, &mut out);
        anyhow::ensure!(done == a.tasks, "{done} results for {} tasks", a.tasks);
        runs.push(t0.elapsed().as_secs_f64() * 1e6 / a.tasks as f64);
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let v = serde_json::json!({
        "tasks": a.tasks, "args_bytes": a.args_bytes, "managers": a.managers, "workers": a.workers,
        "bytes_per_queued_task": per_task,
        "bytes_per_queued_task_beyond_args": per_task - a.args_bytes as f64,
        "us_per_task": median, "runs_us_per_task": runs,
    });
    if json {
        println!("{v}");
    } else {
        println!(
            "{} queued tasks: {per_task:.0} bytes each ({:.0} beyond their arguments); submit → dispatch → result: median {median:.3} µs per task (first run included)",
            a.tasks,
            per_task - a.args_bytes as f64
        );
    }
    Ok(crate::exit::OK)
}
