//! Python functions: each worker process keeps one Python interpreter (`FXR_PYTHON`, default
//! `python3`) running `python/runner.py`, started at its first Python task and reused for every
//! later one. Functions are compiled once per interpreter and kept by id; after the first task of
//! a function only its id and arguments cross the pipe.
//!
//! Requests and replies are length-prefixed JSON on the interpreter's own stdin and stdout (the
//! runner moves the functions' prints to stderr). Consecutive tasks without a walltime go as one
//! request, so a batch of small tasks costs one round trip. A task with a walltime goes alone;
//! past its walltime the interpreter's process group is killed, the task fails as `timeout`, and
//! the next task starts a fresh interpreter. An interpreter that dies mid-task fails that task
//! and is replaced the same way.

use fxr_protocol::{FailureKind, Function, Outcome, PythonSpec, Task, TaskResult};
use serde_json::Value;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const RUNNER: &str = include_str!("../python/runner.py");
/// Most tasks in one request to the interpreter.
const MAX_BATCH: usize = 256;
/// Largest reply accepted from the interpreter.
const MAX_REPLY: usize = 256 << 20;
/// How long a new interpreter has to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running interpreter.
#[derive(Debug)]
pub struct Interpreter {
    child: Child,
    input: ChildStdin,
    output: ChildStdout,
    /// Functions it has compiled.
    known: HashSet<String>,
    /// Its Python version, as it reported it.
    pub version: String,
}

/// Why talking to the interpreter failed.
enum Broken {
    Timeout,
    Died(String),
}

