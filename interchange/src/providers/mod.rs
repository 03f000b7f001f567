//! Providers start, watch and stop blocks of nodes.
//!
//! `local` runs pilots as processes on this machine ([`local`]); [`slurm`] and [`pbs`] submit
//! rendered job scripts ([`template`]) to a batch scheduler. The batch providers implement
//! [`BatchProvider`]; every scheduler command runs with a timeout ([`run_command`]) and its output
//! is parsed leniently: extra lines sites print are skipped, unknown states are kept as unknown,
//! a job the scheduler no longer lists is reported as gone.

pub mod local;
pub mod pbs;
pub mod slurm;
pub mod template;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The scheduler's view of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Running,
    /// Finished, cancelled, or no longer listed.
    Done,
    Failed(String),
    /// A state this code does not know, kept verbatim.
    Unknown(String),
}

/// A scheduler command failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot understand the output of `{command}`: {output}")]
    Parse { command: String, output: String },
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// A pre-flight check failed: the scheduler would refuse the endpoint's blocks.
    #[error("{0}")]
    Check(String),
    #[error("cannot write the job script {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A batch scheduler.
pub trait BatchProvider: Send + std::fmt::Debug {
    /// The scheduler's name, for logs.
    fn name(&self) -> &'static str;
    /// Submits a job script; returns the scheduler's job id.
    fn submit(&mut self, script_path: &std::path::Path) -> Result<String, ProviderError>;
    /// The state of each of `jobs`.
    fn status(&mut self, jobs: &[String]) -> Result<Vec<(String, JobState)>, ProviderError>;
    fn cancel(&mut self, job: &str) -> Result<(), ProviderError>;
    /// Asks the scheduler, without submitting, whether it would accept this job script (its
    /// partition or queue exists, its account and sizes are allowed), as far as it can tell.
    fn check(&mut self, _script: &std::path::Path) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// Runs a command with a timeout and returns its stdout. A non-zero exit is an error carrying
/// the command's own stderr.
pub fn run_command(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<String, ProviderError> {
    run_command_in(program, args, timeout, None)
}

/// [`run_command`] in directory `dir`. Submissions run in the job script's directory, so that
/// files a scheduler writes where it was called (Torque's `NAME.oJOB`) land beside the script.
pub fn run_command_in(
    program: &str,
    args: &[&str],
    timeout: Duration,
    dir: Option<&std::path::Path>,
) -> Result<String, ProviderError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(program);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProviderError::Spawn {
            command: command.clone(),
            source,
        })?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut o = String::new();
        let mut e = String::new();
        if let Some(s) = out.as_mut() {
            let _ = s.take(1 << 20).read_to_string(&mut o);
        }
        if let Some(s) = err.as_mut() {
            let _ = s.take(1 << 16).read_to_string(&mut e);
        }
        (o, e)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProviderError::Timeout { command, timeout });
            }
        }
    };
    let (stdout, stderr) = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(ProviderError::Failed {
            command,
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(stdout)
}
