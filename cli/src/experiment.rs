//! `fxr experiment`: run the paper's experiments and redraw their plots.

use crate::exit;
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum ExperimentCmd {
    /// Run an experiment (a file NAME.toml in --defs) and write --out/NAME/.
    Run {
        name: String,
        /// A small version, in a minute or two.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "experiments")]
        defs: PathBuf,
        #[arg(long, default_value = "results")]
        out: PathBuf,
    },
    /// Redraw the plot and summary of --out/NAME/ from its raw.csv.
    Plot {
        name: String,
        #[arg(long, default_value = "experiments")]
        defs: PathBuf,
        #[arg(long, default_value = "results")]
        out: PathBuf,
    },
    /// List the experiments.
    List {
        #[arg(long, default_value = "experiments")]
        defs: PathBuf,
    },
}

pub fn run(cmd: ExperimentCmd) -> anyhow::Result<u8> {
    match cmd {
        ExperimentCmd::Run {
            name,
            quick,
            defs,
            out,
        } => {
            let def = fxr_experiments::Definition::load(&defs.join(format!("{name}.toml")))?;
            let opts = fxr_experiments::RunOptions {
                quick,
                fxr: std::env::current_exe().context("cannot find this executable")?,
                out,
                command: std::env::args().collect::<Vec<_>>().join(" "),
                scripts: defs.join("../scripts"),
            };
            let dir = fxr_experiments::run(&def, &opts)?;
            println!("{}", dir.join("summary.md").display());
        }
        ExperimentCmd::Plot { name, defs, out } => {
            let def = fxr_experiments::Definition::load(&defs.join(format!("{name}.toml")))?;
            fxr_experiments::run::replot(&def, &out.join(&name))?;
            println!("{}", out.join(&name).join("plot.svg").display());
        }
        ExperimentCmd::List { defs } => {
            let mut names: Vec<String> = std::fs::read_dir(&defs)
                .with_context(|| format!("cannot read {}", defs.display()))?
                .flatten()
                .filter_map(|e| {
                    e.path()
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .filter(|_| e.path().extension().is_some_and(|x| x == "toml"))
                })
                .collect();
            names.sort();
            for n in names {
                println!("{n}");
            }
        }
    }
    Ok(exit::OK)
}
