//! Who waits for which results. Clients waiting on task ids, following a batch, or following
//! all of their tasks register here; when results are recorded, each is handed to the watchers
//! of that task, of its batch and of its owner, looked up by key. A result costs the same
//! whatever the number of other watchers and of tasks they wait on, and a watcher receives only
//! results that concern it.
//!
//! Registration comes before the watcher reads the store, and results are handed out after they
//! are committed, so a result is either in what the watcher read or delivered to it afterwards.

use crate::api::types::TaskInfo;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// A finished task as handed to watchers.
pub type Done = Arc<TaskInfo>;

#[derive(Debug)]
struct Sink {
    owner: i64,
    tx: UnboundedSender<Done>,
    tasks: Vec<u64>,
    batches: Vec<u64>,
    all: bool,
}

/// What a watcher follows.
#[derive(Debug, Default, Clone)]
pub struct Interest {
    pub tasks: Vec<u64>,
    pub batches: Vec<u64>,
    /// Every task of the owner.
    pub all: bool,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Watchers {
    next: u64,
    sinks: HashMap<u64, Sink>,
    by_task: HashMap<u64, Vec<u64>>,
    by_batch: HashMap<u64, Vec<u64>>,
    by_owner: HashMap<i64, Vec<u64>>,
}

fn add<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u64>>, key: K, w: u64) {
    map.entry(key).or_default().push(w);
}

fn remove<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u64>>, key: K, w: u64) {
    if let Some(v) = map.get_mut(&key) {
        v.retain(|x| *x != w);
        if v.is_empty() {
            map.remove(&key);
        }
    }
}

impl Watchers {
    /// Registers a watcher of `owner`; results arrive on the returned receiver.
    pub fn watch(&mut self, owner: i64, interest: Interest) -> (u64, UnboundedReceiver<Done>) {
        self.next += 1;
        let id = self.next;
        let (tx, rx) = unbounded_channel();
        for t in &interest.tasks {
            add(&mut self.by_task, *t, id);
        }
        for b in &interest.batches {
            add(&mut self.by_batch, *b, id);
        }
        if interest.all {
            add(&mut self.by_owner, owner, id);
        }
        self.sinks.insert(
            id,
            Sink {
                owner,
                tx,
                tasks: interest.tasks,
                batches: interest.batches,
                all: interest.all,
            },
        );
        (id, rx)
    }

    /// Stops a watcher; costs what it followed.
    pub fn unwatch(&mut self, id: u64) {
        let Some(s) = self.sinks.remove(&id) else {
            return;
        };
        for t in s.tasks {
            remove(&mut self.by_task, t, id);
        }
        for b in s.batches {
            remove(&mut self.by_batch, b, id);
        }
        if s.all {
            remove(&mut self.by_owner, s.owner, id);
        }
    }

    /// Whether anyone follows this task.
    pub fn interested(&self, task: u64, batch: u64, owner: i64) -> bool {
        self.by_task.contains_key(&task)
            || self.by_batch.contains_key(&batch)
            || self.by_owner.contains_key(&owner)
    }

    /// Hands a finished task of `owner` in `batch` to each watcher following it (once each).
    pub fn notify(&mut self, owner: i64, batch: u64, done: &Done) {
        let mut sent: Vec<u64> = Vec::new();
        let keys = [
            self.by_task.get(&done.id),
            self.by_batch.get(&batch),
            self.by_owner.get(&owner),
        ];
        for w in keys.into_iter().flatten().flatten() {
            if sent.contains(w) {
                continue;
            }
            sent.push(*w);
            if let Some(s) = self.sinks.get(w) {
                // Another user's watcher never sees this task, whatever ids it named.
                if s.owner == owner {
                    let _ = s.tx.send(done.clone());
                }
            }
        }
    }

    /// Registered watchers.
    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(id: u64) -> Done {
        Arc::new(TaskInfo {
            id,
            state: "succeeded".into(),
            function_id: "f".into(),
            endpoint_id: "e".into(),
            batch_id: 1,
            result: None,
            result_data: None,
            error: None,
            created_ms: 0,
            completed_ms: Some(1),
        })
    }

    #[test]
    fn each_watcher_gets_what_it_follows_once_and_nothing_of_other_users() {
        let mut w = Watchers::default();
        let (_, mut by_id) = w.watch(
            1,
            Interest {
                tasks: vec![10, 11],
                ..Interest::default()
            },
        );
        let (_, mut both) = w.watch(
            1,
            Interest {
                tasks: vec![10],
                batches: vec![7],
                all: true,
            },
        );
        let (_, mut thief) = w.watch(
            2,
            Interest {
                tasks: vec![10],
                ..Interest::default()
            },
        );
        w.notify(1, 7, &done(10));
        w.notify(1, 8, &done(12));
        assert_eq!(by_id.try_recv().map(|d| d.id).ok(), Some(10));
        assert!(by_id.try_recv().is_err());
        assert_eq!(both.try_recv().map(|d| d.id).ok(), Some(10));
        assert_eq!(both.try_recv().map(|d| d.id).ok(), Some(12));
        assert!(both.try_recv().is_err());
        assert!(thief.try_recv().is_err());
    }

    #[test]
    fn unwatch_removes_every_key() {
        let mut w = Watchers::default();
        let (id, _rx) = w.watch(
            1,
            Interest {
                tasks: vec![1, 2],
                batches: vec![3],
                all: true,
            },
        );
        assert!(w.interested(1, 0, 9));
        w.unwatch(id);
        assert!(w.is_empty());
        assert!(!w.interested(1, 3, 1));
        assert!(w.by_task.is_empty() && w.by_batch.is_empty() && w.by_owner.is_empty());
    }
}
