//! Running an endpoint as a site admin does: `fxr endpoint start NAME` in the background with
//! its log, status, restart with tasks in flight, configure (and its dry run), failures found
//! before "ready", and delete. The real `fxr broker serve` and endpoints on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use support::broker_world::*;
use support::succeed;

/// A started endpoint that is stopped when the test ends, however it ends.
struct Running<'a> {
    w: &'a World,
    token: String,
    name: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = self
            .w
            .fxr("alice", &self.token)
            .args(["endpoint", "stop", &self.name])
            .output();
    }
}

/// A broker with user alice, who has created endpoint `name` (not started): the world, her
/// token, the broker and the endpoint's id.
fn alice_with_endpoint(name: &str, workers: u32) -> (World, String, Proc, String) {
    let w = World::new();
    let token = w.user("alice");
    let broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &token, name, workers);
    (w, token, broker, ep)
}

fn dir(w: &World, name: &str) -> PathBuf {
    w.home("alice").join("endpoints").join(name)
}

/// Whether a process runs (a zombie waiting for its reaper does not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn json_out(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn start_detaches_with_a_log_and_restart_keeps_the_link_and_every_task() {
    let (w, token, _broker, ep) = alice_with_endpoint("site", 2);
    let d = dir(&w, "site");

    // Returns once ready, with the endpoint running on in the background.
    let out = succeed(
        w.fxr("alice", &token)
            .args(["--output", "json", "endpoint", "start", "site"]),
    );
    let _running = Running {
        w: &w,
        token: token.clone(),
        name: "site".into(),
    };
    let started = json_out(&out);
    let pid = started["pid"].as_u64().unwrap();
    assert_eq!(started["log"], json!(d.join("endpoint.log")));
    assert_eq!(
        std::fs::read_to_string(d.join("endpoint.pid"))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    wait_connected(&w.url, &token, &ep);

    // A second start says who runs it.
    let again = w
        .fxr("alice", &token)
        .args(["endpoint", "start", "site"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        err.contains(&format!("already running (pid {pid})")),
        "{err}"
    );

    // Tasks in flight across a restart: every one finishes.
    let f = register(
        &w.url,
        &token,
        json!({"name": "sleep", "kind": "builtin", "builtin": "sleep"}),
    );
    let tasks: Vec<Value> = (0..40)
        .map(|_| json!({"function_id": f, "endpoint_id": ep, "args": {"ms": 150}}))
        .collect();
    let ids = submit(&w.url, &token, tasks);
    let out = succeed(
        w.fxr("alice", &token)
            .args(["--output", "json", "endpoint", "restart", "site"]),
    );
    let restarted = json_out(&out);
    assert_ne!(restarted["pid"], started["pid"], "a new process");
    let results = wait_all(&w.url, &token, &ids, Duration::from_secs(120));
    assert_complete(&results, &ids);

    // The log holds both runs (plain text) and `logs` prints it; block ids go on counting.
    let log = std::fs::read_to_string(d.join("endpoint.log")).unwrap();
    assert_eq!(
        log.matches("--- fxr endpoint start site").count(),
        2,
        "{log}"
    );
    assert!(log.contains("endpoint ready"), "{log}");
    assert!(!log.contains('\u{1b}'), "no terminal colours in a log file");
    let logs = succeed(
        w.fxr("alice", &token)
            .args(["endpoint", "logs", "site", "-n", "1000"]),
    );
    assert!(String::from_utf8_lossy(&logs.stdout).contains("connected to the broker"));
    let status = json_out(&succeed(
        w.fxr("alice", &token)
            .args(["--output", "json", "endpoint", "status", "site"]),
    ));
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["provider"], "local");
    assert_eq!(status["blocks"][0]["id"], "site-2", "{status}");
    assert_eq!(status["blocks"][0]["managers"], 1, "{status}");
    assert!(d.join("blocks/site-1.log").exists() && d.join("blocks/site-2.sh").exists());
    let block_log = succeed(
        w.fxr("alice", &token)
            .args(["endpoint", "logs", "site", "--block", "site-1"]),
    );
    assert!(!block_log.stdout.is_empty(), "the first block's own log");
    assert!(
        !block_log.stdout.contains(&0x1b),
        "no colours in a pilot's log either"
    );
    // The counts settle once the work is done (the link reports when its last task finishes).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call(
            "GET",
            &format!("{}/v1/endpoints/{ep}", w.url),
            Some(&token),
            None,
        );
        if v["running"] == 0 && v["queued"] == 0 && v["workers_busy"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counts still show work: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = String::from_utf8_lossy(
        &succeed(w.fxr("alice", &token).args(["endpoint", "status", "site"])).stdout,
    )
    .into_owned();
    assert!(text.starts_with("endpoint site ("), "{text}");
    assert!(text.contains("site-2") && !text.contains('"'), "{text}");

    // Stop drains and exits; the broker sees it go.
    succeed(w.fxr("alice", &token).args(["endpoint", "stop", "site"]));
    assert!(!d.join("endpoint.pid").exists());
    assert!(!alive(pid));
    let stop_again = w
        .fxr("alice", &token)
        .args(["endpoint", "stop", "site"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&stop_again.stderr).contains("not running"));
}

