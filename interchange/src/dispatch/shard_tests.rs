//! The sharded dispatcher, with its shards on real threads: unit tests of the hand-out, and a
//! property test that drives it with random event sequences (seeded, so a failure names its
//! seed) and checks, at random moments between events:
//! - a result leaves once per task, and only for a task that was accepted;
//! - every open task is in exactly one place: the queue in front of the shards, or one shard;
//! - every registered manager belongs to exactly one shard, the one its home says;
//! - every shard keeps its own counts (the single dispatcher's checks);
//! - in the end, with one healthy manager per shard, every accepted task gets its result.

use super::super::prop_tests::check_counts;
use super::super::tests::reg as registration;
use super::super::Place;
use super::*;
use fxr_protocol::{InterchangeMsg, Outcome, WorkerCounters};
use std::time::Duration;

/// A sharded dispatcher; odd seeds run every cycle on the shards' threads, even ones only
/// cycles with work enough (most of them, in these tests, on the caller's).
fn sharded(shards: usize, seed: u64) -> Sharded {
    let mut s = Sharded::new(DispatchConfig {
        max_retries: 2,
        max_batch: 8,
        max_unacked: 3,
        burst_prefetch: 4,
        seed,
        shards,
        ..DispatchConfig::default()
    })
    .expect("shard threads start");
    if seed % 2 == 1 {
        s.inline_below = 0;
    }
    s
}

/// A task that carries its global id in its arguments: a shard's managers see the shard's own
/// numbers, and the test needs to know which task each one is.
fn task(id: u64, container: Option<&str>) -> Task {
    let mut t = super::super::prop_tests::task(id, container);
    t.args = id.to_le_bytes().to_vec();
    t
}

fn global(t: &Task) -> TaskId {
    TaskId(u64::from_le_bytes(
        t.args[..8].try_into().expect("test tasks carry 8 bytes"),
    ))
}

fn ok(id: TaskId) -> TaskResult {
    TaskResult {
        id,
        outcome: Outcome::Success(b"null".to_vec()),
        run_us: 1,
    }
}

fn results(results: Vec<TaskResult>) -> ManagerMsg {
    ManagerMsg::Results {
        results,
        capacity: vec![],
        counters: WorkerCounters::default(),
    }
}

/// The tasks each manager was sent in `out` (the id it was sent, and the task's global id).
fn sent(out: &mut Outbox) -> HashMap<ManagerId, Vec<(TaskId, TaskId)>> {
    let mut by: HashMap<ManagerId, Vec<(TaskId, TaskId)>> = HashMap::default();
    for (m, msg) in out.to_managers.drain(..) {
        if let InterchangeMsg::Tasks { tasks, .. } = msg {
            by.entry(m)
                .or_default()
                .extend(tasks.iter().map(|t| (t.id, global(t))));
        }
    }
    by
}

fn globals(sent: &[(TaskId, TaskId)]) -> Vec<TaskId> {
    let mut v: Vec<TaskId> = sent.iter().map(|(_, g)| *g).collect();
    v.sort_unstable();
    v
}

#[test]
fn tasks_spread_over_the_shards_and_come_back_from_a_lost_one() {
    let mut s = sharded(2, 1);
    let mut out = Outbox::default();
    let now = Instant::now();
    s.register(registration(1, 4, 0), now, &mut out);
    s.register(registration(2, 4, 0), now, &mut out);
    s.submit((1..=8).map(|i| task(i, None)), &mut out);
    s.dispatch(now, &mut out);
    let by = sent(&mut out);
    assert_eq!(by.get(&ManagerId(1)).map(Vec::len), Some(4), "{by:?}");
    assert_eq!(by.get(&ManagerId(2)).map(Vec::len), Some(4), "{by:?}");
    assert_eq!(s.home[&ManagerId(1)].0 + s.home[&ManagerId(2)].0, 1);
    // Manager 1 is lost: its four tasks go back to the front and, once manager 2 has room,
    // to its shard.
    s.lost(ManagerId(1), "test", &mut out);
    let two = by[&ManagerId(2)].clone();
    s.on_message(
        ManagerId(2),
        results(two.iter().map(|(local, _)| ok(*local)).collect()),
        now,
        &mut out,
    );
    s.dispatch(now, &mut out);
    s.dispatch(now, &mut out);
    let again = sent(&mut out);
    let moved = globals(&again.get(&ManagerId(2)).cloned().unwrap_or_default());
    assert_eq!(
        moved,
        globals(&by[&ManagerId(1)]),
        "manager 1's tasks now run at manager 2"
    );
    // The results leave with their global ids.
    let mut done: Vec<TaskId> = out.results.iter().map(|r| r.id).collect();
    done.sort_unstable();
    assert_eq!(done, globals(&two));
    assert_eq!(s.outstanding(), 4);
    assert_eq!(s.queued(), 0);
}

