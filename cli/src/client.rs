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
    /// A registered function (name or id), when going through the broker.
    #[arg(long = "function", conflicts_with = "function")]
    pub function_flag: Option<String>,
    /// An endpoint name or id at the broker, or a local endpoint's front door HOST:PORT.
    #[arg(long)]
    pub endpoint: String,
    /// Arguments as a JSON object.
    #[arg(long)]
    pub args: Option<String>,
    /// Give up when no result arrives for this long.
    #[arg(long, value_parser = crate::opts::duration, default_value = "10m")]
    pub timeout: Duration,
    /// Where the value goes instead of stdout (the global `--output FILE`).
    #[arg(skip)]
    pub output: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub function: FunctionArgs,
    /// A registered function (name or id), when going through the broker.
    #[arg(long = "function", conflicts_with = "function")]
    pub function_flag: Option<String>,
    /// Endpoint names or ids at the broker (comma-separated: routed by --policy), or a local
    /// endpoint's front door HOST:PORT.
    #[arg(long)]
    pub endpoint: String,
    /// random | round-robin | least-loaded | warm (the endpoint with idle workers of the
    /// function's container type), for several endpoints.
    #[arg(long, default_value = "random")]
    pub policy: String,
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
        Outcome::Stored(d) => serde_json::json!({"task": r.id.0, "status": "succeeded",
            "result_data": {"size": d.size, "checksum": format!("{:08x}", d.checksum)}, "run_us": r.run_us}),
    }
}

