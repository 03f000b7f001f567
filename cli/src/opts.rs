//! Shared option parsing: durations and function selection.

use anyhow::{bail, Context};
use fxr_protocol::{Builtin, Function, ShellSpec};
use std::time::Duration;

/// Parses `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    fxr_interchange::config::parse_duration(s)
}

/// What to run: a builtin by name, or a shell command.
#[derive(clap::Args, Debug, Clone)]
pub struct FunctionArgs {
    /// A builtin function: noop, sleep, spin, echo, fail, put, get, map, reduce.
    #[arg(conflicts_with = "shell")]
    pub function: Option<String>,
    /// A shell command template instead of a builtin; `{name}` is filled from the arguments.
    #[arg(long)]
    pub shell: Option<String>,
    /// Wall-clock limit for a shell command.
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
            None => bail!("name a builtin function or give --shell COMMAND"),
        }
    }
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