#[test]
fn a_shard_takes_no_more_than_its_room_and_the_rest_waits_in_front() {
    let mut s = sharded(3, 2);
    let mut out = Outbox::default();
    let now = Instant::now();
    s.register(registration(1, 2, 1), now, &mut out);
    s.submit((1..=100).map(|i| task(i, None)), &mut out);
    s.dispatch(now, &mut out);
    s.dispatch(now, &mut out);
    let by = sent(&mut out);
    // Two workers and one task of prefetch: three tasks out, the oldest, and 97 in front.
    let got = globals(&by.get(&ManagerId(1)).cloned().unwrap_or_default());
    assert_eq!(got, vec![TaskId(1), TaskId(2), TaskId(3)]);
    assert_eq!(s.front.len(), 97);
    assert_eq!(s.queued(), 97);
    assert_eq!(s.in_flight(), 3);
    let (managers, workers, busy) = s.worker_load();
    assert_eq!((managers, workers, busy), (1, 2, 2));
}

#[test]
fn one_shard_is_the_dispatcher_itself() {
    let mut s = Sharded::single(DispatchConfig::default());
    let mut out = Outbox::default();
    let now = Instant::now();
    s.register(registration(1, 2, 0), now, &mut out);
    s.submit((1..=2).map(|i| task(i, None)), &mut out);
    // Nothing waits for a cycle: the one dispatcher took them at once.
    assert!(s.front.is_empty());
    assert_eq!(lock(&s.shards[0].d).d.queued(), 2);
    s.dispatch(now, &mut out);
    assert_eq!(sent(&mut out)[&ManagerId(1)].len(), 2);
    assert!(s.lanes.is_empty());
}

/// What the test knows, from what went in and what came out.
#[derive(Default)]
struct Model {
    accepted: HashSet<TaskId>,
    finished: HashSet<TaskId>,
    /// By global id: the manager last sent it, and the id it was sent under.
    sent_to: HashMap<TaskId, (ManagerId, TaskId)>,
    seqs: HashMap<ManagerId, Vec<u64>>,
    managers: Vec<u64>,
}

impl Model {
    fn absorb(&mut self, out: &mut Outbox, seed: u64) {
        for r in out.results.drain(..) {
            assert!(
                self.accepted.contains(&r.id),
                "seed {seed}: a result for {} which was never accepted",
                r.id.0
            );
            assert!(
                self.finished.insert(r.id),
                "seed {seed}: a second result for {}",
                r.id.0
            );
            self.sent_to.remove(&r.id);
        }
        for (m, msg) in out.to_managers.drain(..) {
            if let InterchangeMsg::Tasks { seq, tasks } = msg {
                self.seqs.entry(m).or_default().push(seq);
                for t in tasks {
                    self.sent_to.insert(global(&t), (m, t.id));
                }
            }
        }
        for m in out.close.drain(..) {
            self.managers.retain(|x| *x != m.0);
        }
    }

    /// What `m` holds, under the ids it was sent.
    fn held_by(&self, m: ManagerId) -> Vec<TaskId> {
        let mut v: Vec<TaskId> = self
            .sent_to
            .iter()
            .filter(|(g, (x, _))| *x == m && !self.finished.contains(g))
            .map(|(_, (_, local))| *local)
            .collect();
        v.sort_unstable();
        v
    }
}

