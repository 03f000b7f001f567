use super::*;
use fxr_protocol::{BlockId, Builtin, FromWorker, Function, ManagerId, Outcome};

fn registration(workers: u32, prefetch: u32) -> Registration {
    Registration {
        manager_id: ManagerId(7),
        block_id: BlockId("b".into()),
        rank: 0,
        block_size: 1,
        hostname: "h".into(),
        cores: 1,
        memory_bytes: 0,
        workers,
        prefetch,
        containers: vec![],
        version: "t".into(),
        proof: [0; 32],
        simulated: true,
    }
}

fn spec(image: &str) -> ContainerSpec {
    ContainerSpec {
        runtime: "bwrap".into(),
        image: image.into(),
        options: vec![],
    }
}

fn task(id: u64, image: Option<&str>) -> Task {
    Task {
        id: TaskId(id),
        function: Function::Builtin(Builtin::Sleep),
        args: br#"{"ms":100}"#.to_vec(),
        attempt: 0,
        container: image.map(spec).map(Box::new),
    }
}

/// A core with a connected, welcomed link, and what it asked for.
struct World {
    core: Core,
    now: Instant,
    out: Vec<Action>,
    seq: u64,
    /// The ids each `Run` in `out` handed over, read from the core as the manager reads them:
    /// (slot, generation, ids).
    ran: Vec<(usize, u64, Vec<u64>)>,
    /// Those of the actions last taken.
    taken_runs: Vec<(usize, u64, Vec<u64>)>,
}

impl World {
    fn new(workers: u32, max_idle_ms: u64) -> World {
        let now = Instant::now();
        let mut w = World {
            core: Core::new(
                CoreConfig {
                    registration: registration(workers, 0),
                    secret: "s".into(),
                    heartbeat_period: Duration::from_secs(1),
                    give_up_after: Duration::from_secs(60),
                    prestart: false,
                },
                now,
            ),
            now,
            out: Vec::new(),
            seq: 0,
            ran: Vec::new(),
            taken_runs: Vec::new(),
        };
        let nonce = [9; 32];
        w.ev(Event::LinkUp { nonce });
        assert!(matches!(w.out[..], [Action::Send(ManagerMsg::Hello { nonce: n })] if n == nonce));
        w.out.clear();
        let theirs = [5; 32];
        w.ev(Event::FromInterchange(InterchangeMsg::Challenge {
            nonce: theirs,
            proof: fxr_protocol::auth::interchange_proof("s", &nonce, &theirs),
            encrypt: false,
        }));
        let [Action::Send(ManagerMsg::Register(reg))] = &w.out[..] else {
            panic!("registers after a good challenge: {:?}", w.out)
        };
        assert_eq!(
            reg.proof,
            fxr_protocol::auth::manager_proof("s", &theirs, &nonce)
        );
        w.ev(Event::FromInterchange(InterchangeMsg::Welcome {
            heartbeat_period_ms: 1000,
            heartbeat_threshold_ms: 10_000,
            workers: WorkerSettings {
                runtimes: vec![],
                max_idle_ms,
            },
        }));
        w.out.clear();
        w
    }

    fn ev(&mut self, e: Event) -> Option<Exit> {
        let before = self.out.len();
        let r = self.core.handle(e, self.now, &mut self.out);
        self.core.check_invariants();
        self.lend(before);
        r
    }

    fn poll(&mut self) -> Option<Exit> {
        let before = self.out.len();
        let r = self.core.poll(self.now, &mut self.out);
        self.core.check_invariants();
        self.lend(before);
        r
    }

    /// Reads the tasks of the `Run`s from `out[from..]` out of the core.
    fn lend(&mut self, from: usize) {
        for a in &self.out[from..] {
            if let Action::Run {
                slot,
                generation,
                tasks,
            } = *a
            {
                let given = self.core.given(slot, generation, tasks);
                assert_eq!(given.len(), tasks, "a run lends what it names");
                let ids = given.iter().map(|t| t.id.0).collect();
                self.ran.push((slot, generation, ids));
            }
        }
    }

    fn tasks(&mut self, tasks: Vec<Task>) {
        self.seq += 1;
        let seq = self.seq;
        self.ev(Event::FromInterchange(InterchangeMsg::Tasks { seq, tasks }));
        self.poll();
    }

