//! The threads of a sharded dispatcher: one per shard (`dispatch-N`), each running its shard's
//! jobs as the core hands them over. The dispatcher itself (`dispatch/shards.rs`) is plain data
//! and calls; this module owns the threads and their channels.

use crate::dispatch::shards::{lock, work, Done, Job, Lanes, SharedPart};
use crate::dispatch::{DispatchConfig, Sharded};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

impl Sharded {
    /// `config.shards` dispatchers (at least one); with more than one, each on a thread of its
    /// own.
    pub fn new(config: DispatchConfig) -> Result<Sharded, std::io::Error> {
        Sharded::with_lanes(&config, |parts| {
            ThreadLanes::start(parts).map(|l| Box::new(l) as Box<dyn Lanes>)
        })
    }
}

/// A thread per shard, and the channel their results come back on.
#[derive(Debug)]
struct ThreadLanes {
    jobs: Vec<Sender<Job>>,
    done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl ThreadLanes {
    fn start(parts: Vec<SharedPart>) -> Result<ThreadLanes, std::io::Error> {
        let (done_tx, done) = mpsc::channel();
        let mut lanes = ThreadLanes {
            jobs: Vec::new(),
            done,
            threads: Vec::new(),
        };
        for (i, part) in parts.into_iter().enumerate() {
            let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
            let done: Sender<Done> = done_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("dispatch-{i}"))
                .spawn(move || {
                    for job in jobs_rx {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            work(&mut lock(&part), job, i)
                        }));
                        let Ok(r) = r else {
                            // A bug: the core would wait for this shard for ever, and the
                            // shard's tasks are in an unknown state. Stop loudly.
                            tracing::error!(shard = i, "a dispatch shard panicked; aborting");
                            std::process::abort();
                        };
                        if done.send(r).is_err() {
                            break;
                        }
                    }
                })?;
            lanes.jobs.push(jobs_tx);
            lanes.threads.push(handle);
        }
        Ok(lanes)
    }
}

impl Lanes for ThreadLanes {
    fn run(&mut self, jobs: Vec<(usize, Job)>) -> Vec<Done> {
        let mut sent = 0;
        for (i, job) in jobs {
            if let Some(tx) = self.jobs.get(i) {
                if tx.send(job).is_ok() {
                    sent += 1;
                }
            }
        }
        let mut dones = Vec::with_capacity(sent);
        for _ in 0..sent {
            match self.done.recv() {
                Ok(d) => dones.push(d),
                // Every thread is gone: only while the process stops.
                Err(_) => break,
            }
        }
        dones
    }
}

impl Drop for ThreadLanes {
    fn drop(&mut self) {
        // Closing the job channels ends each thread's loop.
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
