//! The store's batched insert: one transaction of 1,000 tasks (a submission), and recording
//! 1,000 results.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fxr_broker::store::{Completion, NewTask, SqliteStore, TaskStore};

fn store(c: &mut Criterion) {
    // The store lives in a temporary directory; if the file system refuses, there is nothing
    // to measure.
    let Ok(dir) = tempfile::tempdir() else {
        eprintln!("cannot create a temporary directory for the store benchmark");
        return;
    };
    let s = match SqliteStore::open(&dir.path().join("bench.db")) {
        Ok(s) => std::cell::RefCell::new(s),
        Err(e) => {
            eprintln!("cannot open the benchmark store: {e}");
            return;
        }
    };
    let batch: Vec<NewTask> = (0..1000)
        .map(|_| NewTask {
            owner: 1,
            function_id: "f".into(),
            endpoint_id: "e".into(),
            args: b"{}".to_vec(),
        })
        .collect();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(20);
    g.bench_function("insert 1000 tasks (one transaction, fsync)", |b| {
        b.iter(|| {
            s.borrow_mut()
                .insert_tasks(1, &batch)
                .map(|(_, _, ids)| ids.len())
                .unwrap_or(0)
        })
    });
    g.bench_function("record 1000 results (one transaction, fsync)", |b| {
        b.iter_batched(
            || {
                s.borrow_mut()
                    .insert_tasks(1, &batch)
                    .map(|(_, _, ids)| ids)
                    .unwrap_or_default()
            },
            |ids| {
                let done: Vec<Completion> = ids
                    .iter()
                    .map(|id| Completion {
                        id: *id,
                        result: Some(b"null".to_vec()),
                        data_ref: None,
                        error: None,
                    })
                    .collect();
                s.borrow_mut()
                    .complete(&done)
                    .map(|r| r.iter().filter(|x| **x).count())
                    .unwrap_or(0)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