    fn take(&mut self) -> Vec<Action> {
        self.taken_runs = std::mem::take(&mut self.ran);
        std::mem::take(&mut self.out)
    }

    /// Starts asked for: (slot, generation, image).
    fn starts(actions: &[Action]) -> Vec<(usize, u64, Option<String>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start {
                    slot,
                    generation,
                    container,
                } => Some((
                    *slot,
                    *generation,
                    container.as_ref().map(|c| c.image.clone()),
                )),
                _ => None,
            })
            .collect()
    }

    /// The runs of the actions last taken: (slot, generation, task ids).
    fn runs(&self) -> Vec<(usize, u64, Vec<u64>)> {
        self.taken_runs.clone()
    }

    fn results(actions: &[Action]) -> Vec<TaskResult> {
        actions
            .iter()
            .flat_map(|a| match a {
                Action::Send(ManagerMsg::Results { results, .. }) => results.clone(),
                _ => vec![],
            })
            .collect()
    }

    fn ready(&mut self, slot: usize, generation: u64) {
        self.ev(Event::Worker {
            slot,
            generation,
            msg: FromWorker::Ready { pid: 1 },
        });
        self.poll();
    }

    fn done(&mut self, slot: usize, generation: u64, ids: &[u64]) {
        let results = ids
            .iter()
            .map(|i| TaskResult {
                id: TaskId(*i),
                outcome: Outcome::Success(b"null".to_vec()),
                run_us: 10,
            })
            .collect();
        self.ev(Event::Worker {
            slot,
            generation,
            msg: FromWorker::Results { results },
        });
        self.poll();
    }
}

#[test]
fn workers_start_on_demand_in_the_tasks_container_and_results_carry_capacity() {
    let mut w = World::new(2, 0);
    w.tasks(vec![task(1, Some("a"))]);
    let a = w.take();
    assert_eq!(World::starts(&a), vec![(0, 1, Some("a".into()))]);
    // No results to ride with: the acknowledgement goes alone once it is due.
    assert!(!a.contains(&Action::Send(ManagerMsg::Ack { seq: 1 })));
    assert_eq!(w.core.next_deadline(), w.now + super::ACK_DELAY);
    w.now += super::ACK_DELAY;
    w.poll();
    let a = w.take();
    assert!(a.contains(&Action::Send(ManagerMsg::Ack { seq: 1 })));
    assert_eq!(w.core.counters().cold_starts, 1);
    w.ready(0, 1);
    w.take();
    assert_eq!(w.runs(), vec![(0, 1, vec![1])]);
    w.done(0, 1, &[1]);
    let a = w.take();
    let Some(Action::Send(ManagerMsg::Results {
        results,
        capacity,
        counters,
        acks,
    })) = a.last()
    else {
        panic!("{a:?}");
    };
    assert_eq!(results.len(), 1);
    assert!(acks.is_empty(), "batch 1 was acknowledged on its own");
    assert_eq!(counters.cold_starts, 1);
    let c = capacity.iter().find(|c| c.container == "bwrap:a").unwrap();
    assert_eq!((c.total, c.warm, c.unused, c.free), (1, 1, 1, 2));
    // A second task of the same type reuses the warm worker: no new start.
    w.tasks(vec![task(2, Some("a"))]);
    let a = w.take();
    assert!(World::starts(&a).is_empty());
    assert_eq!(w.runs(), vec![(0, 1, vec![2])]);
    // Batches that arrive before results are acknowledged with them, not on their own:
    // batch 2 (its results had not come) and batch 9.
    w.ev(Event::FromInterchange(InterchangeMsg::Tasks {
        seq: 9,
        tasks: vec![task(3, Some("a"))],
    }));
    w.done(0, 1, &[2]);
    let a = w.take();
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::Send(ManagerMsg::Ack { .. }))),
        "{a:?}"
    );
    assert!(
        a.iter().any(
            |x| matches!(x, Action::Send(ManagerMsg::Results { acks, .. }) if acks[..] == [2, 9])
        ),
        "{a:?}"
    );
}

