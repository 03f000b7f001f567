//! The dispatcher driven by random event sequences (seeded, so a failure names its seed), with
//! its invariants checked after every event against a model kept beside it:
//! - a result leaves once per task, and only for a task that was accepted;
//! - every open task is queued or held by exactly one manager, and the managers' counts of what
//!   they hold add up to the dispatcher's;
//! - no manager holds more than its limit;
//! - in the end, with one healthy manager, every accepted task gets its result.
//!
//! The events, the model and the answering managers are shared with the sharded dispatcher's
//! property test (`shard_tests.rs`) through [`Driven`].

use super::tests::reg as registration;
use super::*;
use fxr_protocol::{Builtin, Function};

/// A task that carries its id in its arguments: a sharded dispatcher's managers see the
/// shard's own numbers, and the test needs to know which task each one is.
pub(super) fn task(id: u64, container: Option<&str>) -> Task {
    Task {
        id: TaskId(id),
        function: Function::Builtin(Builtin::Noop),
        args: id.to_le_bytes().to_vec(),
        attempt: 0,
        container: container.map(|image| {
            Box::new(fxr_protocol::ContainerSpec {
                runtime: "sim".into(),
                image: image.into(),
                options: vec![],
            })
        }),
    }
}

/// The id a task was submitted under, whatever id it was sent with.
pub(super) fn global(t: &Task) -> TaskId {
    TaskId(u64::from_le_bytes(
        t.args[..8].try_into().expect("test tasks carry 8 bytes"),
    ))
}

/// A dispatcher the random events can drive: the one dispatcher, or a sharded one.
pub(super) trait Driven {
    fn submit(&mut self, tasks: Vec<Task>, out: &mut Outbox);
    fn register(&mut self, reg: Registration, now: Instant, out: &mut Outbox);
    fn on_message(&mut self, id: ManagerId, msg: ManagerMsg, now: Instant, out: &mut Outbox);
    fn lost(&mut self, id: ManagerId, out: &mut Outbox);
    fn drain(&mut self, id: ManagerId, out: &mut Outbox);
    fn tick(&mut self, now: Instant, out: &mut Outbox);
    fn cancel(&mut self, ids: &[TaskId], out: &mut Outbox);
    fn dispatch(&mut self, now: Instant, out: &mut Outbox);
    fn outstanding(&mut self) -> usize;
}

impl Driven for Dispatcher {
    fn submit(&mut self, tasks: Vec<Task>, out: &mut Outbox) {
        Dispatcher::submit(self, tasks, out)
    }
    fn register(&mut self, reg: Registration, now: Instant, out: &mut Outbox) {
        Dispatcher::register(self, reg, now, out)
    }
    fn on_message(&mut self, id: ManagerId, msg: ManagerMsg, now: Instant, out: &mut Outbox) {
        Dispatcher::on_message(self, id, msg, now, out)
    }
    fn lost(&mut self, id: ManagerId, out: &mut Outbox) {
        Dispatcher::lost(self, id, "test", out)
    }
    fn drain(&mut self, id: ManagerId, out: &mut Outbox) {
        Dispatcher::drain(self, id, false, out);
    }
    fn tick(&mut self, now: Instant, out: &mut Outbox) {
        Dispatcher::tick(self, now, out)
    }
    fn cancel(&mut self, ids: &[TaskId], out: &mut Outbox) {
        Dispatcher::cancel(self, ids, out)
    }
    fn dispatch(&mut self, now: Instant, out: &mut Outbox) {
        Dispatcher::dispatch(self, now, out)
    }
    fn outstanding(&mut self) -> usize {
        Dispatcher::outstanding(self)
    }
}

/// What the test knows, from what went in and what came out.
#[derive(Default)]
pub(super) struct Model {
    pub(super) accepted: HashSet<TaskId>,
    pub(super) finished: HashSet<TaskId>,
    /// By the id it was submitted under: the manager last sent it (it may have moved since, by
    /// loss or return), and the id it was sent with.
    pub(super) sent_to: HashMap<TaskId, (ManagerId, TaskId)>,
    /// Unacknowledged batches seen, per manager.
    seqs: HashMap<ManagerId, Vec<u64>>,
    pub(super) managers: Vec<u64>,
}

impl Model {
    pub(super) fn absorb(&mut self, out: &mut Outbox, seed: u64) {
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
            .map(|(_, (_, sent))| *sent)
            .collect();
        v.sort_unstable();
        v
    }
}

