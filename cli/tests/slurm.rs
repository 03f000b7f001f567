//! Batch-system tests on a real Slurm cluster started on this machine (scripts/slurm-cluster.sh:
//! one slurmctld and four slurmd, each a node), and the PBS provider through Slurm's Torque
//! wrappers (`qsub`, `qstat`, `qdel` from slurm-wlm-torque).
//!
//! They run when `sbatch` and `slurmctld` are installed. With `FXR_REQUIRE_SLURM=1` (as CI sets)
//! a missing Slurm fails instead of skipping; with `FXR_REQUIRE_MPI=1` the pilots must have used
//! MPI to gather their block's inventory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fxr_interchange::{client, FrontDoor, SocketClient};
use fxr_protocol::{Builtin, ClientMsg, Function, MpiSpec, Outcome, ShellSpec, Task, TaskId};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

mod support;

use support::{have, stop_child, wait_until, FXR};
/// One cluster at a time: the tests share the machine's cores.
static CLUSTER: Mutex<()> = Mutex::new(());

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    /// Starts a cluster, or returns None (skip) when Slurm is absent and not required.
    fn up() -> Option<Cluster> {
        if !(have("sbatch") && have("slurmctld") && have("slurmd")) {
            assert!(
                !required("FXR_REQUIRE_SLURM"),
                "FXR_REQUIRE_SLURM=1 but Slurm is not installed"
            );
            eprintln!("skipping: Slurm is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("up")
            .arg(dir.path().join("slurm"))
            .arg("4")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slurm cluster did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("slurm/slurm.conf");
        Some(Cluster { dir, conf })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn squeue(&self) -> String {
        let out = self
            .cmd("squeue")
            .args(["-h", "-o", "%i %T %j"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("down")
            .arg(self.dir.path().join("slurm"))
            .status();
    }
}

struct Endpoint {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Endpoint {
    fn start(cluster: &Cluster, toml: &str) -> Endpoint {
        Endpoint::start_with(cluster, toml, &[])
    }

    fn start_with(cluster: &Cluster, toml: &str, extra: &[&str]) -> Endpoint {
        let dir = cluster.dir.path().join("ep");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("endpoint.toml"), toml).unwrap();
        let addr_file = dir.join("addr");
        let child = cluster
            .cmd(FXR)
            .args(["endpoint", "start", "ep", "--foreground", "--dir"])
            .arg(&dir)
            .args(extra)
            .arg("--address-file")
            .arg(&addr_file)
            .env("FXR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("endpoint.log")).unwrap())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(30), || addr_file.exists()));
        let addr = std::fs::read_to_string(&addr_file).unwrap();
        Endpoint { child, addr, dir }
    }

    fn client(&self) -> SocketClient {
        SocketClient::connect(&self.addr).unwrap()
    }

    fn status(&self) -> fxr_protocol::EndpointStatus {
        client::status(&mut self.client(), Duration::from_secs(10)).unwrap()
    }

    fn stop(mut self) {
        self.client().send(ClientMsg::Shutdown).unwrap();
        assert!(wait_until(Duration::from_secs(60), || matches!(
            self.child.try_wait(),
            Ok(Some(_))
        )));
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(30));
    }
}

fn sleep_tasks(n: u64, ms: u64) -> Vec<Task> {
    (0..n)
        .map(|i| Task {
            id: TaskId(i),
            function: Function::Builtin(Builtin::Sleep),
            args: format!("{{\"ms\":{ms}}}").into_bytes(),
            attempt: 0,
            container: None,
        })
        .collect()
}

fn config(kind: &str, launcher: &str, nodes: u32, idle: &str) -> String {
    format!(
        "name = \"ep\"\n[engine]\nworkers_per_node = 2\n[provider]\nkind = \"{kind}\"\npartition = \"debug\"\n\
         walltime = \"00:10:00\"\nnodes_per_block = {nodes}\ninit_blocks = 1\nmin_blocks = 0\nmax_blocks = 2\n\
         max_idletime = \"{idle}\"\nlauncher = \"{launcher}\"\n"
    )
}

fn block_logs(dir: &Path) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(dir.join("blocks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "out") {
            all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    all
}

#[test]
fn a_two_node_slurm_block_runs_tasks_and_an_mpi_task_then_drains_when_idle() {
    let _one = CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(cluster) = Cluster::up() else { return };
    let ep = Endpoint::start(&cluster, &config("slurm", "srun", 2, "4s"));
    // Both nodes of the block register as one block.
    assert!(
        wait_until(Duration::from_secs(60), || ep.status().managers.len() == 2),
        "two managers registered"
    );
    let st = ep.status();
    let blocks: HashSet<_> = st.managers.iter().map(|m| m.block_id.0.clone()).collect();
    assert_eq!(
        blocks.len(),
        1,
        "both managers belong to one block: {blocks:?}"
    );
    assert!(cluster.squeue().contains("RUNNING"), "{}", cluster.squeue());
    let rendered = std::fs::read_to_string(ep.dir.join("blocks/ep-1.sh")).unwrap();
    assert!(rendered.lines().any(|l| l == "#SBATCH --nodes=2"));
    assert!(rendered
        .lines()
        .any(|l| l.starts_with("srun --nodes=2 --ntasks=2")));

    let results = client::submit_and_wait(
        &mut ep.client(),
        sleep_tasks(40, 20),
        100,
        Duration::from_secs(60),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(results.len(), 40);
    assert!(results.iter().all(|r| r.is_success()));

    // MPI tasks over both nodes of the block, two ranks per node, each rank running the whole
    // command line (both commands, not the first alone); one asking for more nodes than a
    // block has is refused at once; a launch that fails is a failure, not a success.
    let mpi = |id: u64, command: &str, num_nodes: u32| Task {
        id: TaskId(id),
        function: Function::Mpi(Box::new(MpiSpec {
            shell: ShellSpec {
                command: command.into(),
                env: vec![],
                cwd: None,
                walltime_ms: 60_000,
            },
            num_nodes,
            ranks_per_node: 2,
        })),
        args: br#"{"word": "it's"}"#.to_vec(),
        attempt: 0,
        container: None,
    };
    let mut r = client::submit_and_wait(
        &mut ep.client(),
        vec![
            mpi(
                1000,
                "echo rank $SLURM_PROCID; echo {word} $SLURM_PROCID",
                2,
            ),
            mpi(1001, "true", 3),
            mpi(1002, "exit 3", 2),
        ],
        3,
        Duration::from_secs(60),
        &mut |_, _| {},
    )
    .unwrap();
    r.sort_by_key(|r| r.id);
    let Outcome::Success(v) = &r[0].outcome else {
        panic!("mpi task failed: {:?}", r[0].outcome)
    };
    let v: serde_json::Value = serde_json::from_slice(v).unwrap();
    let mut lines: Vec<&str> = v["stdout"].as_str().unwrap().lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        vec!["it's 0", "it's 1", "it's 2", "it's 3", "rank 0", "rank 1", "rank 2", "rank 3"],
        "four ranks ran both commands: {v}"
    );
    match &r[1].outcome {
        Outcome::Failure { kind, message } => {
            assert_eq!(*kind, fxr_protocol::FailureKind::Rejected);
            assert!(
                message.contains("asks for 3 nodes") && message.contains("have 2"),
                "{message}"
            );
        }
        other => panic!("a 3-node task on 2-node blocks ran: {other:?}"),
    }
    match &r[2].outcome {
        Outcome::Failure { message, .. } => assert!(message.contains("exited with 3"), "{message}"),
        other => panic!("a failed launch passed as a success: {other:?}"),
    }

    if required("FXR_REQUIRE_MPI") {
        assert!(
            block_logs(&ep.dir).contains("block inventory gathered over MPI"),
            "pilots did not use MPI:\n{}",
            block_logs(&ep.dir)
        );
    }
    // Idle for longer than max_idletime: drained, then cancelled.
    assert!(
        wait_until(Duration::from_secs(60), || ep.status().managers.is_empty()
            && cluster.squeue().trim().is_empty()),
        "the idle block was drained and its job is gone: {}",
        cluster.squeue()
    );
    ep.stop();
}

#[test]
fn scancel_of_a_block_mid_run_loses_no_task() {
    let _one = CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(cluster) = Cluster::up() else { return };
    let ep = Endpoint::start(&cluster, &config("slurm", "srun", 1, "60s"));
    assert!(wait_until(Duration::from_secs(60), || !ep
        .status()
        .managers
        .is_empty()));
    let job = cluster
        .squeue()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let canceller = {
        let conf = cluster.conf.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            Command::new("scancel")
                .arg(&job)
                .env("SLURM_CONF", conf)
                .status()
                .unwrap();
        })
    };
    let results = client::submit_and_wait(
        &mut ep.client(),
        sleep_tasks(300, 20),
        100,
        Duration::from_secs(120),
        &mut |_, _| {},
    )
    .unwrap();
    canceller.join().unwrap();
    let ids: HashSet<u64> = results.iter().map(|r| r.id.0).collect();
    assert_eq!(results.len(), 300);
    assert_eq!(ids.len(), 300);
    assert!(
        results.iter().all(|r| r.is_success()),
        "every task completed after the block was cancelled"
    );
    ep.stop();
    assert!(
        wait_until(Duration::from_secs(30), || cluster
            .squeue()
            .trim()
            .is_empty()),
        "jobs cancelled at shutdown"
    );
}

#[test]
fn the_pbs_provider_runs_through_torque_style_commands() {
    let _one = CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(cluster) = Cluster::up() else { return };
    if !have("qsub") {
        assert!(
            !required("FXR_REQUIRE_SLURM"),
            "FXR_REQUIRE_SLURM=1 but qsub (slurm-wlm-torque) is missing"
        );
        return;
    }
    let ep = Endpoint::start(&cluster, &config("pbs", "single-node", 1, "4s"));
    assert!(
        wait_until(Duration::from_secs(60), || !ep.status().managers.is_empty()),
        "a PBS block came up"
    );
    let rendered = std::fs::read_to_string(ep.dir.join("blocks/ep-1.sh")).unwrap();
    assert!(rendered.lines().any(|l| l == "#PBS -l walltime=00:10:00"));
    let results = client::submit_and_wait(
        &mut ep.client(),
        sleep_tasks(20, 10),
        20,
        Duration::from_secs(60),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(results.iter().all(|r| r.is_success()));
    assert!(
        wait_until(Duration::from_secs(60), || ep.status().managers.is_empty()
            && cluster.squeue().trim().is_empty()),
        "idle PBS block drained and deleted with qdel"
    );
    ep.stop();
}

/// `fxr endpoint start` of the endpoint in `dir`, which must fail: what it said.
fn start_refused(cluster: &Cluster, dir: &Path) -> String {
    let out = cluster
        .cmd(FXR)
        .args(["endpoint", "start", "ep", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "refused: {err}");
    err
}

fn count_scripts(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blocks"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sh")
        })
        .count()
}

#[test]
fn a_wrong_partition_is_refused_at_start_or_shown_in_status_and_fails_waiting_tasks() {
    let _one = CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(cluster) = Cluster::up() else { return };
    let bad = config("slurm", "srun", 1, "60s")
        .replace("partition = \"debug\"", "partition = \"nosuch\"")
        .replace("min_blocks = 0", "min_blocks = 1")
        + "max_failures = 2\nfail_tasks_after = \"1s\"\n";
    let dir = cluster.dir.path().join("ep");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("endpoint.toml"), &bad).unwrap();

    // Found before "ready": start (in the background, by default) fails with the reason.
    let err = start_refused(&cluster, &dir);
    assert!(
        err.contains("partition `nosuch` does not exist") && err.contains("debug"),
        "names the partition and those that exist: {err}"
    );
    assert!(cluster.squeue().trim().is_empty(), "nothing was submitted");

    // Forced past the check, the scheduler's own message shows in the status within seconds.
    let ep = Endpoint::start_with(&cluster, &bad, &["--skip-checks"]);
    assert!(
        wait_until(Duration::from_secs(30), || ep
            .status()
            .provider
            .gave_up
            .is_some()),
        "the endpoint gives up: {:?}",
        ep.status().provider
    );
    let st = ep.status();
    let p = &st.provider;
    assert_eq!(p.kind, "slurm");
    assert_eq!(p.errors.len(), 2, "{p:?}");
    assert!(
        p.errors
            .iter()
            .all(|e| e.message.contains("invalid partition") && e.at_ms > 0),
        "sbatch's message, with its time: {p:?}"
    );
    assert!(p
        .blocks
        .iter()
        .all(|b| b.state == "failed" && b.job.is_none()));
    assert!(p.gave_up.as_deref().unwrap().contains("invalid partition"));
    for json in [false, true] {
        let mut c = cluster.cmd(FXR);
        if json {
            c.args(["--output", "json"]);
        }
        let out = support::succeed(c.args(["endpoint", "status", "--endpoint", ep.addr.trim()]));
        let text = String::from_utf8_lossy(&out.stdout);
        if json {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["provider"], "slurm");
            assert_eq!(v["blocks"][0]["state"], "failed");
            assert!(v["scheduler_errors"][1]["message"]
                .as_str()
                .unwrap()
                .contains("invalid partition"));
            assert!(v["gave_up"].as_str().unwrap().contains("gave up"));
        } else {
            assert!(text.contains("ep-1") && text.contains("failed"), "{text}");
            assert!(text.contains("scheduler errors"), "{text}");
            assert!(text.contains("invalid partition"), "{text}");
            assert!(text.contains("gave up submitting blocks"), "{text}");
        }
    }
    // No endless resubmission.
    let scripts = count_scripts(&ep.dir);
    assert_eq!(scripts, 2);
    // A task sent now fails with the reason instead of waiting for a block that never comes.
    let results = client::submit_and_wait(
        &mut ep.client(),
        sleep_tasks(3, 10),
        3,
        Duration::from_secs(30),
        &mut |_, _| {},
    )
    .unwrap();
    for r in &results {
        match &r.outcome {
            Outcome::Failure { kind, message } => {
                assert_eq!(*kind, fxr_protocol::FailureKind::EndpointUnavailable);
                assert!(message.contains("invalid partition"), "{message}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
    assert_eq!(count_scripts(&ep.dir), scripts);
    ep.stop();

    // PBS: a queue the scheduler does not list is refused at start the same way.
    if have("qstat") {
        let pbs = config("pbs", "single-node", 1, "60s") + "queue = \"nosuch\"\n";
        std::fs::write(dir.join("endpoint.toml"), pbs).unwrap();
        let err = start_refused(&cluster, &dir);
        assert!(err.contains("queue `nosuch`"), "{err}");
    }
}

/// The broker provisions (issue: "the broker asks endpoints for blocks"): two endpoints on the
/// Slurm cluster, each allowed two one-worker blocks and holding one broker task at a time,
/// so alone each would never run more than one block. Eight 3 s tasks routed by shortest
/// expected wait: the broker asks both for blocks, each runs two, a block says the broker
/// asked for it, and once the work is done the broker lets them go and the blocks end.
#[test]
fn the_broker_asks_two_slurm_endpoints_for_blocks_and_lets_them_go() {
    use support::broker_world::{call, register, submit, wait_all, World};
    let Some(cluster) = Cluster::up() else { return };
    let _one = CLUSTER.lock();
    let w = World::new();
    let _broker = w.broker(&[]);
    let token = w.user("alice");
    let mut ids = Vec::new();
    let mut endpoints = Vec::new();
    for name in ["ea", "eb"] {
        ids.push(w.create_endpoint("alice", &token, name, 1));
        for (key, value) in [
            ("kind", "\"slurm\""),
            ("partition", "\"debug\""),
            ("walltime", "\"00:10:00\""),
            ("nodes_per_block", "1"),
            ("init_blocks", "0"),
            ("min_blocks", "0"),
            ("max_blocks", "2"),
            ("max_idletime", "\"2s\""),
            ("launcher", "\"srun\""),
        ] {
            w.configure("alice", name, "provider", key, value);
        }
        w.configure("alice", name, "engine", "broker_window", "1");
        let child = w
            .fxr("alice", &token)
            .env("SLURM_CONF", &cluster.conf)
            .args(["endpoint", "start", name, "--foreground"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        endpoints.push(support::broker_world::Proc(child));
    }
    let info = |id: &str| {
        call(
            "GET",
            &format!("{}/v1/endpoints/{id}", w.url),
            Some(&token),
            None,
        )
        .1
    };
    for id in &ids {
        assert!(
            wait_until(Duration::from_secs(60), || info(id)["connected"] == true),
            "endpoint {id} did not connect: {}",
            info(id)
        );
    }
    let nap = register(
        &w.url,
        &token,
        serde_json::json!({"name": "nap", "kind": "builtin", "builtin": "sleep"}),
    );
    let tasks: Vec<serde_json::Value> = (0..8)
        .map(|_| {
            serde_json::json!({"function_id": nap, "endpoints": ids, "policy": "shortest-wait",
                               "args": {"ms": 3000}})
        })
        .collect();
    let submitted = submit(&w.url, &token, tasks);
    // Both endpoints come to run two blocks, at least one of them at the broker's request,
    // which `fxr endpoint status` shows.
    let broker_blocks = |v: &serde_json::Value| -> usize {
        v["blocks"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter(|b| {
                        b["reason"]
                            .as_str()
                            .unwrap_or("")
                            .starts_with("the broker asked")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    for id in &ids {
        assert!(
            wait_until(Duration::from_secs(90), || {
                let v = info(id);
                let running = v["blocks"]
                    .as_array()
                    .map_or(0, |b| b.iter().filter(|b| b["state"] == "running").count());
                running == 2 && broker_blocks(&v) >= 1
            }),
            "endpoint {id} did not run two blocks at the broker's request: {}",
            info(id)
        );
    }
    let text = w
        .fxr("alice", &token)
        .args(["endpoint", "status", "ea"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("why: the broker asked for"), "{text}");
    let results = wait_all(&w.url, &token, &submitted, Duration::from_secs(120));
    support::broker_world::assert_complete(&results, &submitted);
    let (_, listed) = call(
        "GET",
        &format!(
            "{}/v1/tasks?ids={}",
            w.url,
            submitted
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Some(&token),
        None,
    );
    for id in &ids {
        let here = listed["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["endpoint_id"] == id.as_str())
            .count();
        assert!(
            here >= 2,
            "shortest wait used both endpoints: {here} on {id}"
        );
    }
    // The broker lets the blocks go: its request falls to zero (and then lapses), idle blocks
    // drain and end.
    for id in &ids {
        assert!(
            wait_until(Duration::from_secs(20), || info(id)["requested"]["blocks"]
                == 0),
            "the broker did not release endpoint {id}: {}",
            info(id)
        );
    }
    for id in &ids {
        assert!(
            wait_until(Duration::from_secs(90), || {
                let v = info(id);
                let live = v["blocks"].as_array().map_or(0, |b| {
                    b.iter()
                        .filter(|b| matches!(b["state"].as_str(), Some("pending" | "running")))
                        .count()
                });
                (v["requested"].is_null() || v["requested"]["blocks"] == 0) && live == 0
            }),
            "endpoint {id} kept its blocks: {}",
            info(id)
        );
    }
    drop(endpoints);
    assert!(
        wait_until(Duration::from_secs(60), || cluster
            .squeue()
            .trim()
            .is_empty()),
        "jobs left: {}",
        cluster.squeue()
    );
}
