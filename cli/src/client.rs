//! `fxr run` and `fxr submit`: send tasks to an endpoint's front door and print the results.

use crate::exit;
use crate::opts::{json_arg, FunctionArgs};
use anyhow::Context;
use fxr_interchange::{client, TcpClient};
use fxr_protocol::{Outcome, Task, TaskId, TaskResult};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub function: FunctionArgs,
    /// The endpoint's front door, HOST:PORT.
    #[arg(long)]
    pub endpoint: String,
    /// Arguments as a JSON object.
    #[arg(long)]
    pub args: Option<String>,
    /// Give up when no result arrives for this long.
    #[arg(long, value_parser = crate::opts::duration, default_value = "10m")]
    pub timeout: Duration,
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub function: FunctionArgs,
    #[arg(long)]
    pub endpoint: String,
    /// One JSON argument object per line; one task per line.
    #[arg(long, conflicts_with = "count")]
    pub args_file: Option<std::path::PathBuf>,
    /// Submit this many tasks with the same --args.
    #[arg(long)]
    pub count: Option<usize>,
    #[arg(long)]
    pub args: Option<String>,
    /// Tasks per submission message.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Show a progress line while waiting.
    #[arg(long)]
    pub progress: bool,
    #[arg(long, value_parser = crate::opts::duration, default_value = "10m")]
    pub timeout: Duration,
}

fn outcome_json(r: &TaskResult) -> serde_json::Value {
    match &r.outcome {
        Outcome::Success(v) => {
            let value = serde_json::from_slice::<serde_json::Value>(v).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned())
            });
            serde_json::json!({"task": r.id.0, "status": "succeeded", "result": value, "run_us": r.run_us})
        }
        Outcome::Failure { kind, message } => {
            serde_json::json!({"task": r.id.0, "status": "failed", "kind": kind.as_str(), "message": message})
        }
    }
}

pub fn run(a: RunArgs, json: bool) -> anyhow::Result<u8> {
    let function = a.function.function()?;
    let args = a
        .args
        .as_deref()
        .map(json_arg)
        .transpose()?
        .unwrap_or_default();
    let mut door = TcpClient::connect(&a.endpoint)
        .with_context(|| format!("cannot reach the endpoint at {}", a.endpoint))?;
    let task = Task {
        id: TaskId(0),
        function,
        args,
        attempt: 0,
        container: None,
    };
    let results = client::submit_and_wait(&mut door, vec![task], 1, a.timeout, &mut |_, _| {})?;
    let r = results.first().context("the endpoint returned no result")?;
    let v = outcome_json(r);
    if json {
        println!("{v}");
    } else {
        match &r.outcome {
            Outcome::Success(_) => println!("{}", v["result"]),
            Outcome::Failure { kind, message } => println!("failed ({}): {message}", kind.as_str()),
        }
    }
    Ok(if r.is_success() {
        exit::OK
    } else {
        exit::TASK_FAILED
    })
}

pub fn submit(a: SubmitArgs, json: bool) -> anyhow::Result<u8> {
    let function = a.function.function()?;
    let mut all_args = Vec::new();
    if let Some(path) = &a.args_file {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let v =
                json_arg(&line).with_context(|| format!("{} line {}", path.display(), i + 1))?;
            all_args.push(v);
        }
    } else {
        let args = a
            .args
            .as_deref()
            .map(json_arg)
            .transpose()?
            .unwrap_or_default();
        all_args = vec![args; a.count.unwrap_or(1)];
    }
    let tasks: Vec<Task> = all_args
        .into_iter()
        .enumerate()
        .map(|(i, args)| Task {
            id: TaskId(i as u64),
            function: function.clone(),
            args,
            attempt: 0,
            container: None,
        })
        .collect();
    let total = tasks.len();
    let mut door = TcpClient::connect(&a.endpoint)
        .with_context(|| format!("cannot reach the endpoint at {}", a.endpoint))?;
    let start = Instant::now();
    let mut last = Instant::now();
    let show = a.progress;
    let mut progress = |done: usize, total: usize| {
        if show && (last.elapsed() > Duration::from_millis(200) || done == total) {
            last = Instant::now();
            let width = 30;
            let filled = done * width / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total}",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            if done == total {
                eprintln!();
            }
        }
    };
    let mut results = client::submit_and_wait(&mut door, tasks, a.batch, a.timeout, &mut progress)?;
    let secs = start.elapsed().as_secs_f64();
    results.sort_by_key(|r| r.id);
    let failed = results.iter().filter(|r| !r.is_success()).count();
    let out = std::io::stdout();
    let mut out = out.lock();
    if json {
        for r in &results {
            writeln!(out, "{}", outcome_json(r))?;
        }
    }
    eprintln!(
        "{total} tasks, {failed} failed, {secs:.3} s, {:.0} tasks/s",
        total as f64 / secs.max(1e-9)
    );
    Ok(if failed == 0 {
        exit::OK
    } else {
        exit::TASK_FAILED
    })
}
