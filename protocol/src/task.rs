//! Tasks, functions and results: what travels down to a worker and what comes back.
//!
//! Arguments and result values are opaque JSON bytes here. The interchange and the manager never
//! parse them; only the worker that runs the function does, which keeps the dispatch path free of
//! JSON work and lets the broker hand through what clients sent.

use crate::ids::TaskId;
use serde::{Deserialize, Serialize};

/// A function ready to run, as a worker needs to see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Function {
    /// One of the functions built into every worker, for tests and experiments.
    Builtin(Builtin),
    /// A command line run by `/bin/sh -c` after `{name}` placeholders are filled from the arguments.
    Shell(Box<ShellSpec>),
    /// A command run with the block's MPI launcher over `num_nodes × ranks_per_node` ranks.
    Mpi(Box<MpiSpec>),
    /// A Python function, run in the worker's persistent interpreter.
    Python(Box<PythonSpec>),
}

/// A Python function: source that defines `entry`. A worker's interpreter compiles it on its
/// first task and keeps it under `id`, so later tasks reuse the compiled function.
///
/// Arguments are a JSON object `{"args": [...], "kwargs": {...}}` (or any other object, taken
/// as keyword arguments), or `{"pickle": BASE64}` of a pickled `(args, kwargs)` pair, in which
/// case the value comes back pickled the same way: `{"pickle": BASE64}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonSpec {
    /// The function's identity (a hash of its source and entry).
    pub id: String,
    /// The source; empty when the receiver has it already. Each hop (broker → endpoint,
    /// interchange → manager) sends a function's source with the first of its tasks only, and
    /// the receiver keeps it by `id` and fills it back in.
    pub source: std::sync::Arc<str>,
    /// The name of the function the source defines.
    pub entry: String,
    /// Wall-clock limit in milliseconds; 0 means none. Past it the interpreter is killed and
    /// replaced, and the task fails as `timeout`.
    pub walltime_ms: u64,
    /// The Python version of the client that registered it (`3.11.2`); pickled arguments need
    /// the same major and minor version on the worker. Empty when unknown.
    pub python_version: String,
}

impl PythonSpec {
    /// The same function without its source, for a receiver that has it.
    pub fn without_source(&self) -> PythonSpec {
        PythonSpec {
            source: std::sync::Arc::from(""),
            ..self.clone()
        }
    }

    /// Strips the source from `task` if `sent` shows the receiver has it, and records that it
    /// will have it otherwise. Tasks of other kinds are left alone.
    pub fn strip_known<S: std::hash::BuildHasher>(
        task: &mut Task,
        sent: &mut std::collections::HashSet<String, S>,
    ) {
        if let Function::Python(p) = &mut task.function {
            if sent.contains(&p.id) {
                **p = p.without_source();
            } else {
                sent.insert(p.id.clone());
            }
        }
    }

    /// Fills in a stripped source from `known`, or records a source that came along. Fails,
    /// naming the function, when the source is neither here nor known. At most `max` sources
    /// are kept.
    pub fn fill_known(
        task: &mut Task,
        known: &mut std::collections::HashMap<String, std::sync::Arc<str>>,
        max: usize,
    ) -> Result<(), String> {
        let Function::Python(p) = &mut task.function else {
            return Ok(());
        };
        if p.source.is_empty() {
            match known.get(&p.id) {
                Some(s) => p.source = s.clone(),
                None => {
                    return Err(format!(
                        "the source of Python function {} ({}) never arrived",
                        p.id, p.entry
                    ))
                }
            }
        } else if !known.contains_key(&p.id) {
            if known.len() >= max {
                return Err(format!(
                    "this endpoint already keeps {max} Python functions; {} is one too many",
                    p.entry
                ));
            }
            known.insert(p.id.clone(), p.source.clone());
        }
        Ok(())
    }

    /// An identity for `source` and `entry` (FNV-1a of both): the same function always gets the
    /// same id, on every endpoint, so workers may keep it compiled under that id.
    pub fn identity(source: &str, entry: &str) -> String {
        let h = crate::fnv1a(source.bytes().chain([0]).chain(entry.bytes()));
        format!("py-{h:016x}")
    }
}

/// A multi-node task, as Globus Compute's MPIFunction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpiSpec {
    /// The command, a template as for shell functions.
    pub shell: ShellSpec,
    pub num_nodes: u32,
    pub ranks_per_node: u32,
}

/// The built-in functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Builtin {
    /// Returns `null` at once.
    Noop,
    /// Sleeps `{"ms": N}` milliseconds, then returns `null`.
    Sleep,
    /// Keeps the CPU busy for `{"ms": N}` milliseconds, then returns `null`.
    Spin,
    /// Returns its arguments unchanged.
    Echo,
    /// Fails with a `function_error` whose message is `{"message": "..."}` or a fixed text.
    Fail,
    /// Stores `{"key", "value"}` (a string) or `{"key", "size"}` (that many bytes) in the node's
    /// object store; returns the object's reference `{key, node, size, checksum}`.
    Put,
    /// Reads `{"key"}` or `{"ref": {key, node, size, checksum}}` from the node's store, fetching
    /// it from its node first when it is elsewhere, and checks it; returns `{key, size,
    /// checksum}` (and `value`, the text, with `"text": true`).
    Get,
    /// A map step of the Sort or WordCount workload (see `fxr bench mapreduce`).
    Map,
    /// A reduce step of the Sort or WordCount workload.
    Reduce,
}

