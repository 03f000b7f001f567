//! fxr-pilot: what runs on compute nodes. One [`manager`] per node dials the interchange and runs
//! tasks in [`worker`] processes (or simulated in-process workers), using [`exec`] to run each
//! function.

pub mod core;
pub mod data;
pub mod event;
pub mod exec;
mod group;
pub mod link;
pub mod manager;
pub mod mapreduce;
pub mod node;
pub mod pool;
pub mod python;
pub mod rank;
pub mod runtime;
pub mod store;
pub mod worker;

pub use manager::{Manager, ManagerConfig, ManagerError, ManagerHandle, StoreConfig, WorkerMode};

/// Several managers running in this process, one thread each. Used for simulated scaling runs,
/// where one process stands in for many nodes.
#[derive(Debug)]
pub struct Fleet {
    pub handles: Vec<ManagerHandle>,
    threads: Vec<std::thread::JoinHandle<Result<(), ManagerError>>>,
}

impl Fleet {
    /// Starts one thread per manager.
    pub fn start(configs: Vec<ManagerConfig>) -> Result<Fleet, ManagerError> {
        let mut fleet = Fleet {
            handles: Vec::new(),
            threads: Vec::new(),
        };
        for cfg in configs {
            let id = cfg.manager_id;
            let m = Manager::new(cfg);
            fleet.handles.push(m.handle());
            let t = std::thread::Builder::new()
                .name(format!("manager-{id}"))
                .stack_size(512 * 1024)
                .spawn(move || m.run())
                .map_err(|e| ManagerError::Link(link::LinkError::Thread(e)))?;
            fleet.threads.push(t);
        }
        Ok(fleet)
    }

    /// Starts simulated managers `per_thread` to a thread (one thread each for 1): a manager
    /// then costs no thread of its own.
    pub fn start_grouped(
        configs: Vec<ManagerConfig>,
        per_thread: usize,
    ) -> Result<Fleet, ManagerError> {
        let mut fleet = Fleet {
            handles: Vec::new(),
            threads: Vec::new(),
        };
        let mut configs = configs.into_iter().peekable();
        let mut n = 0;
        while configs.peek().is_some() {
            let members: Vec<ManagerConfig> = configs.by_ref().take(per_thread.max(1)).collect();
            let group = group::Group::new(members);
            fleet.handles.extend(group.handles.iter().cloned());
            let t = std::thread::Builder::new()
                .name(format!("managers-{n}"))
                .spawn(move || group.run())
                .map_err(|e| ManagerError::Link(link::LinkError::Thread(e)))?;
            fleet.threads.push(t);
            n += 1;
        }
        Ok(fleet)
    }

    /// Asks every manager to drain and exit.
    pub fn terminate(&self) {
        for h in &self.handles {
            h.terminate();
        }
    }

    /// Waits for every manager; returns the first error.
    pub fn wait(self) -> Result<(), ManagerError> {
        let mut first = Ok(());
        for t in self.threads {
            let r = t.join().unwrap_or(Ok(()));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
