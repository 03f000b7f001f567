//! The quick version of every experiment runs and writes complete, well-formed results. No
//! timing is asserted: only that every row is there, every number is finite and positive, and
//! the plot is an SVG image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

mod support;

use support::{have, FXR};

fn have_parsl() -> bool {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/anchors-venv/bin/python");
    Command::new(python)
        .args(["-c", "import parsl"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Points of the quick run; sweeps that need Slurm or Parsl count only where they are installed
/// (the harness skips them elsewhere, with a note).
fn quick_points(def: &Path) -> usize {
    let v: toml::Value = toml::from_str(&std::fs::read_to_string(def).unwrap()).unwrap();
    v["sweeps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| match s.get("requires").and_then(|r| r.as_str()) {
            Some("slurm") => have("sbatch") && have("slurmctld") && have("slurmd"),
            Some("parsl") => have_parsl(),
            Some("charliecloud") => have("ch-run"),
            Some("redis") => have("redis-server"),
            Some(tool @ ("bwrap" | "podman")) => have(tool),
            _ => true,
        })
        .map(|s| s["quick_values"].as_array().unwrap().len())
        .sum()
}

#[test]
fn quick_experiments_write_complete_results() {
    let defs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let out = tempfile::tempdir().unwrap();
    for name in [
        "latency",
        "throughput",
        "scaling",
        "broker",
        "routing",
        "data",
    ] {
        let status = Command::new(FXR)
            .args(["experiment", "run", name, "--quick", "--defs"])
            .arg(&defs)
            .arg("--out")
            .arg(out.path())
            .status()
            .unwrap();
        assert!(status.success(), "{name} failed");
        let dir = out.path().join(name);
        let csv = std::fs::read_to_string(dir.join("raw.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(
            rows.len(),
            quick_points(&defs.join(format!("{name}.toml"))),
            "{name}: one row per point"
        );
        for r in &rows {
            assert_eq!(r.len(), header.len());
            for (h, c) in header.iter().zip(r).skip(6) {
                if !c.is_empty() {
                    let x: f64 = c
                        .parse()
                        .unwrap_or_else(|_| panic!("{name}: {h} = `{c}` is not a number"));
                    // Counts of events may be zero; measurements may not, but for the pilots'
                    // CPU, read in clock ticks (10 ms), which a quick run may not reach.
                    let zero_ok = *h == "container_switches" || *h == "pilots_cpu_s";
                    assert!(
                        x.is_finite() && (x > 0.0 || zero_ok && x == 0.0),
                        "{name}: {h} = {x}"
                    );
                }
            }
            let col = |n: &str| r[header.iter().position(|h| *h == n).unwrap()];
            if name == "latency" {
                assert!(!col("p50_ms").is_empty() && !col("p99_ms").is_empty());
            } else if name == "data" && col("bench") == "mapreduce" {
                assert!(!col("seconds").is_empty() && !col("intermediate_read_s").is_empty());
            } else if name == "data" {
                assert!(!col("mb_per_s").is_empty() && !col("read_s").is_empty());
            } else if name == "routing" {
                assert!(!col("seconds").is_empty() && !col("cold_starts").is_empty());
                assert!(!col("container_switches").is_empty());
            } else {
                assert!(!col("tasks_per_s").is_empty() && !col("seconds").is_empty());
            }
            if name == "broker" && col("series").starts_with("broker:") {
                assert!(
                    !col("broker_cpu_us_per_task").is_empty(),
                    "rows through the broker report its CPU per task"
                );
            }
            assert!(
                ["processes", "simulated", "slurm", "parsl", "real"].contains(&col("mode")),
                "every row says its mode"
            );
        }
        let svg = std::fs::read_to_string(dir.join("plot.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{name}: plot.svg is an SVG image"
        );
        let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(summary.contains("**The paper:**"));
        if name == "data" {
            assert!(
                summary.contains("store vs fs") && summary.contains("## MapReduce phases"),
                "the data summary sets the store against the file system, and has the phases"
            );
        }
        if name == "routing" {
            assert!(
                summary.contains("## Comparisons") && summary.contains("vs random"),
                "the routing summary sets each policy against random"
            );
        }
        assert!(std::fs::read_to_string(dir.join("SETUP.md"))
            .unwrap()
            .contains("commit"));
        // The plot can be redrawn from the CSV alone.
        std::fs::remove_file(dir.join("plot.svg")).unwrap();
        let status = Command::new(FXR)
            .args(["experiment", "plot", name, "--defs"])
            .arg(&defs)
            .arg("--out")
            .arg(out.path())
            .status()
            .unwrap();
        assert!(status.success() && dir.join("plot.svg").exists());
    }
}
