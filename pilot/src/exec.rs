//! Running one function: the built-ins and shell commands.
//!
//! Used by real worker processes for every kind, and by simulated workers for the built-ins that
//! finish at once (`noop`, `echo`, `fail`); simulated `sleep` and `spin` become timers instead.

use fxr_protocol::{Builtin, FailureKind, Function, Outcome, ShellSpec, Task, TaskResult};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most bytes of stdout and of stderr kept from a shell command; the rest is read and dropped.
pub const MAX_CAPTURE: usize = 1024 * 1024;
/// The same on a node with an object store, where a large result travels by reference.
pub const MAX_CAPTURE_STORED: usize = 64 * 1024 * 1024;

/// The capture limit for this worker: larger when its node has a store.
fn capture_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        if std::env::var_os("FXR_STORE").is_some() {
            MAX_CAPTURE_STORED
        } else {
            MAX_CAPTURE
        }
    })
}

/// Runs a task to completion in this thread.
pub fn run(task: &Task) -> TaskResult {
    let start = Instant::now();
    let outcome = match &task.function {
        Function::Builtin(b) => run_builtin(*b, &task.args),
        Function::Shell(spec) => run_shell(spec, &task.args, task.attempt),
        Function::Mpi(spec) => run_mpi(spec, &task.args, task.attempt),
        Function::Python(_) => fail(
            FailureKind::FunctionError,
            "Python functions run in worker processes, with their interpreter",
        ),
    };
    TaskResult {
        id: task.id,
        outcome,
        run_us: start.elapsed().as_micros() as u64,
    }
}

fn fail(kind: FailureKind, message: impl Into<String>) -> Outcome {
    Outcome::Failure {
        kind,
        message: message.into(),
    }
}

/// A built-in's JSON value, or its error as a `function_error`.
fn json_outcome(r: Result<Vec<u8>, String>) -> Outcome {
    match r {
        Ok(v) => Outcome::Success(v),
        Err(e) => fail(FailureKind::FunctionError, e),
    }
}

/// Reads `{"ms": N}` (a missing argument means 0).
pub fn millis_arg(args: &[u8]) -> Result<u64, String> {
    if args.is_empty() {
        return Ok(0);
    }
    let v: serde_json::Value =
        serde_json::from_slice(args).map_err(|e| format!("arguments are not JSON: {e}"))?;
    match v.get("ms") {
        None => Ok(0),
        Some(ms) => ms
            .as_u64()
            .ok_or_else(|| format!("`ms` must be a non-negative integer, got {ms}")),
    }
}

/// Runs a built-in. `sleep` and `spin` block this thread.
pub fn run_builtin(b: Builtin, args: &[u8]) -> Outcome {
    match b {
        Builtin::Noop => Outcome::Success(b"null".to_vec()),
        Builtin::Echo => Outcome::Success(if args.is_empty() {
            b"null".to_vec()
        } else {
            args.to_vec()
        }),
        Builtin::Fail => {
            let msg = serde_json::from_slice::<serde_json::Value>(args)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "the fail builtin failed, as asked".to_string());
            fail(FailureKind::FunctionError, msg)
        }
        Builtin::Put => json_outcome(crate::store::put(args)),
        Builtin::Get => json_outcome(crate::store::get(args)),
        Builtin::Map => json_outcome(crate::mapreduce::map(args)),
        Builtin::Reduce => json_outcome(crate::mapreduce::reduce(args)),
        Builtin::Sleep | Builtin::Spin => match millis_arg(args) {
            Err(e) => fail(FailureKind::FunctionError, e),
            Ok(ms) => {
                let d = Duration::from_millis(ms);
                if b == Builtin::Sleep {
                    std::thread::sleep(d);
                } else {
                    let until = Instant::now() + d;
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                }
                Outcome::Success(b"null".to_vec())
            }
        },
    }
}

