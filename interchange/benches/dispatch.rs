//! The dispatcher's decisions: 10,000 queued tasks over 64 idle managers in one `dispatch`; and
//! the steady state of a large endpoint, where 2,048 full managers (131,072 workers) each finish
//! a task and `dispatch` refills them from a long queue.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fxr_interchange::dispatch::{DispatchConfig, Dispatcher, Outbox, Policy};
use fxr_protocol::{
    BlockId, Builtin, Function, InterchangeMsg, ManagerId, ManagerMsg, Outcome, Registration, Task,
    TaskId, TaskResult,
};
use std::time::Instant;

fn registration(m: u64, prefetch: u32) -> Registration {
    Registration {
        manager_id: ManagerId(m),
        block_id: BlockId("b".into()),
        rank: 0,
        block_size: 1,
        hostname: "h".into(),
        cores: 64,
        memory_bytes: 0,
        workers: 64,
        prefetch,
        containers: vec![],
        version: "bench".into(),
        proof: [0; 32],
        simulated: true,
    }
}

fn noop(i: u64) -> Task {
    Task {
        id: TaskId(i),
        function: Function::Builtin(Builtin::Noop),
        args: vec![],
        attempt: 0,
        container: None,
    }
}

fn setup(policy: Policy) -> Dispatcher {
    let now = Instant::now();
    let mut d = Dispatcher::new(DispatchConfig {
        policy,
        ..DispatchConfig::default()
    });
    let mut out = Outbox::default();
    for m in 0..64u64 {
        d.register(registration(m, 100), now, &mut out);
    }
    let tasks = (0..10_000u64).map(noop);
    d.submit(tasks, &mut out);
    d
}

fn dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch");
    g.throughput(Throughput::Elements(10_000));
    for policy in [Policy::Random, Policy::RoundRobin, Policy::LeastLoaded] {
        g.bench_function(
            format!("10000 tasks to 64 managers, {}", policy.name()),
            |b| {
                b.iter_batched(
                    || setup(policy),
                    |mut d| {
                        let mut out = Outbox::default();
                        d.dispatch(Instant::now(), &mut out);
                        out
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

/// 2,048 managers of 64 workers (131,072), all full, with 10,000 tasks queued; which tasks each
/// manager holds is read back from the dispatcher's own batches.
struct Endpoint {
    d: Dispatcher,
    held: Vec<std::collections::VecDeque<TaskId>>,
    next_task: u64,
    next_manager: usize,
}

impl Endpoint {
    fn new(policy: Policy) -> Endpoint {
        let now = Instant::now();
        let mut d = Dispatcher::new(DispatchConfig {
            policy,
            // Long tasks: no burst window, so managers stay at workers + prefetch.
            short_task_us: 0,
            ..DispatchConfig::default()
        });
        let mut out = Outbox::default();
        for m in 0..2048u64 {
            d.register(registration(m, 4), now, &mut out);
        }
        let n = 2048 * 68 + 10_000;
        d.submit((0..n).map(noop), &mut out);
        let mut e = Endpoint {
            d,
            held: vec![Default::default(); 2048],
            next_task: n,
            next_manager: 0,
        };
        e.dispatch();
        e
    }

    fn dispatch(&mut self) {
        let now = Instant::now();
        let mut out = Outbox::default();
        self.d.dispatch(now, &mut out);
        for (m, msg) in out.to_managers {
            if let InterchangeMsg::Tasks { seq, tasks } = msg {
                self.d
                    .on_message(m, ManagerMsg::Ack { seq }, now, &mut Outbox::default());
                self.held[m.0 as usize].extend(tasks.iter().map(|t| t.id));
            }
        }
    }

    /// 64 managers each finish a task, 64 new tasks arrive, and the dispatcher refills.
    fn step(&mut self) {
        let now = Instant::now();
        let mut out = Outbox::default();
        for _ in 0..64 {
            let m = self.next_manager;
            self.next_manager = (m + 31) % 2048;
            let Some(id) = self.held[m].pop_front() else {
                continue;
            };
            let results = vec![TaskResult {
                id,
                outcome: Outcome::Success(b"null".to_vec()),
                run_us: 100_000,
            }];
            self.d.on_message(
                ManagerId(m as u64),
                ManagerMsg::Results {
                    results,
                    capacity: vec![],
                    counters: Default::default(),
                    acks: Vec::new(),
                },
                now,
                &mut out,
            );
        }
        self.d
            .submit((self.next_task..self.next_task + 64).map(noop), &mut out);
        self.next_task += 64;
        self.dispatch();
    }
}

fn refill(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch at 131,072 workers");
    g.throughput(Throughput::Elements(64));
    for policy in [Policy::Random, Policy::RoundRobin, Policy::LeastLoaded] {
        let mut e = Endpoint::new(policy);
        g.bench_function(
            format!(
                "64 results then refill, 2048 full managers, {}",
                policy.name()
            ),
            |b| b.iter(|| e.step()),
        );
    }
    g.finish();
}

criterion_group!(benches, dispatch, refill);
criterion_main!(benches);
