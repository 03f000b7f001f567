//! Many managers in one thread: the simulated fleets of scaling runs, where one process stands
//! in for thousands of nodes. Each manager keeps its own core, simulated workers and link; the
//! thread reads one channel of events tagged with the manager's index, and a heap of the
//! managers' deadlines says which to poll when no event comes. A manager costs no thread of its
//! own, and nothing while it waits.

use crate::core::Exit;
use crate::manager::{Event, ManagerConfig, ManagerError, ManagerHandle, Running, Sink};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Handles for the members of one group, and what its thread needs.
pub(crate) struct Group {
    pub(crate) handles: Vec<ManagerHandle>,
    configs: Vec<ManagerConfig>,
    sinks: Vec<Sink>,
    rx: Receiver<(usize, Event)>,
}

impl Group {
    pub(crate) fn new(configs: Vec<ManagerConfig>) -> Group {
        let (tx, rx) = mpsc::channel::<(usize, Event)>();
        let sinks: Vec<Sink> = (0..configs.len())
            .map(|i| {
                let tx: Sender<(usize, Event)> = tx.clone();
                Arc::new(move |e| tx.send((i, e)).is_ok()) as Sink
            })
            .collect();
        let handles = sinks
            .iter()
            .cloned()
            .map(ManagerHandle::from_sink)
            .collect();
        Group {
            handles,
            configs,
            sinks,
            rx,
        }
    }

    /// Runs every member until each has drained or failed; the first error.
    pub(crate) fn run(self) -> Result<(), ManagerError> {
        let Group {
            configs, sinks, rx, ..
        } = self;
        // Simulated workers need no process channel and no store.
        let (unused, _) = mpsc::channel();
        let mut members: Vec<Option<Running>> = Vec::with_capacity(configs.len());
        for (cfg, sink) in configs.into_iter().zip(sinks) {
            members.push(Some(Running::start(cfg, sink, unused.clone(), false)?));
        }
        let n = members.len();
        let mut exits: Vec<Option<Exit>> = (0..n).map(|_| None).collect();
        let mut marked = vec![false; n];
        let mut touched: Vec<usize> = (0..n).collect();
        marked.iter_mut().for_each(|m| *m = true);
        let mut scheduled: Vec<Option<Instant>> = vec![None; n];
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        let mut alive = n;
        let mut first = Ok(());
        while alive > 0 {
            let now = Instant::now();
            let wait = due
                .peek()
                .map_or(Duration::from_secs(1), |Reverse((t, _))| {
                    t.saturating_duration_since(now)
                });
            let idle = touched.is_empty();
            let mut deliver = |i: usize, ev: Event, members: &mut Vec<Option<Running>>| {
                if let Some(m) = members.get_mut(i).and_then(Option::as_mut) {
                    let e = m.handle(ev);
                    exits[i] = exits[i].take().or(e);
                    if !marked[i] {
                        marked[i] = true;
                        touched.push(i);
                    }
                }
            };
            if idle {
                match rx.recv_timeout(wait) {
                    Ok((i, ev)) => deliver(i, ev, &mut members),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            for _ in 0..100_000 {
                match rx.try_recv() {
                    Ok((i, ev)) => deliver(i, ev, &mut members),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            while let Some(Reverse((t, i))) = due.peek().copied() {
                if t > now {
                    break;
                }
                due.pop();
                if scheduled[i] == Some(t) && !marked[i] {
                    marked[i] = true;
                    touched.push(i);
                }
            }
            for i in std::mem::take(&mut touched) {
                marked[i] = false;
                let Some(m) = members[i].as_mut() else {
                    continue;
                };
                match m.settle(exits[i].take()) {
                    Some(r) => {
                        if let Some(m) = members[i].take() {
                            m.finish();
                        }
                        alive -= 1;
                        if first.is_ok() {
                            first = r;
                        }
                    }
                    None => {
                        let d = m.deadline();
                        if scheduled[i] != Some(d) {
                            scheduled[i] = Some(d);
                            due.push(Reverse((d, i)));
                        }
                    }
                }
            }
        }
        for m in members.into_iter().flatten() {
            m.finish();
        }
        first
    }
}
