//! Experiment definitions.

use serde::Deserialize;
use std::path::Path;

/// One experiment.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    pub title: String,
    /// The paper's figure or claim this reproduces, quoted in the summary.
    pub paper: String,
    #[serde(default = "one")]
    pub repetitions: u32,
    /// Columns plotted: x, y, and the column naming each line.
    pub plot_x: String,
    pub plot_y: String,
    #[serde(default)]
    pub log_x: bool,
    #[serde(default)]
    pub log_y: bool,
    /// Where the legend goes: upper-left, upper-right, middle-left, middle-right, lower-left,
    /// lower-right.
    #[serde(default)]
    pub legend: Option<String>,
    pub sweeps: Vec<Sweep>,
    /// Stages of a path, each the difference between two series measured in the same run
    /// (for example: the broker's share of a round trip = through the broker − without it).
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// Series set against a baseline, point by point, in the summary.
    #[serde(default)]
    pub comparisons: Vec<Comparison>,
    /// Markdown appended to the summary: what the figures mean and where they differ from the
    /// paper's.
    #[serde(default)]
    pub notes: Option<String>,
}

/// `series` against `baseline`: the change of completion time (and of cold starts) at each
/// point, and the paper's own figure for the same comparison when it has one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    pub name: String,
    pub series: String,
    pub baseline: String,
    #[serde(default)]
    pub paper: Option<String>,
}

/// One stage: `series` minus `minus`, point by point, for the latency percentiles.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    pub series: String,
    /// Leave out for the first stage (the whole of `series`).
    #[serde(default)]
    pub minus: Option<String>,
}

fn one() -> u32 {
    1
}

/// A line of the experiment: one `fxr bench` command run for each value of a variable.
///
/// In `args`, `{v}` is the value; `{managers}` and `{per_manager}` split `{v}` workers into
/// simulated managers of at most `per_manager` workers (64 unless given); `{tasks}` is `tasks`,
/// or `tasks_per_worker × v`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    pub series: String,
    /// `processes` or `simulated`: said on every row.
    pub mode: String,
    /// The name of the variable (a CSV column).
    pub var: String,
    pub values: Vec<u64>,
    /// The values used with `--quick`.
    pub quick_values: Vec<u64>,
    /// `throughput`, `latency`, `routing`, `data` or `mapreduce` (an `fxr bench`), or `parsl` (the Parsl HTEX
    /// anchor, `scripts/anchors.py ARGS`, run with `requires = "parsl"`). In `routing` args,
    /// `{image}` is a worker image directory and `{podman_image}` its podman copy, built for
    /// the run by `fxr container image`.
    pub bench: String,
    pub args: Vec<String>,
    #[serde(default)]
    pub tasks: Option<u64>,
    #[serde(default)]
    pub tasks_per_worker: Option<u64>,
    /// Tasks in quick runs (overrides `tasks`).
    #[serde(default)]
    pub quick_tasks: Option<u64>,
    /// For sleep workloads: the task length in ms, to compute the ideal completion time.
    #[serde(default)]
    pub sleep_ms: Option<u64>,
    /// Most workers per simulated manager (64 when not given).
    #[serde(default)]
    pub per_manager: Option<u64>,
    /// `slurm`: the sweep runs on a Slurm cluster that the harness starts on this machine
    /// (`scripts/slurm-cluster.sh`), and is skipped, with a note, where Slurm is not installed.
    /// `parsl`: the sweep needs Parsl in `target/anchors-venv` (`make experiment-anchors`).
    /// `bwrap`, `podman`, `charliecloud`, `redis`: the sweep needs that program, and is
    /// skipped, with a note, without it.
    #[serde(default)]
    pub requires: Option<String>,
}

/// Why a definition was refused.
#[derive(Debug, thiserror::Error)]
pub enum DefError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Definition {
    pub fn load(path: &Path) -> Result<Definition, DefError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DefError::Read {
            path: p.clone(),
            source,
        })?;
        let d: Definition = toml::from_str(&text).map_err(|e| DefError::Invalid {
            path: p.clone(),
            message: e.to_string(),
        })?;
        for s in &d.sweeps {
            if ![
                "throughput",
                "latency",
                "routing",
                "data",
                "mapreduce",
                "parsl",
            ]
            .contains(&s.bench.as_str())
            {
                return Err(DefError::Invalid {
                    path: p,
                    message: format!(
                        "sweep `{}`: bench must be throughput, latency, routing, data, mapreduce or parsl",
                        s.series
                    ),
                });
            }
            if s.values.is_empty() || s.quick_values.is_empty() {
                return Err(DefError::Invalid {
                    path: p,
                    message: format!("sweep `{}` has no values", s.series),
                });
            }
        }
        Ok(d)
    }
}
