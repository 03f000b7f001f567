//! Shared option parsing: durations and function selection.

use anyhow::{bail, Context};
use fxr_protocol::{Builtin, Function, PythonSpec, ShellSpec};
use std::time::Duration;

/// Parses `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    fxr_interchange::config::parse_duration(s)
}

/// What to run: a builtin by name, or a shell command.
#[derive(clap::Args, Debug, Clone)]
pub struct FunctionArgs {
    /// A builtin function: noop, sleep, spin, echo, fail, put, get, map, reduce.
    #[arg(conflicts_with_all = ["shell", "python"])]
    pub function: Option<String>,
    /// A shell command template instead of a builtin; `{name}` is filled from the arguments.
    #[arg(long, conflicts_with = "python")]
    pub shell: Option<String>,
    /// A Python function, FILE:ENTRY: the file's source, and the function it defines to call.
    /// Arguments are `{"args": [...], "kwargs": {...}}`.
    #[arg(long)]
    pub python: Option<String>,
    /// Wall-clock limit for a shell command or a Python function.
    #[arg(long, value_parser = duration)]
    pub walltime: Option<Duration>,
    /// Working directory for a shell command.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Environment for a shell command, as NAME=VALUE (repeatable).
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// The container (tasks to a local endpoint; a function registered at a broker names its
    /// container at registration).
    #[command(flatten)]
    pub container: ContainerArgs,
}

/// `--container RUNTIME:IMAGE` and its runtime options.
#[derive(clap::Args, Debug, Clone)]
pub struct ContainerArgs {
    /// Run it in a container, RUNTIME:IMAGE (bwrap, podman, charliecloud, apptainer,
    /// singularity, shifter, docker, or a runtime the endpoint configures).
    #[arg(long, value_parser = fxr_protocol::ContainerSpec::parse)]
    pub container: Option<fxr_protocol::ContainerSpec>,
    /// An extra option for the container runtime's command line (repeatable).
    #[arg(
        long = "container-option",
        requires = "container",
        allow_hyphen_values = true
    )]
    pub container_options: Vec<String>,
}

impl ContainerArgs {
    /// The container with its options, if one was named.
    pub fn spec(&self) -> Option<fxr_protocol::ContainerSpec> {
        self.container.clone().map(|mut c| {
            c.options = self.container_options.clone();
            c
        })
    }
}

impl FunctionArgs {
    /// The container tasks run in, with its options.
    pub fn container(&self) -> Option<fxr_protocol::ContainerSpec> {
        self.container.spec()
    }

    pub fn function(&self) -> anyhow::Result<Function> {
        if let Some(p) = &self.python {
            let (source, entry) = python_source(p)?;
            return Ok(Function::Python(Box::new(PythonSpec {
                id: PythonSpec::identity(&source, &entry),
                source: source.into(),
                entry,
                walltime_ms: self.walltime.map_or(0, |d| d.as_millis() as u64),
                python_version: String::new(),
            })));
        }
        if let Some(cmd) = &self.shell {
            let env = self
                .env
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .with_context(|| format!("--env `{kv}` is not NAME=VALUE"))
                })
                .collect::<anyhow::Result<_>>()?;
            return Ok(Function::Shell(Box::new(ShellSpec {
                command: cmd.clone(),
                env,
                cwd: self.cwd.clone(),
                walltime_ms: self.walltime.map_or(0, |d| d.as_millis() as u64),
            })));
        }
        match &self.function {
            Some(name) => match Builtin::from_name(name) {
                Some(b) => Ok(Function::Builtin(b)),
                None => bail!("unknown function `{name}` (builtins: noop, sleep, spin, echo, fail, put, get, map, reduce; or use --shell)"),
            },
            None => bail!("name a builtin function or give --shell COMMAND or --python FILE:ENTRY"),
        }
    }
}

