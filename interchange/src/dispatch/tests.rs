//! The dispatcher's rules, driven by events alone: no sockets, no processes, no clock.

use super::*;
use fxr_protocol::{Builtin, Function};

fn reg(id: u64, workers: u32, prefetch: u32) -> Registration {
    Registration {
        manager_id: ManagerId(id),
        block_id: BlockId(format!("b{}", id / 100)),
        rank: 0,
        block_size: 1,
        hostname: "h".into(),
        cores: workers,
        memory_bytes: 0,
        workers,
        prefetch,
        containers: vec![String::new()],
        version: "test".into(),
        secret: String::new(),
        simulated: true,
    }
}

fn tasks(range: std::ops::Range<u64>) -> Vec<Task> {
    range
        .map(|i| Task {
            id: TaskId(i),
            function: Function::Builtin(Builtin::Noop),
            args: vec![],
            attempt: 0,
            container: None,
        })
        .collect()
}

fn ok(id: TaskId) -> TaskResult {
    TaskResult {
        id,
        outcome: Outcome::Success(b"null".to_vec()),
        run_us: 1,
    }
}

fn sent(out: &Outbox) -> Vec<(ManagerId, u64, Vec<TaskId>)> {
    out.to_managers
        .iter()
        .filter_map(|(m, msg)| match msg {
            InterchangeMsg::Tasks { seq, tasks } => {
                Some((*m, *seq, tasks.iter().map(|t| t.id).collect()))
            }
            _ => None,
        })
        .collect()
}

/// Defaults without the short-task burst, so slot counts are exact.
fn base() -> DispatchConfig {
    DispatchConfig {
        burst_prefetch: 0,
        ..DispatchConfig::default()
    }
}

fn dispatcher(policy: Policy) -> Dispatcher {
    Dispatcher::new(DispatchConfig {
        policy,
        max_retries: 1,
        ..base()
    })
}

#[test]
fn batches_fill_each_manager_up_to_its_slots() {
    let now = Instant::now();
    let mut d = dispatcher(Policy::LeastLoaded);
    let mut out = Outbox::default();
    d.register(reg(1, 2, 2), now, &mut out);
    d.register(reg(2, 2, 2), now, &mut out);
    d.submit(tasks(0..20), &mut out);
    d.dispatch(now, &mut out);
    let s = sent(&out);
    assert_eq!(
        s.len(),
        2,
        "one batch per manager, not one message per task"
    );
    assert!(s.iter().all(|(_, _, t)| t.len() == 4));
    assert_eq!(d.queued(), 12);
    assert_eq!(d.in_flight(), 8);
}

#[test]
fn results_free_slots_and_leave_exactly_once() {
    let now = Instant::now();
    let mut d = dispatcher(Policy::RoundRobin);
    let mut out = Outbox::default();
    d.register(reg(1, 1, 0), now, &mut out);
    d.submit(tasks(0..3), &mut out);
    d.dispatch(now, &mut out);
    assert_eq!(sent(&out).len(), 1);
    let mut out = Outbox::default();
    let r = ManagerMsg::Results {
        results: vec![ok(TaskId(0)), ok(TaskId(0))],
        capacity: vec![],
    };
    d.on_message(ManagerId(1), r, now, &mut out);
    assert_eq!(out.results.len(), 1, "the duplicate result is dropped");
    assert_eq!(d.counters().duplicates_dropped, 1);
    d.dispatch(now, &mut out);
    assert_eq!(sent(&out)[0].2, vec![TaskId(1)]);
}

#[test]
fn lost_manager_requeues_then_fails_as_manager_lost() {
    let now = Instant::now();
    let mut d = dispatcher(Policy::Random);
    let mut out = Outbox::default();
    d.register(reg(1, 2, 0), now, &mut out);
    d.submit(tasks(0..2), &mut out);
    d.dispatch(now, &mut out);
    d.lost(ManagerId(1), "pipe closed", &mut out);
    assert!(out.results.is_empty());
    assert_eq!(d.queued(), 2, "tasks are back in the queue");
    d.register(reg(2, 2, 0), now, &mut out);
    let mut out = Outbox::default();
    d.dispatch(now, &mut out);
    assert_eq!(sent(&out)[0].0, ManagerId(2));
    d.lost(ManagerId(2), "pipe closed", &mut out);
    assert_eq!(out.results.len(), 2, "max_retries = 1 is used up");
    assert!(out.results.iter().all(|r| matches!(
        r.outcome,
        Outcome::Failure {
            kind: FailureKind::ManagerLost,
            ..
        }
    )));
    assert_eq!(d.outstanding(), 0);
}

