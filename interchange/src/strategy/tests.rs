//! The strategy's rules, one test each, with time passed in.

use super::*;

fn cfg() -> StrategyConfig {
    StrategyConfig {
        init_blocks: 1,
        min_blocks: 0,
        max_blocks: 3,
        nodes_per_block: 2,
        workers_per_node: 2,
        parallelism: 1.0,
        max_idletime: Duration::from_secs(60),
        walltime: Duration::from_secs(3600),
        drain_margin: Duration::from_secs(120),
        max_failures: 2,
        pending_timeout: Duration::from_secs(600),
        retry_after: Duration::from_secs(300),
    }
}

fn load(pairs: &[(&str, u32, u32)]) -> BTreeMap<String, BlockLoad> {
    pairs
        .iter()
        .map(|(id, m, t)| {
            (
                id.to_string(),
                BlockLoad {
                    managers: *m,
                    tasks: *t,
                },
            )
        })
        .collect()
}

#[test]
fn starts_init_blocks_and_scales_out_to_the_max() {
    let t0 = Instant::now();
    let mut s = Strategy::new(cfg(), "b");
    assert_eq!(
        s.decide(t0, 0, &load(&[])),
        vec![Action::Submit("b-1".into())]
    );
    s.submitted("b-1", "101".into());
    assert!(
        s.decide(t0, 4, &load(&[])).is_empty(),
        "4 tasks fit the 4 slots of one block"
    );
    let a = s.decide(t0, 100, &load(&[]));
    assert_eq!(
        a,
        vec![Action::Submit("b-2".into()), Action::Submit("b-3".into())],
        "capped at max_blocks"
    );
    assert!(s.decide(t0, 1000, &load(&[])).is_empty());
}

#[test]
fn block_numbers_continue_after_an_earlier_run() {
    let mut s = Strategy::new(cfg(), "b");
    s.number_after(41);
    assert_eq!(
        s.decide(Instant::now(), 0, &load(&[])),
        vec![Action::Submit("b-42".into())]
    );
}

#[test]
fn idle_blocks_drain_then_cancel_and_walltime_drains() {
    let t0 = Instant::now();
    let mut s = Strategy::new(cfg(), "b");
    s.decide(t0, 0, &load(&[]));
    s.submitted("b-1", "101".into());
    s.decide(t0, 0, &load(&[("b-1", 2, 0)]));
    assert!(s
        .decide(t0 + Duration::from_secs(30), 0, &load(&[("b-1", 2, 0)]))
        .is_empty());
    let a = s.decide(t0 + Duration::from_secs(61), 0, &load(&[("b-1", 2, 0)]));
    assert_eq!(a, vec![Action::Drain("b-1".into())]);
    assert!(
        s.decide(t0 + Duration::from_secs(62), 0, &load(&[("b-1", 1, 0)]))
            .is_empty(),
        "wait for managers to leave"
    );
    let a = s.decide(t0 + Duration::from_secs(63), 0, &load(&[]));
    assert_eq!(a, vec![Action::Cancel("b-1".into())]);

    let mut s = Strategy::new(
        StrategyConfig {
            min_blocks: 1,
            ..cfg()
        },
        "w",
    );
    s.decide(t0, 0, &load(&[]));
    s.decide(t0, 1, &load(&[("w-1", 2, 1)]));
    let a = s.decide(t0 + Duration::from_secs(3500), 1, &load(&[("w-1", 2, 1)]));
    assert!(
        a.contains(&Action::Drain("w-1".into())),
        "drained before the walltime ends: {a:?}"
    );
    assert!(
        a.contains(&Action::Submit("w-2".into())),
        "and replaced to keep min_blocks: {a:?}"
    );
}

#[test]
fn failures_are_bounded() {
    let t0 = Instant::now();
    let mut s = Strategy::new(
        StrategyConfig {
            min_blocks: 1,
            ..cfg()
        },
        "f",
    );
    s.decide(t0, 0, &load(&[]));
    s.submit_failed(t0, "f-1", "sbatch: error: invalid partition".into());
    assert!(
        s.decide(t0, 0, &load(&[])).is_empty(),
        "backing off after a failure"
    );
    let later = t0 + Duration::from_secs(3);
    assert_eq!(
        s.decide(later, 0, &load(&[])),
        vec![Action::Submit("f-2".into())]
    );
    s.submitted("f-2", "7".into());
    s.job_state(later, "f-2", &JobState::Failed("NODE_FAIL".into()));
    assert!(s.stalled());
    assert_eq!(
        s.given_up_for(later + Duration::from_secs(5)),
        Some(Duration::from_secs(5))
    );
    assert!(
        s.decide(later + Duration::from_secs(100), 10, &load(&[]))
            .is_empty(),
        "no endless resubmission"
    );
    let r = s.report("slurm", later + Duration::from_secs(100), 1_000_000);
    let gave_up = r.gave_up.expect("the report says it gave up");
    assert!(
        gave_up.contains("NODE_FAIL") && gave_up.contains("200s"),
        "{gave_up}"
    );
    assert_eq!(r.errors.len(), 2);
    assert_eq!(r.errors[0].block, "f-1");
    assert_eq!(
        r.errors[0].at_ms,
        1_000_000 - 103_000,
        "the time of each error"
    );
    assert!(r.errors[1].message.contains("NODE_FAIL"));
    let states: Vec<(&str, &str, Option<&str>)> = r
        .blocks
        .iter()
        .map(|b| (b.id.as_str(), b.state.as_str(), b.job.as_deref()))
        .collect();
    assert_eq!(
        states,
        [("f-1", "failed", None), ("f-2", "failed", Some("7"))]
    );
    assert_eq!(r.blocks[0].nodes, 2);
    assert!(r.blocks[0]
        .message
        .as_deref()
        .unwrap()
        .contains("invalid partition"));

    // After `retry_after`, exactly one block is tried again; one more failure gives up
    // again at once.
    let retry = later + Duration::from_secs(301);
    assert_eq!(
        s.decide(retry, 10, &load(&[])),
        vec![Action::Submit("f-3".into())]
    );
    assert!(!s.stalled() && s.report("slurm", retry, 0).gave_up.is_none());
    s.submit_failed(retry, "f-3", "sbatch: error: still wrong".into());
    assert!(s.stalled());
    // A block whose managers register clears it.
    let much_later = retry + Duration::from_secs(301);
    assert_eq!(s.decide(much_later, 10, &load(&[])).len(), 1);
    s.decide(much_later, 10, &load(&[("f-4", 1, 1)]));
    assert!(!s.stalled());
}

