//! The manager core's worker rules: which type gets which slot (shares, cold starts, switches),
//! which idle worker runs which queued tasks, retirement, and what a worker's end means (a lost
//! task, or a container that cannot start).

use super::{Action, Core, Kind, SlotState, BARE, MAX_WORKER_BATCH, SHORT_TASK_US};
use fxr_protocol::{FailureKind, FromWorker, TaskResult};
use std::time::{Duration, Instant};

impl Core {
    /// Idle bare-node workers with no bare-node task waiting: as good as unused slots.
    pub(super) fn spare_bare(&self) -> usize {
        let k = &self.kinds[BARE];
        if k.queue.is_empty() {
            k.idle.len()
        } else {
            0
        }
    }

    pub(super) fn unblock(&mut self, now: Instant) {
        for k in &mut self.kinds {
            if k.blocked_until.is_some_and(|t| t <= now) {
                k.blocked_until = None;
            }
        }
        // Tasks of a type whose container cannot start fail at once, with its message.
        let mut failed = Vec::new();
        for k in &mut self.kinds {
            if k.blocked_until.is_none() || k.spec.is_none() {
                continue;
            }
            let msg = k.last_error.clone().unwrap_or_default();
            for t in k.queue.drain(..) {
                failed.push(TaskResult::failure(
                    t.id,
                    FailureKind::ContainerError,
                    msg.clone(),
                ));
            }
        }
        for r in failed {
            self.queued -= 1;
            self.known.remove(&r.id);
            self.results.push(r);
        }
    }

    /// Each type's share of the slots, in proportion to its demand (at least one slot for every
    /// type with demand, so none starves; none for a type without), by type index.
    fn shares(&self) -> Vec<usize> {
        let n = self.slots.len();
        let total: usize = self.kinds.iter().map(Kind::demand).sum();
        self.kinds
            .iter()
            .map(|k| match k.demand() {
                0 => 0,
                d => (n * d).div_ceil(total).max(1),
            })
            .collect()
    }

