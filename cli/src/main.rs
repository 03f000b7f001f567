//! The `fxr` command: parses arguments, sets up logging, and calls into the library crates.

mod api;
mod bench;
mod broker;
mod client;
mod container;
mod data;
mod databench;
mod endpoint;
mod epstatus;
mod experiment;
mod function;
mod opts;
mod pilot;
mod procstat;
mod progress;
mod queuebench;
mod routing;
mod storedir;
mod task;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// fxr: federated functions as a service for HPC.
#[derive(Parser, Debug)]
#[command(name = "fxr", version, about)]
struct Cli {
    /// `text`, or `json` for machine-readable output. `fxr run` and `fxr result` also take a
    /// file name: the result's value is written there (whole, or not at all).
    #[arg(long, short = 'o', global = true, default_value = "text")]
    output: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker and manage its users.
    #[command(subcommand)]
    Broker(broker::BrokerCmd),
    /// Save a broker address and token for later commands.
    Login(function::LoginArgs),
    /// Register, list and delete functions at the broker.
    #[command(subcommand)]
    Function(function::FunctionCmd),
    /// Show one task's state and result (from the broker).
    Result(client::ResultArgs),
    /// Your tasks at the broker: list them by state, function, endpoint and time; show one.
    #[command(subcommand)]
    Task(task::TaskCmd),
    /// The user your saved token belongs to.
    Whoami,
    /// Print a shell completion script: `fxr completions bash > /etc/bash_completion.d/fxr`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run and manage endpoints.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCmd),
    /// Run a pilot: one manager per node, dialling the interchange.
    Pilot(pilot::PilotArgs),
    /// Run one task and print its result.
    Run(client::RunArgs),
    /// Submit many tasks and wait for their results.
    Submit(client::SubmitArgs),
    /// Measure throughput or latency.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Run the paper's experiments.
    #[command(subcommand)]
    Experiment(experiment::ExperimentCmd),
    /// Container images that can host fxr workers.
    #[command(subcommand)]
    Container(container::ContainerCmd),
    /// The node's object store: put, get, ls, rm (inside a task, or with --store DIR).
    Data(data::DataArgs),
    /// (internal) A worker process, driven by its manager over stdin and stdout.
    #[command(hide = true)]
    Worker,
}

/// Exit codes, as documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Something went wrong (connection, I/O, bad configuration).
    pub const ERROR: u8 = 1;
    /// Bad command-line usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// The command ran, but at least one task failed.
    pub const TASK_FAILED: u8 = 3;
    /// Every task ran, but a shell or MPI command returned non-zero.
    pub const COMMAND_FAILED: u8 = 4;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FXR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal, plain text for log files and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let json = cli.output == "json";
    let file = (cli.output != "json" && cli.output != "text")
        .then(|| std::path::PathBuf::from(&cli.output));
    let result = match (cli.command, file) {
        (Command::Run(mut a), Some(f)) => {
            a.output = Some(f);
            client::run(a, json)
        }
        (Command::Result(mut a), Some(f)) => {
            a.output = Some(f);
            client::result(a, json)
        }
        (_, Some(f)) => Err(anyhow::anyhow!(
            "--output takes `text` or `json` (a file name, here `{}`, only for `fxr run` and `fxr result`)",
            f.display()
        )),
        (command, None) => match command {
        Command::Broker(c) => broker::run(c, json),
        Command::Login(a) => function::login(a, json),
        Command::Function(c) => function::run(c, json),
        Command::Result(a) => client::result(a, json),
        Command::Task(c) => task::run(c, json),
        Command::Whoami => task::whoami(json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "fxr", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Endpoint(c) => endpoint::run(c, json),
        Command::Pilot(a) => pilot::run(a),
        Command::Run(a) => client::run(a, json),
        Command::Submit(a) => client::submit(a, json),
        Command::Bench(c) => bench::run(c, json),
        Command::Experiment(c) => experiment::run(c),
        Command::Container(c) => container::run(c, json),
        Command::Data(a) => data::run(a, json),
        Command::Worker => fxr_pilot::worker::worker_main()
            .map(|()| exit::OK)
            .map_err(Into::into),
        },
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            if json {
                // One JSON object on stderr, so scripts parse errors as they parse results.
                eprintln!(
                    "{}",
                    serde_json::json!({"error": {"message": format!("{e:#}"), "exit_code": exit::ERROR}})
                );
            } else {
                eprintln!("fxr: error: {e:#}");
            }
            exit::ERROR
        }
    };
    leave(code)
}

/// Exits without running `atexit` handlers. NNG registers `nng_fini` with `atexit`, and at
/// process exit it can race NNG's own threads still finishing (seen as an abort in NNG 1.4:
/// "pthread_mutex_lock: Invalid argument"). Everything fxr writes is flushed here first; the
/// operating system reclaims the rest.
fn leave(code: u8) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; no Rust state is used after it.
    unsafe { libc::_exit(i32::from(code)) }
}