#[test]
fn silent_manager_is_lost_at_the_threshold() {
    let t0 = Instant::now();
    let mut d = dispatcher(Policy::LeastLoaded);
    let mut out = Outbox::default();
    d.register(reg(1, 1, 0), t0, &mut out);
    d.register(reg(2, 1, 0), t0, &mut out);
    d.submit(tasks(0..2), &mut out);
    d.dispatch(t0, &mut out);
    let t1 = t0 + Duration::from_secs(15);
    d.on_message(
        ManagerId(2),
        ManagerMsg::Heartbeat { capacity: vec![] },
        t1,
        &mut out,
    );
    let mut out = Outbox::default();
    d.tick(t0 + Duration::from_secs(21), &mut out);
    assert_eq!(out.close, vec![ManagerId(1)]);
    assert!(d.is_registered(ManagerId(2)));
    assert_eq!(d.queued(), 1);
}

#[test]
fn worker_lost_is_retried_within_the_budget() {
    let now = Instant::now();
    let mut d = dispatcher(Policy::LeastLoaded);
    let mut out = Outbox::default();
    d.register(reg(1, 1, 0), now, &mut out);
    d.submit(tasks(0..1), &mut out);
    d.dispatch(now, &mut out);
    let lost = || ManagerMsg::Results {
        results: vec![TaskResult::failure(
            TaskId(0),
            FailureKind::WorkerLost,
            "worker died",
        )],
        capacity: vec![],
    };
    let mut out = Outbox::default();
    d.on_message(ManagerId(1), lost(), now, &mut out);
    assert!(out.results.is_empty(), "first loss is retried");
    d.dispatch(now, &mut out);
    let (_, _, again) = &sent(&out)[0];
    assert_eq!(again, &vec![TaskId(0)]);
    let mut out = Outbox::default();
    d.on_message(ManagerId(1), lost(), now, &mut out);
    assert_eq!(out.results.len(), 1, "second loss exceeds max_retries = 1");
}

#[test]
fn unacknowledged_batches_limit_and_resend() {
    let t0 = Instant::now();
    let mut d = Dispatcher::new(DispatchConfig {
        max_unacked: 2,
        max_batch: 1,
        ..base()
    });
    let mut out = Outbox::default();
    d.register(reg(1, 10, 0), t0, &mut out);
    d.submit(tasks(0..10), &mut out);
    d.dispatch(t0, &mut out);
    assert_eq!(sent(&out).len(), 2, "window of two batches");
    let mut out = Outbox::default();
    d.on_message(ManagerId(1), ManagerMsg::Ack { seq: 1 }, t0, &mut out);
    d.dispatch(t0, &mut out);
    assert_eq!(sent(&out).len(), 1);
    let mut out = Outbox::default();
    d.tick(t0 + Duration::from_secs(3), &mut out);
    let resent = sent(&out);
    assert_eq!(
        resent.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![2, 3],
        "unacked batches are sent again"
    );
}

#[test]
fn draining_manager_gets_nothing_and_returned_tasks_requeue() {
    let now = Instant::now();
    let mut d = dispatcher(Policy::RoundRobin);
    let mut out = Outbox::default();
    d.register(reg(1, 2, 0), now, &mut out);
    d.submit(tasks(0..4), &mut out);
    d.dispatch(now, &mut out);
    assert!(d.drain(ManagerId(1), &mut out));
    d.on_message(
        ManagerId(1),
        ManagerMsg::Returned {
            tasks: vec![TaskId(1)],
        },
        now,
        &mut out,
    );
    assert_eq!(d.queued(), 3);
    let mut out = Outbox::default();
    d.dispatch(now, &mut out);
    assert!(sent(&out).is_empty(), "a draining manager gets no work");
    d.register(reg(2, 4, 0), now, &mut out);
    d.dispatch(now, &mut out);
    assert_eq!(
        sent(&out)[0].2,
        vec![TaskId(1), TaskId(2), TaskId(3)],
        "returned task goes first"
    );
}

