//! What the dispatcher knows of each manager: its registration, room, tasks in flight,
//! unacknowledged batches and last capacity report.

use super::policy::View;
use fxr_protocol::{Capacity, Registration, TaskId, WorkerCounters};
use std::collections::BTreeMap;
use std::time::Instant;

use rustc_hash::FxHashSet as HashSet;

#[derive(Debug)]
pub(super) struct Unacked {
    pub(super) tasks: Vec<TaskId>,
    pub(super) sent: Instant,
}

#[derive(Debug)]
pub(super) struct Manager {
    pub(super) reg: Registration,
    pub(super) slots: usize,
    /// `slots` widened by the burst prefetch while tasks are short.
    pub(super) limit: usize,
    /// Moving mean of the run time of this manager's tasks, in microseconds.
    pub(super) mean_run_us: f64,
    pub(super) results_seen: u64,
    /// Tasks it holds (the dispatcher's task table says which: `Place::InFlight` of it).
    pub(super) in_flight: usize,
    /// What it added to the dispatcher's counts of idle workers and of workers when last
    /// touched.
    pub(super) counted_idle: usize,
    pub(super) counted_workers: usize,
    pub(super) counted_free: usize,
    /// Ids of the tasks sent to it, in order, including some that have since finished or
    /// moved: appending costs less than a set insert and remove per task. Compacted when it
    /// grows past twice what it holds ([`Manager::sent`]); read only when the manager is lost
    /// or a batch is sent again.
    pub(super) sent_ids: Vec<TaskId>,
    pub(super) unacked: BTreeMap<u64, Unacked>,
    pub(super) next_seq: u64,
    pub(super) last_seen: Instant,
    pub(super) draining: bool,
    pub(super) capacity: Vec<Capacity>,
    pub(super) counters: WorkerCounters,
    /// Tasks in flight per container type, by the type's number in the dispatcher's `kinds`.
    pub(super) held: Vec<usize>,
    /// Order of registration, for round-robin.
    pub(super) order: u64,
    /// Python functions whose source this manager has been sent.
    pub(super) python_sent: HashSet<String>,
}

impl Manager {
    pub(super) fn free(&self) -> usize {
        self.limit.saturating_sub(self.in_flight)
    }

    /// Its workers (none while draining): what it adds to the dispatcher's count.
    pub(super) fn workers(&self) -> usize {
        if self.draining {
            0
        } else {
            self.reg.workers as usize
        }
    }

    /// Whether its tasks are short (mean run time under `short_us`, once results are in).
    pub(super) fn short(&self, short_us: u64) -> bool {
        self.results_seen > 0 && self.mean_run_us < short_us as f64
    }

    /// Its workers without a task (none while draining): what it adds to the dispatcher's
    /// count of idle workers.
    pub(super) fn idle_workers(&self) -> usize {
        if self.draining {
            0
        } else {
            (self.reg.workers as usize)
                .saturating_sub(self.in_flight)
                .min(self.free())
        }
    }

    /// The most the next batch may bring: its idle workers, and of its prefetch room only
    /// `extra`, the tasks the dispatcher has beyond what workers elsewhere will take (zero
    /// when it has no idle worker and nothing is left over: the policy is not offered it).
    ///
    /// Why: filling the prefetch room too leaves tasks waiting behind busy workers while
    /// another manager's workers sit idle or are about to finish; with as many tasks as
    /// workers, a whole wave ran one task time late.
    pub(super) fn room(&self, extra: usize) -> usize {
        let free = self.free();
        let idle = self.idle_workers();
        idle + (free - idle).min(extra)
    }

    pub(super) fn observe(&mut self, run_us: u64, burst: usize, short_us: u64) {
        self.mean_run_us = if self.results_seen == 0 {
            run_us as f64
        } else {
            0.95 * self.mean_run_us + 0.05 * run_us as f64
        };
        self.results_seen += 1;
        self.limit = if self.mean_run_us < short_us as f64 {
            self.slots.max(self.reg.workers as usize + burst)
        } else {
            self.slots
        };
    }
    pub(super) fn can_take(&self, max_unacked: usize) -> bool {
        !self.draining && self.free() > 0 && self.unacked.len() < max_unacked
    }
    /// Whether it may run `container`: the bare node always; a container when the manager
    /// registered no list of runtimes (any), or lists the type or its runtime.
    pub(super) fn runs(&self, container: &str) -> bool {
        let runtime = container.split(':').next().unwrap_or_default();
        container.is_empty()
            || self.reg.containers.is_empty()
            || self
                .reg
                .containers
                .iter()
                .any(|c| c == container || c == runtime)
    }

    /// What a policy sees of it; `kinds` names the container types by number.
    pub(super) fn view<'a>(&'a self, container: &str, kinds: &'a [String]) -> View<'a> {
        View {
            runs: self.runs(container),
            capacity: &self.capacity,
            held: &self.held,
            kinds,
            workers: self.reg.workers,
        }
    }

    /// Records a task sent to it; `holds` says whether an id in the list is still held here,
    /// for the occasional compaction (amortised O(1) per task).
    pub(super) fn sent(&mut self, id: TaskId, holds: impl Fn(TaskId) -> bool) {
        self.in_flight += 1;
        self.sent_ids.push(id);
        if self.sent_ids.len() > 2 * self.in_flight + 1024 {
            self.sent_ids.retain(|t| holds(*t));
        }
    }

    /// Counts `delta` more (or fewer) tasks of container type number `kind` in flight here.
    pub(super) fn hold(&mut self, kind: u32, delta: isize) {
        let k = kind as usize;
        if self.held.len() <= k {
            self.held.resize(k + 1, 0);
        }
        let n = &mut self.held[k];
        *n = n.saturating_add_signed(delta);
    }
}
