//! PBS: `qsub`, `qstat`, `qdel`. PBS Pro's `qstat -f -F json` is used when the scheduler
//! supports it; Torque-style schedulers (and Slurm's Torque wrappers) get plain `qstat` and its
//! table is parsed instead.

use super::{run_command, run_command_in, BatchProvider, JobState, ProviderError};
use std::time::Duration;

#[derive(Debug)]
pub struct Pbs {
    pub timeout: Duration,
    /// Use `qstat -f -F json` (PBS Pro); otherwise plain `qstat` (Torque-style).
    pub json: bool,
}

impl Default for Pbs {
    fn default() -> Self {
        Pbs {
            timeout: Duration::from_secs(30),
            json: true,
        }
    }
}

/// The job id in `qsub` output: the last non-empty line (`123.server`).
pub fn parse_qsub(out: &str) -> Option<String> {
    out.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

/// Maps a PBS one-letter job state.
pub fn state(s: &str) -> JobState {
    match s.trim() {
        "Q" | "H" | "W" | "T" | "S" | "U" | "B" => JobState::Pending,
        "R" | "E" => JobState::Running,
        "C" | "F" | "X" => JobState::Done,
        other => JobState::Unknown(other.to_string()),
    }
}

/// Matches a job id as the scheduler prints it (`123.server` or `123`).
fn same_job(listed: &str, wanted: &str) -> bool {
    listed == wanted || listed.split('.').next() == wanted.split('.').next()
}

/// Parses PBS Pro's `qstat -f -F json` output; jobs not listed are done. A finished job may
/// carry an `Exit_status`; a non-zero one is a failure.
pub fn parse_qstat_json(out: &str, jobs: &[String]) -> Result<Vec<(String, JobState)>, String> {
    // Some sites print warnings before the JSON object.
    let start = out
        .find('{')
        .ok_or_else(|| "no JSON object in the output".to_string())?;
    let v: serde_json::Value = serde_json::from_str(&out[start..]).map_err(|e| e.to_string())?;
    let listed = v
        .get("Jobs")
        .and_then(|j| j.as_object())
        .cloned()
        .unwrap_or_default();
    Ok(jobs
        .iter()
        .map(|j| {
            let found = listed
                .iter()
                .find(|(id, _)| same_job(id, j))
                .map(|(_, job)| job);
            let st = match found {
                None => JobState::Done,
                Some(job) => {
                    let s = job.get("job_state").and_then(|s| s.as_str()).unwrap_or("?");
                    match (
                        state(s),
                        job.get("Exit_status").and_then(serde_json::Value::as_i64),
                    ) {
                        (JobState::Done, Some(code)) if code != 0 => {
                            JobState::Failed(format!("exit status {code}"))
                        }
                        (st, _) => st,
                    }
                }
            };
            (j.clone(), st)
        })
        .collect())
}

/// Parses Torque-style `qstat` tables:
/// ```text
/// Job ID                    Name             User            Time Use S Queue
/// ------------------------- ---------------- --------------- -------- - -----
/// 123.server                fxr-ep-1         alice           00:00:01 R debug
/// ```
/// The state is the column under the header's `S`; jobs not listed are done.
pub fn parse_qstat_table(out: &str, jobs: &[String]) -> Vec<(String, JobState)> {
    let mut header: Option<&str> = None;
    let mut col = None;
    let mut seen = std::collections::HashMap::new();
    for line in out.lines() {
        let first = line.split_whitespace().next();
        if first == Some("Job") {
            header = Some(line);
            continue;
        }
        if first.is_some_and(|w| w.starts_with('-')) {
            // The dashes mark the columns; the state column is the one under the header's `S`.
            if let Some(h) = header {
                let s_at = h.find(" S ").map(|i| i + 1);
                let mut spans = Vec::new();
                let mut start = None;
                for (i, c) in line
                    .char_indices()
                    .chain(std::iter::once((line.len(), ' ')))
                {
                    match (c == '-', start) {
                        (true, None) => start = Some(i),
                        (false, Some(b)) => {
                            spans.push((b, i));
                            start = None;
                        }
                        _ => {}
                    }
                }
                col = s_at.and_then(|p| spans.iter().position(|(b, e)| *b <= p && p < *e));
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let (Some(c), Some(id)) = (col, words.first()) {
            if let Some(s) = words.get(c) {
                seen.insert(id.to_string(), state(s));
            }
        }
    }
    jobs.iter()
        .map(|j| {
            let st = seen
                .iter()
                .find(|(id, _)| same_job(id, j))
                .map_or(JobState::Done, |(_, s)| s.clone());
            (j.clone(), st)
        })
        .collect()
}

impl BatchProvider for Pbs {
    fn name(&self) -> &'static str {
        "pbs"
    }

    fn submit(&mut self, script: &std::path::Path) -> Result<String, ProviderError> {
        let path = script.to_string_lossy();
        let out = run_command_in("qsub", &[&path], self.timeout, script.parent())?;
        parse_qsub(&out).ok_or(ProviderError::Parse {
            command: "qsub".into(),
            output: out,
        })
    }

    fn status(&mut self, jobs: &[String]) -> Result<Vec<(String, JobState)>, ProviderError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        if self.json {
            let mut args = vec!["-f", "-F", "json"];
            args.extend(jobs.iter().map(String::as_str));
            match run_command("qstat", &args, self.timeout) {
                Ok(out) => {
                    return parse_qstat_json(&out, jobs).map_err(|e| ProviderError::Parse {
                        command: "qstat -f -F json".into(),
                        output: e,
                    })
                }
                // Not PBS Pro: fall back to the Torque-style table from now on.
                Err(ProviderError::Failed { .. }) | Err(ProviderError::Parse { .. }) => {
                    self.json = false
                }
                Err(e) => return Err(e),
            }
        }
        let out = match run_command("qstat", &[], self.timeout) {
            Ok(o) => o,
            Err(ProviderError::Failed { stderr, .. }) if stderr.is_empty() => String::new(),
            Err(e) => return Err(e),
        };
        Ok(parse_qstat_table(&out, jobs))
    }

    fn cancel(&mut self, job: &str) -> Result<(), ProviderError> {
        run_command("qdel", &[job], self.timeout).map(|_| ())
    }

    /// `qstat -Q QUEUE` for the queue the script asks for: the scheduler must list it.
    fn check(&mut self, script: &std::path::Path) -> Result<(), ProviderError> {
        let text = std::fs::read_to_string(script).unwrap_or_default();
        let Some(queue) = script_queue(&text) else {
            return Ok(());
        };
        let unknown = |why: String| {
            ProviderError::Check(format!(
                "queue `{queue}` is not known to the scheduler: {why}"
            ))
        };
        match run_command("qstat", &["-Q", &queue], self.timeout) {
            Ok(out) if queue_listed(&out, &queue) => Ok(()),
            Ok(out) => Err(unknown(format!(
                "`qstat -Q {queue}` does not list it: {}",
                out.trim()
            ))),
            Err(ProviderError::Failed { status, stderr, .. }) => {
                Err(unknown(if stderr.is_empty() {
                    format!("`qstat -Q {queue}` failed ({status})")
                } else {
                    stderr
                }))
            }
            Err(e) => Err(e),
        }
    }
}

/// The queue a job script asks for (`#PBS -q X`).
pub fn script_queue(script: &str) -> Option<String> {
    script.lines().find_map(|l| {
        let v = l.trim().strip_prefix("#PBS")?.trim().strip_prefix("-q")?;
        let v = v.split_whitespace().next()?;
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// Whether `qstat -Q` output lists `queue` (a row starting with its name, PBS Pro and Torque
/// alike).
pub fn queue_listed(out: &str, queue: &str) -> bool {
    out.lines()
        .any(|l| l.split_whitespace().next() == Some(queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_in_scripts_and_in_qstat_q() {
        assert_eq!(
            script_queue("#!/bin/bash\n#PBS -N x\n#PBS -q workq\n").as_deref(),
            Some("workq")
        );
        assert_eq!(script_queue("#PBS -l nodes=1\n"), None);
        let out = "Queue              Max   Tot   Ena   Str   Que   Run\n----------------   ---\nworkq                0     0   yes   yes     0     0\n";
        assert!(queue_listed(out, "workq"));
        assert!(!queue_listed(out, "work"));
        assert!(!queue_listed("", "workq"));
    }

    /// Recorded from PBS Pro 2021 (`qstat -f -F json 101.pbs 102.pbs`), trimmed.
    const PBSPRO: &str = r#"qstat: Warning: something sites print
{
    "timestamp":1700000000,
    "pbs_version":"2021.1.3",
    "pbs_server":"pbs",
    "Jobs":{
        "101.pbs":{ "Job_Name":"fxr-ep-1", "job_state":"R", "queue":"workq", "exec_host":"n1/0*4+n2/0*4" },
        "102.pbs":{ "Job_Name":"fxr-ep-2", "job_state":"Q", "queue":"workq" },
        "103.pbs":{ "Job_Name":"fxr-ep-3", "job_state":"F", "Exit_status":271 }
    }
}"#;

    #[test]
    fn pbs_pro_json() {
        let jobs: Vec<String> = ["101.pbs", "102", "103.pbs", "104.pbs"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let st = parse_qstat_json(PBSPRO, &jobs).unwrap();
        assert_eq!(st[0].1, JobState::Running);
        assert_eq!(
            st[1].1,
            JobState::Pending,
            "ids match with or without the server suffix"
        );
        assert_eq!(st[2].1, JobState::Failed("exit status 271".into()));
        assert_eq!(st[3].1, JobState::Done);
        assert!(parse_qstat_json("qstat: not json", &jobs).is_err());
    }

    #[test]
    fn torque_table_and_qsub() {
        let out = "Job ID                    Name             User            Time Use S Queue\n\
                   ------------------------- ---------------- --------------- -------- - -----\n\
                   7.localhost               fxr-ep-1         root            00:00:01 R debug\n\
                   8                         fxr-ep-2         root            0        Q debug\n";
        let jobs: Vec<String> = ["7", "8", "9"].iter().map(|s| s.to_string()).collect();
        let st = parse_qstat_table(out, &jobs);
        assert_eq!(st[0].1, JobState::Running);
        assert_eq!(st[1].1, JobState::Pending);
        assert_eq!(st[2].1, JobState::Done);
        assert_eq!(
            parse_qsub("Job submitted\n12.server\n").as_deref(),
            Some("12.server")
        );
        assert_eq!(parse_qsub("qsub: error\n"), None);
    }
}
