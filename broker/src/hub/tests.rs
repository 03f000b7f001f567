use super::*;
use fxr_protocol::{Builtin, Function, Outcome};
use tokio::sync::mpsc::unbounded_channel;

fn meta(owner: i64) -> Meta {
    Meta {
        owner,
        batch: 1,
        function_id: Arc::from("f"),
        created_ms: 0,
    }
}

fn task(id: u64, arg_bytes: usize) -> Task {
    Task {
        id: TaskId(id),
        function: Function::Builtin(Builtin::Echo),
        args: vec![b'x'; arg_bytes],
        attempt: 0,
        container: None,
    }
}

fn sent(rx: &mut tokio::sync::mpsc::UnboundedReceiver<BrokerMsg>) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let BrokerMsg::Tasks { tasks } = m {
            out.push(tasks.iter().map(|t| t.id.0).collect());
        }
    }
    out
}

fn ok(id: u64) -> TaskResult {
    TaskResult {
        id: TaskId(id),
        outcome: Outcome::Success(b"1".to_vec()),
        run_us: 0,
    }
}

#[test]
fn messages_are_split_by_bytes_and_inflight_bytes_are_bounded() {
    let mut hub = Hub::new(Limits {
        max_message_bytes: 10_000,
        max_inflight_bytes: 25_000,
        ..Limits::default()
    });
    for id in 1..=6 {
        hub.enqueue("e", task(id, 6_000), meta(1));
    }
    let (tx, mut rx) = unbounded_channel();
    let (kick, _) = oneshot::channel();
    hub.connect("e", tx, kick);
    hub.grant("e", 100);
    // One task per message (two would pass 10,000 bytes); four fit under 25,000 in flight.
    assert_eq!(sent(&mut rx), vec![vec![1], vec![2], vec![3], vec![4]]);
    hub.finished([1, 2]);
    assert_eq!(sent(&mut rx), vec![vec![5], vec![6]]);
    // A task larger than the message limit still goes, alone.
    hub.enqueue("e", task(7, 50_000), meta(1));
    hub.finished([3, 4, 5, 6]);
    hub.pump("e");
    assert_eq!(sent(&mut rx), vec![vec![7]]);
}

#[test]
fn results_are_accepted_only_from_the_endpoint_a_task_was_routed_to() {
    let mut hub = Hub::new(Limits::default());
    hub.enqueue("a", task(1, 1), meta(1));
    hub.enqueue("b", task(2, 1), meta(2));
    let (ok_, ignored, foreign) = hub.screen("b", vec![ok(1), ok(2), ok(99)]);
    assert_eq!(ok_.iter().map(|r| r.id.0).collect::<Vec<_>>(), vec![2]);
    assert_eq!(ignored, vec![TaskId(1), TaskId(99)]);
    assert_eq!(foreign, 1);
}

#[test]
fn a_newer_connection_kicks_the_older_and_the_older_closing_changes_nothing() {
    let mut hub = Hub::new(Limits::default());
    let (tx1, _rx1) = unbounded_channel();
    let (k1, mut kicked1) = oneshot::channel();
    let g1 = hub.connect("e", tx1, k1);
    let (tx2, _rx2) = unbounded_channel();
    let (k2, _kicked2) = oneshot::channel();
    let g2 = hub.connect("e", tx2, k2);
    assert!(
        kicked1.try_recv().is_ok(),
        "the older connection is told to close"
    );
    hub.disconnect("e", g1);
    assert!(hub.endpoint("e").unwrap().connected());
    assert!(hub.is_current("e", g2));
    hub.disconnect("e", g2);
    assert!(!hub.endpoint("e").unwrap().connected());
}

#[test]
fn backlog_limits_count_open_tasks_per_user_and_endpoint() {
    let mut hub = Hub::new(Limits {
        max_backlog_endpoint: 3,
        max_backlog_user: 4,
        ..Limits::default()
    });
    let add = |n| HashMap::from([("e".to_string(), n)]);
    assert!(hub.admit(1, &add(3)).is_ok());
    for id in 1..=3 {
        hub.enqueue("e", task(id, 1), meta(1));
    }
    assert_eq!(hub.admit(1, &add(1)).unwrap_err().what, "endpoint e");
    let other = HashMap::from([("f".to_string(), 2)]);
    assert_eq!(hub.admit(1, &other).unwrap_err().what, "user");
    hub.finished([1, 2]);
    assert!(hub.admit(1, &add(1)).is_ok());
    assert_eq!(hub.counts(), [1, 0, 0]);
    assert_eq!(hub.open_of_user(1), 1);
}

#[test]
fn deleting_a_function_closes_its_open_tasks_once() {
    let mut hub = Hub::new(Limits::default());
    hub.enqueue("e", task(1, 1), meta(1));
    hub.enqueue("e", task(2, 1), meta(1));
    let mut ids = hub.function_deleted("f");
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    assert!(hub.function_deleted("f").is_empty());
    // Closing tasks are not sent.
    let (tx, mut rx) = unbounded_channel();
    let (kick, _) = oneshot::channel();
    hub.connect("e", tx, kick);
    hub.grant("e", 10);
    assert!(sent(&mut rx).is_empty());
}

#[test]
fn compact_gives_back_the_space_of_a_drained_backlog() {
    let mut hub = Hub::new(Limits::default());
    for id in 0..100_000 {
        hub.enqueue("e", task(id, 0), meta(1));
    }
    hub.finished(0..100_000);
    assert!(hub.compact());
    assert!(hub.live.capacity() < 10_000);
}