impl Builtin {
    /// Parses a builtin's name as users write it.
    pub fn from_name(name: &str) -> Option<Builtin> {
        Some(match name {
            "noop" => Builtin::Noop,
            "sleep" => Builtin::Sleep,
            "spin" => Builtin::Spin,
            "echo" => Builtin::Echo,
            "fail" => Builtin::Fail,
            "put" => Builtin::Put,
            "get" => Builtin::Get,
            "map" => Builtin::Map,
            "reduce" => Builtin::Reduce,
            _ => return None,
        })
    }

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Noop => "noop",
            Builtin::Sleep => "sleep",
            Builtin::Spin => "spin",
            Builtin::Echo => "echo",
            Builtin::Fail => "fail",
            Builtin::Put => "put",
            Builtin::Get => "get",
            Builtin::Map => "map",
            Builtin::Reduce => "reduce",
        }
    }
}

/// A shell command with its environment, working directory and walltime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellSpec {
    /// The command template, for example `echo {message} > {path}`. Placeholders are replaced by
    /// the shell-quoted string form of the argument of that name.
    pub command: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory; the worker's own when `None`.
    pub cwd: Option<String>,
    /// Wall-clock limit in milliseconds; 0 means none. A command past it is killed with its process
    /// group and reported as `timeout`.
    pub walltime_ms: u64,
}

/// One unit of work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub function: Function,
    /// JSON-encoded arguments (an object, or empty for none).
    pub args: Vec<u8>,
    /// How many times this task has been started before (0 on the first run).
    pub attempt: u32,
    /// The container it must run in; `None` runs on the node's own environment. Boxed: most
    /// tasks have none, and every queued task pays for this field's size.
    pub container: Option<Box<ContainerSpec>>,
}

/// A container a function runs in: a runtime (`bwrap`, `podman`, `charliecloud`, `apptainer`,
/// `singularity`, `shifter`, `docker`, or one a site names in `endpoint.toml`), an image in that
/// runtime's terms (a root filesystem directory, an image name, a SIF file), and extra options
/// for the runtime's command line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub runtime: String,
    pub image: String,
    pub options: Vec<String>,
}

impl ContainerSpec {
    /// The container type: tasks of one type can share a warm worker. `RUNTIME:IMAGE`, followed by
    /// the options when there are any.
    pub fn key(&self) -> String {
        let mut k = format!("{}:{}", self.runtime, self.image);
        for o in &self.options {
            k.push(' ');
            k.push_str(o);
        }
        k
    }

    /// Parses `RUNTIME:IMAGE`, as the command line takes it.
    pub fn parse(s: &str) -> Result<ContainerSpec, String> {
        let (runtime, image) = s
            .split_once(':')
            .ok_or_else(|| format!("container `{s}` is not RUNTIME:IMAGE"))?;
        let spec = ContainerSpec {
            runtime: runtime.to_string(),
            image: image.to_string(),
            options: Vec::new(),
        };
        spec.check()?;
        Ok(spec)
    }

    /// Checks the parts: a runtime name of letters, digits, `-` and `_`; a non-empty image
    /// without control characters; at most 64 options of at most 4 KiB each.
    pub fn check(&self) -> Result<(), String> {
        let r = &self.runtime;
        if r.is_empty()
            || r.len() > 64
            || !r
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "container runtime `{r}` must be 1 to 64 letters, digits, `-` or `_`"
            ));
        }
        if self.image.is_empty() || self.image.len() > 4096 {
            return Err("container image must be 1 to 4096 bytes".into());
        }
        if self.image.chars().any(char::is_control) {
            return Err("container image must not contain control characters".into());
        }
        if self.options.len() > 64 {
            return Err(format!(
                "{} container options; at most 64 are allowed",
                self.options.len()
            ));
        }
        if let Some(o) = self
            .options
            .iter()
            .find(|o| o.len() > 4096 || o.chars().any(char::is_control))
        {
            return Err(format!(
                "container option `{}` is too long or has control characters",
                o.chars().take(40).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// Why a task failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureKind {
    /// The function itself raised an error or returned a non-zero status it treats as failure.
    FunctionError,
    /// The worker process running it died, more often than the retry limit allows.
    WorkerLost,
    /// The manager holding it disconnected or stopped heartbeating, more often than allowed.
    ManagerLost,
    /// It ran past its walltime.
    Timeout,
    /// A client cancelled it.
    Cancelled,
    /// It was refused before running: too large, unknown function, bad arguments.
    Rejected,
    /// Its endpoint stayed offline longer than the broker waits, or gave up starting blocks.
    EndpointUnavailable,
    /// Its function was deleted before it finished.
    FunctionDeleted,
    /// Its container could not start; the message carries the runtime's own words.
    ContainerError,
}

impl FailureKind {
    /// The snake_case name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::FunctionError => "function_error",
            FailureKind::WorkerLost => "worker_lost",
            FailureKind::ManagerLost => "manager_lost",
            FailureKind::Timeout => "timeout",
            FailureKind::Cancelled => "cancelled",
            FailureKind::Rejected => "rejected",
            FailureKind::EndpointUnavailable => "endpoint_unavailable",
            FailureKind::FunctionDeleted => "function_deleted",
            FailureKind::ContainerError => "container_error",
        }
    }
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The JSON-encoded return value.
    Success(Vec<u8>),
    /// A structured failure.
    Failure { kind: FailureKind, message: String },
    /// The JSON-encoded return value was too large to travel with the result: it is kept in the
    /// object store of the node that ran the task, and fetched from there on request.
    Stored(crate::DataRef),
}