/// Settles the shards and checks every invariant of the module.
fn check(s: &mut Sharded, model: &mut Model, seed: u64, step: usize) {
    let mut out = Outbox::default();
    s.settle(&mut out);
    let spilled = std::mem::take(&mut s.spill);
    out.to_managers.extend(spilled.to_managers);
    out.results.extend(spilled.results);
    out.close.extend(spilled.close);
    model.absorb(&mut out, seed);
    let mut place: HashMap<TaskId, &str> = HashMap::default();
    for t in &s.front {
        assert!(
            place.insert(t.id, "front").is_none(),
            "seed {seed} step {step}: task {} twice in front",
            t.id.0
        );
    }
    let shards: Vec<_> = s.shards.iter().map(|x| lock(&x.d)).collect();
    let names = ["shard 0", "shard 1", "shard 2", "shard 3"];
    for (i, p) in shards.iter().enumerate() {
        let d = &p.d;
        check_counts(d, seed, step);
        assert_eq!(
            p.global.len(),
            d.tasks.len(),
            "seed {seed} step {step}: {}'s numbering",
            names[i]
        );
        for (local, e) in d.tasks.iter() {
            let id = *p.global.get(&local).unwrap_or_else(|| {
                panic!(
                    "seed {seed} step {step}: {}'s task {} has no global id",
                    names[i], local.0
                )
            });
            if let Some(was) = place.insert(id, names[i]) {
                panic!(
                    "seed {seed} step {step}: task {} is in {was} and in {}",
                    id.0, names[i]
                );
            }
            if let Place::InFlight(m) = e.place {
                assert_eq!(
                    s.home.get(&m).map(|h| h.0),
                    Some(i),
                    "seed {seed} step {step}: task {} at manager {m}, not one of {}",
                    id.0,
                    names[i]
                );
            }
        }
        for m in p.d.managers.keys() {
            assert_eq!(
                s.home.get(m).map(|h| h.0),
                Some(i),
                "seed {seed} step {step}: manager {m} in {} but homed elsewhere",
                names[i]
            );
        }
    }
    let registered: usize = shards.iter().map(|p| p.d.managers.len()).sum();
    assert_eq!(
        registered,
        s.home.len(),
        "seed {seed} step {step}: managers"
    );
    for (i, sh) in s.shards.iter().enumerate() {
        assert_eq!(
            sh.managers,
            shards[i].d.managers.len(),
            "seed {seed} step {step}: count of {}'s managers",
            names[i]
        );
    }
    let open: HashSet<TaskId> = model
        .accepted
        .difference(&model.finished)
        .copied()
        .collect();
    let placed: HashSet<TaskId> = place.keys().copied().collect();
    assert_eq!(
        open, placed,
        "seed {seed} step {step}: open tasks against tasks placed"
    );
    drop(shards);
    model
        .managers
        .retain(|m| s.home.contains_key(&ManagerId(*m)));
}