#[test]
fn slots_are_shared_in_proportion_to_demand_and_a_full_manager_switches_an_idle_worker() {
    let mut w = World::new(4, 0);
    // Three of type a, one of b: a gets three slots, b one.
    w.tasks(vec![
        task(1, Some("a")),
        task(2, Some("a")),
        task(3, Some("a")),
        task(4, Some("b")),
    ]);
    let starts = World::starts(&w.take());
    let of = |img: &str| {
        starts
            .iter()
            .filter(|s| s.2.as_deref() == Some(img))
            .count()
    };
    assert_eq!((of("a"), of("b")), (3, 1), "{starts:?}");
    for (slot, g, _) in &starts {
        w.ready(*slot, *g);
    }
    w.take();
    let runs = w.runs();
    for (slot, g, ids) in &runs {
        w.done(*slot, *g, ids);
    }
    w.take();
    assert_eq!(w.core.counters().container_switches, 0);
    // Every slot now holds an idle worker; type c must evict one (the longest idle).
    w.tasks(vec![task(5, Some("c"))]);
    let a = w.take();
    let stops: Vec<_> = a
        .iter()
        .filter(|a| matches!(a, Action::Stop { .. }))
        .collect();
    assert_eq!(stops.len(), 1, "{a:?}");
    assert_eq!(World::starts(&a).len(), 1);
    assert_eq!(World::starts(&a)[0].2.as_deref(), Some("c"));
    assert_eq!(w.core.counters().container_switches, 1);
    assert_eq!(w.core.counters().cold_starts, 5);
}

#[test]
fn prestarted_bare_workers_give_their_slots_to_containers_without_a_switch() {
    let mut w = World::new(2, 0);
    w.core.cfg.prestart = true;
    w.poll();
    let starts = World::starts(&w.take());
    assert_eq!(starts, vec![(0, 1, None), (1, 1, None)]);
    for (slot, g, _) in &starts {
        w.ready(*slot, *g);
    }
    assert_eq!(
        w.core.capacity()[0].unused,
        2,
        "idle bare workers count as unused"
    );
    w.tasks(vec![task(1, Some("a"))]);
    let a = w.take();
    assert_eq!(
        a.iter()
            .filter(|a| matches!(a, Action::Stop { .. }))
            .count(),
        1
    );
    assert_eq!(World::starts(&a).len(), 1);
    assert_eq!(w.core.counters().container_switches, 0);
    assert_eq!(w.core.counters().cold_starts, 1);
    // A bare task still finds the other bare worker.
    w.tasks(vec![task(2, None)]);
    w.take();
    assert_eq!(w.runs().len(), 1);
}

#[test]
fn idle_workers_retire_after_max_idle() {
    let mut w = World::new(1, 500);
    w.tasks(vec![task(1, Some("a"))]);
    w.take();
    w.ready(0, 1);
    w.take();
    w.done(0, 1, &[1]);
    w.take();
    assert_eq!(w.core.next_deadline(), w.now + Duration::from_millis(500));
    w.now += Duration::from_millis(499);
    w.poll();
    assert!(!w.take().iter().any(|a| matches!(a, Action::Stop { .. })));
    w.now += Duration::from_millis(1);
    w.poll();
    assert!(w.take().contains(&Action::Stop {
        slot: 0,
        generation: 1
    }));
    assert_eq!(w.core.capacity()[0].unused, 1);
    // A late report of the stopped worker's end changes nothing.
    w.ev(Event::WorkerGone {
        slot: 0,
        generation: 1,
        reason: "exit status: 0".into(),
    });
    assert_eq!(w.core.counters().container_errors, 0);
}

#[test]
fn a_container_that_cannot_start_fails_its_tasks_with_the_runtimes_message_and_backs_off() {
    let mut w = World::new(2, 0);
    w.tasks(vec![task(1, Some("missing")), task(2, Some("missing"))]);
    let starts = World::starts(&w.take());
    assert_eq!(starts.len(), 2);
    for (slot, g, _) in &starts {
        w.ev(Event::WorkerGone {
            slot: *slot,
            generation: *g,
            reason: "Error: localhost/missing: image not known (exit status: 125)".into(),
        });
    }
    w.poll();
    let results = World::results(&w.take());
    assert_eq!(results.len(), 2);
    for r in &results {
        let Outcome::Failure { kind, message } = &r.outcome else {
            panic!()
        };
        assert_eq!(*kind, FailureKind::ContainerError);
        assert!(
            message.contains("bwrap:missing") && message.contains("image not known"),
            "{message}"
        );
    }
    assert_eq!(w.core.counters().container_errors, 2);
    // During the backoff a new task fails at once, without a start.
    w.tasks(vec![task(3, Some("missing"))]);
    let a = w.take();
    assert!(
        World::starts(&a).is_empty(),
        "no restart in a tight loop: {a:?}"
    );
    assert_eq!(World::results(&a).len(), 1);
    // Other types are not affected.
    w.tasks(vec![task(4, Some("fine"))]);
    assert_eq!(World::starts(&w.take()).len(), 1);
    // After the backoff the type is tried again.
    w.now += Duration::from_secs(11);
    w.tasks(vec![task(5, Some("missing"))]);
    assert_eq!(World::starts(&w.take()).len(), 1);
}