/// The result of one task, with the time it spent running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub id: TaskId,
    pub outcome: Outcome,
    /// Microseconds the function ran inside the worker.
    pub run_us: u64,
}

impl TaskResult {
    /// A failure result.
    pub fn failure(id: TaskId, kind: FailureKind, message: impl Into<String>) -> TaskResult {
        TaskResult {
            id,
            outcome: Outcome::Failure {
                kind,
                message: message.into(),
            },
            run_us: 0,
        }
    }

    /// Whether the task succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self.outcome, Outcome::Success(_) | Outcome::Stored(_))
    }

    /// Approximate encoded size, for cutting batches before they exceed a frame.
    pub fn approx_size(&self) -> usize {
        24 + match &self.outcome {
            Outcome::Success(v) => v.len(),
            Outcome::Failure { message, .. } => message.len(),
            Outcome::Stored(r) => r.key.len() + r.node.len() + 16,
        }
    }
}

impl Task {
    /// Approximate encoded size, for cutting batches before they exceed a frame.
    pub fn approx_size(&self) -> usize {
        32 + self.args.len()
            + self.container.as_ref().map_or(0, |c| {
                c.runtime.len() + c.image.len() + c.options.iter().map(String::len).sum::<usize>()
            })
            + match &self.function {
                Function::Builtin(_) => 1,
                Function::Mpi(m) => m.shell.command.len() + 16,
                Function::Python(p) => {
                    p.id.len() + p.source.len() + p.entry.len() + p.python_version.len() + 16
                }
                Function::Shell(s) => {
                    s.command.len()
                        + s.cwd.as_ref().map_or(0, String::len)
                        + s.env
                            .iter()
                            .map(|(k, v)| k.len() + v.len() + 2)
                            .sum::<usize>()
                }
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn task(source: &str) -> Task {
        Task {
            id: TaskId(1),
            function: Function::Python(Box::new(PythonSpec {
                id: PythonSpec::identity("src", "f"),
                source: source.into(),
                entry: "f".into(),
                walltime_ms: 0,
                python_version: String::new(),
            })),
            args: vec![],
            attempt: 0,
            container: None,
        }
    }

    fn source_of(t: &Task) -> String {
        match &t.function {
            Function::Python(p) => p.source.to_string(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_source_is_sent_once_and_filled_back_in() {
        let mut sent = HashSet::new();
        let (mut a, mut b) = (task("src"), task("src"));
        PythonSpec::strip_known(&mut a, &mut sent);
        PythonSpec::strip_known(&mut b, &mut sent);
        assert_eq!(
            (source_of(&a), source_of(&b)),
            ("src".into(), String::new())
        );
        let mut known = HashMap::new();
        PythonSpec::fill_known(&mut a, &mut known, 10).unwrap();
        PythonSpec::fill_known(&mut b, &mut known, 10).unwrap();
        assert_eq!(source_of(&b), "src");
        // A stripped task whose source never came is an error naming the function.
        let mut lost = task("");
        let e = PythonSpec::fill_known(&mut lost, &mut HashMap::new(), 10).unwrap_err();
        assert!(e.contains("never arrived") && e.contains("(f)"), "{e}");
        // The number of sources kept is bounded.
        let e = PythonSpec::fill_known(&mut task("src"), &mut HashMap::new(), 0).unwrap_err();
        assert!(e.contains("one too many"), "{e}");
    }

    #[test]
    fn the_same_function_has_the_same_id_and_another_does_not() {
        assert_eq!(
            PythonSpec::identity("a", "f"),
            PythonSpec::identity("a", "f")
        );
        assert_ne!(
            PythonSpec::identity("a", "f"),
            PythonSpec::identity("a", "g")
        );
        assert_ne!(
            PythonSpec::identity("af", ""),
            PythonSpec::identity("a", "f")
        );
    }
}
