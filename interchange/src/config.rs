//! An endpoint's configuration file, `endpoint.toml`, after Globus Compute's `config.yaml` and
//! Parsl's providers. Unknown keys are errors, so a misspelt setting is reported, not ignored.

use crate::dispatch::Policy;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    /// The broker's URL; leave out to run standalone with the local front door.
    #[serde(default)]
    pub broker: Option<String>,
    /// The id the broker gave this endpoint.
    #[serde(default)]
    pub endpoint_id: Option<String>,
    /// A site's own CA bundle (PEM) to check a `https://` broker's certificate against
    /// (`FXR_CA_CERT` when absent; the web PKI's roots when neither is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub provider: ProviderConfig,
    /// Container runtimes by name: command templates that override or add to the built-in ones.
    #[serde(default)]
    pub containers: std::collections::BTreeMap<String, RuntimeConfig>,
    #[serde(default)]
    pub python: PythonConfig,
}

/// `[python]`: how workers run Python functions.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PythonConfig {
    /// The interpreter workers start on the nodes (a site's conda environment, say); `python3`
    /// on the `PATH` when absent. Workers in containers use the image's `python3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
}

/// `[containers.NAME]`: how to start a worker in this runtime.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Run by `/bin/sh -c "exec COMMAND"` with `{image}`, `{options}`, `{worker}` and
    /// `{worker_dir}` filled in; it must end up running `/fxr/fxr worker` (or `{worker} worker`)
    /// inside the container.
    pub command: String,
}

/// Checks a runtime's name and template.
pub fn check_runtime(name: &str, command: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "container runtime name `{name}` must be letters, digits, `-` or `_`"
        ));
    }
    if !command.contains("{image}") {
        return Err(format!(
            "containers.{name}.command does not use `{{image}}`"
        ));
    }
    if !command.contains("worker") {
        return Err(format!(
            "containers.{name}.command does not start the worker (`/fxr/fxr worker`)"
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Workers per node; the node's cores when absent.
    pub workers_per_node: Option<u32>,
    pub prefetch: u32,
    pub dispatch: String,
    pub heartbeat_period: String,
    pub heartbeat_threshold: String,
    pub max_retries: u32,
    /// Simulated workers per manager instead of processes (for scale tests).
    pub simulate_workers: Option<u32>,
    /// Managers per block when simulating.
    pub managers_per_block: u32,
    /// The address the interchange listens on for managers, and that pilots dial.
    pub address: String,
    /// Where to serve Prometheus metrics (`HOST:PORT`); none when absent.
    pub metrics: Option<String>,
    /// A worker idle this long is stopped, freeing its slot; `0s` keeps idle workers.
    pub worker_max_idletime: String,
    /// Under the `warm` dispatch policy, how often one task may force a container switch.
    pub cold_routing_interval: String,
    /// Cold-start costs of simulated container workers: `[RUNTIME=]SECONDS` or
    /// `[RUNTIME=]@FILE` of samples.
    pub simulate_cold_start: Vec<String>,
    /// Each node's object store directory (default `/dev/shm/fxr-NAME`).
    pub store_dir: Option<String>,
    /// Each node's object store capacity in bytes.
    pub store_capacity: u64,
    /// Objects older than this are removed from each node's store (`"1h"`); none when absent.
    pub store_ttl: Option<String>,
    /// Results whose value is larger than this many bytes stay in the node's store and travel
    /// by reference (at most 10 MiB, the largest result that travels whole).
    pub result_inline_max: u64,
    /// Seal every message between the interchange and its managers (ChaCha20-Poly1305, keys
    /// from the endpoint secret and the connection's nonces).
    pub encrypt: bool,
    /// Most of the broker's tasks held at the endpoint ahead of running them (at least one per
    /// worker); the rest wait at the broker, which asks for blocks when they outnumber the
    /// workers.
    pub broker_window: u64,
    /// Dispatch shards: dispatchers over groups of managers, each on its own thread (1 to 64;
    /// 1 dispatches on the interchange's main thread alone).
    pub dispatch_shards: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers_per_node: None,
            prefetch: 4,
            dispatch: "least-loaded".into(),
            heartbeat_period: "5s".into(),
            heartbeat_threshold: "20s".into(),
            max_retries: 2,
            simulate_workers: None,
            managers_per_block: 1,
            address: "127.0.0.1".into(),
            metrics: None,
            worker_max_idletime: "2m".into(),
            cold_routing_interval: "1s".into(),
            simulate_cold_start: Vec::new(),
            store_dir: None,
            store_capacity: 1 << 30,
            store_ttl: None,
            result_inline_max: 1 << 20,
            encrypt: false,
            broker_window: 100_000,
            dispatch_shards: 1,
        }
    }
}

/// Most dispatch shards an endpoint may run.
pub const MAX_SHARDS: u32 = 64;