/// The launcher prefix for an MPI task, from the launcher the block was started with
/// (`FXR_MPI_LAUNCHER`: srun, mpiexec, aprun; mpiexec when unset).
pub fn mpi_prefix(launcher: &str, nodes: u32, ranks_per_node: u32) -> String {
    let n = nodes.max(1);
    let r = ranks_per_node.max(1);
    match launcher {
        // The block's job asks for one task per node (the pilot); `--overcommit` lets a step
        // place several ranks on each of those nodes.
        "srun" => format!(
            "srun --overlap --overcommit --nodes={n} --ntasks={} --ntasks-per-node={r} --mpi=pmi2",
            n * r
        ),
        "aprun" => format!("aprun -n {} -N {r}", n * r),
        _ => format!("mpiexec -n {} -ppn {r}", n * r),
    }
}

/// Runs an MPI task: its command, filled from the arguments, run by `/bin/sh` on every rank
/// behind the block's launcher (so `a; b` runs both under the launcher, not `a` alone). The
/// result is as for shell, but a non-zero exit fails the task: the launcher's own failure
/// (no such nodes, a bad option) cannot be told apart from the ranks' and must not pass as a
/// success.
pub fn run_mpi(spec: &fxr_protocol::MpiSpec, args: &[u8], attempt: u32) -> Outcome {
    let launcher = std::env::var("FXR_MPI_LAUNCHER").unwrap_or_else(|_| "mpiexec".into());
    let command = match fill_template(&spec.shell.command, args) {
        Ok(c) => c,
        Err(e) => return fail(FailureKind::FunctionError, e),
    };
    let mut shell = spec.shell.clone();
    // Filled already: escape braces so the second pass leaves the line as it is.
    shell.command = format!(
        "{} /bin/sh -c {}",
        mpi_prefix(&launcher, spec.num_nodes, spec.ranks_per_node),
        shell_quote(&command)
    )
    .replace('{', "{{")
    .replace('}', "}}");
    match run_shell(&shell, &[], attempt) {
        Outcome::Success(v) => {
            let parsed: serde_json::Value = serde_json::from_slice(&v).unwrap_or_default();
            match parsed["returncode"].as_i64() {
                Some(0) => Outcome::Success(v),
                code => {
                    let stderr = parsed["stderr"].as_str().unwrap_or_default();
                    let tail: String = stderr
                        .chars()
                        .rev()
                        .take(2000)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    fail(
                        FailureKind::FunctionError,
                        format!(
                            "the MPI launch `{launcher}` exited with {}: {}",
                            code.map_or_else(|| "no code".to_string(), |c| c.to_string()),
                            tail.trim()
                        ),
                    )
                }
            }
        }
        other => other,
    }
}

/// Quotes a string for `/bin/sh`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Fills `{name}` placeholders from a JSON object, shell-quoting each value. `{{` and `}}` are
/// literal braces.
pub fn fill_template(template: &str, args: &[u8]) -> Result<String, String> {
    let values: serde_json::Map<String, serde_json::Value> = if args.is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice(args) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(other) => {
                return Err(format!(
                    "shell arguments must be a JSON object, got {other}"
                ))
            }
            Err(e) => return Err(format!("arguments are not JSON: {e}")),
        }
    };
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(format!(
                "unmatched `}}` at byte {} of the command template",
                template.len() - tail.len()
            ));
        }
        let Some(end) = tail.find('}') else {
            return Err(format!(
                "unclosed `{{` at byte {} of the command template",
                template.len() - tail.len()
            ));
        };
        let name = &tail[1..end];
        let value = values
            .get(name)
            .ok_or_else(|| format!("the command needs argument `{name}`, which was not given"))?;
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push_str(&shell_quote(&text));
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Splits a command into words when it uses no shell syntax: only plain word characters and
/// spaces, and no `NAME=value` prefix.
fn simple_argv(command: &str) -> Option<Vec<&str>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !command.chars().all(|c| c == ' ' || plain(c)) {
        return None;
    }
    let argv: Vec<&str> = command.split(' ').filter(|w| !w.is_empty()).collect();
    match argv.first() {
        Some(first) if !first.contains('=') => Some(argv),
        _ => None,
    }
}

