//! The dispatcher's rules, driven by events alone: no sockets, no processes, no clock.

use super::*;
use fxr_protocol::{Builtin, Function};

pub(super) fn reg(id: u64, workers: u32, prefetch: u32) -> Registration {
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
        containers: vec![],
        version: "test".into(),
        proof: [0; 32],
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

/// With no more tasks than idle workers, every task goes to an idle worker: none waits in a
/// manager's prefetch room behind busy workers while another manager's workers have nothing.
#[test]
fn prefetch_takes_only_the_tasks_idle_workers_leave() {
    for policy in [Policy::LeastLoaded, Policy::RoundRobin] {
        let now = Instant::now();
        let mut d = dispatcher(policy);
        let mut out = Outbox::default();
        d.register(reg(1, 2, 2), now, &mut out);
        d.register(reg(2, 2, 2), now, &mut out);
        d.submit(tasks(0..4), &mut out);
        d.dispatch(now, &mut out);
        let mut per: Vec<usize> = sent(&out).iter().map(|(_, _, t)| t.len()).collect();
        per.sort_unstable();
        assert_eq!(per, [2, 2], "{policy:?}: one task per worker");
        assert_eq!(d.idle_workers, 0, "{policy:?}");
        // Every worker busy with tasks of unknown length: a fifth waits here for the first
        // worker to finish, not behind a worker that may run long.
        d.submit(tasks(4..5), &mut out);
        d.dispatch(now, &mut out);
        assert_eq!((d.in_flight(), d.queued()), (4, 1), "{policy:?}");
        // Five queued for four workers: one is more than a task per worker, and is
        // prefetched.
        d.submit(tasks(5..9), &mut out);
        d.dispatch(now, &mut out);
        assert_eq!((d.in_flight(), d.queued()), (5, 4), "{policy:?}");
    }
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
        counters: Default::default(),
        acks: Vec::new(),
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
        ManagerMsg::Heartbeat {
            capacity: vec![],
            counters: Default::default(),
        },
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
        counters: Default::default(),
        acks: Vec::new(),
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
    // An acknowledgement that rides with results opens the window as an `Ack` does.
    let mut out = Outbox::default();
    let done = ManagerMsg::Results {
        results: vec![],
        capacity: vec![],
        counters: Default::default(),
        acks: vec![2, 3],
    };
    d.on_message(ManagerId(1), done, t0, &mut out);
    d.dispatch(t0, &mut out);
    assert_eq!(sent(&out).len(), 2, "both batches acknowledged");
}

#[test]
fn draining_manager_gets_nothing_and_returned_tasks_requeue() {
    let now = Instant::now();
    let mut d = dispatcher(Policy::RoundRobin);
    let mut out = Outbox::default();
    d.register(reg(1, 2, 0), now, &mut out);
    d.submit(tasks(0..4), &mut out);
    d.dispatch(now, &mut out);
    assert!(d.drain(ManagerId(1), false, &mut out));
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
    let mut r1 = reg(1, 4, 0);
    r1.containers.push("podman".into());
    d.register(r1, now, &mut out);
    let mut r2 = reg(2, 4, 0);
    r2.containers.push("bwrap".into());
    d.register(r2, now, &mut out);
    let mut ts = tasks(0..2);
    for t in &mut ts {
        t.container = Some(Box::new(spec("img")));
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
        counters: Default::default(),
        acks: Vec::new(),
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
        counters: Default::default(),
        acks: Vec::new(),
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

fn spec(image: &str) -> fxr_protocol::ContainerSpec {
    fxr_protocol::ContainerSpec {
        runtime: "bwrap".into(),
        image: image.into(),
        options: vec![],
    }
}

fn typed(ids: std::ops::Range<u64>, image: &str) -> Vec<Task> {
    let mut ts = tasks(ids);
    for t in &mut ts {
        t.container = Some(Box::new(spec(image)));
    }
    ts
}

/// A capacity report: `workers` of each named image, all idle.
fn report(d: &mut Dispatcher, id: u64, kinds: &[(&str, u32)], unused: u32, now: Instant) {
    let capacity = kinds
        .iter()
        .map(|(img, n)| fxr_protocol::Capacity {
            container: spec(img).key(),
            total: *n,
            free: 4,
            warm: *n,
            unused,
        })
        .collect();
    let mut out = Outbox::default();
    d.on_message(
        ManagerId(id),
        ManagerMsg::Heartbeat {
            capacity,
            counters: Default::default(),
        },
        now,
        &mut out,
    );
}

fn warm_dispatcher(policy: Policy, interval: Duration) -> Dispatcher {
    Dispatcher::new(DispatchConfig {
        policy,
        cold_routing_interval: interval,
        ..DispatchConfig::default()
    })
}

#[test]
fn warm_sends_a_type_to_the_manager_with_its_warm_workers_and_no_more_than_it_has() {
    let now = Instant::now();
    let mut d = warm_dispatcher(Policy::Warm, Duration::from_secs(3600));
    let mut out = Outbox::default();
    for i in 1..=3 {
        d.register(reg(i, 2, 2), now, &mut out);
    }
    report(&mut d, 1, &[("a", 2)], 0, now);
    report(&mut d, 2, &[("b", 2)], 0, now);
    report(&mut d, 3, &[("c", 1)], 1, now);
    d.submit(typed(0..3, "b"), &mut out);
    d.dispatch(now, &mut out);
    let s = sent(&out);
    // Two go to manager 2's two warm workers; the third to the unused slot of manager 3,
    // never to manager 1, whose workers are all of another type.
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!((s[0].0, s[0].2.len()), (ManagerId(2), 2));
    assert_eq!((s[1].0, s[1].2.len()), (ManagerId(3), 1));
    // Type d: manager 1 has nothing in flight, so its idle workers may switch (two tasks, one
    // per worker); beyond that, one task may go where it forces a switch, once per interval.
    let mut out = Outbox::default();
    d.submit(typed(10..14, "d"), &mut out);
    d.dispatch(now, &mut out);
    let s = sent(&out);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!((s[0].0, s[0].2.len()), (ManagerId(1), 2));
    assert_eq!(s[1].2.len(), 1);
    let mut out = Outbox::default();
    // Manager 2 finishes a task: one of its workers (of type b) is free.
    let done = ManagerMsg::Results {
        results: vec![ok(TaskId(0))],
        capacity: vec![],
        counters: Default::default(),
        acks: Vec::new(),
    };
    d.on_message(ManagerId(2), done, now, &mut out);
    report(&mut d, 2, &[("b", 2)], 0, now);
    d.dispatch(now + Duration::from_secs(1), &mut out);
    assert!(sent(&out).is_empty(), "not again within the interval");
    d.dispatch(now + Duration::from_secs(3600), &mut out);
    assert_eq!(sent(&out).len(), 1);
}

#[test]
fn warm_hard_never_forces_a_switch_but_an_idle_manager_takes_any_type() {
    let now = Instant::now();
    let mut d = warm_dispatcher(Policy::WarmHard, Duration::ZERO);
    let mut out = Outbox::default();
    d.register(reg(1, 1, 0), now, &mut out);
    d.register(reg(2, 1, 0), now, &mut out);
    report(&mut d, 1, &[("a", 1)], 0, now);
    report(&mut d, 2, &[("b", 1)], 0, now);
    d.submit(typed(0..1, "a"), &mut out);
    d.submit(typed(1..2, "b"), &mut out);
    d.dispatch(now, &mut out);
    assert_eq!(sent(&out).len(), 2);
    // Both managers busy with their own type: type c waits, even with a zero interval.
    let mut out = Outbox::default();
    d.submit(typed(2..3, "c"), &mut out);
    d.dispatch(now, &mut out);
    assert!(sent(&out).is_empty());
    // Manager 1 finishes: with nothing in flight it may take c.
    let mut out = Outbox::default();
    let done = ManagerMsg::Results {
        results: vec![ok(TaskId(0))],
        capacity: vec![],
        counters: Default::default(),
        acks: Vec::new(),
    };
    d.on_message(ManagerId(1), done, now, &mut out);
    d.dispatch(now, &mut out);
    let s = sent(&out);
    assert_eq!((s.len(), s[0].0), (1, ManagerId(1)));
}

#[test]
fn random_ignores_warmth() {
    let now = Instant::now();
    let mut d = warm_dispatcher(Policy::Random, Duration::ZERO);
    let mut out = Outbox::default();
    d.register(reg(1, 64, 0), now, &mut out);
    d.register(reg(2, 64, 0), now, &mut out);
    report(&mut d, 1, &[("a", 64)], 0, now);
    let mut to = std::collections::BTreeSet::new();
    for i in 0..40 {
        let mut out = Outbox::default();
        d.submit(typed(i..i + 1, "a"), &mut out);
        d.dispatch(now, &mut out);
        to.extend(sent(&out).iter().map(|s| s.0));
    }
    assert_eq!(to.len(), 2, "random sends type a to both managers");
}

fn python_task(id: u64) -> Task {
    Task {
        id: TaskId(id),
        function: Function::Python(Box::new(fxr_protocol::PythonSpec {
            id: "py-1".into(),
            source: "def f():\n    return 1\n".into(),
            entry: "f".into(),
            walltime_ms: 0,
            python_version: String::new(),
        })),
        args: vec![],
        attempt: 0,
        container: None,
    }
}

/// Sources of the Python tasks sent, in order.
fn sources(out: &Outbox) -> Vec<(ManagerId, String)> {
    out.to_managers
        .iter()
        .filter_map(|(m, msg)| match msg {
            InterchangeMsg::Tasks { tasks, .. } => Some(tasks.iter().map(move |t| (*m, t))),
            _ => None,
        })
        .flatten()
        .filter_map(|(m, t)| match &t.function {
            Function::Python(p) => Some((m, p.source.to_string())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_python_functions_source_goes_to_each_manager_once_per_connection() {
    let now = Instant::now();
    let mut d = dispatcher(Policy::RoundRobin);
    let mut out = Outbox::default();
    d.register(reg(1, 1, 0), now, &mut out);
    d.submit(vec![python_task(0), python_task(1)], &mut out);
    d.dispatch(now, &mut out);
    // One slot: the first task goes alone, with the source.
    assert_eq!(
        sources(&out),
        vec![(ManagerId(1), "def f():\n    return 1\n".into())]
    );
    out = Outbox::default();
    d.on_message(ManagerId(1), ManagerMsg::Ack { seq: 1 }, now, &mut out);
    d.on_message(
        ManagerId(1),
        ManagerMsg::Results {
            results: vec![ok(TaskId(0))],
            capacity: vec![],
            counters: WorkerCounters::default(),
            acks: Vec::new(),
        },
        now,
        &mut out,
    );
    d.dispatch(now, &mut out);
    assert_eq!(
        sources(&out),
        vec![(ManagerId(1), String::new())],
        "the manager has it"
    );
    // A new connection of the same manager starts knowing nothing: the source goes again.
    out = Outbox::default();
    d.register(reg(1, 1, 0), now, &mut out);
    d.dispatch(now, &mut out);
    let again = sources(&out);
    assert_eq!(again.len(), 1);
    assert!(!again[0].1.is_empty(), "{again:?}");
}

#[test]
fn fail_queued_fails_only_what_no_manager_holds() {
    let now = Instant::now();
    let mut d = dispatcher(Policy::LeastLoaded);
    let mut out = Outbox::default();
    d.register(reg(1, 1, 0), now, &mut out);
    d.submit(tasks(0..4), &mut out);
    d.dispatch(now, &mut out);
    assert_eq!(d.in_flight(), 1);
    let mut out = Outbox::default();
    d.fail_queued(
        "endpoint ep cannot start blocks: invalid partition",
        &mut out,
    );
    let failed: Vec<(TaskId, bool)> = out
        .results
        .iter()
        .map(|r| {
            (
                r.id,
                matches!(&r.outcome, Outcome::Failure { kind: FailureKind::EndpointUnavailable, message }
                    if message.contains("invalid partition")),
            )
        })
        .collect();
    assert_eq!(failed.len(), 3);
    assert!(failed.iter().all(|(id, why)| *id != TaskId(0) && *why));
    assert_eq!((d.queued(), d.in_flight(), d.counters().failed), (0, 1, 3));
    // The queue still works afterwards.
    d.submit(tasks(10..11), &mut out);
    assert_eq!(d.queued(), 1);
}
