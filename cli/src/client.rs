//! `fxr run` and `fxr submit`: send tasks to an endpoint's front door and print the results.

use crate::exit;
use crate::opts::{json_arg, FunctionArgs};
use crate::progress::Progress;
use anyhow::Context;
use fxr_interchange::{client, SocketClient};
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
    /// An endpoint name or id at the broker, or a local endpoint's front door (the path of its socket).
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
    /// endpoint's front door (the path of its socket).
    #[arg(long)]
    pub endpoint: String,
    /// random | round-robin | least-loaded | warm (the endpoint with idle workers of the
    /// function's container type) | shortest-wait (where the task would start soonest), for
    /// several endpoints.
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
    /// Show progress on stderr while waiting: tasks done, failures, rate, time left.
    #[arg(long)]
    pub progress: bool,
    /// In text mode, print every result (by default only up to 20 tasks' results, else the
    /// failures).
    #[arg(long)]
    pub show_results: bool,
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
    } else if output.is_some() {
        write_value(output, |w| Ok(write!(w, "{}", v["result"])?))
    } else if !json {
        print!("{}", value_text(&v["result"]));
        Ok(())
    } else {
        Ok(())
    }
}

fn print_outcome(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
    } else if v["status"] == "succeeded" {
        print!("{}", value_text(&v["result"]));
    } else {
        println!(
            "failed ({}): {}",
            v["kind"].as_str().unwrap_or("?"),
            v["message"].as_str().unwrap_or("")
        );
    }
}

/// A shell or MPI command's result (`{stdout, stderr, returncode}`): its exit code.
pub fn command_returncode(v: &serde_json::Value) -> Option<i64> {
    let o = v.as_object()?;
    (o.contains_key("stdout") && o.contains_key("stderr"))
        .then(|| o.get("returncode")?.as_i64())
        .flatten()
}

/// A result as a person reads it, ending in a newline: a command's output as text (stdout,
/// then its stderr and exit code when there are any, each named), a string as itself, any other
/// value as JSON.
pub fn value_text(v: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(code) = command_returncode(v) {
        let stdout = v["stdout"].as_str().unwrap_or("");
        let stderr = v["stderr"].as_str().unwrap_or("");
        out.push_str(stdout);
        if !stdout.is_empty() && !stdout.ends_with('\n') {
            out.push('\n');
        }
        if !stderr.is_empty() {
            out.push_str("--- stderr\n");
            out.push_str(stderr);
            if !stderr.ends_with('\n') {
                out.push('\n');
            }
        }
        for s in ["stdout", "stderr"] {
            if v[format!("{s}_truncated")] == true {
                out.push_str(&format!(
                    "--- {s} cut to what was kept, of {} bytes\n",
                    v[format!("{s}_bytes")]
                ));
            }
        }
        if code != 0 {
            out.push_str(&format!("--- exit code {code}\n"));
        }
        return out;
    }
    match v {
        serde_json::Value::String(s) => format!("{s}\n"),
        other => format!("{other}\n"),
    }
}

/// The exit code for a finished task: a failure is `TASK_FAILED`, a command that returned
/// non-zero `COMMAND_FAILED`.
fn task_exit(status_ok: bool, value: Option<&serde_json::Value>) -> u8 {
    if !status_ok {
        exit::TASK_FAILED
    } else if value.and_then(command_returncode).is_some_and(|c| c != 0) {
        exit::COMMAND_FAILED
    } else {
        exit::OK
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
    progress: &mut Progress,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut done: std::collections::BTreeMap<u64, serde_json::Value> = Default::default();
    let mut failed = 0;
    api.follow(
        &serde_json::json!({ "batches": batches }),
        timeout,
        &mut |t| {
            if let Some(id) = t["id"].as_u64() {
                let ok = t["state"] == "succeeded";
                if done.insert(id, t).is_none() {
                    failed += usize::from(!ok);
                }
            }
            progress.set(done.len(), failed);
            Ok(())
        },
    )?;
    anyhow::ensure!(
        done.len() == total,
        "the result stream ended with {} of {total} tasks",
        done.len()
    );
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
    Ok(task_exit(
        t[0]["state"] == "succeeded",
        Some(&t[0]["result"]),
    ))
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
        Some("succeeded") => task_exit(true, Some(&t["result"])),
        _ => exit::OK,
    })
}