/// What each node's manager is told about its store and its workers' interpreter: the same
/// flags on `fxr endpoint start --local` and on `fxr pilot`, which the endpoint passes on.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// The object store's capacity in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub store_capacity: u64,
    /// Objects older than this are removed from each node's store (kept until evicted when
    /// absent).
    #[arg(long, value_parser = duration)]
    pub store_ttl: Option<Duration>,
    /// Results larger than this many bytes stay in the node's store and travel by reference.
    #[arg(long, default_value_t = 1 << 20)]
    pub result_inline_max: u64,
    /// The Python interpreter workers start for Python functions (default: python3).
    #[arg(long)]
    pub python: Option<String>,
}

impl Default for NodeArgs {
    fn default() -> Self {
        NodeArgs {
            store_capacity: 1 << 30,
            store_ttl: None,
            result_inline_max: 1 << 20,
            python: None,
        }
    }
}

impl NodeArgs {
    /// The settings of a configured endpoint (`[engine]`, `[python]`).
    pub fn from_config(cfg: &fxr_interchange::config::EndpointConfig) -> anyhow::Result<NodeArgs> {
        let e = &cfg.engine;
        Ok(NodeArgs {
            store_capacity: e.store_capacity,
            store_ttl: e
                .store_ttl
                .as_deref()
                .map(duration)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            result_inline_max: e.result_inline_max,
            python: cfg.python.executable.clone(),
        })
    }

    /// The `fxr pilot` flags that hand these settings, and the store at `store`, to a node.
    pub fn pilot_flags(&self, store: &std::path::Path) -> String {
        let quote = fxr_pilot::exec::shell_quote;
        let mut f = format!(
            " --store {} --store-capacity {} --result-inline-max {}",
            quote(&store.to_string_lossy()),
            self.store_capacity,
            self.result_inline_max
        );
        if let Some(t) = self.store_ttl {
            f.push_str(&format!(" --store-ttl {}ms", t.as_millis()));
        }
        if let Some(py) = &self.python {
            f.push_str(&format!(" --python {}", quote(py)));
        }
        f
    }
}

/// Largest Python source accepted, in bytes.
const MAX_PYTHON_SOURCE: u64 = 1 << 20;

/// Reads `FILE:ENTRY`: the source and the name of the function to call. The source is checked
/// for syntax with the local `python3` when there is one, so a syntax error is reported now
/// rather than at the first task.
pub fn python_source(spec: &str) -> anyhow::Result<(String, String)> {
    let (file, entry) = spec
        .rsplit_once(':')
        .with_context(|| format!("--python `{spec}` is not FILE:ENTRY"))?;
    let ok_entry = entry
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && entry.chars().all(|c| c.is_alphanumeric() || c == '_');
    anyhow::ensure!(
        ok_entry,
        "--python: `{entry}` is not a Python function name"
    );
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {file}"))?
        .len();
    anyhow::ensure!(
        size <= MAX_PYTHON_SOURCE,
        "{file} is {size} bytes; Python sources are at most {MAX_PYTHON_SOURCE}"
    );
    let source = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
    if let Ok(out) = std::process::Command::new("python3")
        .args([
            "-c",
            "import ast,sys,traceback\ntry:\n t=ast.parse(open(sys.argv[1]).read(),sys.argv[1])\nexcept SyntaxError as e:\n sys.stderr.write(''.join(traceback.format_exception_only(type(e),e)));sys.exit(2)\nn=sys.argv[2]\nsys.exit(0 if any(isinstance(d,(ast.FunctionDef,ast.AsyncFunctionDef)) and d.name==n or isinstance(d,ast.Assign) and any(getattr(x,'id',None)==n for x in d.targets) for d in t.body) else 3)",
            file,
            entry,
        ])
        .output()
    {
        match out.status.code() {
            Some(0) => {}
            Some(3) => bail!("{file} defines no function `{entry}` at its top level"),
            _ => bail!(
                "{file} is not valid Python:\n{}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }
    Ok((source, entry.to_string()))
}

/// Checks that a string is a JSON value and returns its bytes.
pub fn json_arg(s: &str) -> anyhow::Result<Vec<u8>> {
    serde_json::from_str::<serde_json::Value>(s)
        .with_context(|| format!("--args is not valid JSON: {s}"))?;
    Ok(s.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("5x").unwrap_err().contains("unknown unit"));
        assert!(duration("abc").is_err());
    }
}