/// The launchers the built-in templates know.
pub const LAUNCHERS: &[&str] = &["srun", "mpiexec", "aprun", "single-node"];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// local | slurm | pbs
    pub kind: String,
    pub partition: String,
    pub queue: String,
    pub account: String,
    pub walltime: String,
    pub nodes_per_block: u32,
    pub init_blocks: u32,
    pub min_blocks: u32,
    pub max_blocks: u32,
    pub parallelism: f64,
    pub max_idletime: String,
    pub launcher: String,
    pub scheduler_options: String,
    pub worker_init: String,
    pub template: String,
    /// Whole nodes for each block (`--exclusive`, `-l naccesspolicy=singlejob`).
    pub exclusive: bool,
    /// Memory per node, as the scheduler writes it (`64G`); empty leaves it out.
    pub memory: String,
    /// GPUs per node; empty leaves it out.
    pub gpus: String,
    /// Quality of service; empty leaves it out.
    pub qos: String,
    /// Node features the scheduler must match (`--constraint`); empty leaves it out.
    pub constraint: String,
    /// Blocks that fail in a row (refused, failed or never started) before the endpoint gives
    /// up submitting.
    pub max_failures: u32,
    /// After giving up, try one block again after this long.
    pub retry_after: String,
    /// Once the endpoint has given up for this long and has no manager left, queued tasks fail
    /// (`endpoint_unavailable`, with the scheduler's message) instead of waiting.
    pub fail_tasks_after: String,
    /// A block not running within this long is cancelled and counts as a failure.
    pub pending_timeout: String,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: "local".into(),
            partition: String::new(),
            queue: String::new(),
            account: String::new(),
            walltime: "00:30:00".into(),
            nodes_per_block: 1,
            init_blocks: 1,
            min_blocks: 0,
            max_blocks: 4,
            parallelism: 1.0,
            max_idletime: "2m".into(),
            launcher: "single-node".into(),
            scheduler_options: String::new(),
            worker_init: String::new(),
            template: String::new(),
            exclusive: false,
            memory: String::new(),
            gpus: String::new(),
            qos: String::new(),
            constraint: String::new(),
            max_failures: 3,
            retry_after: "5m".into(),
            fail_tasks_after: "2m".into(),
            pending_timeout: "10m".into(),
        }
    }
}

/// When the endpoint stops trying to start blocks, and what happens to tasks then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureLimits {
    pub max_failures: u32,
    pub retry_after: Duration,
    pub fail_tasks_after: Duration,
    pub pending_timeout: Duration,
}

/// The same as `[provider]`'s defaults (a test holds them together).
impl Default for FailureLimits {
    fn default() -> Self {
        FailureLimits {
            max_failures: 3,
            retry_after: Duration::from_secs(300),
            fail_tasks_after: Duration::from_secs(120),
            pending_timeout: Duration::from_secs(600),
        }
    }
}

impl ProviderConfig {
    /// `max_failures`, `retry_after`, `fail_tasks_after` and `pending_timeout`, parsed.
    pub fn limits(&self) -> Result<FailureLimits, String> {
        let d = |key: &str, v: &str| parse_duration(v).map_err(|e| format!("provider.{key}: {e}"));
        Ok(FailureLimits {
            max_failures: self.max_failures.max(1),
            retry_after: d("retry_after", &self.retry_after)?,
            fail_tasks_after: d("fail_tasks_after", &self.fail_tasks_after)?,
            pending_timeout: d("pending_timeout", &self.pending_timeout)?,
        })
    }
}

