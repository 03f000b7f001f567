//! Large results by reference: a value over the inline limit stays in the store of the node
//! that ran the task, and the client reads it through the endpoint (local front door) or
//! through the broker (`GET /v1/tasks/{id}/data`, `fxr result --output FILE`), whole and
//! checked; a corrupted object is refused, and no partial file is left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::broker_world::*;
use support::LocalEndpoint;

/// A shell command that prints `n` letters `a`.
fn letters(n: usize) -> String {
    format!("head -c {n} /dev/zero | tr '\\0' a")
}

/// The stored object files of results in `store`.
fn stored_results(store: &std::path::Path) -> Vec<std::path::PathBuf> {
    let prefix: String = "results/".bytes().map(|b| format!("{b:02x}")).collect();
    std::fs::read_dir(store.join("objects"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_large_result_comes_back_by_reference_through_the_front_door() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let mut ep = LocalEndpoint::start(
        &[
            "--blocks",
            "1",
            "--workers-per-node",
            "1",
            "--store-dir",
            store.to_str().unwrap(),
        ],
        &[],
    );
    let n = 3_000_000;
    let cmd = letters(n);
    // Under --output json the result names its size instead of carrying the value.
    let r = ep.run(&["--shell", &cmd]);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(r.get("result").is_none(), "{r}");
    let size = r["result_data"]["size"].as_u64().unwrap();
    assert!(size > n as u64, "{r}");
    assert_eq!(stored_results(&store).len(), 1);
    // --output FILE writes the value, read from the node's store through the front door.
    let file = tmp.path().join("value.json");
    support::succeed(
        std::process::Command::new(support::FXR)
            .args(["run", "--endpoint", &ep.addr, "--timeout", "60s"])
            .args(["--shell", &cmd, "--output"])
            .arg(&file),
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(v["stdout"].as_str().unwrap().len(), n);
    assert!(v["stdout"].as_str().unwrap().bytes().all(|b| b == b'a'));
    assert_eq!(v["returncode"], 0);
    // A small result is unchanged: inline.
    let r = ep.run(&["--shell", "echo small"]);
    assert_eq!(r["result"]["stdout"], "small\n", "{r}");
    assert_eq!(ep.stop(Duration::from_secs(30)), Some(0));
}

#[test]
fn a_large_result_is_fetched_whole_through_the_broker_and_a_corrupt_one_is_refused() {
    let w = World::new();
    let token = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &token, "ep", 1);
    // This test's own store directory, so it can find and corrupt the object.
    let store = w.dir.path().join("store");
    w.configure(
        "alice",
        "ep",
        "engine",
        "store_dir",
        &format!("{:?}", store.to_str().unwrap()),
    );
    let _endpoint = w.endpoint("alice", &token, "ep");
    wait_connected(&w.url, &token, &ep);
    let n = 5_000_000;
    let f = register(
        &w.url,
        &token,
        json!({"name": "big", "kind": "shell", "command": letters(n)}),
    );
    let small = register(
        &w.url,
        &token,
        json!({"name": "small", "kind": "shell", "command": "echo small"}),
    );
    let ids = submit(
        &w.url,
        &token,
        vec![
            json!({"function_id": f, "endpoint_id": ep}),
            json!({"function_id": small, "endpoint_id": ep}),
        ],
    );
    let done = wait_all(&w.url, &token, &ids, Duration::from_secs(60));
    let big = done.iter().find(|t| t["id"] == ids[0]).unwrap();
    assert_eq!(big["state"], "succeeded", "{big}");
    assert!(big.get("result").is_none(), "{big}");
    let size = big["result_data"]["size"].as_u64().unwrap();
    // The broker streams it from the endpoint, with its length and checksum.
    let resp = agent()
        .get(&format!("{}/v1/tasks/{}/data", w.url, ids[0]))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sum = resp
        .headers()
        .get("x-fxr-checksum")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(sum, big["result_data"]["checksum"].as_str().unwrap());
    let body = resp
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    assert_eq!(body.len() as u64, size);
    assert_eq!(format!("{:08x}", crc32fast::hash(&body)), sum);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["stdout"].as_str().unwrap().len(), n);
    assert!(v["stdout"].as_str().unwrap().bytes().all(|b| b == b'a'));
    // `fxr result --output FILE` writes the same bytes.
    let file = w.dir.path().join("big.json");
    support::succeed(
        w.fxr("alice", &token)
            .args(["result", &ids[0].to_string(), "--output"])
            .arg(&file),
    );
    assert_eq!(std::fs::read(&file).unwrap(), body);
    // A result that came back whole has no stored data; the error says where it is.
    let (code, err) = call(
        "GET",
        &format!("{}/v1/tasks/{}/data", w.url, ids[1]),
        Some(&token),
        None,
    );
    assert_eq!(code, 404, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("returned its result whole"),
        "{err}"
    );
    // Another user cannot read it.
    let bob = w.user("bob");
    let (code, _) = call(
        "GET",
        &format!("{}/v1/tasks/{}/data", w.url, ids[0]),
        Some(&bob),
        None,
    );
    assert_eq!(code, 404);
    // Corrupt the stored object on the node: the download fails and leaves no file.
    let objects = stored_results(&store);
    assert_eq!(objects.len(), 1, "{objects:?}");
    let mut bytes = std::fs::read(&objects[0]).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    std::fs::write(&objects[0], bytes).unwrap();
    let bad = w.dir.path().join("bad.json");
    let out = w
        .fxr("alice", &token)
        .args(["result", &ids[0].to_string(), "--output"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checksum") || err.contains("corrupt") || err.contains("broke"),
        "{err}"
    );
    assert!(!bad.exists(), "no partial file");
    let mut part = bad.into_os_string();
    part.push(".part");
    assert!(!std::path::Path::new(&part).exists(), "no partial file");
}
