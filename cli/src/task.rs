//! `fxr task list|show` and `fxr whoami`: your task history at the broker, a page at a time.

use crate::api::Api;
use crate::exit;
use anyhow::Context;
use std::collections::HashMap;

#[derive(clap::Subcommand, Debug)]
pub enum TaskCmd {
    /// List your tasks, newest first (filters combine).
    List(ListArgs),
    /// Show one task: its function, endpoint, times, and result or error.
    Show { id: u64 },
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// pending | succeeded | failed
    #[arg(long)]
    pub state: Option<String>,
    /// A function, by name or id.
    #[arg(long)]
    pub function: Option<String>,
    /// An endpoint, by name or id.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Only tasks created within this long (`10m`, `2h`).
    #[arg(long, value_parser = crate::opts::duration)]
    pub since: Option<std::time::Duration>,
    /// Tasks to show (every page is fetched until there are this many).
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
    /// Oldest first.
    #[arg(long)]
    pub oldest_first: bool,
}

/// Names of the functions and endpoints the caller may see, by id.
fn names(api: &Api, what: &str) -> HashMap<String, String> {
    api.get::<Vec<serde_json::Value>>(&format!("/v1/{what}"))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| {
            Some((
                v["id"].as_str()?.to_string(),
                v["name"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn when(ms: &serde_json::Value) -> String {
    let Some(ms) = ms.as_i64() else {
        return "-".into();
    };
    let now = fxr_protocol::data::now_ms() as i64;
    format!(
        "{} ago",
        crate::epstatus::age(((now - ms).max(0) / 1000) as u64)
    )
}

pub fn run(cmd: TaskCmd, json: bool) -> anyhow::Result<u8> {
    let api = Api::from_profile()?;
    match cmd {
        TaskCmd::Show { id } => {
            let t: serde_json::Value = api.get(&format!("/v1/tasks/{id}"))?;
            if json {
                println!("{t}");
                return Ok(exit::OK);
            }
            let f = names(&api, "functions");
            let e = names(&api, "endpoints");
            let name = |m: &HashMap<String, String>, k: &serde_json::Value| {
                let id = k.as_str().unwrap_or("");
                m.get(id).map_or(id.to_string(), |n| format!("{n} ({id})"))
            };
            println!("task      {}", t["id"]);
            println!("state     {}", t["state"].as_str().unwrap_or("?"));
            println!("function  {}", name(&f, &t["function_id"]));
            println!("endpoint  {}", name(&e, &t["endpoint_id"]));
            println!("batch     {}", t["batch_id"]);
            println!("created   {}", when(&t["created_ms"]));
            println!("finished  {}", when(&t["completed_ms"]));
            if let (Some(a), Some(b)) = (t["created_ms"].as_i64(), t["completed_ms"].as_i64()) {
                println!("took      {:.3} s", (b - a) as f64 / 1000.0);
            }
            if let Some(err) = t["error"].as_object() {
                println!(
                    "error     {}: {}",
                    err.get("kind").and_then(|k| k.as_str()).unwrap_or("?"),
                    err.get("message").and_then(|m| m.as_str()).unwrap_or("")
                );
            } else if t["result_data"].is_object() {
                println!(
                    "result    kept at the endpoint, {} bytes (fxr result {id} --output FILE)",
                    t["result_data"]["size"]
                );
            } else if !t["result"].is_null() || t["state"] == "succeeded" {
                println!("result");
                print!("{}", crate::client::value_text(&t["result"]));
            }
            Ok(match t["state"].as_str() {
                Some("failed") => exit::TASK_FAILED,
                _ => exit::OK,
            })
        }
        TaskCmd::List(a) => {
            let mut query = vec![];
            if let Some(s) = &a.state {
                anyhow::ensure!(
                    ["pending", "succeeded", "failed"].contains(&s.as_str()),
                    "--state takes pending, succeeded or failed, not `{s}`"
                );
                query.push(format!("state={s}"));
            }
            if let Some(f) = &a.function {
                query.push(format!("function={}", api.function_id(f)?));
            }
            if let Some(e) = &a.endpoint {
                query.push(format!("endpoint={}", api.endpoint_id(e)?));
            }
            if let Some(d) = a.since {
                let now = fxr_protocol::data::now_ms() as i64;
                query.push(format!("since_ms={}", now - d.as_millis() as i64));
            }
            if a.oldest_first {
                query.push("order=asc".into());
            }
            let mut tasks: Vec<serde_json::Value> = Vec::new();
            let mut cursor: Option<u64> = None;
            while tasks.len() < a.limit {
                let mut q = query.clone();
                q.push(format!("limit={}", (a.limit - tasks.len()).min(1000)));
                if let Some(c) = cursor {
                    q.push(format!("cursor={c}"));
                }
                let page: serde_json::Value = api.get(&format!("/v1/tasks?{}", q.join("&")))?;
                let got = page["tasks"].as_array().cloned().unwrap_or_default();
                tasks.extend(got);
                match page["next_cursor"].as_u64() {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            if json {
                for t in &tasks {
                    println!("{t}");
                }
                return Ok(exit::OK);
            }
            let f = names(&api, "functions");
            let e = names(&api, "endpoints");
            println!(
                "{:>10}  {:<10} {:<18} {:<18} {:>12}  RESULT",
                "TASK", "STATE", "FUNCTION", "ENDPOINT", "CREATED"
            );
            for t in &tasks {
                let id_of = |k: &str| t[k].as_str().unwrap_or("").to_string();
                let fname = f
                    .get(&id_of("function_id"))
                    .cloned()
                    .unwrap_or_else(|| id_of("function_id"));
                let ename = e
                    .get(&id_of("endpoint_id"))
                    .cloned()
                    .unwrap_or_else(|| id_of("endpoint_id"));
                let result = if let Some(err) = t["error"].as_object() {
                    format!(
                        "{}: {}",
                        err.get("kind").and_then(|k| k.as_str()).unwrap_or("?"),
                        err.get("message").and_then(|m| m.as_str()).unwrap_or("")
                    )
                } else if t["result"].is_null() && t["state"] != "succeeded" {
                    String::new()
                } else {
                    crate::client::value_text(&t["result"])
                        .replace('\n', " ")
                        .trim()
                        .to_string()
                };
                let result: String = if result.chars().count() > 60 {
                    result
                        .chars()
                        .take(59)
                        .chain(std::iter::once('…'))
                        .collect()
                } else {
                    result
                };
                println!(
                    "{:>10}  {:<10} {:<18} {:<18} {:>12}  {result}",
                    t["id"],
                    t["state"].as_str().unwrap_or("?"),
                    fname,
                    ename,
                    when(&t["created_ms"])
                );
            }
            if tasks.is_empty() {
                println!("(no tasks)");
            }
            Ok(exit::OK)
        }
    }
}

/// `fxr whoami`: the user the saved token belongs to, at which broker.
pub fn whoami(json: bool) -> anyhow::Result<u8> {
    let api = Api::from_profile()?;
    let me: serde_json::Value = api
        .get("/v1/whoami")
        .context("the broker did not accept the token")?;
    if json {
        println!(
            "{}",
            serde_json::json!({"id": me["id"], "name": me["name"], "broker": api.base})
        );
    } else {
        println!(
            "{} (user {}) at {}",
            me["name"].as_str().unwrap_or("?"),
            me["id"],
            api.base
        );
    }
    Ok(exit::OK)
}