#[test]
fn warm_routing_prefers_the_endpoint_with_idle_workers_of_the_type() {
    let mut hub = Hub::new(Limits::default());
    let mut kicks = Vec::new();
    for e in ["a", "b", "c"] {
        let (tx, rx) = unbounded_channel();
        let (kick, k) = oneshot::channel();
        hub.connect(e, tx, kick);
        kicks.push((rx, k));
    }
    let status = |kind: &str, warm: u32| fxr_protocol::EndpointStatus {
        managers: vec![fxr_protocol::ManagerStatus {
            manager_id: fxr_protocol::ManagerId(1),
            block_id: fxr_protocol::BlockId("b".into()),
            hostname: "h".into(),
            workers: 4,
            in_flight: 0,
            draining: false,
            simulated: false,
            capacity: vec![fxr_protocol::Capacity {
                container: kind.into(),
                total: warm,
                free: 4,
                warm,
                unused: 0,
            }],
            counters: Default::default(),
        }],
        ..Default::default()
    };
    hub.set_status("a", status("podman:x", 1));
    hub.set_status("b", status("podman:x", 3));
    hub.set_status("c", status("podman:y", 4));
    let eps: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    for _ in 0..10 {
        assert_eq!(
            hub.route(&eps, Policy::Warm, "podman:x", &HashMap::new())
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            hub.route(&eps, Policy::Warm, "podman:y", &HashMap::new())
                .as_deref(),
            Some("c")
        );
    }
    // No endpoint has the type warm: the least loaded one.
    hub.enqueue("a", task(1, 1), meta(1));
    hub.enqueue("c", task(2, 1), meta(1));
    assert_eq!(
        hub.route(&eps, Policy::Warm, "bwrap:z", &HashMap::new())
            .as_deref(),
        Some("b")
    );
}

/// An endpoint status with `workers` workers that may grow to `max_blocks` blocks of 2.
fn capacity(workers: u32, max_blocks: u32) -> fxr_protocol::EndpointStatus {
    fxr_protocol::EndpointStatus {
        managers: vec![fxr_protocol::ManagerStatus {
            manager_id: fxr_protocol::ManagerId(1),
            block_id: fxr_protocol::BlockId("b".into()),
            hostname: "h".into(),
            workers,
            in_flight: 0,
            draining: false,
            simulated: false,
            capacity: Vec::new(),
            counters: Default::default(),
        }],
        provider: fxr_protocol::ProviderStatus {
            max_blocks,
            slots_per_block: 2,
            block_start_ms: Some(4_000),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn shortest_wait_spreads_one_submission_and_prefers_free_workers_then_room_to_grow() {
    let mut hub = Hub::default();
    let mut links = Vec::new();
    for e in ["a", "b", "c"] {
        let (tx, rx) = unbounded_channel();
        let (kick, k) = oneshot::channel();
        hub.connect(e, tx, kick);
        links.push((rx, k));
    }
    hub.set_status("a", capacity(2, 1));
    hub.set_status("b", capacity(0, 4));
    hub.set_status("c", capacity(0, 4));
    for e in ["a", "b", "c"] {
        // Tasks of 20 s: half a task's wait at a is longer than a block's start-up.
        let mut r = TaskResult::failure(TaskId(0), fxr_protocol::FailureKind::Rejected, "");
        r.run_us = 20_000_000;
        hub.note_runs(e, &[r]);
    }
    let eps: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let mut planned: HashMap<String, u64> = HashMap::new();
    let mut order = Vec::new();
    for _ in 0..6 {
        let ep = hub
            .route(&eps, Policy::ShortestWait, "", &planned)
            .unwrap_or_default();
        *planned.entry(ep.clone()).or_default() += 1;
        order.push(ep);
    }
    // a's two free workers first; then a is full and cannot grow, so b and c (which can)
    // share the rest in turn, as each task routed makes its endpoint's queue longer.
    assert_eq!(order[..2], ["a", "a"]);
    assert_eq!(planned["b"], 2, "{order:?}");
    assert_eq!(planned["c"], 2, "{order:?}");
    // Least-loaded also counts what the submission has routed so far.
    let mut planned: HashMap<String, u64> = HashMap::new();
    for _ in 0..4 {
        let ep = hub
            .route(&eps[1..], Policy::LeastLoaded, "", &planned)
            .unwrap_or_default();
        *planned.entry(ep).or_default() += 1;
    }
    assert_eq!((planned["b"], planned["c"]), (2, 2));
}

#[test]
fn the_hub_asks_a_linked_endpoint_for_blocks_over_its_link() {
    let mut hub = Hub::default();
    let (tx, mut rx) = unbounded_channel();
    let (kick, _k) = oneshot::channel();
    hub.connect("a", tx, kick);
    hub.set_status("a", capacity(2, 3));
    for id in 1..=7 {
        hub.enqueue("a", task(id, 1), meta(1));
    }
    let sent = hub.provision(Instant::now());
    assert_eq!(sent.len(), 1);
    assert_eq!(hub.asked("a"), Some(4), "7 open tasks, 2 workers per block");
    let mut got = None;
    while let Ok(m) = rx.try_recv() {
        if let BrokerMsg::Provision(r) = m {
            got = Some(r);
        }
    }
    let r = got.expect("a Provision message on the link");
    assert_eq!((r.blocks, r.backlog), (4, 7));
}
