//! Job scripts: a pure function from a block's settings to the text of its script, rendered by
//! tera from `templates/` (built in) or from a site's own template file.
//!
//! Rendering is strict: a variable the template uses but the context lacks is an error that names
//! the variable and the lines of the template that use it.

use serde::Serialize;
use std::path::Path;

const SLURM: &str = include_str!("../../../templates/slurm.sh.tera");
const PBS: &str = include_str!("../../../templates/pbs.sh.tera");
const LOCAL: &str = include_str!("../../../templates/local.sh.tera");
const SRUN: &str = include_str!("../../../templates/launchers/srun.tera");
const MPIEXEC: &str = include_str!("../../../templates/launchers/mpiexec.tera");
const APRUN: &str = include_str!("../../../templates/launchers/aprun.tera");
const SINGLE: &str = include_str!("../../../templates/launchers/single-node.tera");

/// Everything a job script template may use.
#[derive(Clone, Debug, Serialize, Default)]
pub struct ScriptVars {
    pub job_name: String,
    pub block_id: String,
    pub nodes: u32,
    pub cores_per_node: u32,
    pub walltime: String,
    pub partition: String,
    pub queue: String,
    pub account: String,
    pub exclusive: bool,
    pub memory: String,
    pub gpus: String,
    pub qos: String,
    pub constraint: String,
    pub scheduler_options: String,
    pub worker_init: String,
    pub log_dir: String,
    pub pilot_cmd: String,
    /// Filled from the launcher snippet when rendering.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub launcher: String,
}

/// Why a script could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown launcher `{0}` (expected srun, mpiexec, aprun or single-node)")]
    UnknownLauncher(String),
    #[error("unknown scheduler `{0}` for the built-in templates (expected slurm, pbs or local)")]
    UnknownKind(String),
    #[error("cannot read the template {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("template {name}: {message}")]
    Render { name: String, message: String },
    #[error("walltime `{0}` is not HH:MM:SS")]
    BadWalltime(String),
}

/// The launcher snippet's template.
pub fn launcher_template(name: &str) -> Result<&'static str, TemplateError> {
    Ok(match name {
        "srun" => SRUN,
        "mpiexec" | "mpirun" => MPIEXEC,
        "aprun" => APRUN,
        "single-node" | "" => SINGLE,
        other => return Err(TemplateError::UnknownLauncher(other.to_string())),
    })
}

/// The built-in template for a scheduler.
pub fn builtin_template(kind: &str) -> Result<&'static str, TemplateError> {
    Ok(match kind {
        "slurm" => SLURM,
        "pbs" => PBS,
        "local" => LOCAL,
        other => return Err(TemplateError::UnknownKind(other.to_string())),
    })
}

/// Checks `HH:MM:SS` (hours may exceed 24) and returns the seconds.
pub fn walltime_seconds(w: &str) -> Result<u64, TemplateError> {
    let parts: Vec<&str> = w.split(':').collect();
    let bad = || TemplateError::BadWalltime(w.to_string());
    if parts.len() != 3 {
        return Err(bad());
    }
    let n: Vec<u64> = parts
        .iter()
        .map(|p| p.parse::<u64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if n[1] >= 60 || n[2] >= 60 {
        return Err(bad());
    }
    Ok(n[0] * 3600 + n[1] * 60 + n[2])
}

fn render_one(name: &str, source: &str, ctx: &tera::Context) -> Result<String, TemplateError> {
    let mut t = tera::Tera::default();
    t.autoescape_on(vec![]);
    let err = |e: tera::Error| {
        // tera's message names the variable; add the template lines that mention it.
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message = format!("{message}: {c}");
            cause = c.source();
        }
        if let Some(var) = message.split('`').nth(1) {
            let lines: Vec<String> = source
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains(var))
                .map(|(i, _)| (i + 1).to_string())
                .collect();
            if !lines.is_empty() {
                message = format!("{message} (used on line {})", lines.join(", "));
            }
        }
        TemplateError::Render {
            name: name.to_string(),
            message,
        }
    };
    t.add_raw_template(name, source).map_err(err)?;
    t.render(name, ctx).map_err(err)
}

