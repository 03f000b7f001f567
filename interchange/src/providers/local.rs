//! The local provider: each block is one rendered job script run by bash on this machine
//! (`templates/local.sh.tera`, which `exec`s the pilot), in a process group of its own so that
//! stopping a block stops everything it started.
//!
//! It is a [`BatchProvider`] like Slurm and PBS, so the scaling loop and its strategy watch it
//! the same way: a block that exits is reaped when it is polled and replaced within the
//! strategy's limits. Its "job id" is the process id.

use super::{BatchProvider, JobState, ProviderError};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Blocks running as local processes. Clones share the same blocks, so the endpoint can list
/// and stop them while the scaling loop owns the provider.
#[derive(Debug, Clone, Default)]
pub struct LocalBlocks {
    blocks: Arc<Mutex<Vec<Child>>>,
    /// Each block's output goes to a log beside its script (`NAME-N.log`) rather than to the
    /// endpoint's own output.
    logs: bool,
}

impl LocalBlocks {
    /// Blocks that each write a log beside their script.
    pub fn with_logs() -> LocalBlocks {
        LocalBlocks {
            blocks: Arc::default(),
            logs: true,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        self.blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Process ids of the blocks started and not yet reaped.
    pub fn pids(&self) -> Vec<u32> {
        self.lock().iter().map(Child::id).collect()
    }

    /// Waits up to `grace` for every block to exit on its own (after a drain), then sends SIGTERM
    /// to the groups that remain, waits again, and finally SIGKILL. Every child is reaped.
    pub fn stop_all(&self, grace: Duration) {
        let mut blocks = self.lock();
        for signal in [None, Some(libc::SIGTERM), Some(libc::SIGKILL)] {
            if let Some(sig) = signal {
                for c in blocks.iter() {
                    // SAFETY: signalling the process group we created for this child.
                    unsafe { libc::kill(-(c.id() as i32), sig) };
                }
            }
            let deadline = Instant::now() + grace;
            loop {
                blocks.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
                if blocks.is_empty() {
                    return;
                }
                if Instant::now() >= deadline {
                    break;
                }
                drop(blocks);
                std::thread::sleep(Duration::from_millis(20));
                blocks = self.lock();
            }
        }
    }
}

impl BatchProvider for LocalBlocks {
    fn name(&self) -> &'static str {
        "local"
    }

    fn submit(&mut self, script_path: &std::path::Path) -> Result<String, ProviderError> {
        let mut cmd = Command::new("/bin/bash");
        cmd.arg(script_path).process_group(0);
        if self.logs {
            let path = script_path.with_extension("log");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| ProviderError::Write {
                    path: path.display().to_string(),
                    source,
                })?;
            let err = log.try_clone().map_err(|source| ProviderError::Write {
                path: path.display().to_string(),
                source,
            })?;
            cmd.stdout(log).stderr(err);
        }
        // A local block belongs to this endpoint process: if the endpoint dies (even by kill -9),
        // the block is told to drain and stop rather than wait for an interchange that is gone.
        // The script `exec`s the pilot, which keeps this setting.
        // SAFETY: prctl is async-signal-safe and touches only the child's own flags.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ProviderError::Spawn {
            command: format!("/bin/bash {}", script_path.display()),
            source,
        })?;
        let pid = child.id();
        tracing::info!(pid, script = %script_path.display(), "local block started");
        self.lock().push(child);
        Ok(pid.to_string())
    }

    fn status(&mut self, jobs: &[String]) -> Result<Vec<(String, JobState)>, ProviderError> {
        let mut blocks = self.lock();
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let pid: Option<u32> = job.parse().ok();
            let Some(i) = blocks.iter().position(|c| Some(c.id()) == pid) else {
                out.push((job.clone(), JobState::Done));
                continue;
            };
            let state = match blocks[i].try_wait() {
                Ok(None) => JobState::Running,
                Ok(Some(status)) => {
                    // try_wait reaped it; the wait below returns at once. Forget it.
                    let _ = blocks.swap_remove(i).wait();
                    if status.success() {
                        JobState::Done
                    } else {
                        JobState::Failed(format!("the pilot process exited: {status}"))
                    }
                }
                Err(e) => JobState::Failed(format!("cannot wait for the pilot process: {e}")),
            };
            out.push((job.clone(), state));
        }
        Ok(out)
    }

    fn cancel(&mut self, job: &str) -> Result<(), ProviderError> {
        let pid: i32 = job.parse().map_err(|_| ProviderError::Parse {
            command: "cancel".into(),
            output: job.to_string(),
        })?;
        if self.lock().iter().any(|c| c.id() as i32 == pid) {
            // SAFETY: signalling the process group we created for this block.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
        }
        Ok(())
    }
}

impl Drop for LocalBlocks {
    fn drop(&mut self) {
        // The last handle stops what is left.
        if Arc::strong_count(&self.blocks) == 1 && !self.lock().is_empty() {
            self.stop_all(Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn wait_state(p: &mut LocalBlocks, job: &str) -> JobState {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = p.status(&[job.to_string()]).unwrap().remove(0).1;
            if st != JobState::Running || Instant::now() > deadline {
                return st;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn exited_blocks_are_reaped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = LocalBlocks::default();
        let ok = p.submit(&script(dir.path(), "ok.sh", "exit 0\n")).unwrap();
        let bad = p.submit(&script(dir.path(), "bad.sh", "exit 3\n")).unwrap();
        assert_eq!(wait_state(&mut p, &ok), JobState::Done);
        assert!(matches!(wait_state(&mut p, &bad), JobState::Failed(m) if m.contains('3')));
        assert!(p.pids().is_empty(), "both children were reaped");
    }

    #[test]
    fn cancel_stops_the_block_and_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = LocalBlocks::default();
        let job = p
            .submit(&script(dir.path(), "s.sh", "sleep 30 & exec sleep 30\n"))
            .unwrap();
        assert_eq!(
            p.status(std::slice::from_ref(&job)).unwrap()[0].1,
            JobState::Running
        );
        p.cancel(&job).unwrap();
        assert!(matches!(wait_state(&mut p, &job), JobState::Failed(_)));
    }
}