fn run(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let shard_count = 2 + (seed % 3) as usize;
    let mut s = sharded(shard_count, seed);
    let mut now = Instant::now();
    let mut out = Outbox::default();
    let mut model = Model::default();
    let mut next_id = 1u64;
    for step in 0..300 {
        match rng.u32(0..12) {
            0 | 1 => {
                let batch: Vec<Task> = (0..rng.u64(1..20))
                    .map(|_| {
                        next_id += 1;
                        model.accepted.insert(TaskId(next_id - 1));
                        let container = match rng.u32(0..4) {
                            0 => Some("a"),
                            1 => Some("b"),
                            _ => None,
                        };
                        task(next_id - 1, container)
                    })
                    .collect();
                s.submit(batch, &mut out);
            }
            2 => {
                let id = if !model.managers.is_empty() && rng.bool() {
                    model.managers[rng.usize(0..model.managers.len())]
                } else {
                    rng.u64(1..1_000_000)
                };
                s.register(
                    registration(id, rng.u32(1..5), rng.u32(0..3)),
                    now,
                    &mut out,
                );
                if !model.managers.contains(&id) {
                    model.managers.push(id);
                }
                model.sent_to.retain(|_, (m, _)| m.0 != id);
            }
            3..=5 if !model.managers.is_empty() => {
                let m = ManagerId(model.managers[rng.usize(0..model.managers.len())]);
                let mut rs = Vec::new();
                for t in model.held_by(m) {
                    if rng.bool() {
                        let outcome = if rng.u32(0..5) == 0 {
                            Outcome::Failure {
                                kind: FailureKind::WorkerLost,
                                message: "killed".into(),
                            }
                        } else {
                            Outcome::Success(b"null".to_vec())
                        };
                        rs.push(TaskResult {
                            id: t,
                            outcome,
                            run_us: rng.u64(0..2000),
                        });
                    }
                }
                if next_id > 1 && rng.u32(0..4) == 0 {
                    rs.push(ok(TaskId(rng.u64(1..next_id))));
                }
                s.on_message(m, results(rs), now, &mut out);
            }
            6 if !model.managers.is_empty() => {
                let m = ManagerId(model.managers[rng.usize(0..model.managers.len())]);
                if let Some(seqs) = model.seqs.get_mut(&m) {
                    if !seqs.is_empty() {
                        let seq = seqs.swap_remove(rng.usize(0..seqs.len()));
                        s.on_message(m, ManagerMsg::Ack { seq }, now, &mut out);
                    }
                }
            }
            7 if !model.managers.is_empty() => {
                let m = ManagerId(model.managers[rng.usize(0..model.managers.len())]);
                let tasks: Vec<TaskId> = model
                    .held_by(m)
                    .into_iter()
                    .filter(|_| rng.bool())
                    .collect();
                s.on_message(m, ManagerMsg::Returned { tasks }, now, &mut out);
            }
            8 if !model.managers.is_empty() => {
                let i = rng.usize(0..model.managers.len());
                let m = ManagerId(model.managers.swap_remove(i));
                if rng.bool() {
                    s.lost(m, "test", &mut out);
                } else {
                    s.drain(m, false, &mut out);
                    s.on_message(m, ManagerMsg::Drained, now, &mut out);
                }
            }
            9 => {
                now += Duration::from_millis(rng.u64(0..3000));
                s.tick(now, &mut out);
            }
            10 if next_id > 1 => {
                let ids: Vec<TaskId> = (0..rng.usize(1..5))
                    .map(|_| TaskId(rng.u64(1..next_id)))
                    .collect();
                s.cancel(&ids, &mut out);
            }
            _ => s.dispatch(now, &mut out),
        }
        model.absorb(&mut out, seed);
        // Ops pile up between checks, as they do between the core's cycles.
        if rng.u32(0..3) == 0 {
            check(&mut s, &mut model, seed, step);
        }
    }
    check(&mut s, &mut model, seed, 300);
    // One healthy manager per shard, answering everything: every accepted task ends, once.
    for m in s.manager_ids() {
        s.lost(m, "end of test", &mut out);
    }
    let last: Vec<u64> = (0..shard_count as u64).map(|i| 9_000_000 + i).collect();
    for id in &last {
        s.register(registration(*id, 4, 4), now, &mut out);
    }
    model.managers = last;
    model.absorb(&mut out, seed);
    for _ in 0..100_000 {
        if s.outstanding() == 0 {
            break;
        }
        s.dispatch(now, &mut out);
        let batches: Vec<(ManagerId, InterchangeMsg)> = out.to_managers.drain(..).collect();
        for (m, msg) in batches {
            if let InterchangeMsg::Tasks { seq, tasks } = msg {
                for t in &tasks {
                    model.sent_to.insert(global(t), (m, t.id));
                }
                s.on_message(m, ManagerMsg::Ack { seq }, now, &mut out);
                s.on_message(
                    m,
                    results(tasks.iter().map(|t| ok(t.id)).collect()),
                    now,
                    &mut out,
                );
            }
        }
        model.absorb(&mut out, seed);
    }
    check(&mut s, &mut model, seed, 0);
    assert_eq!(s.outstanding(), 0, "seed {seed}: tasks left open");
    assert_eq!(
        model.finished.len(),
        model.accepted.len(),
        "seed {seed}: every accepted task has one result"
    );
    let (managers, _, _) = s.worker_load();
    assert_eq!(managers, shard_count as u64);
    // Each of the last managers went to a shard of its own.
    let homes: HashSet<usize> = s.home.values().map(|h| h.0).collect();
    assert_eq!(homes.len(), shard_count, "seed {seed}: managers spread");
}

#[test]
fn random_event_sequences_keep_every_invariant_across_shards() {
    for seed in 0..200 {
        run(seed);
    }
}
