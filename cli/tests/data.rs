//! The node's object store end to end: the `put` and `get` built-ins and `fxr data` inside a
//! shell task share the store of a real endpoint, which removes it when it stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{wait_exit, FXR};

fn run(addr: &str, args: &[&str]) -> Value {
    let out = Command::new(FXR)
        .args([
            "--output",
            "json",
            "run",
            "--endpoint",
            addr,
            "--timeout",
            "60s",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap_or(Value::Null)
}

#[test]
fn tasks_share_the_nodes_store_and_the_store_goes_when_the_endpoint_stops() {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let store = base.join(format!("fxr-test-store-{}", std::process::id()));
    let mut child = Command::new(FXR)
        .args([
            "--output", "json", "endpoint", "start", "--local", "--blocks", "2",
        ])
        .args(["--workers-per-node", "2", "--store-dir"])
        .arg(&store)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    let addr = v["endpoint"].as_str().unwrap().to_string();

    let r = run(
        &addr,
        &[
            "put",
            "--args",
            r#"{"key": "greeting", "value": "hello, store"}"#,
        ],
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    let dref = &r["result"];
    assert_eq!(dref["key"], "greeting");
    assert_eq!(dref["size"], 12);
    assert!(
        dref["node"]
            .as_str()
            .unwrap()
            .starts_with("tcp://127.0.0.1:"),
        "{dref}"
    );
    // Another task (whichever worker of either manager) reads it back, and by reference.
    let r = run(
        &addr,
        &["get", "--args", r#"{"key": "greeting", "text": true}"#],
    );
    assert_eq!(r["result"]["value"], "hello, store", "{r}");
    let by_ref = serde_json::json!({"ref": dref, "text": true}).to_string();
    let r = run(&addr, &["get", "--args", &by_ref]);
    assert_eq!(r["result"]["value"], "hello, store", "{r}");
    // A shell task sees the same store through `fxr data`.
    let r = run(
        &addr,
        &["--shell", "printf 'from the shell' | fxr data put shell.txt - && fxr data ls && fxr data get greeting -"],
    );
    let out = r["result"]["stdout"].as_str().unwrap_or_default();
    assert!(
        out.contains("shell.txt") && out.contains("greeting") && out.ends_with("hello, store"),
        "{r}"
    );
    let r = run(
        &addr,
        &["get", "--args", r#"{"key": "shell.txt", "text": true}"#],
    );
    assert_eq!(r["result"]["value"], "from the shell", "{r}");
    // Errors name the problem.
    let r = run(&addr, &["get", "--args", r#"{"key": "nothing-here"}"#]);
    assert_eq!(r["kind"], "function_error");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("no object `nothing-here`"),
        "{r}"
    );
    let r = run(
        &addr,
        &["put", "--args", r#"{"key": "../escape", "value": "x"}"#],
    );
    assert!(r["message"].as_str().unwrap().contains("bad key"), "{r}");
    assert!(store.join("objects").is_dir());

    // SAFETY: signalling the endpoint this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
    assert!(
        !store.exists(),
        "the store is removed when the endpoint stops"
    );
}

#[test]
fn the_store_survives_a_killed_manager_and_its_replacement_reads_it() {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let store = base.join(format!("fxr-test-store-restart-{}", std::process::id()));
    let mut child = Command::new(FXR)
        .args([
            "--output", "json", "endpoint", "start", "--local", "--blocks", "1",
        ])
        .args([
            "--workers-per-node",
            "1",
            "--heartbeat-threshold",
            "3s",
            "--store-dir",
        ])
        .arg(&store)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    let addr = v["endpoint"].as_str().unwrap().to_string();
    let pilot = v["pilot_pids"][0].as_u64().unwrap() as i32;
    let r = run(
        &addr,
        &["put", "--args", r#"{"key": "kept", "value": "still here"}"#],
    );
    assert_eq!(r["status"], "succeeded", "{r}");
    // SAFETY: killing the pilot of the endpoint this test started.
    unsafe { libc::kill(pilot, libc::SIGKILL) };
    // The scaling loop starts a new block; its manager opens the same store and finds the object.
    let r = run(
        &addr,
        &["get", "--args", r#"{"key": "kept", "text": true}"#],
    );
    assert_eq!(r["result"]["value"], "still here", "{r}");
    // SAFETY: signalling the endpoint this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
    assert!(!store.exists());
}
