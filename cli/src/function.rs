//! `fxr login` and `fxr function`: talk to the broker's registry.

use crate::api::{Api, Profile};
use crate::exit;
use anyhow::Context;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    #[arg(long)]
    pub broker: String,
    /// Read the token from this file; without it, from standard input (asked for, without
    /// echo, on a terminal). Never on the command line, where `ps` would show it.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

/// Reads one line from standard input; on a terminal, asks for it with echo turned off.
fn read_secret_line(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Read};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut saved: Option<libc::termios> = None;
    if tty {
        eprint!("{prompt}");
        // SAFETY: tcgetattr/tcsetattr on standard input with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) == 0 {
                saved = Some(t);
                t.c_lflag &= !libc::ECHO;
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
    let mut line = String::new();
    let read = stdin.lock().take(4096).read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        eprintln!();
    }
    read.context("cannot read the token from standard input")?;
    Ok(line.trim().to_string())
}

pub fn login(a: LoginArgs, json: bool) -> anyhow::Result<u8> {
    let token = match &a.token_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {}", f.display()))?
            .trim()
            .to_string(),
        None => read_secret_line("token: ")?,
    };
    anyhow::ensure!(
        !token.is_empty(),
        "no token given (on standard input or with --token-file)"
    );
    let api = Api::new(&a.broker, &token)?;
    let me: serde_json::Value = api
        .get("/v1/whoami")
        .context("the broker did not accept the token")?;
    let path = Profile {
        broker: a.broker,
        token,
    }
    .save()?;
    if json {
        println!(
            "{}",
            serde_json::json!({"user": me["name"], "config": path})
        );
    } else {
        println!(
            "logged in as {} (saved to {})",
            me["name"].as_str().unwrap_or("?"),
            path.display()
        );
    }
    Ok(exit::OK)
}

#[derive(clap::Subcommand, Debug)]
pub enum FunctionCmd {
    /// Register a function; prints its id.
    Register(Box<RegisterArgs>),
    /// List the functions you may run.
    List,
    /// Delete a function you own.
    Delete { function: String },
}

#[derive(clap::Args, Debug)]
pub struct RegisterArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// A builtin: noop, sleep, spin, echo, fail, put, get, map, reduce.
    #[arg(long, conflicts_with_all = ["shell", "python", "mpi"], required_unless_present_any = ["shell", "python", "mpi"])]
    pub builtin: Option<String>,
    /// A shell command template.
    #[arg(long, conflicts_with_all = ["python", "mpi"])]
    pub shell: Option<String>,
    /// A Python function, FILE:ENTRY: the file's source, and the function it defines to call.
    #[arg(long, conflicts_with = "mpi")]
    pub python: Option<String>,
    /// An MPI command template, run by the endpoint's MPI launcher over the ranks asked for.
    #[arg(long)]
    pub mpi: Option<String>,
    /// For --mpi: nodes.
    #[arg(long, requires = "mpi", default_value_t = 1)]
    pub num_nodes: u32,
    /// For --mpi: ranks per node.
    #[arg(long, requires = "mpi", default_value_t = 1)]
    pub ranks_per_node: u32,
    #[arg(long, value_parser = crate::opts::duration)]
    pub walltime: Option<Duration>,
    #[arg(long)]
    pub cwd: Option<String>,
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Anyone may run it.
    #[arg(long)]
    pub public: bool,
    /// Users who may run it (repeatable).
    #[arg(long = "share")]
    pub share: Vec<String>,
    #[command(flatten)]
    pub container: crate::opts::ContainerArgs,
}

pub fn run(cmd: FunctionCmd, json: bool) -> anyhow::Result<u8> {
    let api = Api::from_profile()?;
    match cmd {
        FunctionCmd::Register(a) => {
            let mut env = serde_json::Map::new();
            for kv in &a.env {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--env `{kv}` is not NAME=VALUE"))?;
                env.insert(k.into(), v.into());
            }
            let mut body = serde_json::json!({
                "name": a.name, "description": a.description,
                "visibility": if a.public { "public" } else { "private" }, "shared_with": a.share,
            });
            if let Some(b) = &a.builtin {
                body["kind"] = "builtin".into();
                body["builtin"] = b.clone().into();
            } else if let Some(p) = &a.python {
                let (source, entry) = crate::opts::python_source(p)?;
                body["kind"] = "python".into();
                body["source"] = source.into();
                body["entry"] = entry.into();
                if let Some(w) = a.walltime {
                    body["walltime_ms"] = (w.as_millis() as u64).into();
                }
            } else {
                body["kind"] = if a.mpi.is_some() { "mpi" } else { "shell" }.into();
                body["command"] = a.shell.clone().or_else(|| a.mpi.clone()).into();
                if a.mpi.is_some() {
                    body["num_nodes"] = a.num_nodes.into();
                    body["ranks_per_node"] = a.ranks_per_node.into();
                }
                body["walltime_ms"] = a.walltime.map_or(0, |d| d.as_millis() as u64).into();
                body["env"] = env.into();
                if let Some(c) = &a.cwd {
                    body["cwd"] = c.clone().into();
                }
            }
            if let Some(c) = a.container.spec() {
                body["container"] = serde_json::json!({
                    "runtime": c.runtime, "image": c.image, "options": c.options,
                });
            }
            let f: serde_json::Value = api.post("/v1/functions", &body)?;
            if json {
                println!("{f}");
            } else {
                println!("{}", f["id"].as_str().unwrap_or_default());
            }
        }
        FunctionCmd::List => {
            let all: Vec<serde_json::Value> = api.get("/v1/functions")?;
            if json {
                println!("{}", serde_json::Value::Array(all));
            } else {
                for f in all {
                    let command = f["command"].as_str().unwrap_or("");
                    let what = match f["kind"].as_str().unwrap_or("") {
                        "builtin" => format!("builtin {}", f["builtin"].as_str().unwrap_or("")),
                        "python" => format!("python {}()", f["entry"].as_str().unwrap_or("")),
                        "mpi" => format!(
                            "mpi `{command}` on {}×{} ranks",
                            f["num_nodes"].as_u64().unwrap_or(1),
                            f["ranks_per_node"].as_u64().unwrap_or(1)
                        ),
                        _ => format!("shell `{command}`"),
                    };
                    let container = match f["container"].as_object() {
                        Some(c) => format!(
                            "  in {}:{}",
                            c["runtime"].as_str().unwrap_or(""),
                            c["image"].as_str().unwrap_or("")
                        ),
                        None => String::new(),
                    };
                    println!(
                        "{}  {:20} {:10} {}{container}",
                        f["id"].as_str().unwrap_or(""),
                        f["name"].as_str().unwrap_or(""),
                        f["owner"].as_str().unwrap_or(""),
                        what
                    );
                }
            }
        }
        FunctionCmd::Delete { function } => {
            let id = api.function_id(&function)?;
            api.delete(&format!("/v1/functions/{id}"))?;
            if json {
                println!("{}", serde_json::json!({"deleted": id}));
            }
        }
    }
    Ok(exit::OK)
}