#[test]
fn round_robin_rotates_and_least_loaded_balances() {
    let now = Instant::now();
    let mut d = Dispatcher::new(DispatchConfig {
        policy: Policy::RoundRobin,
        max_batch: 1,
        ..base()
    });
    let mut out = Outbox::default();
    for i in 1..=3 {
        d.register(reg(i, 4, 0), now, &mut out);
    }
    d.submit(tasks(0..6), &mut out);
    d.dispatch(now, &mut out);
    let order: Vec<u64> = sent(&out).iter().map(|s| s.0 .0).collect();
    assert_eq!(order, vec![1, 2, 3, 1, 2, 3]);

    let mut d = Dispatcher::new(DispatchConfig {
        policy: Policy::LeastLoaded,
        max_batch: 1,
        ..base()
    });
    let mut out = Outbox::default();
    d.register(reg(1, 4, 0), now, &mut out);
    d.register(reg(2, 8, 0), now, &mut out);
    d.submit(tasks(0..6), &mut out);
    d.dispatch(now, &mut out);
    let to2 = sent(&out).iter().filter(|s| s.0 == ManagerId(2)).count();
    assert_eq!(to2, 4, "the bigger manager gets two thirds");
}

#[test]
fn random_spreads_over_all_managers() {
    let now = Instant::now();
    let mut d = Dispatcher::new(DispatchConfig {
        policy: Policy::Random,
        max_batch: 1,
        ..base()
    });
    let mut out = Outbox::default();
    for i in 1..=4 {
        d.register(reg(i, 100, 0), now, &mut out);
    }
    d.submit(tasks(0..200), &mut out);
    d.dispatch(now, &mut out);
    for i in 1..=4 {
        let n = sent(&out).iter().filter(|s| s.0 == ManagerId(i)).count();
        assert!(n > 10, "manager {i} got {n} of 200");
    }
}

#[test]
fn containers_route_only_to_managers_that_run_them() {
    let now = Instant::now();
    let mut d = dispatcher(Policy::LeastLoaded);
    let mut out = Outbox::default();
    d.register(reg(1, 4, 0), now, &mut out);
    let mut r2 = reg(2, 4, 0);
    r2.containers.push("py".into());
    d.register(r2, now, &mut out);
    let mut ts = tasks(0..2);
    for t in &mut ts {
        t.container = Some("py".into());
    }
    d.submit(ts, &mut out);
    d.dispatch(now, &mut out);
    assert!(sent(&out).iter().all(|s| s.0 == ManagerId(2)));
}

#[test]
fn cancel_and_oversized_and_duplicate_submissions() {
    let mut d = dispatcher(Policy::LeastLoaded);
    let mut out = Outbox::default();
    let mut big = tasks(9..10);
    big[0].args = vec![b' '; MAX_BODY + 1];
    d.submit(big, &mut out);
    assert!(matches!(
        out.results[0].outcome,
        Outcome::Failure {
            kind: FailureKind::Rejected,
            ..
        }
    ));
    d.submit(tasks(0..2), &mut out);
    d.submit(tasks(0..2), &mut out);
    assert_eq!(d.outstanding(), 2);
    let mut out = Outbox::default();
    d.cancel(&[TaskId(0)], &mut out);
    assert!(matches!(
        out.results[0].outcome,
        Outcome::Failure {
            kind: FailureKind::Cancelled,
            ..
        }
    ));
    assert_eq!(d.queued(), 1);
}

#[test]
fn short_tasks_widen_a_managers_window_and_long_ones_narrow_it() {
    let now = Instant::now();
    let mut d = Dispatcher::new(DispatchConfig {
        burst_prefetch: 100,
        short_task_us: 1000,
        ..base()
    });
    let mut out = Outbox::default();
    d.register(reg(1, 2, 2), now, &mut out);
    d.submit(tasks(0..1000), &mut out);
    d.dispatch(now, &mut out);
    assert_eq!(d.in_flight(), 4, "before any result, workers + prefetch");
    let r = ManagerMsg::Results {
        results: vec![ok(TaskId(0))],
        capacity: vec![],
    };
    d.on_message(ManagerId(1), r, now, &mut out);
    d.dispatch(now, &mut out);
    assert_eq!(d.in_flight(), 102, "short tasks: workers + burst");
    let slow = |id| TaskResult {
        id: TaskId(id),
        outcome: Outcome::Success(vec![]),
        run_us: 1_000_000,
    };
    let r = ManagerMsg::Results {
        results: (1..40).map(slow).collect(),
        capacity: vec![],
    };
    d.on_message(ManagerId(1), r, now, &mut out);
    let before = d.in_flight();
    d.dispatch(now, &mut out);
    assert_eq!(
        d.in_flight(),
        before,
        "long tasks: back to workers + prefetch, nothing more is sent"
    );
}