/// A configuration error, naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Parses `250ms`, `5s`, `2m`, `1h`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 500ms, 5s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl EndpointConfig {
    pub fn load(path: &Path) -> Result<EndpointConfig, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let cfg: EndpointConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: p.clone(),
            message: e.to_string(),
        })?;
        cfg.validate()
            .map_err(|message| ConfigError::Invalid { path: p, message })?;
        Ok(cfg)
    }

    /// Checks values that the types alone do not.
    pub fn validate(&self) -> Result<(), String> {
        self.engine
            .dispatch
            .parse::<Policy>()
            .map_err(|e| format!("engine.dispatch: {e}"))?;
        parse_duration(&self.engine.heartbeat_period)
            .map_err(|e| format!("engine.heartbeat_period: {e}"))?;
        parse_duration(&self.engine.heartbeat_threshold)
            .map_err(|e| format!("engine.heartbeat_threshold: {e}"))?;
        for (key, value) in [
            ("max_idletime", &self.provider.max_idletime),
            ("retry_after", &self.provider.retry_after),
            ("fail_tasks_after", &self.provider.fail_tasks_after),
            ("pending_timeout", &self.provider.pending_timeout),
        ] {
            parse_duration(value).map_err(|e| format!("provider.{key}: {e}"))?;
        }
        if self.provider.max_failures == 0 {
            return Err("provider.max_failures must be at least 1".into());
        }
        // Found now rather than when the first block is submitted.
        if !LAUNCHERS.contains(&self.provider.launcher.as_str()) {
            return Err(format!(
                "provider.launcher: `{}` is not one fxr knows ({})",
                self.provider.launcher,
                LAUNCHERS.join(", ")
            ));
        }
        parse_duration(&self.engine.worker_max_idletime)
            .map_err(|e| format!("engine.worker_max_idletime: {e}"))?;
        parse_duration(&self.engine.cold_routing_interval)
            .map_err(|e| format!("engine.cold_routing_interval: {e}"))?;
        if let Some(t) = &self.engine.store_ttl {
            parse_duration(t).map_err(|e| format!("engine.store_ttl: {e}"))?;
        }
        if !(1..=MAX_SHARDS).contains(&self.engine.dispatch_shards) {
            return Err(format!(
                "engine.dispatch_shards: {} is not between 1 and {MAX_SHARDS}",
                self.engine.dispatch_shards
            ));
        }
        if !(1..=10_000_000).contains(&self.engine.broker_window) {
            return Err(format!(
                "engine.broker_window: {} is not between 1 and 10000000 tasks",
                self.engine.broker_window
            ));
        }
        if self.engine.result_inline_max > fxr_protocol::MAX_BODY as u64 {
            return Err(format!(
                "engine.result_inline_max: {} is over {} (10 MiB), the largest result that travels whole",
                self.engine.result_inline_max,
                fxr_protocol::MAX_BODY
            ));
        }
        for (name, rt) in &self.containers {
            check_runtime(name, &rt.command)?;
        }
        if !["local", "slurm", "pbs"].contains(&self.provider.kind.as_str()) {
            return Err(format!(
                "provider.kind `{}` is not one of local, slurm, pbs",
                self.provider.kind
            ));
        }
        if self.provider.min_blocks > self.provider.max_blocks {
            return Err("provider.min_blocks is larger than provider.max_blocks".into());
        }
        if self.provider.nodes_per_block == 0 {
            return Err("provider.nodes_per_block must be at least 1".into());
        }
        if self.broker.is_some() && self.endpoint_id.is_none() {
            return Err(
                "`broker` is set but `endpoint_id` is missing (run `fxr endpoint create`)".into(),
            );
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c: EndpointConfig = toml::from_str("name = \"x\"").unwrap();
        assert_eq!(c.provider.kind, "local");
        c.validate().unwrap();
        let bad = toml::from_str::<EndpointConfig>("name = \"x\"\n[engine]\nworkers_per_nod = 2\n")
            .unwrap_err();
        assert!(bad.to_string().contains("workers_per_nod"));
        let c: EndpointConfig =
            toml::from_str("name = \"x\"\n[engine]\ndispatch = \"fastest\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("engine.dispatch"));
        let round: EndpointConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(round.engine.dispatch, "fastest");
        let c: EndpointConfig = toml::from_str("name = \"x\"\n[engine]\ndispatch_shards = 0\n")
            .expect("the TOML itself parses");
        assert!(c
            .validate()
            .unwrap_err()
            .contains("engine.dispatch_shards: 0 is not between 1 and 64"));
        let c: EndpointConfig =
            toml::from_str("name = \"x\"\n[engine]\nbroker_window = 0\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("engine.broker_window: 0"));
        let c: EndpointConfig =
            toml::from_str("name = \"x\"\n[engine]\nstore_ttl = \"soon\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("engine.store_ttl"));
        let c: EndpointConfig =
            toml::from_str("name = \"x\"\n[engine]\nresult_inline_max = 20000000\n").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("engine.result_inline_max"));
        let c: EndpointConfig =
            toml::from_str("name = \"x\"\n[provider]\nlauncher = \"mpirun\"\n").unwrap();
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("provider.launcher") && e.contains("mpirun") && e.contains("srun"),
            "{e}"
        );
    }

    #[test]
    fn failure_limits_default_as_the_provider_table_does() {
        assert_eq!(
            ProviderConfig::default().limits(),
            Ok(FailureLimits::default())
        );
    }

    #[test]
    fn container_runtimes_are_checked() {
        let ok: EndpointConfig = toml::from_str(
            "name = \"x\"\n[containers.apptainer]\ncommand = \"apptainer exec {image} /fxr/fxr worker\"\n",
        )
        .unwrap();
        ok.validate().unwrap();
        let bad: EndpointConfig =
            toml::from_str("name = \"x\"\n[containers.mine]\ncommand = \"mine run\"\n").unwrap();
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("containers.mine.command"));
        let typo =
            toml::from_str::<EndpointConfig>("name = \"x\"\n[containers.mine]\ncomand = \"x\"\n")
                .unwrap_err();
        assert!(typo.to_string().contains("comand"));
    }
}