#[test]
fn start_fails_with_the_reason_before_ready() {
    let (w, token, _broker, _ep) = alice_with_endpoint("bad", 1);
    let d = dir(&w, "bad");

    // A credential the broker does not know: refused at once, in the broker's words.
    let good = std::fs::read_to_string(d.join("credential")).unwrap();
    std::fs::write(d.join("credential"), "not-the-credential").unwrap();
    let out = w
        .fxr("alice", &token)
        .args(["endpoint", "start", "bad"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refused the endpoint's link") && err.contains("401"),
        "{err}"
    );
    std::fs::write(d.join("credential"), good).unwrap();

    // A job script that does not render (a site template using an unknown variable) is found
    // before anything is submitted, naming the variable.
    let template = w.dir.path().join("site.tera");
    std::fs::write(
        &template,
        "#!/bin/bash\n#SBATCH --foo={{ nosuch_variable }}\n{{ pilot_cmd }}\n",
    )
    .unwrap();
    succeed(w.fxr("alice", &token).args([
        "endpoint",
        "configure",
        "bad",
        "--set",
        "provider.kind=slurm",
        "--set",
        &format!("provider.template={}", template.display()),
    ]));
    let out = w
        .fxr("alice", &token)
        .args(["endpoint", "start", "bad"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("pre-flight") && err.contains("nosuch_variable"),
        "{err}"
    );
    assert!(!d.join("endpoint.pid").exists(), "nothing left running");
}

#[test]
fn configure_sets_checked_keys_and_dry_run_prints_the_job_script() {
    let (w, token, _broker, _ep) = alice_with_endpoint("hpc", 4);
    let d = dir(&w, "hpc");
    let before = std::fs::read_to_string(d.join("endpoint.toml")).unwrap();

    let out = succeed(w.fxr("alice", &token).args([
        "endpoint",
        "configure",
        "hpc",
        "--dry-run",
        "--set",
        "provider.kind=slurm",
        "--set",
        "provider.partition=debug",
        "--set",
        "provider.account=proj42",
        "--set",
        "provider.nodes_per_block=2",
        "--set",
        "provider.launcher=srun",
        "--set",
        "provider.memory=64G",
        "--set",
        "provider.qos=high",
    ]));
    let script = String::from_utf8_lossy(&out.stdout);
    for line in [
        "#SBATCH --partition=debug",
        "#SBATCH --account=proj42",
        "#SBATCH --nodes=2",
        "#SBATCH --mem=64G",
        "#SBATCH --qos=high",
    ] {
        assert!(script.lines().any(|l| l == line), "{line} in:\n{script}");
    }
    assert!(
        script.contains(" pilot --interchange tcp://127.0.0.1:0 ")
            && script.contains("--block-id hpc-1"),
        "{script}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("endpoint.toml")).unwrap(),
        before,
        "a dry run changes nothing"
    );

    // A bad value is refused, naming the key, and nothing is written.
    let bad = w
        .fxr("alice", &token)
        .args([
            "endpoint",
            "configure",
            "hpc",
            "--set",
            "provider.launcher=mpirun",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("provider.launcher") && err.contains("mpirun"),
        "{err}"
    );
    let typo = w
        .fxr("alice", &token)
        .args([
            "endpoint",
            "configure",
            "hpc",
            "--set",
            "provider.partiton=debug",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&typo.stderr).contains("partiton"));
    assert_eq!(
        std::fs::read_to_string(d.join("endpoint.toml")).unwrap(),
        before
    );

    // Saved, and shown with every default.
    succeed(w.fxr("alice", &token).args([
        "endpoint",
        "configure",
        "hpc",
        "--set",
        "provider.max_blocks=7",
    ]));
    let shown = String::from_utf8_lossy(
        &succeed(
            w.fxr("alice", &token)
                .args(["endpoint", "configure", "hpc"]),
        )
        .stdout,
    )
    .into_owned();
    assert!(
        shown.contains("max_blocks = 7") && shown.contains("fail_tasks_after = \"2m\""),
        "{shown}"
    );
    // The local job script, too.
    let local = succeed(
        w.fxr("alice", &token)
            .args(["endpoint", "configure", "hpc", "--dry-run"]),
    );
    assert!(String::from_utf8_lossy(&local.stdout).contains("--workers 4 --block-id hpc-1"));
}

#[test]
fn delete_stops_unregisters_and_removes_the_endpoint() {
    let (w, token, _broker, ep) = alice_with_endpoint("gone", 1);
    let d = dir(&w, "gone");
    succeed(w.fxr("alice", &token).args(["endpoint", "start", "gone"]));
    let _running = Running {
        w: &w,
        token: token.clone(),
        name: "gone".into(),
    };
    wait_connected(&w.url, &token, &ep);
    let pid: u32 = std::fs::read_to_string(d.join("endpoint.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Not without confirmation when nobody can be asked.
    let unconfirmed = w
        .fxr("alice", &token)
        .args(["endpoint", "delete", "gone"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!unconfirmed.status.success());
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"));
    assert!(d.exists());
    let out =
        json_out(&succeed(w.fxr("alice", &token).args([
            "--output", "json", "endpoint", "delete", "gone", "--yes",
        ])));
    assert_eq!(out["stopped"], true);
    assert_eq!(out["unregistered"], true);
    assert!(!d.exists());
    assert!(!alive(u64::from(pid)));
    let (status, _) = call(
        "GET",
        &format!("{}/v1/endpoints/{ep}", w.url),
        Some(&token),
        None,
    );
    assert_eq!(status, 404);
}
