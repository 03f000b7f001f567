//! The local provider: each block is one `fxr pilot` process on this machine, in a process group
//! of its own so that stopping a block stops everything it started.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Blocks running as local processes.
#[derive(Debug, Default)]
pub struct LocalProvider {
    blocks: Vec<(String, Child)>,
}

impl LocalProvider {
    /// Starts a block: `command` with its arguments, plus `env`.
    pub fn submit(
        &mut self,
        block_id: &str,
        command: &[String],
        env: &[(String, String)],
    ) -> std::io::Result<u32> {
        let (prog, args) = command.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty pilot command")
        })?;
        let mut cmd = Command::new(prog);
        cmd.args(args).process_group(0);
        // A local block belongs to this endpoint process: if the endpoint dies (even by kill -9),
        // the block is told to drain and stop rather than wait for an interchange that is gone.
        // SAFETY: prctl is async-signal-safe and touches only the child's own flags.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        tracing::info!(block_id, pid, "local block started");
        self.blocks.push((block_id.to_string(), child));
        Ok(pid)
    }

    /// Process ids of the running blocks.
    pub fn pids(&self) -> Vec<u32> {
        self.blocks.iter().map(|(_, c)| c.id()).collect()
    }

    /// Waits up to `grace` for every block to exit on its own (after a drain), then sends SIGTERM
    /// to the groups that remain, waits again, and finally SIGKILL.
    pub fn stop_all(&mut self, grace: Duration) {
        for signal in [None, Some(libc::SIGTERM), Some(libc::SIGKILL)] {
            if let Some(sig) = signal {
                for (_, c) in &self.blocks {
                    // SAFETY: signalling the process group we created for this child.
                    unsafe { libc::kill(-(c.id() as i32), sig) };
                }
            }
            let deadline = Instant::now() + grace;
            loop {
                self.blocks
                    .retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_))));
                if self.blocks.is_empty() {
                    return;
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        if !self.blocks.is_empty() {
            self.stop_all(Duration::from_millis(500));
        }
    }
}