#[test]
fn a_worker_that_dies_mid_task_loses_that_task_and_requeues_the_rest() {
    let mut w = World::new(1, 0);
    w.ev(Event::Worker {
        slot: 0,
        generation: 0,
        msg: FromWorker::Ready { pid: 1 },
    });
    w.tasks(vec![task(1, None)]);
    w.take();
    w.ready(0, 1);
    w.take();
    // Tasks are short (10 µs), so they go to the worker together.
    w.tasks(vec![task(2, None), task(3, None)]);
    w.done(0, 1, &[1]);
    w.take();
    let runs = w.runs();
    assert_eq!(runs, vec![(0, 1, vec![2, 3])]);
    w.now += Duration::from_secs(5);
    w.ev(Event::WorkerGone {
        slot: 0,
        generation: 1,
        reason: "signal: 9 (SIGKILL)".into(),
    });
    w.poll();
    let a = w.take();
    let r = World::results(&a);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].id, TaskId(2));
    assert!(
        matches!(&r[0].outcome, Outcome::Failure { kind: FailureKind::WorkerLost, message } if message.contains("SIGKILL"))
    );
    // Task 3 went back to the queue and a new worker starts for it.
    assert_eq!(World::starts(&a), vec![(0, 3, None)]);
}

#[test]
fn no_type_starves_when_types_outnumber_workers() {
    let mut w = World::new(2, 0);
    let types = ["a", "b", "c", "d", "e"];
    let mut id = 0;
    let mut all = Vec::new();
    for _ in 0..4 {
        for t in types {
            id += 1;
            all.push(task(id, Some(t)));
        }
    }
    w.tasks(all);
    let mut done = HashSet::new();
    let mut live: HashMap<usize, u64> = HashMap::new();
    for _round in 0..500 {
        let a = w.take();
        for r in World::results(&a) {
            assert!(r.is_success(), "{r:?}");
            done.insert(r.id);
        }
        for (slot, g, _) in World::starts(&a) {
            live.insert(slot, g);
        }
        let runs = w.runs();
        if let Some((slot, g, _)) = World::starts(&a).first() {
            w.ready(*slot, *g);
            continue;
        }
        if let Some((slot, g, ids)) = runs.first() {
            w.done(*slot, *g, ids);
            continue;
        }
        if done.len() == 20 {
            break;
        }
        // Nothing asked: a busy worker finishes its task.
        w.now += Duration::from_millis(100);
        w.poll();
    }
    assert_eq!(done.len(), 20, "every task of every type completes");
    assert!(w.core.counters().container_switches >= 3);
}

#[test]
fn draining_returns_queued_tasks_and_exits_after_the_last_result() {
    let mut w = World::new(1, 0);
    w.tasks(vec![task(1, None), task(2, None)]);
    w.take();
    w.ready(0, 1);
    w.take();
    w.ev(Event::Terminate);
    let a = w.take();
    assert!(
        a.contains(&Action::Send(ManagerMsg::Returned {
            tasks: vec![TaskId(2)]
        })),
        "{a:?}"
    );
    assert_eq!(w.poll(), None, "task 1 still runs");
    w.done(0, 1, &[1]);
    let a = w.take();
    assert!(a.contains(&Action::Send(ManagerMsg::Drained)), "{a:?}");
    w.now += DRAIN_GRACE;
    assert_eq!(w.poll(), Some(Exit::Done));
}

#[test]
fn a_silent_interchange_ends_the_manager() {
    let mut w = World::new(1, 0);
    w.now += Duration::from_secs(61);
    assert!(matches!(w.poll(), Some(Exit::Lost(_))));
}