/// What was read of one output stream: the bytes kept and how many in all.
#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    total: u64,
}

fn capture(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Captured> {
    let limit = capture_limit();
    std::thread::spawn(move || {
        let mut c = Captured::default();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return c,
                Ok(n) => {
                    let room = limit.saturating_sub(c.kept.len());
                    c.kept.extend_from_slice(&buf[..n.min(room)]);
                    c.total += n as u64;
                }
            }
        }
    })
}

/// Runs a shell command with its walltime; the result is `{stdout, stderr, returncode}`. An
/// output stream longer than [`MAX_CAPTURE`] ([`MAX_CAPTURE_STORED`] on a node with a store) is
/// cut, and the result says so:
/// `stdout_truncated: true` and `stdout_bytes`, the length the command wrote (same for stderr).
pub fn run_shell(spec: &ShellSpec, args: &[u8], attempt: u32) -> Outcome {
    let command = match fill_template(&spec.command, args) {
        Ok(c) => c,
        Err(e) => return fail(FailureKind::FunctionError, e),
    };
    // A command with no shell syntax at all is executed directly: the same result, one process
    // fewer (a `/bin/sh` per task costs about as much as the task itself for short commands).
    let mut cmd = match simple_argv(&command) {
        Some(argv) => {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
        None => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(&command);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so a timeout kills everything it started.
    cmd.process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // 0 on its first run, more when it runs again after a lost worker or manager (execution
    // is at least once).
    cmd.env("FXR_TASK_ATTEMPT", attempt.to_string());
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return fail(
                FailureKind::FunctionError,
                format!("cannot start `{command}`: {e}"),
            )
        }
    };
    let pid = child.id() as i32;
    let out = child.stdout.take().map(capture);
    let err = child.stderr.take().map(capture);
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = if spec.walltime_ms == 0 {
        rx.recv().ok()
    } else {
        match rx.recv_timeout(Duration::from_millis(spec.walltime_ms)) {
            Ok(s) => Some(s),
            Err(_) => {
                // SAFETY: kill(2) with a negative pid signals the process group we created.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = waiter.join();
                let _ = out.map(|h| h.join());
                let _ = err.map(|h| h.join());
                return fail(
                    FailureKind::Timeout,
                    format!(
                        "`{command}` ran past its walltime of {} ms and was killed",
                        spec.walltime_ms
                    ),
                );
            }
        }
    };
    let _ = waiter.join();
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    let code = match status {
        Some(Ok(s)) => s.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            -s.signal().unwrap_or(0)
        }),
        Some(Err(e)) => {
            return fail(
                FailureKind::FunctionError,
                format!("waiting for `{command}` failed: {e}"),
            )
        }
        None => {
            return fail(
                FailureKind::FunctionError,
                format!("waiting for `{command}` failed"),
            )
        }
    };
    let mut value = serde_json::json!({
        "stdout": String::from_utf8_lossy(&stdout.kept),
        "stderr": String::from_utf8_lossy(&stderr.kept),
        "returncode": code,
    });
    for (name, c) in [("stdout", &stdout), ("stderr", &stderr)] {
        if c.total > c.kept.len() as u64 {
            value[format!("{name}_truncated")] = true.into();
            value[format!("{name}_bytes")] = c.total.into();
        }
    }
    Outcome::Success(value.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_quotes_and_reports_missing() {
        let args = br#"{"a":"x y","n":3,"q":"it's"}"#;
        assert_eq!(
            fill_template("echo {a} {n} {q} {{}}", args).unwrap(),
            "echo 'x y' 3 'it'\\''s' {}"
        );
        assert!(fill_template("echo {b}", args).unwrap_err().contains("`b`"));
        assert!(fill_template("echo {a", args)
            .unwrap_err()
            .contains("unclosed"));
        assert!(fill_template("echo", b"[1]")
            .unwrap_err()
            .contains("object"));
    }

    #[test]
    fn cut_output_is_marked_with_its_full_length() {
        let spec = ShellSpec {
            command: "head -c 3000000 /dev/zero; echo short >&2".into(),
            env: vec![],
            cwd: None,
            walltime_ms: 0,
        };
        let Outcome::Success(v) = run_shell(&spec, b"", 0) else {
            panic!("the command should run")
        };
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(v["stdout"].as_str().unwrap().len(), MAX_CAPTURE);
        assert_eq!(v["stdout_truncated"], true);
        assert_eq!(v["stdout_bytes"], 3_000_000);
        assert_eq!(v["stderr"], "short\n");
        assert!(v.get("stderr_truncated").is_none());
    }

    #[test]
    fn shell_captures_output_and_code() {
        let spec = ShellSpec {
            command: "echo {m}; echo err >&2; exit 3".into(),
            env: vec![],
            cwd: None,
            walltime_ms: 0,
        };
        let Outcome::Success(v) = run_shell(&spec, br#"{"m":"hi there"}"#, 0) else {
            panic!("expected success")
        };
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(v["stdout"], "hi there\n");
        assert_eq!(v["stderr"], "err\n");
        assert_eq!(v["returncode"], 3);
    }

    #[test]
    fn a_command_knows_its_attempt() {
        let task = fxr_protocol::Task {
            id: fxr_protocol::TaskId(1),
            function: Function::Shell(Box::new(ShellSpec {
                command: "echo attempt=$FXR_TASK_ATTEMPT".into(),
                env: vec![],
                cwd: None,
                walltime_ms: 0,
            })),
            args: vec![],
            attempt: 2,
            container: None,
        };
        let Outcome::Success(v) = run(&task).outcome else {
            panic!("expected success")
        };
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(v["stdout"], "attempt=2\n");
    }

    #[test]
    fn shell_env_cwd_and_timeout() {
        let spec = ShellSpec {
            command: "echo $FOO; pwd".into(),
            env: vec![("FOO".into(), "bar".into())],
            cwd: Some("/tmp".into()),
            walltime_ms: 0,
        };
        let Outcome::Success(v) = run_shell(&spec, b"", 0) else {
            panic!("expected success")
        };
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(v["stdout"], "bar\n/tmp\n");
        let slow = ShellSpec {
            command: "sleep 30".into(),
            env: vec![],
            cwd: None,
            walltime_ms: 100,
        };
        let start = Instant::now();
        assert!(matches!(
            run_shell(&slow, b"", 0),
            Outcome::Failure {
                kind: FailureKind::Timeout,
                ..
            }
        ));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the command was killed, not waited for"
        );
    }

    #[test]
    fn only_plain_commands_skip_the_shell() {
        assert_eq!(simple_argv("/bin/true"), Some(vec!["/bin/true"]));
        assert_eq!(simple_argv("echo  a b"), Some(vec!["echo", "a", "b"]));
        assert_eq!(simple_argv("X=1 env"), None);
        assert_eq!(simple_argv("echo $HOME"), None);
        assert_eq!(simple_argv("echo 'a b'"), None);
        assert_eq!(simple_argv("a | b"), None);
        assert_eq!(simple_argv(""), None);
        let spec = ShellSpec {
            command: "no-such-program-here".into(),
            env: vec![],
            cwd: None,
            walltime_ms: 0,
        };
        assert!(matches!(
            run_shell(&spec, b"", 0),
            Outcome::Failure {
                kind: FailureKind::FunctionError,
                ..
            }
        ));
    }

    #[test]
    fn builtins() {
        assert_eq!(
            run_builtin(Builtin::Echo, b"[1,2]"),
            Outcome::Success(b"[1,2]".to_vec())
        );
        assert!(matches!(
            run_builtin(Builtin::Fail, b""),
            Outcome::Failure {
                kind: FailureKind::FunctionError,
                ..
            }
        ));
        assert!(matches!(
            run_builtin(Builtin::Sleep, br#"{"ms":"x"}"#),
            Outcome::Failure { .. }
        ));
    }
}
