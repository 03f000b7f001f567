//! End-to-end tests: the real `fxr` binary, real pilot and worker processes, real sockets on
//! loopback. Each test starts its own endpoint and stops only the processes it started.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fxr_interchange::{client, FrontDoor, SocketClient};
use fxr_protocol::{
    Builtin, ClientMsg, FailureKind, Function, Outcome, ShellSpec, Task, TaskId, TaskResult,
};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod support;

use support::{json_lines, stop_child, wait_exit, wait_until, FXR};

struct Endpoint {
    child: Child,
    addr: String,
    pilots: Vec<u32>,
}

impl Endpoint {
    fn start(extra: &[&str]) -> Endpoint {
        let mut child = Command::new(FXR)
            .args(["--output", "json", "endpoint", "start", "--local"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("fxr starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("endpoint prints its address");
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        let addr = v["endpoint"]
            .as_str()
            .expect("endpoint address")
            .to_string();
        let pilots = v["pilot_pids"]
            .as_array()
            .expect("pids")
            .iter()
            .map(|p| p.as_u64().unwrap() as u32)
            .collect();
        Endpoint {
            child,
            addr,
            pilots,
        }
    }

    fn client(&self) -> SocketClient {
        SocketClient::connect(&self.addr).expect("front door accepts")
    }

    fn wait_workers(&self, n: u64) {
        client::wait_for_workers(&mut self.client(), n, Duration::from_secs(60))
            .expect("workers connect");
    }

    fn stop(mut self) {
        let mut c = self.client();
        c.send(ClientMsg::Shutdown).expect("shutdown sent");
        let status = wait_exit(&mut self.child, Duration::from_secs(60));
        assert_eq!(status, Some(0), "endpoint exits cleanly");
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(30));
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; look at its state.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn task(id: u64, f: Builtin, args: &str) -> Task {
    Task {
        id: TaskId(id),
        function: Function::Builtin(f),
        args: args.as_bytes().to_vec(),
        attempt: 0,
        container: None,
    }
}

fn run_all(ep: &Endpoint, tasks: Vec<Task>) -> Vec<TaskResult> {
    client::submit_and_wait(
        &mut ep.client(),
        tasks,
        500,
        Duration::from_secs(60),
        &mut |_, _| {},
    )
    .expect("all results")
}

fn assert_exactly_once(results: &[TaskResult], n: u64) {
    let ids: HashSet<u64> = results.iter().map(|r| r.id.0).collect();
    assert_eq!(results.len() as u64, n, "one result per task");
    assert_eq!(ids.len() as u64, n, "no duplicates");
    assert!((0..n).all(|i| ids.contains(&i)), "no task missing");
}

/// Runs 3,000 `echo` tasks and checks each result is its own task's argument, once.
fn echo_3000(ep: &Endpoint) {
    let tasks: Vec<Task> = (0..3000)
        .map(|i| task(i, Builtin::Echo, &format!("{{\"n\":{i}}}")))
        .collect();
    let results = run_all(ep, tasks);
    assert_exactly_once(&results, 3000);
    for r in &results {
        let Outcome::Success(v) = &r.outcome else {
            panic!("task {} failed: {:?}", r.id, r.outcome)
        };
        let v: serde_json::Value = serde_json::from_slice(v).unwrap();
        assert_eq!(v["n"], r.id.0, "echo returns its own argument");
    }
}

#[test]
fn results_are_right_and_complete() {
    let ep = Endpoint::start(&["--blocks", "2", "--workers-per-node", "2"]);
    ep.wait_workers(4);
    echo_3000(&ep);
    let fail = run_all(&ep, vec![task(0, Builtin::Fail, r#"{"message":"boom"}"#)]);
    assert_eq!(
        fail[0].outcome,
        Outcome::Failure {
            kind: FailureKind::FunctionError,
            message: "boom".into()
        }
    );
    let pilots = ep.pilots.clone();
    ep.stop();
    for p in pilots {
        assert!(
            wait_until(Duration::from_secs(10), || !alive(p)),
            "pilot {p} is gone after stop"
        );
    }
}

#[test]
fn kill_9_of_a_manager_loses_no_task() {
    let ep = Endpoint::start(&[
        "--blocks",
        "2",
        "--workers-per-node",
        "2",
        "--heartbeat-threshold",
        "5s",
    ]);
    ep.wait_workers(4);
    let victim = ep.pilots[0];
    let tasks: Vec<Task> = (0..400)
        .map(|i| task(i, Builtin::Sleep, r#"{"ms":10}"#))
        .collect();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: killing a pilot this test's endpoint started.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    });
    let results = run_all(&ep, tasks);
    killer.join().unwrap();
    assert_exactly_once(&results, 400);
    assert!(
        results.iter().all(TaskResult::is_success),
        "lost tasks were retried elsewhere"
    );
    ep.stop();
}

#[test]
fn sharded_dispatch_runs_every_task_once_through_a_lost_manager() {
    // Three pilots over two dispatch shards, each shard on its own thread; one pilot is
    // killed once results flow, and what it held is run by the others, in either shard.
    let ep = Endpoint::start(&[
        "--blocks",
        "3",
        "--workers-per-node",
        "2",
        "--dispatch-shards",
        "2",
        "--heartbeat-threshold",
        "5s",
    ]);
    ep.wait_workers(6);
    echo_3000(&ep);
    let victim = ep.pilots[0];
    let mut killed = false;
    let tasks: Vec<Task> = (0..600)
        .map(|i| task(i, Builtin::Sleep, r#"{"ms":5}"#))
        .collect();
    let results = client::submit_and_wait(
        &mut ep.client(),
        tasks,
        100,
        Duration::from_secs(60),
        &mut |_, _| {
            if !killed {
                killed = true;
                // SAFETY: killing a pilot this test's endpoint started.
                unsafe { libc::kill(victim as i32, libc::SIGKILL) };
            }
        },
    )
    .expect("all results");
    assert!(killed);
    assert_exactly_once(&results, 600);
    assert!(
        results.iter().all(TaskResult::is_success),
        "the lost pilot's tasks ran elsewhere"
    );
    ep.stop();
}

#[test]
fn kill_9_of_a_worker_retries_its_task_and_replaces_the_worker() {
    let ep = Endpoint::start(&[
        "--blocks",
        "1",
        "--workers-per-node",
        "2",
        "--prefetch",
        "0",
    ]);
    ep.wait_workers(2);
    let pilot = ep.pilots[0];
    assert!(wait_until(Duration::from_secs(10), || children_of(pilot)
        .len()
        == 2));
    let before = children_of(pilot);
    let mut c = ep.client();
    c.send(ClientMsg::Submit {
        tasks: vec![
            task(0, Builtin::Sleep, r#"{"ms":1500}"#),
            task(1, Builtin::Sleep, r#"{"ms":1500}"#),
        ],
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: killing a worker of this test's pilot.
    unsafe { libc::kill(before[0] as i32, libc::SIGKILL) };
    let mut results = Vec::new();
    while results.len() < 2 {
        if let Some(fxr_protocol::FrontMsg::Results { results: r }) =
            c.recv(Duration::from_secs(30)).unwrap()
        {
            results.extend(r);
        }
    }
    assert!(
        results.iter().all(TaskResult::is_success),
        "the killed worker's task was retried: {results:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let now = children_of(pilot);
            now.len() == 2 && !now.contains(&before[0])
        }),
        "a new worker replaced the killed one"
    );
    ep.stop();
}

#[test]
fn a_worker_lost_past_the_retry_limit_fails_as_worker_lost() {
    let ep = Endpoint::start(&[
        "--blocks",
        "1",
        "--workers-per-node",
        "1",
        "--prefetch",
        "0",
        "--max-retries",
        "0",
    ]);
    ep.wait_workers(1);
    let pilot = ep.pilots[0];
    assert!(wait_until(Duration::from_secs(10), || children_of(pilot)
        .len()
        == 1));
    let worker = children_of(pilot)[0];
    let mut c = ep.client();
    c.send(ClientMsg::Submit {
        tasks: vec![task(7, Builtin::Sleep, r#"{"ms":5000}"#)],
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: killing a worker of this test's pilot.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let r = loop {
        if let Some(fxr_protocol::FrontMsg::Results { results }) =
            c.recv(Duration::from_secs(30)).unwrap()
        {
            break results;
        }
    };
    assert!(
        matches!(
            r[0].outcome,
            Outcome::Failure {
                kind: FailureKind::WorkerLost,
                ..
            }
        ),
        "{r:?}"
    );
    ep.stop();
}

#[test]
fn sigterm_to_a_manager_loses_no_task() {
    let ep = Endpoint::start(&["--blocks", "2", "--workers-per-node", "2"]);
    ep.wait_workers(4);
    let victim = ep.pilots[1];
    let tasks: Vec<Task> = (0..300)
        .map(|i| task(i, Builtin::Sleep, r#"{"ms":10}"#))
        .collect();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: signalling a pilot this test's endpoint started.
        unsafe { libc::kill(victim as i32, libc::SIGTERM) };
    });
    let results = run_all(&ep, tasks);
    killer.join().unwrap();
    assert_exactly_once(&results, 300);
    assert!(results.iter().all(TaskResult::is_success));
    assert!(
        wait_until(Duration::from_secs(10), || !alive(victim)),
        "the drained pilot exits"
    );
    ep.stop();
}

#[test]
fn shell_tasks_capture_output_and_time_out() {
    let ep = Endpoint::start(&["--blocks", "1", "--workers-per-node", "2"]);
    ep.wait_workers(2);
    let out = Command::new(FXR)
        .args([
            "--output",
            "json",
            "run",
            "--endpoint",
            &ep.addr,
            "--shell",
            "echo {greeting}; exit 4",
        ])
        .args(["--args", r#"{"greeting":"hello world"}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "the command returned non-zero");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["stdout"], "hello world\n");
    assert_eq!(v["result"]["returncode"], 4);

    let out = Command::new(FXR)
        .args([
            "--output",
            "json",
            "run",
            "--endpoint",
            &ep.addr,
            "--shell",
            "sleep 30",
            "--walltime",
            "300ms",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "a failed task exits with 3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "timeout");

    let spec = ShellSpec {
        command: "pwd; echo $X".into(),
        env: vec![("X".into(), "y".into())],
        cwd: Some("/tmp".into()),
        walltime_ms: 0,
    };
    let r = run_all(
        &ep,
        vec![Task {
            id: TaskId(0),
            function: Function::Shell(Box::new(spec)),
            args: vec![],
            attempt: 0,
            container: None,
        }],
    );
    let Outcome::Success(v) = &r[0].outcome else {
        panic!("{r:?}")
    };
    let v: serde_json::Value = serde_json::from_slice(v).unwrap();
    assert_eq!(v["stdout"], "/tmp\ny\n");
    ep.stop();
}

#[test]
fn a_manager_with_a_wrong_secret_gets_no_work() {
    let ep = Endpoint::start(&["--blocks", "1", "--workers-per-node", "1"]);
    ep.wait_workers(1);
    let mut st = client::status(&mut ep.client(), Duration::from_secs(5)).unwrap();
    let port = {
        // The manager port is in the endpoint's JSON line; ask a status-free way: scan the pilot's argv.
        let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", ep.pilots[0])).unwrap();
        cmdline
            .split('\0')
            .find(|a| a.starts_with("tcp://"))
            .unwrap()
            .to_string()
    };
    let rogue = Command::new(FXR)
        .args([
            "pilot",
            "--interchange",
            &port,
            "--simulate-workers",
            "1000",
        ])
        .env("FXR_SECRET", "not-the-secret")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_ne!(
        rogue.status.code(),
        Some(0),
        "a refused pilot exits with an error"
    );
    assert!(String::from_utf8_lossy(&rogue.stderr).contains("refused"));
    let after = client::status(&mut ep.client(), Duration::from_secs(5)).unwrap();
    assert_eq!(
        after.managers.len(),
        st.managers.len(),
        "the rogue never joined"
    );
    st = after;
    assert!(st.managers.iter().all(|m| !m.simulated));
    ep.stop();
}

#[test]
fn random_bytes_on_either_port_disturb_nothing() {
    let ep = Endpoint::start(&["--blocks", "1", "--workers-per-node", "2"]);
    ep.wait_workers(2);
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", ep.pilots[0])).unwrap();
    let mgr = cmdline
        .split('\0')
        .find(|a| a.starts_with("tcp://"))
        .unwrap()
        .trim_start_matches("tcp://")
        .to_string();
    let mut rng = fastrand_lite(42);
    let connect = |addr: &str| -> Option<Box<dyn Write>> {
        if addr.contains('/') {
            std::os::unix::net::UnixStream::connect(addr)
                .ok()
                .map(|s| Box::new(s) as Box<dyn Write>)
        } else {
            std::net::TcpStream::connect(addr)
                .ok()
                .map(|s| Box::new(s) as Box<dyn Write>)
        }
    };
    for addr in [mgr.as_str(), ep.addr.as_str()] {
        for round in 0..20 {
            if let Some(mut s) = connect(addr) {
                let mut junk: Vec<u8> = (0..(round * 97 % 4096 + 1)).map(|_| rng()).collect();
                if round % 3 == 0 {
                    // A plausible frame header with a huge length, then noise.
                    junk.splice(0..0, [b'F', b'X', 1, 0, 0xff, 0xff, 0xff, 0x7f]);
                }
                let _ = s.write_all(&junk);
            }
        }
    }
    let tasks: Vec<Task> = (0..500).map(|i| task(i, Builtin::Noop, "")).collect();
    let results = run_all(&ep, tasks);
    assert_exactly_once(&results, 500);
    assert_eq!(
        client::status(&mut ep.client(), Duration::from_secs(5))
            .unwrap()
            .managers
            .len(),
        1
    );
    ep.stop();
}

fn fastrand_lite(mut seed: u64) -> impl FnMut() -> u8 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 24) as u8
    }
}

#[test]
fn submit_command_reads_an_args_file_and_reports_json() {
    let ep = Endpoint::start(&["--blocks", "1", "--workers-per-node", "2"]);
    ep.wait_workers(2);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tasks.jsonl");
    std::fs::write(
        &file,
        (0..50)
            .map(|i| format!("{{\"i\":{i}}}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let out = Command::new(FXR)
        .args([
            "--output",
            "json",
            "submit",
            "echo",
            "--endpoint",
            &ep.addr,
            "--args-file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 50);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["result"]["i"], i);
    }
    std::fs::write(&file, "{\"ok\":1}\nnot json\n").unwrap();
    let out = Command::new(FXR)
        .args(["submit", "echo", "--endpoint", &ep.addr, "--args-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "the error names the bad line"
    );
    ep.stop();
}

#[test]
fn sigterm_to_the_endpoint_drains_and_leaves_nothing_behind() {
    let mut ep = Endpoint::start(&["--blocks", "2", "--workers-per-node", "2"]);
    ep.wait_workers(4);
    let pilots = ep.pilots.clone();
    let workers: Vec<u32> = pilots.iter().flat_map(|p| children_of(*p)).collect();
    assert_eq!(workers.len(), 4);
    // SAFETY: signalling the endpoint this test started.
    unsafe { libc::kill(ep.child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut ep.child, Duration::from_secs(30)), Some(0));
    for p in pilots.iter().chain(&workers) {
        assert!(
            wait_until(Duration::from_secs(10), || !alive(*p)),
            "process {p} is gone"
        );
    }
}

#[test]
fn logs_written_to_a_file_or_pipe_carry_no_colour_codes() {
    let out = support::succeed(
        std::process::Command::new(support::FXR)
            .args(["bench", "latency", "--tasks", "5", "--workers", "1"])
            .env("FXR_LOG", "info"),
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("INFO"), "info logs were written: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escapes in a piped log: {log:?}"
    );
}

#[test]
fn simulated_managers_share_threads_and_run_tasks() {
    // 300 managers in one pilot process: with 64 to a thread, 5 threads run them all.
    let ep = Endpoint::start(&[
        "--blocks",
        "1",
        "--managers",
        "300",
        "--simulate-workers",
        "2",
    ]);
    ep.wait_workers(600);
    let threads = std::fs::read_dir(format!("/proc/{}/task", ep.pilots[0]))
        .unwrap()
        .count();
    assert!(
        threads < 100,
        "300 simulated managers in {threads} threads: they should share"
    );
    let tasks: Vec<Task> = (0..3000)
        .map(|i| task(i, Builtin::Sleep, r#"{"ms": 5}"#))
        .collect();
    let results = run_all(&ep, tasks);
    assert_exactly_once(&results, 3000);
    assert!(results.iter().all(TaskResult::is_success));
    let st = client::status(&mut ep.client(), Duration::from_secs(5)).unwrap();
    assert_eq!(st.managers.len(), 300);
    assert!(st.managers.iter().all(|m| m.simulated && m.workers == 2));
    ep.stop();
}
