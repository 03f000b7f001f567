//! Frame encode and decode of a batch of 1,000 no-op tasks (the interchange → manager hot path).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fxr_protocol::{decode, encode_into, Builtin, Function, InterchangeMsg, Task, TaskId};

fn batch(n: u64) -> InterchangeMsg {
    let tasks = (0..n)
        .map(|i| Task {
            id: TaskId(i),
            function: Function::Builtin(Builtin::Noop),
            args: vec![],
            attempt: 0,
            container: None,
        })
        .collect();
    InterchangeMsg::Tasks { seq: 1, tasks }
}

fn frames(c: &mut Criterion) {
    let msg = batch(1000);
    let mut buf = Vec::new();
    if let Err(e) = encode_into(&mut buf, &msg) {
        eprintln!("cannot encode the benchmark batch: {e}");
        return;
    }
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("encode 1000 tasks", |b| {
        let mut out = Vec::with_capacity(buf.len());
        b.iter(|| {
            out.clear();
            black_box(encode_into(&mut out, black_box(&msg)).is_ok());
        })
    });
    g.bench_function("decode 1000 tasks", |b| {
        b.iter(|| decode::<InterchangeMsg>(black_box(&buf)).is_ok())
    });
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
