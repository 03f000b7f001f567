//! Sending work: which queued tasks go to which manager, in what batch, and how many. The
//! policy picks among managers with room; [`Backlog::room`] sizes each batch so that prefetch
//! never leaves a task behind a busy worker while another worker is idle.

use super::manager::{Manager, Unacked};
use super::{Dispatcher, Outbox, Place};
use fxr_protocol::{InterchangeMsg, ManagerId};
use std::time::Instant;

/// The counts that size a batch (see [`Backlog::room`]).
#[derive(Clone, Copy, Debug)]
struct Backlog {
    queued: usize,
    idle_workers: usize,
    workers: usize,
    short_us: u64,
}

impl Backlog {
    /// The most a batch to `m` may bring. Prefetched tasks wait behind busy workers. For short
    /// tasks that is worth it as soon as every idle worker has a task (the wait is shorter
    /// than a round trip to the interchange); for longer ones only once every worker has a
    /// task after its current one, so the last wave does not leave some workers a task
    /// behind while others have none.
    fn room(&self, m: &Manager) -> usize {
        let taken_elsewhere = if m.short(self.short_us) {
            self.idle_workers
        } else {
            self.workers
        };
        m.room(self.queued.saturating_sub(taken_elsewhere))
    }
}

/// What one attempt to send a batch did.
enum Sent {
    Batch,
    QueueEmpty,
    /// The picked manager had no room after all: the policy's index was stale.
    NoRoom,
}

impl Dispatcher {
    /// Hands queued tasks to managers with room, many per message, by the configured policy.
    pub fn dispatch(&mut self, now: Instant, out: &mut Outbox) {
        if self.queued == 0 {
            return;
        }
        let containers: Vec<u32> = (0..self.queues.len() as u32)
            .filter(|k| !self.queues[*k as usize].is_empty())
            .collect();
        // Warm work first, wherever it waits; then the rest. Within a pass, types take turns
        // by the age of their oldest queued task (task ids grow with submission), so they share
        // the managers in the order the tasks came rather than one type taking every slot.
        let passes: &[bool] = if self.policy.knows_warmth() {
            &[true, false]
        } else {
            &[false]
        };
        for &warm_only in passes {
            let mut active = containers.clone();
            let mut stale = 0;
            while !active.is_empty() {
                let Some((i, oldest)) = (0..active.len())
                    .map(|i| (i, self.front(active[i])))
                    .min_by_key(|(_, f)| *f)
                else {
                    break;
                };
                if oldest == u64::MAX {
                    // Every queue is empty: asking a policy would only spend its cold budget.
                    break;
                }
                let keep = match self.pick(active[i], now, warm_only) {
                    None => false,
                    Some((target, most)) => {
                        match self.send_batch(target, active[i], most, now, out) {
                            Sent::Batch => true,
                            Sent::QueueEmpty => false,
                            Sent::NoRoom => {
                                // Not expected (every change touches the index); repair, go on.
                                self.touch(target);
                                stale += 1;
                                stale <= self.managers.len()
                            }
                        }
                    }
                };
                if !keep {
                    active.swap_remove(i);
                }
            }
        }
    }

    /// The id of the oldest task still queued for type `kind`, dropping stale ids on the way.
    pub(super) fn front(&mut self, kind: u32) -> u64 {
        let Some(q) = self.queues.get_mut(kind as usize) else {
            return u64::MAX;
        };
        while let Some(id) = q.front() {
            if matches!(self.tasks.get(id), Some(e) if matches!(e.place, Place::Queued)) {
                return id.0;
            }
            q.pop_front();
        }
        u64::MAX
    }

    /// The policy's choice among managers with room that run `container`: a lookup in its
    /// index, not a scan of every manager.
    fn pick(&mut self, kind: u32, now: Instant, warm_only: bool) -> Option<(ManagerId, usize)> {
        let container = self.kinds[kind as usize].as_str();
        let managers = &self.managers;
        let kinds = &self.kinds;
        let backlog = self.backlog();
        // A manager whose next batch could hold nothing (no idle worker, and no task left
        // over for its prefetch room) is not offered.
        let view = |id: ManagerId| {
            managers.get(&id).map(|m| {
                let mut v = m.view(container, kinds);
                v.runs &= backlog.room(m) > 0;
                v
            })
        };
        self.policy.pick(container, &view, now, warm_only)
    }

    fn backlog(&self) -> Backlog {
        Backlog {
            queued: self.queued + self.outside.queued,
            idle_workers: self.idle_workers + self.outside.idle_workers,
            workers: self.workers + self.outside.workers,
            short_us: self.config.short_task_us,
        }
    }

    /// Sends one batch to `target`.
    fn send_batch(
        &mut self,
        target: ManagerId,
        kind: u32,
        most: usize,
        now: Instant,
        out: &mut Outbox,
    ) -> Sent {
        let backlog = self.backlog();
        let Some(m) = self.managers.get_mut(&target) else {
            return Sent::NoRoom;
        };
        let Some(queue) = self.queues.get_mut(kind as usize) else {
            return Sent::QueueEmpty;
        };
        if !m.can_take(self.config.max_unacked) {
            return Sent::NoRoom;
        }
        let room = backlog.room(m);
        if room == 0 {
            return Sent::NoRoom;
        }
        let room = room.min(self.config.max_batch).min(most.max(1));
        let mut batch = Vec::with_capacity(room.min(queue.len()));
        let mut ids = Vec::with_capacity(batch.capacity());
        let mut bytes = 0;
        while batch.len() < room && bytes < self.config.max_batch_bytes {
            let Some(id) = queue.pop_front() else { break };
            let Some(entry) = self.tasks.get_mut(&id) else {
                continue;
            };
            if !matches!(entry.place, Place::Queued) {
                continue;
            }
            entry.place = Place::InFlight(target);
            self.queued -= 1;
            bytes += entry.task.approx_size();
            ids.push(id);
            let mut task = entry.task.clone();
            fxr_protocol::PythonSpec::strip_known(&mut task, &mut m.python_sent);
            batch.push(task);
            let tasks = &self.tasks;
            m.sent(id, |t| {
                matches!(tasks.get(&t), Some(e) if matches!(e.place, Place::InFlight(x) if x == target))
            });
        }
        if batch.is_empty() {
            return Sent::QueueEmpty;
        }
        m.hold(kind, batch.len() as isize);
        let seq = m.next_seq;
        m.next_seq += 1;
        m.unacked.insert(
            seq,
            Unacked {
                tasks: ids,
                sent: now,
            },
        );
        self.counters.batches_sent += 1;
        out.to_managers
            .push((target, InterchangeMsg::Tasks { seq, tasks: batch }));
        self.touch(target);
        Sent::Batch
    }
}
