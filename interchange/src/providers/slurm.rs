//! Slurm: `sbatch --parsable`, `squeue`, `scancel`.

use super::{run_command, run_command_in, BatchProvider, JobState, ProviderError};
use std::time::Duration;

#[derive(Debug)]
pub struct Slurm {
    pub timeout: Duration,
}

impl Default for Slurm {
    fn default() -> Self {
        Slurm {
            timeout: Duration::from_secs(30),
        }
    }
}

/// The job id in `sbatch --parsable` output: the last line that starts with digits
/// (`12345` or `12345;cluster`); sites' banners before it are skipped.
pub fn parse_sbatch(out: &str) -> Option<String> {
    out.lines()
        .rev()
        .map(str::trim)
        .find(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|l| l.split(';').next().unwrap_or(l).trim().to_string())
}

/// Maps a Slurm state name.
pub fn state(s: &str) -> JobState {
    match s.trim() {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "RESV_DEL_HOLD" | "SUSPENDED" => {
            JobState::Pending
        }
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "RESIZING" => JobState::Running,
        "COMPLETED" | "CANCELLED" => JobState::Done,
        "FAILED" | "TIMEOUT" | "NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL" | "DEADLINE"
        | "OUT_OF_MEMORY" => JobState::Failed(s.trim().to_string()),
        other => JobState::Unknown(other.to_string()),
    }
}

/// Parses `squeue -h -o "%i %T"` output for `jobs`; jobs not listed are done.
pub fn parse_squeue(out: &str, jobs: &[String]) -> Vec<(String, JobState)> {
    let mut seen = std::collections::HashMap::new();
    for line in out.lines() {
        let mut it = line.split_whitespace();
        if let (Some(id), Some(st)) = (it.next(), it.next()) {
            seen.insert(id.to_string(), state(st));
        }
    }
    jobs.iter()
        .map(|j| (j.clone(), seen.remove(j).unwrap_or(JobState::Done)))
        .collect()
}

impl BatchProvider for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&mut self, script: &std::path::Path) -> Result<String, ProviderError> {
        let path = script.to_string_lossy();
        let out = run_command_in(
            "sbatch",
            &["--parsable", &path],
            self.timeout,
            script.parent(),
        )?;
        parse_sbatch(&out).ok_or(ProviderError::Parse {
            command: "sbatch --parsable".into(),
            output: out,
        })
    }

    fn status(&mut self, jobs: &[String]) -> Result<Vec<(String, JobState)>, ProviderError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let list = jobs.join(",");
        // squeue fails for ids it has forgotten; list all of ours and treat the missing as done.
        let out = match run_command("squeue", &["-h", "-o", "%i %T", "-j", &list], self.timeout) {
            Ok(o) => o,
            Err(ProviderError::Failed { stderr, .. }) if stderr.contains("Invalid job id") => {
                String::new()
            }
            Err(e) => return Err(e),
        };
        Ok(parse_squeue(&out, jobs))
    }

    fn cancel(&mut self, job: &str) -> Result<(), ProviderError> {
        run_command("scancel", &[job], self.timeout).map(|_| ())
    }

    /// `sinfo` for the partition (with the list of those that exist), then `sbatch
    /// --test-only`, which checks the whole script (account, nodes, limits) without submitting.
    fn check(&mut self, script: &std::path::Path) -> Result<(), ProviderError> {
        let text = std::fs::read_to_string(script).unwrap_or_default();
        if let Some(partition) = script_partition(&text) {
            let all = run_command("sinfo", &["-h", "-o", "%P"], self.timeout)?;
            let names: Vec<&str> = all
                .split_whitespace()
                .map(|p| p.trim_end_matches('*'))
                .collect();
            if !names.contains(&partition.as_str()) {
                return Err(ProviderError::Check(format!(
                    "partition `{partition}` does not exist (sinfo lists: {})",
                    names.join(", ")
                )));
            }
        }
        let path = script.to_string_lossy();
        match run_command_in(
            "sbatch",
            &["--test-only", &path],
            self.timeout,
            script.parent(),
        ) {
            Ok(_) => Ok(()),
            Err(ProviderError::Failed { stderr, .. }) => Err(ProviderError::Check(format!(
                "sbatch --test-only refuses the job script: {stderr}"
            ))),
            Err(e) => Err(e),
        }
    }
}

/// The partition a job script asks for (`#SBATCH -p X`, `--partition=X`, `--partition X`).
pub fn script_partition(script: &str) -> Option<String> {
    script.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("#SBATCH")?.trim();
        let value = rest
            .strip_prefix("--partition=")
            .or_else(|| rest.strip_prefix("--partition "))
            .or_else(|| rest.strip_prefix("-p "))
            .or_else(|| rest.strip_prefix("-p="))?;
        let v = value.split_whitespace().next()?.trim_matches('"');
        (!v.is_empty()).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_and_squeue_outputs() {
        assert_eq!(parse_sbatch("12345\n").as_deref(), Some("12345"));
        assert_eq!(
            parse_sbatch("Welcome to the cluster!\nRemember quotas.\n678;cluster2\n").as_deref(),
            Some("678")
        );
        assert_eq!(parse_sbatch("sbatch: error: nope\n"), None);
        let jobs = vec!["1".to_string(), "2".to_string(), "3".to_string()];
        let st = parse_squeue("1 RUNNING\n2 PENDING\ngarbage\n", &jobs);
        assert_eq!(st[0].1, JobState::Running);
        assert_eq!(st[1].1, JobState::Pending);
        assert_eq!(
            st[2].1,
            JobState::Done,
            "a job squeue no longer lists is done"
        );
        assert_eq!(state("WEIRD"), JobState::Unknown("WEIRD".into()));
        assert!(matches!(state("NODE_FAIL"), JobState::Failed(_)));
    }

    #[test]
    fn the_partition_of_a_script() {
        let s = "#!/bin/bash\n#SBATCH --job-name=x\n#SBATCH --partition=debug\nsrun x -p y\n";
        assert_eq!(script_partition(s).as_deref(), Some("debug"));
        assert_eq!(script_partition("#SBATCH -p gpu\n").as_deref(), Some("gpu"));
        assert_eq!(
            script_partition("#SBATCH --partition \"long\"\n").as_deref(),
            Some("long")
        );
        assert_eq!(script_partition("srun -p debug\n"), None);
    }
}