impl Interpreter {
    /// Starts `FXR_PYTHON` (or `python3`) with the runner; waits for it to say it is ready.
    pub fn start() -> Result<Interpreter, String> {
        let exe = std::env::var("FXR_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut cmd = Command::new(&exe);
        cmd.args(["-c", RUNNER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        // SAFETY: prctl(PR_SET_PDEATHSIG) in the child before exec only sets a flag on it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the Python interpreter `{exe}`: {e}"))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the Python interpreter has no pipes".into());
        };
        let mut it = Interpreter {
            child,
            input,
            output,
            known: HashSet::new(),
            version: String::new(),
        };
        let hello = match it.read_reply(Some(Instant::now() + START_TIMEOUT)) {
            Ok(v) => v,
            Err(Broken::Timeout) => {
                it.kill();
                return Err(format!("`{exe}` did not start within {START_TIMEOUT:?}"));
            }
            Err(Broken::Died(why)) => {
                it.kill();
                return Err(format!("`{exe}` could not run the fxr runner: {why}"));
            }
        };
        it.version = hello["version"].as_str().unwrap_or_default().to_string();
        Ok(it)
    }

    fn kill(&mut self) {
        // SAFETY: kill(2) of the process group this interpreter leads.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Runs `tasks` (all Python) as one request; `deadline` bounds the whole request.
    fn call(
        &mut self,
        tasks: &[(&Task, &PythonSpec)],
        deadline: Option<Instant>,
    ) -> Result<Vec<Value>, Broken> {
        let mut body = Vec::with_capacity(64 * tasks.len());
        body.push(b'[');
        for (i, (task, spec)) in tasks.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            let mut head =
                serde_json::json!({"fid": spec.id, "entry": spec.entry, "attempt": task.attempt});
            if !self.known.contains(&spec.id) {
                head["source"] = Value::String(spec.source.to_string());
            }
            if !spec.python_version.is_empty() {
                head["python"] = Value::String(spec.python_version.clone());
            }
            let head = head.to_string();
            // `{"fid":...,"args":ARGS}`: the arguments, already JSON, go in as they are.
            body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
            body.extend_from_slice(b",\"args\":");
            if task.args.is_empty() {
                body.extend_from_slice(b"null");
            } else {
                body.extend_from_slice(&task.args);
            }
            body.push(b'}');
        }
        body.push(b']');
        let len =
            u32::try_from(body.len()).map_err(|_| Broken::Died("request too large".into()))?;
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.input
            .write_all(&frame)
            .map_err(|e| Broken::Died(format!("cannot write to it: {e}")))?;
        let reply = self.read_reply(deadline)?;
        for (_, spec) in tasks {
            self.known.insert(spec.id.clone());
        }
        match reply {
            Value::Array(v) if v.len() == tasks.len() => Ok(v),
            other => Err(Broken::Died(format!(
                "it answered {} replies for {} tasks",
                other.as_array().map_or(0, Vec::len),
                tasks.len()
            ))),
        }
    }

    fn read_reply(&mut self, deadline: Option<Instant>) -> Result<Value, Broken> {
        let mut head = [0u8; 4];
        self.read_exact(&mut head, deadline)?;
        let n = u32::from_be_bytes(head) as usize;
        if n > MAX_REPLY {
            return Err(Broken::Died(format!(
                "a reply of {n} bytes is over the limit of {MAX_REPLY}"
            )));
        }
        let mut body = vec![0u8; n];
        self.read_exact(&mut body, deadline)?;
        serde_json::from_slice(&body).map_err(|e| Broken::Died(format!("undecodable reply: {e}")))
    }

    /// Reads exactly `buf.len()` bytes, waiting at most until `deadline`.
    fn read_exact(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Result<(), Broken> {
        let mut got = 0;
        while got < buf.len() {
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                let mut pfd = libc::pollfd {
                    fd: self.output.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.as_millis().min(i32::MAX as u128) as i32;
                // SAFETY: poll(2) on one descriptor we own, with a valid pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, ms) };
                if r == 0 {
                    return Err(Broken::Timeout);
                }
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(Broken::Died(e.to_string()));
                }
            }
            match self.output.read(&mut buf[got..]) {
                Ok(0) => {
                    let status = self
                        .child
                        .wait()
                        .map_or_else(|e| e.to_string(), |s| s.to_string());
                    return Err(Broken::Died(format!("the interpreter exited ({status})")));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Broken::Died(e.to_string())),
            }
        }
        Ok(())
    }
}

impl Drop for Interpreter {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A worker's Python side: its interpreter, started on demand.
#[derive(Debug, Default)]
pub struct PythonHost {
    interpreter: Option<Interpreter>,
}

fn outcome_of(reply: &Value) -> Outcome {
    if reply["ok"] == true {
        return Outcome::Success(reply["result"].to_string().into_bytes());
    }
    let message = reply["message"].as_str().unwrap_or("the function failed");
    Outcome::Failure {
        kind: FailureKind::FunctionError,
        message: message.to_string(),
    }
}

impl PythonHost {
    /// Runs consecutive Python tasks from the front of `tasks`; returns their results (at
    /// least one). Tasks with a walltime run alone.
    pub fn run_front(&mut self, tasks: &[Task]) -> Vec<TaskResult> {
        let mut batch: Vec<(&Task, &PythonSpec)> = Vec::new();
        for t in tasks.iter().take(MAX_BATCH) {
            let Function::Python(spec) = &t.function else {
                break;
            };
            if spec.walltime_ms > 0 && !batch.is_empty() {
                break;
            }
            batch.push((t, spec));
            if spec.walltime_ms > 0 {
                break;
            }
        }
        let start = Instant::now();
        let outcomes = self.run_batch(&batch);
        let each = start.elapsed().as_micros() as u64 / batch.len().max(1) as u64;
        batch
            .iter()
            .zip(outcomes)
            .map(|((t, _), outcome)| TaskResult {
                id: t.id,
                outcome,
                run_us: each,
            })
            .collect()
    }

    fn run_batch(&mut self, batch: &[(&Task, &PythonSpec)]) -> Vec<Outcome> {
        let fail_all = |kind: FailureKind, message: String| {
            batch
                .iter()
                .map(|_| Outcome::Failure {
                    kind,
                    message: message.clone(),
                })
                .collect()
        };
        // Reject arguments that are not JSON before they reach the interpreter's decoder.
        for (t, _) in batch {
            if !t.args.is_empty()
                && serde_json::from_slice::<serde::de::IgnoredAny>(&t.args).is_err()
            {
                return fail_all(
                    FailureKind::FunctionError,
                    "the arguments are not JSON".into(),
                );
            }
        }
        if self.interpreter.is_none() {
            match Interpreter::start() {
                Ok(i) => self.interpreter = Some(i),
                Err(e) => return fail_all(FailureKind::FunctionError, e),
            }
        }
        let Some(it) = self.interpreter.as_mut() else {
            return fail_all(FailureKind::FunctionError, "no interpreter".into());
        };
        let walltime = batch.first().map_or(0, |(_, s)| s.walltime_ms);
        let deadline = (walltime > 0).then(|| Instant::now() + Duration::from_millis(walltime));
        match it.call(batch, deadline) {
            Ok(replies) => replies.iter().map(outcome_of).collect(),
            Err(Broken::Timeout) => {
                self.interpreter = None;
                fail_all(
                    FailureKind::Timeout,
                    format!(
                        "the function ran past its walltime of {walltime} ms; its interpreter was killed and will be replaced"
                    ),
                )
            }
            Err(Broken::Died(why)) => {
                self.interpreter = None;
                fail_all(
                    FailureKind::FunctionError,
                    format!("the Python interpreter failed: {why}"),
                )
            }
        }
    }
}
