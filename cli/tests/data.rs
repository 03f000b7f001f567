//! The node's object store end to end: the `put` and `get` built-ins and `fxr data` inside a
//! shell task share the store of a real endpoint, which removes it when it stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::LocalEndpoint;

/// A store directory for a test, on the memory file system when there is one.
fn store_dir(tag: &str) -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("fxr-test-{tag}-{}", std::process::id()))
}

#[test]
fn tasks_share_the_nodes_store_and_the_store_goes_when_the_endpoint_stops() {
    let store = store_dir("store");
    let dir = store.to_str().unwrap();
    let mut ep = LocalEndpoint::start(
        &[
            "--blocks",
            "2",
            "--workers-per-node",
            "2",
            "--store-dir",
            dir,
        ],
        &[],
    );
    let r = ep.run(&[
        "put",
        "--args",
        r#"{"key": "greeting", "value": "hello, store"}"#,
    ]);
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
    let r = ep.run(&["get", "--args", r#"{"key": "greeting", "text": true}"#]);
    assert_eq!(r["result"]["value"], "hello, store", "{r}");
    let by_ref = serde_json::json!({"ref": dref, "text": true}).to_string();
    let r = ep.run(&["get", "--args", &by_ref]);
    assert_eq!(r["result"]["value"], "hello, store", "{r}");
    // A shell task sees the same store through `fxr data`.
    let r = ep.run(&[
        "--shell",
        "printf 'from the shell' | fxr data put shell.txt - && fxr data ls && fxr data get greeting -",
    ]);
    let out = r["result"]["stdout"].as_str().unwrap_or_default();
    assert!(
        out.contains("shell.txt") && out.contains("greeting") && out.ends_with("hello, store"),
        "{r}"
    );
    let r = ep.run(&["get", "--args", r#"{"key": "shell.txt", "text": true}"#]);
    assert_eq!(r["result"]["value"], "from the shell", "{r}");
    // Errors name the problem.
    let r = ep.run(&["get", "--args", r#"{"key": "nothing-here"}"#]);
    assert_eq!(r["kind"], "function_error");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("no object `nothing-here`"),
        "{r}"
    );
    let r = ep.run(&["put", "--args", r#"{"key": "../escape", "value": "x"}"#]);
    assert!(r["message"].as_str().unwrap().contains("bad key"), "{r}");
    assert!(store.join("objects").is_dir());

    assert_eq!(ep.stop(Duration::from_secs(30)), Some(0));
    assert!(
        !store.exists(),
        "the store is removed when the endpoint stops"
    );
}

#[test]
fn the_store_survives_a_killed_manager_and_its_replacement_reads_it() {
    let store = store_dir("restart");
    let dir = store.to_str().unwrap();
    let mut ep = LocalEndpoint::start(
        &[
            "--blocks",
            "1",
            "--workers-per-node",
            "1",
            "--store-dir",
            dir,
        ],
        &[],
    );
    let r = ep.run(&["put", "--args", r#"{"key": "kept", "value": "still here"}"#]);
    assert_eq!(r["status"], "succeeded", "{r}");
    // SAFETY: killing the pilot of the endpoint this test started.
    unsafe { libc::kill(ep.pilots[0] as i32, libc::SIGKILL) };
    // The scaling loop starts a new block; its manager opens the same store and finds the object.
    let r = ep.run(&["get", "--args", r#"{"key": "kept", "text": true}"#]);
    assert_eq!(r["result"]["value"], "still here", "{r}");
    assert_eq!(ep.stop(Duration::from_secs(30)), Some(0));
    assert!(!store.exists());
}
