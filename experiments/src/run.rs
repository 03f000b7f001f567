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
    /// The project's `scripts/` folder (for the test Slurm cluster).
    pub scripts: PathBuf,
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
    let managers = v
        .div_ceil(s.per_manager.unwrap_or(PER_MANAGER).max(1))
        .max(1);
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

/// A Slurm cluster on this machine for the sweeps that need one; stopped when dropped.
struct Cluster {
    script: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    fn up(script: &Path) -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!("fxr-experiment-slurm-{}", std::process::id()));
        let out = Command::new("bash")
            .arg(script)
            .arg("up")
            .arg(&dir)
            .arg("4")
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Cluster {
            script: script.to_path_buf(),
            conf: dir.join("slurm.conf"),
            dir,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("down")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Worker images for the routing sweeps, built by `fxr container image`; the podman copy is
/// removed from podman's store when dropped.
struct Images {
    dir: PathBuf,
    podman: Option<String>,
}

impl Images {
    fn build(fxr: &Path, podman: bool) -> Result<Images, String> {
        let dir = std::env::temp_dir().join(format!("fxr-experiment-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let name = format!("localhost/fxr-experiment-{}", std::process::id());
        let mut c = Command::new(fxr);
        c.args(["container", "image"])
            .arg(&dir)
            .args(["--label", "fxr-experiment"]);
        if podman {
            c.args(["--podman", &name]);
        }
        let out = c.output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Images {
            dir,
            podman: podman.then_some(name),
        })
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        if let Some(n) = &self.podman {
            let _ = Command::new("podman").args(["rmi", "-f", n]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Runs the experiment and writes `out/NAME/`. Progress goes to stderr. `defs` is the folder of
/// the definition files (the cluster script is found beside it, in `scripts/`).
pub fn run(def: &Definition, opts: &RunOptions) -> Result<PathBuf, RunError> {
    let dir = opts.out.join(&def.name);
    std::fs::create_dir_all(&dir)?;
    let mut cluster: Option<Cluster> = None;
    let mut skipped = Vec::new();
    let mut points = Vec::new();
    let venv_python = opts.scripts.join("../target/anchors-venv/bin/python");
    let uses = |p: &str| {
        def.sweeps
            .iter()
            .any(|s| s.args.iter().any(|a| a.contains(p)))
    };
    let mut images = None;
    if uses("{image}") || uses("{podman_image}") {
        let podman = uses("{podman_image}") && have("podman");
        eprintln!("building a worker image for the container sweeps");
        images = Some(
            Images::build(&opts.fxr, podman).map_err(|e| RunError::Point {
                point: "worker image".into(),
                message: e,
            })?,
        );
    }
    for s in &def.sweeps {
        let tool = match s.requires.as_deref() {
            Some("charliecloud") => Some("ch-run"),
            Some("redis") => Some("redis-server"),
            Some(r @ ("bwrap" | "podman")) => Some(r),
            _ => None,
        };
        if let Some(tool) = tool.filter(|t| !have(t)) {
            eprintln!("skipping `{}`: `{tool}` is not installed", s.series);
            skipped.push(format!(
                "{}: skipped, `{tool}` is not installed here",
                s.series
            ));
            continue;
        }
        if s.requires.as_deref() == Some("parsl") {
            let ok = Command::new(&venv_python)
                .args(["-c", "import parsl"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|st| st.success());
            if !ok {
                eprintln!(
                    "skipping `{}`: Parsl is not installed (make experiment-anchors installs it)",
                    s.series
                );
                skipped.push(format!("{}: skipped, Parsl is not installed (`make experiment-anchors` installs it in a virtual environment)", s.series));
                continue;
            }
        }
        if s.requires.as_deref() == Some("slurm") {
            if !(have("sbatch") && have("slurmctld") && have("slurmd")) {
                eprintln!("skipping `{}`: Slurm is not installed", s.series);
                skipped.push(format!(
                    "{}: skipped, Slurm is not installed here",
                    s.series
                ));
                continue;
            }
            if cluster.is_none() {
                eprintln!("starting a 4-node Slurm cluster for `{}`", s.series);
                match Cluster::up(&opts.scripts.join("slurm-cluster.sh")) {
                    Ok(c) => cluster = Some(c),
                    Err(e) => {
                        skipped.push(format!(
                            "{}: skipped, the Slurm cluster did not start: {}",
                            s.series,
                            e.trim()
                        ));
                        continue;
                    }
                }
            }
        }
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
        let mut args = expand(s, v, opts.quick);
        if let Some(img) = &images {
            for a in &mut args {
                *a = a
                    .replace("{image}", &img.dir.to_string_lossy())
                    .replace("{podman_image}", img.podman.as_deref().unwrap_or(""));
            }
        }
        let label = format!("{} {}={v} rep {}", s.series, s.var, rep + 1);
        eprintln!(
            "[{}/{total}] {} ({:.0} s elapsed)",
            i + 1,
            label,
            started.elapsed().as_secs_f64()
        );
        let run_point = || -> Result<std::process::Output, RunError> {
            let mut cmd = if s.bench == "parsl" {
                // The anchor, with the same workload: Parsl HTEX from the harness's virtual
                // environment, whose bin/ must be on PATH for HTEX's own helper programs.
                let mut c = Command::new(&venv_python);
                let bin = venv_python
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut paths = vec![bin];
                paths.extend(std::env::split_paths(&path));
                c.env("PATH", std::env::join_paths(paths).unwrap_or(path));
                c.arg(opts.scripts.join("anchors.py")).arg("/dev/null");
                c
            } else {
                let mut c = Command::new(&opts.fxr);
                c.args(["--output", "json", "bench", &s.bench]);
                c
            };
            if let (Some("slurm"), Some(c)) = (s.requires.as_deref(), &cluster) {
                cmd.env("SLURM_CONF", &c.conf);
            }
            let out = cmd
                .args(&args)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| RunError::Point {
                    point: label.clone(),
                    message: e.to_string(),
                })?;
            Ok(out)
        };
        let mut out = run_point()?;
        // A point killed by a signal (NNG 1.4 can abort while a process tears its sockets
        // down) is run once more, and the log says so; any other failure stops the run.
        if out.status.code().is_none() {
            eprintln!(
                "point {label} was killed ({}); running it once more",
                out.status
            );
            out = run_point()?;
        }
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
        // Kept as they come, so a run stopped half way keeps what it measured.
        report::write_csv(&dir.join("raw.csv"), &rows)?;
    }
    drop(cluster);
    drop(images);
    report::write_csv(&dir.join("raw.csv"), &rows)?;
    report::write_all(def, &dir, &rows, opts)?;
    if !skipped.is_empty() {
        let mut summary = std::fs::read_to_string(dir.join("summary.md"))?;
        summary.push_str("\n## Skipped\n\n");
        for s in &skipped {
            summary.push_str(&format!("- {s}\n"));
        }
        std::fs::write(dir.join("summary.md"), summary)?;
    }
    Ok(dir)
}

/// Regenerates the summary and plot of `out/NAME/` from its `raw.csv`.
pub fn replot(def: &Definition, dir: &Path) -> Result<(), RunError> {
    let rows = report::read_csv(&dir.join("raw.csv"))?;
    report::write_summary(def, dir, &rows)?;
    report::plot(def, &dir.join("plot.svg"), &rows)?;
    Ok(())
}
