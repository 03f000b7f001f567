//! fxr-experiments: the harness that reproduces the paper's experiments on fxr.
//!
//! An experiment is a TOML file in `experiments/` ([`def::Definition`]): what it reproduces,
//! its sweeps, and how to plot them. Each point of a sweep is one run of `fxr bench ... --json`
//! in a process of its own, so every point starts from a fresh endpoint and its peak memory is
//! its own. New experiments need a new file, not new code, as long as `fxr bench` can measure
//! them. Results go to `results/NAME/`: `raw.csv`, `summary.md`, `plot.svg`, `SETUP.md`.

pub mod def;
pub mod report;
pub mod run;

pub use def::Definition;
pub use run::{run, RunOptions};