/// Writes a result's value to `output`, or to stdout followed by a newline. A file is written
/// under a temporary name and renamed when whole, so it never holds part of a value.
fn write_value(
    output: Option<&std::path::Path>,
    fill: impl FnOnce(&mut dyn std::io::Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let Some(path) = output else {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        fill(&mut w)?;
        writeln!(w)?;
        return Ok(w.flush()?);
    };
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = std::path::PathBuf::from(part);
    let written = (|| -> anyhow::Result<()> {
        let f = std::fs::File::create(&part)
            .with_context(|| format!("cannot create {}", part.display()))?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&part, path)
            .with_context(|| format!("cannot rename {} to {}", part.display(), path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    written
}

/// Prints a broker task's outcome, fetching a result kept at the endpoint (or writing the value
/// to `output`).
fn show_broker_task(
    api: &crate::api::Api,
    t: &serde_json::Value,
    json: bool,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let v = broker_json(t);
    if json {
        println!("{v}");
        if output.is_none() {
            return Ok(());
        }
    }
    if v["status"] != "succeeded" {
        if !json {
            print_outcome(&v, false);
        }
        return Ok(());
    }
    if t["result_data"].is_object() {
        let id = t["id"].as_u64().context("a task without an id")?;
        write_value(output, |w| {
            api.download(&format!("/v1/tasks/{id}/data"), w).map(|_| ())
        })
    } else if output.is_some() || !json {
        write_value(output, |w| Ok(write!(w, "{}", v["result"])?))
    } else {
        Ok(())
    }
}

/// Whether `endpoint` names a local front door rather than an endpoint at the broker.
fn is_local(endpoint: &str) -> bool {
    endpoint.starts_with("tcp://") || endpoint.parse::<std::net::SocketAddr>().is_ok()
}

fn print_outcome(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
    } else if v["status"] == "succeeded" {
        println!("{}", v["result"]);
    } else {
        println!(
            "failed ({}): {}",
            v["kind"].as_str().unwrap_or("?"),
            v["message"].as_str().unwrap_or("")
        );
    }
}

/// A broker task as the CLI prints it.
fn broker_json(t: &serde_json::Value) -> serde_json::Value {
    if t["state"] == "succeeded" && t["result_data"].is_object() {
        serde_json::json!({"task": t["id"], "status": "succeeded", "result_data": t["result_data"]})
    } else if t["state"] == "succeeded" {
        serde_json::json!({"task": t["id"], "status": "succeeded", "result": t["result"]})
    } else if t["state"] == "failed" {
        serde_json::json!({"task": t["id"], "status": "failed", "kind": t["error"]["kind"], "message": t["error"]["message"]})
    } else {
        serde_json::json!({"task": t["id"], "status": t["state"]})
    }
}

/// Follows the results of whole batches over the broker's event stream (one connection, no
/// ids sent), calling `progress` as they finish; returns them all, in id order.
fn broker_follow(
    api: &crate::api::Api,
    batches: &[u64],
    total: usize,
    timeout: Duration,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut done: std::collections::BTreeMap<u64, serde_json::Value> = Default::default();
    let mut last_shown = Instant::now();
    api.follow(
        &serde_json::json!({ "batches": batches }),
        timeout,
        &mut |t| {
            if let Some(id) = t["id"].as_u64() {
                done.insert(id, t);
            }
            if last_shown.elapsed() > Duration::from_millis(100) || done.len() == total {
                last_shown = Instant::now();
                progress(done.len(), total);
            }
            Ok(())
        },
    )?;
    anyhow::ensure!(
        done.len() == total,
        "the result stream ended with {} of {total} tasks",
        done.len()
    );
    progress(done.len(), total);
    Ok(done.into_values().collect())
}

/// Waits for broker tasks, calling `progress` as they finish; returns them all, in id order.
pub(crate) fn broker_wait(
    api: &crate::api::Api,
    ids: &[u64],
    timeout: Duration,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut done: std::collections::BTreeMap<u64, serde_json::Value> = Default::default();
    let mut pending: Vec<u64> = ids.to_vec();
    let mut last = Instant::now();
    while !pending.is_empty() {
        let chunk: Vec<u64> = pending.iter().take(10_000).copied().collect();
        let r: serde_json::Value = api.post(
            "/v1/tasks/wait",
            &serde_json::json!({"ids": chunk, "timeout_ms": 2000}),
        )?;
        let before = done.len();
        for t in r["tasks"].as_array().into_iter().flatten() {
            if t["completed_ms"].is_number() {
                if let Some(id) = t["id"].as_u64() {
                    done.insert(id, t.clone());
                }
            }
        }
        pending.retain(|id| !done.contains_key(id));
        if done.len() > before {
            last = Instant::now();
            progress(done.len(), ids.len());
        } else if last.elapsed() > timeout {
            anyhow::bail!(
                "no result for {timeout:?}; {} of {} tasks finished",
                done.len(),
                ids.len()
            );
        }
    }
    Ok(done.into_values().collect())
}

fn broker_run(a: RunArgs, json: bool) -> anyhow::Result<u8> {
    anyhow::ensure!(
        a.function.container.container.is_none(),
        "--container is for local endpoints; at a broker, register the function with --container"
    );
    let api = crate::api::Api::from_profile()?;
    let name = a
        .function_flag
        .or(a.function.function)
        .context("name the function to run")?;
    let fid = api.function_id(&name)?;
    let eid = api.endpoint_id(&a.endpoint)?;
    let mut task = serde_json::json!({"function_id": fid, "endpoint_id": eid});
    if let Some(args) = &a.args {
        task["args"] = serde_json::from_str(args)
            .with_context(|| format!("--args is not valid JSON: {args}"))?;
    }
    let r: serde_json::Value = api.post("/v1/tasks", &serde_json::json!({"tasks": [task]}))?;
    let id = r["task_ids"][0]
        .as_u64()
        .context("the broker returned no task id")?;
    let t = broker_wait(&api, &[id], a.timeout, &mut |_, _| {})?;
    show_broker_task(&api, &t[0], json, a.output.as_deref())?;
    Ok(if t[0]["state"] == "succeeded" {
        exit::OK
    } else {
        exit::TASK_FAILED
    })
}

#[derive(clap::Args, Debug)]
pub struct ResultArgs {
    pub task: u64,
    /// Where the value goes instead of stdout (the global `--output FILE`); a result kept at
    /// the endpoint is fetched from there.
    #[arg(skip)]
    pub output: Option<std::path::PathBuf>,
}

pub fn result(a: ResultArgs, json: bool) -> anyhow::Result<u8> {
    let api = crate::api::Api::from_profile()?;
    let t: serde_json::Value = api.get(&format!("/v1/tasks/{}", a.task))?;
    let v = broker_json(&t);
    if json && a.output.is_none() {
        println!("{t}");
    } else if v["status"] == "succeeded" || v["status"] == "failed" {
        show_broker_task(&api, &t, json, a.output.as_deref())?;
    } else {
        println!("{}", v["status"].as_str().unwrap_or("?"));
    }
    Ok(match v["status"].as_str() {
        Some("failed") => exit::TASK_FAILED,
        _ => exit::OK,
    })
}

pub fn run(a: RunArgs, json: bool) -> anyhow::Result<u8> {
    if !is_local(&a.endpoint) {
        return broker_run(a, json);
    }
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
        container: a.function.container(),
    };
    let results = client::submit_and_wait(&mut door, vec![task], 1, a.timeout, &mut |_, _| {})?;
    let r = results.first().context("the endpoint returned no result")?;
    let v = outcome_json(r);
    if json {
        println!("{v}");
    }
    match &r.outcome {
        Outcome::Stored(d) if !json || a.output.is_some() => {
            write_value(a.output.as_deref(), |w| {
                fxr_interchange::client::fetch(&mut door, d, w, a.timeout)
                    .map(|_| ())
                    .with_context(|| format!("cannot read the result from {}", d.node))
            })?;
        }
        Outcome::Success(_) if !json || a.output.is_some() => {
            write_value(a.output.as_deref(), |w| Ok(write!(w, "{}", v["result"])?))?;
        }
        Outcome::Failure { kind, message } if !json => {
            println!("failed ({}): {message}", kind.as_str())
        }
        _ => {}
    }
    Ok(if r.is_success() {
        exit::OK
    } else {
        exit::TASK_FAILED
    })
}

fn progress_bar(show: bool) -> impl FnMut(usize, usize) {
    let mut last = Instant::now();
    move |done: usize, total: usize| {
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
    }
}

fn read_args(a: &SubmitArgs) -> anyhow::Result<Vec<Vec<u8>>> {
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
    Ok(all_args)
}

fn broker_submit(a: SubmitArgs, json: bool) -> anyhow::Result<u8> {
    anyhow::ensure!(
        a.function.container.container.is_none(),
        "--container is for local endpoints; at a broker, register the function with --container"
    );
    let api = crate::api::Api::from_profile()?;
    let name = a
        .function_flag
        .clone()
        .or(a.function.function.clone())
        .context("name the function to run (--function)")?;
    let fid = api.function_id(&name)?;
    let eps: Vec<String> = a
        .endpoint
        .split(',')
        .map(|e| api.endpoint_id(e.trim()))
        .collect::<anyhow::Result<_>>()?;
    let all_args = read_args(&a)?;
    let total = all_args.len();
    let start = Instant::now();
    let mut ids = Vec::with_capacity(total);
    let mut batches = Vec::new();
    for chunk in all_args.chunks(a.batch.clamp(1, 10_000)) {
        let tasks: Vec<serde_json::Value> = chunk
            .iter()
            .map(|args| {
                let mut t = serde_json::json!({"function_id": fid});
                if eps.len() == 1 {
                    t["endpoint_id"] = eps[0].clone().into();
                } else {
                    t["endpoints"] = eps.clone().into();
                    t["policy"] = a.policy.clone().into();
                }
                if !args.is_empty() {
                    t["args"] = serde_json::from_slice(args).unwrap_or(serde_json::Value::Null);
                }
                t
            })
            .collect();
        let r: serde_json::Value = api.post("/v1/tasks", &serde_json::json!({"tasks": tasks}))?;
        ids.extend(
            r["task_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_u64),
        );
        batches.extend(r["batch_id"].as_u64());
    }
    let results = broker_follow(
        &api,
        &batches,
        ids.len(),
        a.timeout,
        &mut progress_bar(a.progress),
    )?;
    let failed = results.iter().filter(|t| t["state"] != "succeeded").count();
    let lines: Vec<serde_json::Value> = results.iter().map(broker_json).collect();
    finish_submit(&lines, failed, start, json)
}

/// Prints a submission's results (JSON lines with `--output json`) and the summary line; the
/// exit code says whether any task failed.
fn finish_submit(
    lines: &[serde_json::Value],
    failed: usize,
    start: Instant,
    json: bool,
) -> anyhow::Result<u8> {
    let secs = start.elapsed().as_secs_f64();
    let total = lines.len();
    if json {
        let out = std::io::stdout();
        let mut out = out.lock();
        for l in lines {
            writeln!(out, "{l}")?;
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

pub fn submit(a: SubmitArgs, json: bool) -> anyhow::Result<u8> {
    if !is_local(&a.endpoint) {
        return broker_submit(a, json);
    }
    let function = a.function.function()?;
    let all_args = read_args(&a)?;
    let tasks: Vec<Task> = all_args
        .into_iter()
        .enumerate()
        .map(|(i, args)| Task {
            id: TaskId(i as u64),
            function: function.clone(),
            args,
            attempt: 0,
            container: a.function.container(),
        })
        .collect();
    let mut door = TcpClient::connect(&a.endpoint)
        .with_context(|| format!("cannot reach the endpoint at {}", a.endpoint))?;
    let start = Instant::now();
    let mut progress = progress_bar(a.progress);
    let mut results = client::submit_and_wait(&mut door, tasks, a.batch, a.timeout, &mut progress)?;
    results.sort_by_key(|r| r.id);
    let failed = results.iter().filter(|r| !r.is_success()).count();
    let lines: Vec<serde_json::Value> = results.iter().map(outcome_json).collect();
    finish_submit(&lines, failed, start, json)
}