pub fn run(a: RunArgs, json: bool) -> anyhow::Result<u8> {
    if !fxr_interchange::is_socket_path(&a.endpoint) {
        return broker_run(a, json);
    }
    let function = a.function.function()?;
    let args = a
        .args
        .as_deref()
        .map(json_arg)
        .transpose()?
        .unwrap_or_default();
    let mut door = SocketClient::connect(&a.endpoint)
        .with_context(|| format!("cannot reach the endpoint at {}", a.endpoint))?;
    let task = Task {
        id: TaskId(0),
        function,
        args,
        attempt: 0,
        container: a.function.container().map(Box::new),
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
        Outcome::Success(_) if a.output.is_some() => {
            write_value(a.output.as_deref(), |w| Ok(write!(w, "{}", v["result"])?))?;
        }
        Outcome::Success(_) if !json => print!("{}", value_text(&v["result"])),
        Outcome::Failure { kind, message } if !json => {
            println!("failed ({}): {message}", kind.as_str())
        }
        _ => {}
    }
    Ok(task_exit(r.is_success(), Some(&v["result"])))
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
    let mut progress = Progress::new(a.progress, ids.len());
    let results = broker_follow(&api, &batches, ids.len(), a.timeout, &mut progress)?;
    let lines: Vec<serde_json::Value> = results.iter().map(broker_json).collect();
    finish_submit(&lines, start, json, a.show_results)
}

/// Results a text-mode submission prints one by one unless asked (`--show-results`).
const SHOW_RESULTS_UP_TO: usize = 20;
/// Failures a text-mode summary lists.
const SHOW_FAILURES: usize = 10;

/// One task's line(s) in a text-mode submission: `task 7: hello`, a command's output below
/// its task when it has several lines.
fn task_text(l: &serde_json::Value) -> String {
    let text = if l["status"] != "succeeded" {
        format!(
            "failed ({}): {}\n",
            l["kind"].as_str().unwrap_or("?"),
            l["message"].as_str().unwrap_or("")
        )
    } else if l["result_data"].is_object() {
        format!(
            "kept at the endpoint ({} bytes): fxr result {} --output FILE\n",
            l["result_data"]["size"], l["task"]
        )
    } else {
        value_text(&l["result"])
    };
    if text.trim_end().contains('\n') {
        format!("task {}:\n{text}", l["task"])
    } else {
        format!("task {}: {text}", l["task"])
    }
}

/// Prints a submission's results (JSON lines with `--output json`; as text for up to
/// `SHOW_RESULTS_UP_TO` tasks, or all with `show_all`, else the failures) and the summary
/// line. The exit code says whether a task failed, or else a command returned non-zero.
fn finish_submit(
    lines: &[serde_json::Value],
    start: Instant,
    json: bool,
    show_all: bool,
) -> anyhow::Result<u8> {
    let secs = start.elapsed().as_secs_f64();
    let total = lines.len();
    let failed = lines.iter().filter(|l| l["status"] != "succeeded").count();
    let nonzero = lines
        .iter()
        .filter(|l| command_returncode(&l["result"]).is_some_and(|c| c != 0))
        .count();
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    if json {
        for l in lines {
            writeln!(out, "{l}")?;
        }
    } else {
        let all = show_all || total <= SHOW_RESULTS_UP_TO;
        let mut failures_shown = 0;
        for l in lines {
            let ok = l["status"] == "succeeded";
            if all || (!ok && failures_shown < SHOW_FAILURES) {
                failures_shown += usize::from(!ok);
                write!(out, "{}", task_text(l))?;
            }
        }
        if !all && failed > failures_shown {
            writeln!(
                out,
                "... and {} more failures (fxr task list --state failed)",
                failed - failures_shown
            )?;
        }
    }
    out.flush()?;
    let mut summary = format!(
        "{} tasks, {} failed, {secs:.3} s, {} tasks/s",
        crate::progress::thousands(total),
        crate::progress::thousands(failed),
        crate::progress::thousands((total as f64 / secs.max(1e-9)).round() as usize)
    );
    if nonzero > 0 {
        summary.push_str(&format!(", {nonzero} commands returned non-zero"));
    }
    eprintln!("{summary}");
    Ok(if failed > 0 {
        exit::TASK_FAILED
    } else if nonzero > 0 {
        exit::COMMAND_FAILED
    } else {
        exit::OK
    })
}

pub fn submit(a: SubmitArgs, json: bool) -> anyhow::Result<u8> {
    if !fxr_interchange::is_socket_path(&a.endpoint) {
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
            container: a.function.container().map(Box::new),
        })
        .collect();
    let mut door = SocketClient::connect(&a.endpoint)
        .with_context(|| format!("cannot reach the endpoint at {}", a.endpoint))?;
    let start = Instant::now();
    let mut progress = Progress::new(a.progress, tasks.len());
    let mut results =
        client::submit_and_wait(&mut door, tasks, a.batch, a.timeout, &mut |new, _| {
            progress.add(new.len(), new.iter().filter(|r| !r.is_success()).count())
        })?;
    results.sort_by_key(|r| r.id);
    let lines: Vec<serde_json::Value> = results.iter().map(outcome_json).collect();
    finish_submit(&lines, start, json, a.show_results)
}