#[test]
fn an_interchange_without_the_secret_gets_no_registration() {
    let now = Instant::now();
    let mut core = Core::new(
        CoreConfig {
            registration: registration(1, 0),
            secret: "s".into(),
            heartbeat_period: Duration::from_secs(1),
            give_up_after: Duration::from_secs(60),
            prestart: false,
        },
        now,
    );
    let mut out = Vec::new();
    core.handle(Event::LinkUp { nonce: [1; 32] }, now, &mut out);
    out.clear();
    let exit = core.handle(
        Event::FromInterchange(InterchangeMsg::Challenge {
            nonce: [2; 32],
            proof: fxr_protocol::auth::interchange_proof("not s", &[1; 32], &[2; 32]),
            encrypt: true,
        }),
        now,
        &mut out,
    );
    assert!(matches!(exit, Some(Exit::Refused(r)) if r.contains("did not prove")));
    assert!(out.is_empty(), "nothing was sent: {out:?}");
}

/// Found at 16,384 simulated managers: a manager that reconnected with results still to send
/// sent them right after `Hello`, before the interchange had welcomed it; the interchange
/// closes a connection whose first messages are not the handshake, the manager reconnected
/// and did the same again, for ever. Nothing but the handshake goes out before `Welcome`.
#[test]
fn after_a_reconnect_only_the_handshake_goes_out_before_welcome() {
    let mut w = World::new(1, 0);
    w.tasks(vec![task(1, None)]);
    let started = World::starts(&w.take());
    let (slot, g, _) = started[0].clone();
    w.ready(slot, g);
    w.take();
    w.ev(Event::LinkDown);
    w.done(slot, g, &[1]);
    assert!(World::results(&w.take()).is_empty(), "no link: kept");
    let nonce = [3; 32];
    w.ev(Event::LinkUp { nonce });
    w.poll();
    w.now += Duration::from_secs(5);
    w.poll();
    let before: Vec<Action> = w.take();
    assert!(
        before
            .iter()
            .all(|a| matches!(a, Action::Send(ManagerMsg::Hello { .. }))),
        "before the challenge: {before:?}"
    );
    let theirs = [4; 32];
    w.ev(Event::FromInterchange(InterchangeMsg::Challenge {
        nonce: theirs,
        proof: fxr_protocol::auth::interchange_proof("s", &nonce, &theirs),
        encrypt: false,
    }));
    w.poll();
    let between = w.take();
    assert!(
        matches!(between[..], [Action::Send(ManagerMsg::Register(_))]),
        "between the challenge and the welcome: {between:?}"
    );
    w.ev(Event::FromInterchange(InterchangeMsg::Welcome {
        heartbeat_period_ms: 1000,
        heartbeat_threshold_ms: 10_000,
        workers: WorkerSettings {
            runtimes: vec![],
            max_idle_ms: 0,
        },
    }));
    w.poll();
    let after = World::results(&w.take());
    assert_eq!(after.len(), 1, "the kept result goes once welcomed");
}

fn heartbeats(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Send(ManagerMsg::Heartbeat { .. })))
        .count()
}

/// Results carry capacity and counters, so a manager sending results sends no heartbeat on
/// top of them; a quiet one still does, once a period (1 s here).
#[test]
fn results_stand_in_for_heartbeats_and_a_quiet_manager_still_sends_them() {
    let mut w = World::new(1, 0);
    let t0 = w.now;
    w.tasks(vec![task(1, None)]);
    let (slot, g, _) = World::starts(&w.take())[0].clone();
    w.ready(slot, g);
    w.now = t0 + Duration::from_millis(900);
    w.done(slot, g, &[1]);
    let a = w.take();
    assert_eq!(World::results(&a).len(), 1);
    w.now = t0 + Duration::from_millis(1200);
    w.poll();
    assert_eq!(heartbeats(&w.take()), 0, "results went 300 ms ago");
    w.now = t0 + Duration::from_millis(2000);
    w.poll();
    assert_eq!(heartbeats(&w.take()), 1, "quiet for a period");
    w.now = t0 + Duration::from_millis(2500);
    w.poll();
    assert_eq!(heartbeats(&w.take()), 0);
}