/// One random event. With `repeats`, a submission now and then repeats an open task's id (to
/// be dropped as a duplicate); a sharded dispatcher takes fresh ids only, as the core gives.
pub(super) fn random_step(
    rng: &mut fastrand::Rng,
    d: &mut impl Driven,
    model: &mut Model,
    now: &mut Instant,
    next_id: &mut u64,
    repeats: bool,
    out: &mut Outbox,
) {
    match rng.u32(0..12) {
        0 | 1 => {
            let n = rng.u64(1..20);
            let mut batch = Vec::new();
            for _ in 0..n {
                // (The core gives every submission fresh ids, so a finished id never comes
                // back.)
                let again = (repeats && *next_id > 1 && rng.u32(0..10) == 0)
                    .then(|| rng.u64(1..*next_id))
                    .filter(|id| !model.finished.contains(&TaskId(*id)));
                let id = again.unwrap_or_else(|| {
                    *next_id += 1;
                    *next_id - 1
                });
                let container = match rng.u32(0..4) {
                    0 => Some("a"),
                    1 => Some("b"),
                    _ => None,
                };
                if !model.accepted.contains(&TaskId(id))
                    && !batch.iter().any(|t: &Task| t.id.0 == id)
                {
                    model.accepted.insert(TaskId(id));
                }
                batch.push(task(id, container));
            }
            d.submit(batch, out);
        }
        2 => {
            // A new manager, or one that registers again (what it held is lost).
            let id = if !model.managers.is_empty() && rng.bool() {
                model.managers[rng.usize(0..model.managers.len())]
            } else {
                rng.u64(1..1_000_000)
            };
            d.register(registration(id, rng.u32(1..5), rng.u32(0..3)), *now, out);
            if !model.managers.contains(&id) {
                model.managers.push(id);
            }
            // What a re-registered manager held is not its any more.
            model.sent_to.retain(|_, (m, _)| m.0 != id);
        }
        3..=5 if !model.managers.is_empty() => {
            // A manager reports results for some of what it was sent: most succeed, some
            // lose their worker, and a stale or foreign id now and then.
            let m = ManagerId(model.managers[rng.usize(0..model.managers.len())]);
            let mut results = Vec::new();
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
                    results.push(TaskResult {
                        id: t,
                        outcome,
                        run_us: rng.u64(0..2000),
                    });
                }
            }
            if *next_id > 1 && rng.u32(0..4) == 0 {
                results.push(ok(TaskId(rng.u64(1..*next_id))));
            }
            d.on_message(m, results_msg(results), *now, out);
        }
        6 if !model.managers.is_empty() => {
            let m = ManagerId(model.managers[rng.usize(0..model.managers.len())]);
            if let Some(seqs) = model.seqs.get_mut(&m) {
                if !seqs.is_empty() {
                    let seq = seqs.swap_remove(rng.usize(0..seqs.len()));
                    d.on_message(m, ManagerMsg::Ack { seq }, *now, out);
                }
            }
        }
        7 if !model.managers.is_empty() => {
            // A manager hands back some of what it holds, unstarted.
            let m = ManagerId(model.managers[rng.usize(0..model.managers.len())]);
            let mut tasks: Vec<TaskId> = model
                .held_by(m)
                .into_iter()
                .filter(|_| rng.bool())
                .collect();
            // A confused manager may name a task twice.
            if let Some(t) = tasks.first().copied() {
                if rng.bool() {
                    tasks.push(t);
                }
            }
            d.on_message(m, ManagerMsg::Returned { tasks }, *now, out);
        }
        8 if !model.managers.is_empty() => {
            let i = rng.usize(0..model.managers.len());
            let m = ManagerId(model.managers.swap_remove(i));
            if rng.bool() {
                d.lost(m, out);
            } else {
                d.drain(m, out);
                d.on_message(m, ManagerMsg::Drained, *now, out);
            }
        }
        9 => {
            // Managers that went silent past the threshold are lost (closed by the tick).
            *now += Duration::from_millis(rng.u64(0..3000));
            d.tick(*now, out);
        }
        10 if *next_id > 1 => {
            let ids: Vec<TaskId> = (0..rng.usize(1..5))
                .map(|_| TaskId(rng.u64(1..*next_id)))
                .collect();
            d.cancel(&ids, out);
        }
        _ => d.dispatch(*now, out),
    }
}

pub(super) fn ok(id: TaskId) -> TaskResult {
    TaskResult {
        id,
        outcome: Outcome::Success(b"null".to_vec()),
        run_us: 1,
    }
}

pub(super) fn results_msg(results: Vec<TaskResult>) -> ManagerMsg {
    ManagerMsg::Results {
        results,
        capacity: vec![],
        counters: WorkerCounters::default(),
        acks: Vec::new(),
    }
}

