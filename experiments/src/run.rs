//! Running an experiment: expand sweeps into points, run each point as a `fxr bench` process,
//! collect the JSON each prints into rows, and write the report.

use crate::def::{Definition, Sweep};
use crate::report::{self, Row};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub quick: bool,
    /// The `fxr` binary to run points with.
    pub fxr: PathBuf,
    /// `results/`: the experiment writes `results/NAME/`.
    pub out: PathBuf,
    /// The command line that started the run, for SETUP.md.
    pub command: String,
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("point {point} failed: {message}")]
    Point { point: String, message: String },
    #[error("cannot write the results: {0}")]
    Io(#[from] std::io::Error),
}

const PER_MANAGER: u64 = 64;

fn expand(s: &Sweep, v: u64, quick: bool) -> Vec<String> {
    let managers = v.div_ceil(PER_MANAGER).max(1);
    let per_manager = v.div_ceil(managers).max(1);
    // Many managers are spread over up to 4 pilot processes, as on 4 nodes.
    let blocks = managers.clamp(1, 4);
    let per_block = managers.div_ceil(blocks);
    let tasks = match (quick, s.quick_tasks, s.tasks_per_worker, s.tasks) {
        (true, Some(q), _, _) => q,
        (_, _, Some(per), _) => per * v,
        (_, _, _, Some(t)) => t,
        _ => 1000,
    };
    s.args
        .iter()
        .map(|a| {
            a.replace("{v}", &v.to_string())
                .replace("{managers}", &managers.to_string())
                .replace("{per_manager}", &per_manager.to_string())
                .replace("{blocks}", &blocks.to_string())
                .replace("{mpb}", &per_block.to_string())
                .replace("{tasks}", &tasks.to_string())
        })
        .collect()
}

/// Runs the experiment and writes `out/NAME/`. Progress goes to stderr.
pub fn run(def: &Definition, opts: &RunOptions) -> Result<PathBuf, RunError> {
    let dir = opts.out.join(&def.name);
    std::fs::create_dir_all(&dir)?;
    let mut points = Vec::new();
    for s in &def.sweeps {
        let values = if opts.quick {
            &s.quick_values
        } else {
            &s.values
        };
        for v in values {
            for rep in 0..(if opts.quick {
                1
            } else {
                def.repetitions.max(1)
            }) {
                points.push((s, *v, rep));
            }
        }
    }
    let total = points.len();
    let started = Instant::now();
    let mut rows = Vec::with_capacity(total);
    for (i, (s, v, rep)) in points.into_iter().enumerate() {
        let args = expand(s, v, opts.quick);
        let label = format!("{} {}={v} rep {}", s.series, s.var, rep + 1);
        eprintln!(
            "[{}/{total}] {} ({:.0} s elapsed)",
            i + 1,
            label,
            started.elapsed().as_secs_f64()
        );
        let out = Command::new(&opts.fxr)
            .args(["--output", "json", "bench", &s.bench])
            .args(&args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| RunError::Point {
                point: label.clone(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(RunError::Point {
                point: label,
                message: format!("fxr bench exited with {}", out.status),
            });
        }
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| RunError::Point {
                point: label.clone(),
                message: format!("unreadable output: {e}"),
            })?;
        rows.push(Row::from_bench(def, s, v, rep, &json));
    }
    report::write_csv(&dir.join("raw.csv"), &rows)?;
    report::write_all(def, &dir, &rows, opts)?;
    Ok(dir)
}

/// Regenerates the summary and plot of `out/NAME/` from its `raw.csv`.
pub fn replot(def: &Definition, dir: &Path) -> Result<(), RunError> {
    let rows = report::read_csv(&dir.join("raw.csv"))?;
    report::write_summary(def, dir, &rows)?;
    report::plot(def, &dir.join("plot.svg"), &rows)?;
    Ok(())
}