#[test]
fn ended_blocks_in_reports_are_bounded() {
    let t0 = Instant::now();
    let mut s = Strategy::new(
        StrategyConfig {
            max_failures: 1000,
            min_blocks: 1,
            ..cfg()
        },
        "e",
    );
    let mut now = t0;
    for _ in 0..(KEEP_ENDED + 5) {
        now += Duration::from_secs(100);
        for a in s.decide(now, 0, &load(&[])) {
            if let Action::Submit(id) = a {
                s.submit_failed(now, &id, format!("refused {id}"));
            }
        }
    }
    let r = s.report("slurm", now, 0);
    assert_eq!(r.blocks.len(), KEEP_ENDED);
    assert_eq!(r.blocks.last().unwrap().id, format!("e-{}", KEEP_ENDED + 5));
    assert_eq!(r.errors.len(), KEEP_ERRORS);
    assert_eq!(
        r.errors.last().unwrap().message,
        format!("refused e-{}", KEEP_ENDED + 5)
    );
}

#[test]
fn a_block_that_never_starts_is_cancelled_and_replaced() {
    let t0 = Instant::now();
    let mut s = Strategy::new(
        StrategyConfig {
            min_blocks: 1,
            ..cfg()
        },
        "p",
    );
    s.decide(t0, 0, &load(&[]));
    s.submitted("p-1", "9".into());
    assert!(s
        .decide(t0 + Duration::from_secs(300), 0, &load(&[]))
        .is_empty());
    let a = s.decide(t0 + Duration::from_secs(601), 0, &load(&[]));
    assert_eq!(a, vec![Action::Cancel("p-1".into())]);
    let r = s.report("pbs", t0 + Duration::from_secs(601), 0);
    assert_eq!(r.blocks[0].state, "draining");
    assert!(r.errors[0].message.contains("did not start"));
    let a = s.decide(t0 + Duration::from_secs(700), 0, &load(&[]));
    assert_eq!(
        a,
        vec![Action::Submit("p-2".into())],
        "replaced after the backoff"
    );
}

fn request(blocks: u32, reason: &str) -> fxr_protocol::ProvisionRequest {
    fxr_protocol::ProvisionRequest {
        blocks,
        backlog: 100,
        reason: reason.into(),
        valid_ms: 30_000,
    }
}

#[test]
fn the_brokers_request_adds_blocks_up_to_the_sites_ceiling_and_each_says_who_asked() {
    let t0 = Instant::now();
    let mut s = Strategy::new(cfg(), "b");
    s.decide(t0, 2, &load(&[]));
    assert_eq!(s.blocks["b-1"].reason, "init_blocks = 1");
    // Two tasks fit one block of four workers: the endpoint alone would stop here.
    assert!(s.decide(t0, 2, &load(&[])).is_empty());
    s.set_request(Some(&request(5, "90 tasks wait at the broker")));
    let a = s.decide(t0, 2, &load(&[]));
    assert_eq!(
        a,
        vec![Action::Submit("b-2".into()), Action::Submit("b-3".into())],
        "five asked for, three allowed"
    );
    for id in ["b-2", "b-3"] {
        assert_eq!(
            s.blocks[id].reason,
            "the broker asked for 5 blocks (capped at max_blocks = 3): 90 tasks wait at the broker"
        );
    }
    let r = s.report("slurm", t0, 0);
    assert_eq!((r.max_blocks, r.slots_per_block), (3, 4));
    assert_eq!(r.blocks[1].reason, s.blocks["b-2"].reason);
    // The endpoint's own backlog names a block when it wants more than the broker.
    let mut s = Strategy::new(cfg(), "c");
    s.set_request(Some(&request(1, "one")));
    s.decide(t0, 12, &load(&[]));
    assert_eq!(
        s.blocks["c-1"].reason,
        "12 tasks outstanding at the endpoint (4 workers per block)"
    );
}

#[test]
fn blocks_the_broker_holds_stay_while_idle_until_it_lets_them_go() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.init_blocks = 0;
    let mut s = Strategy::new(c, "b");
    s.set_request(Some(&request(2, "a burst is coming")));
    assert_eq!(s.decide(t0, 0, &load(&[])).len(), 2);
    let idle = load(&[("b-1", 1, 0), ("b-2", 1, 0)]);
    s.decide(t0 + Duration::from_secs(10), 0, &idle);
    let later = t0 + Duration::from_secs(300);
    assert!(
        s.decide(later, 0, &idle).is_empty(),
        "idle for minutes but asked for"
    );
    // A request for no blocks lets them go, like no request at all.
    s.set_request(Some(&request(0, "nothing waits")));
    let a = s.decide(later + Duration::from_secs(1), 0, &idle);
    assert_eq!(
        a,
        vec![Action::Drain("b-1".into()), Action::Drain("b-2".into())]
    );
    assert_eq!(
        s.block_start(),
        Some(Duration::from_secs(10)),
        "both registered 10 s after submission"
    );
}
