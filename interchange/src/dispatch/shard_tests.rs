//! The sharded dispatcher, with its shards on real threads: unit tests of the hand-out, and a
//! property test that drives it with random event sequences (seeded, so a failure names its
//! seed) and checks, at random moments between events:
//! - a result leaves once per task, and only for a task that was accepted;
//! - every open task is in exactly one place: the queue in front of the shards, or one shard;
//! - every registered manager belongs to exactly one shard, the one its home says;
//! - every shard keeps its own counts (the single dispatcher's checks);
//! - in the end, with one healthy manager per shard, every accepted task gets its result.

use super::super::prop_tests::{
    answer_everything, check_counts, global, ok, random_step, results_msg as results, task, Driven,
    Model,
};
use super::super::tests::reg as registration;
use super::super::Place;
use super::*;
use fxr_protocol::InterchangeMsg;

impl Driven for Sharded {
    fn submit(&mut self, tasks: Vec<Task>, out: &mut Outbox) {
        Sharded::submit(self, tasks, out)
    }
    fn register(&mut self, reg: Registration, now: Instant, out: &mut Outbox) {
        Sharded::register(self, reg, now, out)
    }
    fn on_message(&mut self, id: ManagerId, msg: ManagerMsg, now: Instant, out: &mut Outbox) {
        Sharded::on_message(self, id, msg, now, out)
    }
    fn lost(&mut self, id: ManagerId, out: &mut Outbox) {
        Sharded::lost(self, id, "test", out)
    }
    fn drain(&mut self, id: ManagerId, out: &mut Outbox) {
        Sharded::drain(self, id, false, out);
    }
    fn tick(&mut self, now: Instant, out: &mut Outbox) {
        Sharded::tick(self, now, out)
    }
    fn cancel(&mut self, ids: &[TaskId], out: &mut Outbox) {
        Sharded::cancel(self, ids, out)
    }
    fn dispatch(&mut self, now: Instant, out: &mut Outbox) {
        Sharded::dispatch(self, now, out)
    }
    fn outstanding(&mut self) -> usize {
        Sharded::outstanding(self)
    }
}

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
    assert!(s.lanes.is_none());
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
        random_step(
            &mut rng,
            &mut s,
            &mut model,
            &mut now,
            &mut next_id,
            false,
            &mut out,
        );
        model.absorb(&mut out, seed);
        // Events pile up between checks, as they do between the core's cycles.
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
    answer_everything(&mut s, &mut model, now, seed, &mut out, |s, model| {
        check(s, model, seed, 0)
    });
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