/// Healthy managers answer every batch at once, acknowledging it, until nothing is open;
/// `check` runs after each round.
pub(super) fn answer_everything<D: Driven>(
    d: &mut D,
    model: &mut Model,
    now: Instant,
    seed: u64,
    out: &mut Outbox,
    mut check: impl FnMut(&mut D, &mut Model),
) {
    for _ in 0..100_000 {
        if d.outstanding() == 0 {
            break;
        }
        d.dispatch(now, out);
        let sent: Vec<(ManagerId, InterchangeMsg)> = out.to_managers.drain(..).collect();
        for (m, msg) in sent {
            if let InterchangeMsg::Tasks { seq, tasks } = msg {
                for t in &tasks {
                    model.sent_to.insert(global(t), (m, t.id));
                }
                d.on_message(m, ManagerMsg::Ack { seq }, now, out);
                let results = tasks.iter().map(|t| ok(t.id)).collect();
                d.on_message(m, results_msg(results), now, out);
            }
        }
        model.absorb(out, seed);
        check(d, model);
    }
    assert_eq!(d.outstanding(), 0, "seed {seed}: tasks left open");
    assert_eq!(
        model.finished.len(),
        model.accepted.len(),
        "seed {seed}: every accepted task has one result"
    );
}

fn check(d: &Dispatcher, model: &Model, seed: u64, step: usize) {
    let open = model.accepted.len() - model.finished.len();
    assert_eq!(d.outstanding(), open, "seed {seed} step {step}: open tasks");
    check_counts(d, seed, step);
}

/// What a dispatcher must agree with itself on, whatever went in: every count it keeps matches
/// its tables, and no manager holds more than its limit or a task of a manager that is gone.
pub(super) fn check_counts(d: &Dispatcher, seed: u64, step: usize) {
    let burst = d.config.burst_prefetch;
    assert_eq!(
        d.queued() + d.in_flight(),
        d.outstanding(),
        "seed {seed} step {step}: queued + in flight"
    );
    let mut held = 0;
    assert_eq!(
        d.idle_workers,
        d.managers.values().map(|m| m.idle_workers()).sum::<usize>(),
        "seed {seed} step {step}: idle workers counted"
    );
    assert_eq!(
        d.workers,
        d.managers.values().map(|m| m.workers()).sum::<usize>(),
        "seed {seed} step {step}: workers counted"
    );
    assert_eq!(
        d.free_slots,
        d.managers
            .values()
            .map(|m| if m.draining { 0 } else { m.free() })
            .sum::<usize>(),
        "seed {seed} step {step}: free slots counted"
    );
    for (id, m) in &d.managers {
        let really = d
            .tasks
            .values()
            .filter(|e| matches!(e.place, Place::InFlight(x) if x == *id))
            .count();
        assert_eq!(
            m.in_flight, really,
            "seed {seed} step {step}: manager {id}'s count"
        );
        for (k, n) in m.held.iter().enumerate() {
            let of_kind = d
                .tasks
                .values()
                .filter(|e| {
                    e.kind as usize == k && matches!(e.place, Place::InFlight(x) if x == *id)
                })
                .count();
            assert_eq!(
                *n, of_kind,
                "seed {seed} step {step}: manager {id}'s count of type {k}"
            );
        }
        let most = m.slots.max(m.reg.workers as usize + burst);
        assert!(
            m.in_flight <= most,
            "seed {seed} step {step}: manager {id} holds {} over its most {most}",
            m.in_flight
        );
        held += m.in_flight;
    }
    assert_eq!(
        held,
        d.in_flight(),
        "seed {seed} step {step}: held in total"
    );
    let queued = d
        .tasks
        .values()
        .filter(|e| matches!(e.place, Place::Queued))
        .count();
    assert_eq!(queued, d.queued(), "seed {seed} step {step}: queued");
    for (id, e) in d.tasks.iter() {
        if let Place::InFlight(m) = e.place {
            assert!(
                d.managers.contains_key(&m),
                "seed {seed} step {step}: task {} held by manager {m}, which is gone",
                id.0
            );
        }
    }
}

fn run(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut now = Instant::now();
    let mut d = Dispatcher::new(DispatchConfig {
        max_retries: 2,
        max_batch: 8,
        max_unacked: 3,
        burst_prefetch: 4,
        seed,
        ..DispatchConfig::default()
    });
    let mut out = Outbox::default();
    let mut model = Model::default();
    let mut next_id = 1u64;
    for step in 0..400 {
        random_step(
            &mut rng,
            &mut d,
            &mut model,
            &mut now,
            &mut next_id,
            true,
            &mut out,
        );
        model.absorb(&mut out, seed);
        // Managers the dispatcher lost on a tick are gone for the model too.
        model
            .managers
            .retain(|m| d.managers.contains_key(&ManagerId(*m)));
        check(&d, &model, seed, step);
    }
    // One healthy manager, answering everything: every accepted task ends, once.
    let last = 9_999_999;
    d.register(registration(last, 4, 4), now, &mut out);
    model.managers = vec![last];
    for m in d.manager_ids() {
        if m.0 != last {
            d.lost(m, "end of test", &mut out);
        }
    }
    model.absorb(&mut out, seed);
    answer_everything(&mut d, &mut model, now, seed, &mut out, |d, model| {
        check(d, model, seed, 0)
    });
}

#[test]
fn random_event_sequences_keep_every_invariant() {
    for seed in 0..300 {
        run(seed);
    }
}