    /// Starts workers for types under their share: in empty slots first, then in the slot of
    /// an idle worker of a type over its share or without demand.
    pub(super) fn rebalance(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Nothing can start while every slot holds a busy or starting worker: the common case
        // under load, so it is checked before anything is computed.
        if self.queued == 0
            || (self.empty.is_empty() && self.kinds.iter().all(|k| k.idle.is_empty()))
        {
            return;
        }
        let wanting: Vec<usize> = self
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| k.blocked_until.is_none() && k.queue.len() > k.starting + k.idle.len())
            .map(|(i, _)| i)
            .collect();
        if wanting.is_empty() {
            return;
        }
        let shares = self.shares();
        for key in wanting {
            let share = shares[key].max(1);
            loop {
                let k = &self.kinds[key];
                if k.queue.len() <= k.starting + k.idle.len() || k.workers >= share {
                    break;
                }
                let slot = match self.empty.pop() {
                    Some(s) => s,
                    None => match self.victim(key, &shares) {
                        Some(s) => {
                            // An idle worker on the bare node gives way without a container
                            // switch: it is the node's default, not a container.
                            if self.slots[s].kind != BARE {
                                tracing::debug!(slot = s, kind = %self.kinds[key].key, "container switch");
                                self.counters.container_switches += 1;
                            }
                            self.free_slot(s, out);
                            self.empty.retain(|e| *e != s);
                            s
                        }
                        None => break,
                    },
                };
                self.start(slot, key, now, out);
            }
        }
    }

    /// An idle worker to evict for `wanted`: of a type without demand, or over its share; one
    /// on the bare node first, then the one idle longest.
    fn victim(&self, wanted: usize, shares: &[usize]) -> Option<usize> {
        self.kinds
            .iter()
            .enumerate()
            .filter(|(i, k)| {
                *i != wanted && !k.idle.is_empty() && (k.demand() == 0 || k.workers > shares[*i])
            })
            .filter_map(|(_, k)| k.idle.first().copied())
            .min_by_key(|s| (self.slots[*s].kind != BARE, self.slots[*s].since))
    }

    pub(super) fn start(&mut self, slot: usize, key: usize, now: Instant, out: &mut Vec<Action>) {
        let Some(k) = self.kinds.get_mut(key) else {
            return;
        };
        k.workers += 1;
        k.starting += 1;
        if k.spec.is_some() {
            self.counters.cold_starts += 1;
        }
        tracing::debug!(slot, kind = k.key, "starting a worker");
        let s = &mut self.slots[slot];
        s.generation += 1;
        s.state = SlotState::Starting;
        s.kind = key;
        s.since = now;
        out.push(Action::Start {
            slot,
            generation: s.generation,
            container: k.spec.clone(),
        });
    }

    /// Stops the worker in an idle or starting slot and makes the slot empty.
    fn free_slot(&mut self, slot: usize, out: &mut Vec<Action>) {
        let s = &mut self.slots[slot];
        let state = s.state;
        if state == SlotState::Empty {
            return;
        }
        out.push(Action::Stop {
            slot,
            generation: s.generation,
        });
        s.generation += 1;
        s.state = SlotState::Empty;
        if let Some(k) = self.kinds.get_mut(s.kind) {
            k.workers -= 1;
            match state {
                SlotState::Idle => k.idle.retain(|i| *i != slot),
                SlotState::Starting => k.starting -= 1,
                _ => {}
            }
        }
        self.empty.push(slot);
    }

    /// Gives queued tasks to idle workers of their type.
    pub(super) fn assign(&mut self, out: &mut Vec<Action>) {
        if self.queued == 0 {
            return;
        }
        let short = self.seen_results && self.ewma_us < SHORT_TASK_US;
        for k in &mut self.kinds {
            while !k.queue.is_empty() {
                let Some(slot) = k.idle.pop() else { break };
                let per_worker = if short {
                    k.queue
                        .len()
                        .div_ceil(k.idle.len() + 1)
                        .clamp(1, MAX_WORKER_BATCH)
                } else {
                    1
                };
                let n = per_worker.min(k.queue.len());
                self.queued -= n;
                self.assigned += n;
                k.running += n;
                let s = &mut self.slots[slot];
                s.state = SlotState::Busy;
                s.assigned.extend(k.queue.drain(..n));
                out.push(Action::Run {
                    slot,
                    generation: s.generation,
                    tasks: n,
                });
            }
        }
    }

    /// Stops workers idle past `max_idle`. Each type's idle list is in the order its workers
    /// became idle, so only its front is looked at.
    pub(super) fn retire_idle(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.settings.max_idle_ms == 0 {
            return;
        }
        let idle = Duration::from_millis(self.settings.max_idle_ms);
        let mut due = Vec::new();
        for k in &self.kinds {
            due.extend(
                k.idle
                    .iter()
                    .copied()
                    .take_while(|s| now.saturating_duration_since(self.slots[*s].since) >= idle),
            );
        }
        for s in due {
            self.free_slot(s, out);
        }
    }

    pub(super) fn on_worker(
        &mut self,
        slot: usize,
        generation: u64,
        msg: FromWorker,
        now: Instant,
    ) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.generation != generation || s.state == SlotState::Empty {
            return;
        }
        match msg {
            FromWorker::Ready { .. } => {
                if s.state == SlotState::Starting {
                    s.state = SlotState::Idle;
                    s.since = now;
                    if let Some(k) = self.kinds.get_mut(s.kind) {
                        k.starting -= 1;
                        k.idle.push(slot);
                        k.failures = 0;
                    }
                }
            }
            FromWorker::Results { results } => {
                for r in results {
                    let s = &mut self.slots[slot];
                    let pos = if s.assigned.front().is_some_and(|t| t.id == r.id) {
                        Some(0)
                    } else {
                        s.assigned.iter().position(|t| t.id == r.id)
                    };
                    let Some(pos) = pos else { continue };
                    s.assigned.remove(pos);
                    self.assigned -= 1;
                    if let Some(k) = self.kinds.get_mut(s.kind) {
                        k.running -= 1;
                        if s.assigned.is_empty() && s.state == SlotState::Busy {
                            s.state = SlotState::Idle;
                            s.since = now;
                            k.idle.push(slot);
                        }
                    }
                    self.finish(r);
                }
            }
        }
    }

    pub(super) fn finish(&mut self, r: TaskResult) {
        self.known.remove(&r.id);
        self.ewma_us = if self.seen_results {
            0.9 * self.ewma_us + 0.1 * r.run_us as f64
        } else {
            r.run_us as f64
        };
        self.seen_results = true;
        self.results.push(r);
    }

    pub(super) fn worker_gone(&mut self, slot: usize, generation: u64, reason: &str, now: Instant) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.generation != generation || s.state == SlotState::Empty {
            return;
        }
        let state = s.state;
        let lived = now.saturating_duration_since(s.since);
        let key = s.kind;
        let mut assigned = std::mem::take(&mut s.assigned);
        s.state = SlotState::Empty;
        s.generation += 1;
        self.empty.push(slot);
        self.assigned -= assigned.len();
        let Some(k) = self.kinds.get_mut(key) else {
            return;
        };
        k.workers -= 1;
        k.running -= assigned.len();
        match state {
            SlotState::Starting => k.starting -= 1,
            SlotState::Idle => k.idle.retain(|i| *i != slot),
            _ => {}
        }
        let failed_start = state == SlotState::Starting;
        if failed_start || lived < Duration::from_secs(1) {
            k.failures += 1;
            k.blocked_until = Some(now + backoff(k.failures));
        }
        if failed_start {
            let what = match &k.spec {
                Some(spec) => format!("container {} did not start: {}", spec.key(), reason.trim()),
                None => format!("worker did not start: {}", reason.trim()),
            };
            tracing::warn!(slot, kind = %k.key, "{what}");
            if k.spec.is_some() {
                self.counters.container_errors += 1;
            }
            k.last_error = Some(what);
        } else {
            tracing::warn!(slot, kind = %k.key, reason, "worker exited");
        }
        // The first was running; the rest never started and go back to the queue.
        let running = assigned.pop_front().map(|t| t.id);
        for task in assigned.into_iter().rev() {
            self.enqueue(task, true);
        }
        if let Some(id) = running {
            let msg = match &self.kinds[key].last_error {
                Some(e) if failed_start => e.clone(),
                _ => format!("worker {slot} died while running it: {}", reason.trim()),
            };
            self.known.remove(&id);
            self.results
                .push(TaskResult::failure(id, FailureKind::WorkerLost, msg));
        }
    }
}

fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(100u64 << failures.min(7)).min(Duration::from_secs(10))
    }
}
