//! The dispatcher's decision for one batch: 64 managers, 10,000 queued tasks, one `dispatch`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fxr_interchange::dispatch::{DispatchConfig, Dispatcher, Outbox, Policy};
use fxr_protocol::{BlockId, Builtin, Function, ManagerId, Registration, Task, TaskId};
use std::time::Instant;

fn setup(policy: Policy) -> Dispatcher {
    let now = Instant::now();
    let mut d = Dispatcher::new(DispatchConfig {
        policy,
        ..DispatchConfig::default()
    });
    let mut out = Outbox::default();
    for m in 0..64u64 {
        d.register(
            Registration {
                manager_id: ManagerId(m),
                block_id: BlockId("b".into()),
                rank: 0,
                block_size: 1,
                hostname: "h".into(),
                cores: 64,
                memory_bytes: 0,
                workers: 64,
                prefetch: 100,
                containers: vec![String::new()],
                version: "bench".into(),
                secret: String::new(),
                simulated: true,
            },
            now,
            &mut out,
        );
    }
    let tasks = (0..10_000u64).map(|i| Task {
        id: TaskId(i),
        function: Function::Builtin(Builtin::Noop),
        args: vec![],
        attempt: 0,
        container: None,
    });
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

criterion_group!(benches, dispatch);
criterion_main!(benches);