/// Renders a block's job script: the launcher snippet first, then the script itself, from the
/// built-in template for `kind` or from `custom` if the site gave one.
pub fn render(
    kind: &str,
    launcher: &str,
    custom: Option<&Path>,
    vars: &ScriptVars,
) -> Result<String, TemplateError> {
    walltime_seconds(&vars.walltime)?;
    let base = tera::Context::from_serialize(vars).map_err(|e| TemplateError::Render {
        name: "context".into(),
        message: e.to_string(),
    })?;
    let launch = render_one(launcher, launcher_template(launcher)?, &base)?;
    let mut ctx = base;
    ctx.insert("launcher", launch.trim());
    match custom {
        Some(path) => {
            let source = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
                path: path.display().to_string(),
                source,
            })?;
            render_one(&path.display().to_string(), &source, &ctx)
        }
        None => render_one(kind, builtin_template(kind)?, &ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> ScriptVars {
        ScriptVars {
            job_name: "fxr-ep-1".into(),
            block_id: "ep-1".into(),
            nodes: 2,
            cores_per_node: 4,
            walltime: "00:30:00".into(),
            partition: "debug".into(),
            account: "proj".into(),
            scheduler_options: "#SBATCH --reservation=r1".into(),
            worker_init: "module load foo".into(),
            log_dir: "/tmp/logs".into(),
            pilot_cmd: "/usr/bin/fxr pilot --interchange tcp://h:1".into(),
            ..ScriptVars::default()
        }
    }

    #[test]
    fn slurm_script_line_by_line() {
        let s = render("slurm", "srun", None, &vars()).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "#!/bin/bash");
        assert!(lines.contains(&"#SBATCH --job-name=fxr-ep-1"));
        assert!(lines.contains(&"#SBATCH --nodes=2"));
        assert!(lines.contains(&"#SBATCH --time=00:30:00"));
        assert!(lines.contains(&"#SBATCH --partition=debug"));
        assert!(lines.contains(&"#SBATCH --account=proj"));
        assert!(lines.contains(&"#SBATCH --reservation=r1"));
        assert!(lines.contains(&"module load foo"));
        assert!(!s.contains("--qos"), "empty options leave no line");
        assert!(!s.contains("--exclusive"));
        assert_eq!(
            lines.last().copied(),
            Some("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --mpi=pmi2 --kill-on-bad-exit=0 /usr/bin/fxr pilot --interchange tcp://h:1")
        );
        let mut v = vars();
        v.exclusive = true;
        v.qos = "high".into();
        v.gpus = "4".into();
        let s = render("slurm", "srun", None, &v).unwrap();
        assert!(s.lines().any(|l| l == "#SBATCH --exclusive"));
        assert!(s.lines().any(|l| l == "#SBATCH --qos=high"));
        assert!(s.lines().any(|l| l == "#SBATCH --gpus-per-node=4"));
    }

    #[test]
    fn pbs_script_line_by_line() {
        let mut v = vars();
        v.queue = "workq".into();
        v.memory = "8gb".into();
        let s = render("pbs", "mpiexec", None, &v).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines.contains(&"#PBS -N fxr-ep-1"));
        assert!(lines.contains(&"#PBS -l select=2:ncpus=4:mem=8gb"));
        assert!(lines.contains(&"#PBS -l walltime=00:30:00"));
        assert!(lines.contains(&"#PBS -q workq"));
        assert!(lines.contains(&"#PBS -A proj"));
        assert_eq!(
            lines.last().copied(),
            Some("mpiexec -n 2 -ppn 1 /usr/bin/fxr pilot --interchange tcp://h:1")
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let custom = dir.path().join("site.tera");
        std::fs::write(&custom, "#!/bin/bash\n#SITE --nodes={{ nodes }}\n#SITE --color={{ colour }}\n{{ launcher }} {{ pilot_cmd }}\n").unwrap();
        let e = render("slurm", "srun", Some(&custom), &vars())
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(render("slurm", "qrun", None, &vars())
            .unwrap_err()
            .to_string()
            .contains("qrun"));
        let mut v = vars();
        v.walltime = "30 minutes".into();
        assert!(render("slurm", "srun", None, &v)
            .unwrap_err()
            .to_string()
            .contains("30 minutes"));
        std::fs::write(
            &custom,
            "#!/bin/bash\n{{ launcher }} {{ pilot_cmd }} --site\n",
        )
        .unwrap();
        let ok = render("slurm", "single-node", Some(&custom), &vars()).unwrap();
        assert_eq!(
            ok.lines().nth(1),
            Some(" /usr/bin/fxr pilot --interchange tcp://h:1 --site")
        );
        assert_eq!(walltime_seconds("48:00:00").unwrap(), 172_800);
    }
}
