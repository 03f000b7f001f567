//! End-to-end tests of the broker path: the real `fxr broker serve` and `fxr endpoint start`
//! processes, real HTTP and WebSocket on loopback, a real SQLite file in a temp dir. The world
//! they run in (broker, users, endpoints, an HTTP client) is in `support/broker_world.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use support::broker_world::*;
use support::json_lines;

#[test]
fn tasks_flow_through_the_broker_and_survive_a_broker_kill_9() {
    let w = World::new();
    let token = w.user("alice");
    let mut broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &token, "ep", 2);
    let _endpoint = w.endpoint("alice", &token, "ep");
    wait_connected(&w.url, &token, &ep);
    let f = register(
        &w.url,
        &token,
        json!({"name": "sleep", "kind": "builtin", "builtin": "sleep"}),
    );
    let tasks: Vec<Value> = (0..600)
        .map(|_| json!({"function_id": f, "endpoint_id": ep, "args": {"ms": 5}}))
        .collect();
    let ids = submit(&w.url, &token, tasks);
    std::thread::sleep(Duration::from_millis(300));
    kill9(&mut broker);
    std::thread::sleep(Duration::from_millis(300));
    let _broker = w.broker(&[]);
    let results = wait_all(&w.url, &token, &ids, Duration::from_secs(60));
    assert_complete(&results, &ids);
}

#[test]
fn an_endpoint_killed_and_restarted_loses_no_task() {
    let w = World::new();
    let token = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &token, "ep", 2);
    let mut endpoint = w.endpoint("alice", &token, "ep");
    wait_connected(&w.url, &token, &ep);
    let f = register(
        &w.url,
        &token,
        json!({"name": "sleep", "kind": "builtin", "builtin": "sleep"}),
    );
    let tasks: Vec<Value> = (0..400)
        .map(|_| json!({"function_id": f, "endpoint_id": ep, "args": {"ms": 5}}))
        .collect();
    let ids = submit(&w.url, &token, tasks);
    std::thread::sleep(Duration::from_millis(300));
    // kill -9 of the interchange: its pilots notice the lost connection and give up by themselves.
    kill9(&mut endpoint);
    let _endpoint = w.endpoint("alice", &token, "ep");
    let results = wait_all(&w.url, &token, &ids, Duration::from_secs(90));
    assert_complete(&results, &ids);
}

#[test]
fn users_see_and_use_only_what_is_theirs_or_shared() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let carol = w.user("carol");
    let _broker = w.broker(&[]);
    let url = &w.url;
    let private = register(
        url,
        &alice,
        json!({"name": "p", "kind": "builtin", "builtin": "noop"}),
    );
    let public = register(
        url,
        &alice,
        json!({"name": "q", "kind": "builtin", "builtin": "noop", "visibility": "public"}),
    );
    let shared = register(
        url,
        &alice,
        json!({"name": "r", "kind": "builtin", "builtin": "noop", "shared_with": ["bob"]}),
    );
    let (_, ep) = call(
        "POST",
        &format!("{url}/v1/endpoints"),
        Some(&alice),
        Some(r#"{"name":"a-ep"}"#),
    );
    let ep = ep["id"].as_str().unwrap().to_string();
    let (_, bob_ep) = call(
        "POST",
        &format!("{url}/v1/endpoints"),
        Some(&bob),
        Some(r#"{"name":"b-ep","shared_with":["carol"]}"#),
    );
    let bob_ep = bob_ep["id"].as_str().unwrap().to_string();

    assert_eq!(
        call(
            "GET",
            &format!("{url}/v1/functions/{private}"),
            Some(&bob),
            None
        )
        .0,
        404
    );
    assert_eq!(
        call(
            "GET",
            &format!("{url}/v1/functions/{public}"),
            Some(&bob),
            None
        )
        .0,
        200
    );
    assert_eq!(
        call(
            "GET",
            &format!("{url}/v1/functions/{shared}"),
            Some(&bob),
            None
        )
        .0,
        200
    );
    assert_eq!(
        call(
            "GET",
            &format!("{url}/v1/functions/{shared}"),
            Some(&carol),
            None
        )
        .0,
        404
    );
    let (_, list) = call("GET", &format!("{url}/v1/functions"), Some(&bob), None);
    let names: HashSet<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, HashSet::from(["q", "r"]));
    assert_eq!(
        call(
            "DELETE",
            &format!("{url}/v1/functions/{public}"),
            Some(&bob),
            None
        )
        .0,
        403
    );
    assert_eq!(
        call(
            "DELETE",
            &format!("{url}/v1/functions/{private}"),
            Some(&bob),
            None
        )
        .0,
        404
    );

    assert_eq!(
        call("GET", &format!("{url}/v1/endpoints/{ep}"), Some(&bob), None).0,
        404
    );
    let body =
        |f: &str, e: &str| json!({"tasks": [{"function_id": f, "endpoint_id": e}]}).to_string();
    let (s, v) = call(
        "POST",
        &format!("{url}/v1/tasks"),
        Some(&bob),
        Some(&body(&public, &ep)),
    );
    assert_eq!(s, 404, "bob may not use alice's endpoint: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("endpoint"));
    let (s, _) = call(
        "POST",
        &format!("{url}/v1/tasks"),
        Some(&bob),
        Some(&body(&private, &bob_ep)),
    );
    assert_eq!(s, 404, "bob may not use alice's private function");
    let (s, v) = call(
        "POST",
        &format!("{url}/v1/tasks"),
        Some(&bob),
        Some(&body(&shared, &bob_ep)),
    );
    assert_eq!(s, 202, "{v}");
    let task = v["task_ids"][0].as_u64().unwrap();
    assert_eq!(
        call("GET", &format!("{url}/v1/tasks/{task}"), Some(&alice), None).0,
        404,
        "tasks are private"
    );
    let (s, v) = call(
        "POST",
        &format!("{url}/v1/tasks"),
        Some(&carol),
        Some(&body(&public, &bob_ep)),
    );
    assert_eq!(s, 202, "carol may use bob's shared endpoint: {v}");
    assert_eq!(call("GET", &format!("{url}/"), Some(&alice), None).0, 404);
    assert_eq!(call("GET", &format!("{url}/v1/whoami"), None, None).0, 401);
    assert_eq!(
        call("GET", &format!("{url}/v1/whoami"), Some("nope"), None).0,
        401
    );
}

#[test]
fn malformed_requests_get_the_right_4xx() {
    let w = World::new();
    let t = w.user("alice");
    let _broker = w.broker(&["--max-body", "100000"]);
    let url = &w.url;
    let f = register(
        url,
        &t,
        json!({"name": "n", "kind": "builtin", "builtin": "noop"}),
    );
    let (_, ep) = call(
        "POST",
        &format!("{url}/v1/endpoints"),
        Some(&t),
        Some(r#"{"name":"e"}"#),
    );
    let ep = ep["id"].as_str().unwrap().to_string();
    let too_many = json!({"tasks": (0..10_001).map(|_| json!({"function_id": "x", "endpoint_id": "y"})).collect::<Vec<_>>()});
    let huge = format!(
        r#"{{"name":"{}","kind":"builtin","builtin":"noop"}}"#,
        "x".repeat(4_000_000)
    );
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        (
            "POST",
            "/v1/functions".into(),
            Some("{not json".into()),
            400,
            "malformed_json",
        ),
        (
            "POST",
            "/v1/functions".into(),
            Some(r#"{"name":"a","kind":"builtin","builtin":"noop","colour":1}"#.into()),
            422,
            "colour",
        ),
        (
            "POST",
            "/v1/functions".into(),
            Some(r#"{"name":7,"kind":"builtin"}"#.into()),
            422,
            "name",
        ),
        (
            "POST",
            "/v1/functions".into(),
            Some(r#"{"name":"a","kind":"builtin","builtin":"nope"}"#.into()),
            422,
            "nope",
        ),
        (
            "POST",
            "/v1/functions".into(),
            Some(r#"{"name":"a","kind":"shell"}"#.into()),
            422,
            "command",
        ),
        (
            "POST",
            "/v1/functions".into(),
            Some(
                r#"{"name":"a","kind":"builtin","builtin":"noop","shared_with":["ghost"]}"#.into(),
            ),
            422,
            "ghost",
        ),
        ("POST", "/v1/functions".into(), Some(huge), 413, "limit"),
        (
            "POST",
            "/v1/tasks".into(),
            Some(r#"{"tasks":[]}"#.into()),
            422,
            "empty",
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(json!({"tasks":[{"function_id": f}]}).to_string()),
            422,
            "endpoint",
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(json!({"tasks":[{"function_id": "nope", "endpoint_id": ep}]}).to_string()),
            404,
            "nope",
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(json!({"tasks":[{"function_id": f, "endpoint_id": "nope"}]}).to_string()),
            404,
            "nope",
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(json!({"tasks":[{"function_id": f, "endpoint_id": ep, "when": 1}]}).to_string()),
            422,
            "when",
        ),
        (
            "POST",
            "/v1/tasks".into(),
            Some(too_many.to_string()),
            413,
            "",
        ),
        ("GET", "/v1/tasks/abc".into(), None, 422, "abc"),
        ("GET", "/v1/tasks/999999".into(), None, 404, "999999"),
        ("GET", "/v1/tasks?ids=1,x".into(), None, 422, "x"),
        (
            "POST",
            "/v1/tasks/wait".into(),
            Some(r#"{"ids":"all"}"#.into()),
            422,
            "ids",
        ),
        ("GET", "/v1/nothing".into(), None, 404, "route"),
        ("DELETE", "/v1/tasks".into(), None, 405, "method"),
    ];
    for (method, path, body, status, needle) in cases {
        // Asked once: an oversized body must get its answer, not a reset connection.
        let (s, v) = call(method, &format!("{url}{path}"), Some(&t), body.as_deref());
        assert_eq!(s, status, "{method} {path}: {v}");
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no JSON error body: {v}"));
        assert!(
            msg.contains(needle) || v["error"]["code"].as_str().unwrap_or("").contains(needle),
            "{method} {path}: `{msg}` should mention `{needle}`"
        );
    }
    let (s, _) = call("GET", &format!("{url}/v1/whoami"), Some(&t), None);
    assert_eq!(s, 200, "the broker is still up after all that");
}

#[test]
fn the_openapi_document_is_valid_and_every_route_exists() {
    let w = World::new();
    let t = w.user("alice");
    let _broker = w.broker(&[]);
    let (s, doc) = call("GET", &format!("{}/v1/openapi.json", w.url), None, None);
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let text = doc.to_string();
    // Every $ref resolves to a schema that exists.
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref to {name}"
        );
    }
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 11);
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "1");
        for (method, op) in ops.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} lists no responses"
            );
            let m = method.to_uppercase();
            let body = (m == "POST").then_some("{}");
            let (s, _) = call(&m, &format!("{}{concrete}", w.url), Some(&t), body);
            assert!(
                s != 404 || concrete.contains("/1"),
                "{m} {path} is in the document but not served"
            );
            assert_ne!(
                s, 405,
                "{m} {path} is in the document but the method is not served"
            );
            assert!(s != 0 && s < 500, "{m} {path} answered {s}");
        }
    }
}

#[test]
fn routing_across_endpoints_and_offline_endpoints_and_the_cli() {
    let w = World::new();
    let t = w.user("alice");
    let _broker = w.broker(&["--endpoint-wait", "2s"]);
    let a = w.create_endpoint("alice", &t, "a", 1);
    let b = w.create_endpoint("alice", &t, "b", 1);
    let _offline = w.create_endpoint("alice", &t, "off", 1);
    let _ea = w.endpoint("alice", &t, "a");
    let _eb = w.endpoint("alice", &t, "b");
    wait_connected(&w.url, &t, &a);
    wait_connected(&w.url, &t, &b);
    let out = w
        .fxr("alice", &t)
        .args([
            "function",
            "register",
            "--name",
            "echo",
            "--builtin",
            "echo",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    // Round-robin over two endpoints, through the CLI.
    let out = w
        .fxr("alice", &t)
        .args([
            "--output",
            "json",
            "submit",
            "--function",
            "echo",
            "--endpoint",
            "a,b",
            "--policy",
            "round-robin",
            "--count",
            "100",
            "--args",
            r#"{"x":1}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 100);
    assert!(lines.iter().all(|l| l["result"]["x"] == 1));
    let ids: Vec<u64> = lines.iter().map(|l| l["task"].as_u64().unwrap()).collect();
    let (_, v) = call(
        "GET",
        &format!(
            "{}/v1/tasks?ids={}",
            w.url,
            ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        ),
        Some(&t),
        None,
    );
    let on_a = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["endpoint_id"] == a.as_str())
        .count();
    assert_eq!(on_a, 50, "round-robin splits evenly");
    // An endpoint that never connects: its task fails as endpoint_unavailable.
    let out = w
        .fxr("alice", &t)
        .args([
            "--output",
            "json",
            "run",
            "--function",
            "echo",
            "--endpoint",
            "off",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "endpoint_unavailable");
    // fxr result and SSE streaming.
    let out = w
        .fxr("alice", &t)
        .args(["--output", "json", "result", &ids[0].to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let a2 = agent();
    let mut resp = a2
        .get(&format!(
            "{}/v1/tasks/stream?ids={},{}",
            w.url, ids[0], ids[1]
        ))
        .header("Authorization", &format!("Bearer {t}"))
        .call()
        .unwrap();
    let text = resp.body_mut().read_to_string().unwrap();
    assert_eq!(text.matches("event: result").count(), 2, "{text}");
    assert!(text.contains("event: end"));
}

#[test]
fn the_command_line_registers_python_and_mpi_functions_and_lists_them_by_kind() {
    let w = World::new();
    let token = w.user("alice");
    let _broker = w.broker(&[]);
    let src = w.dir.path().join("f.py");
    std::fs::write(&src, "def twice(x):\n    return 2 * x\n").unwrap();
    for args in [
        vec![
            "--name",
            "m",
            "--mpi",
            "hostname; true",
            "--num-nodes",
            "2",
            "--ranks-per-node",
            "4",
        ],
        vec![
            "--name",
            "p",
            "--python",
            &format!("{}:twice", src.display()),
        ],
    ] {
        support::succeed(
            w.fxr("alice", &token)
                .args(["function", "register"])
                .args(&args),
        );
    }
    let out = w
        .fxr("alice", &token)
        .args(["function", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mpi `hostname; true` on 2×4 ranks"), "{text}");
    assert!(text.contains("python twice()"), "{text}");
    assert!(!text.contains("shell"), "{text}");
}

#[test]
fn a_second_start_of_a_running_endpoint_is_refused_naming_the_first() {
    let w = World::new();
    let token = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &token, "once", 1);
    let first = w.endpoint("alice", &token, "once");
    wait_connected(&w.url, &token, &ep);
    let out = w
        .fxr("alice", &token)
        .args(["endpoint", "start", "once"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already running") && err.contains(&format!("pid {}", first.0.id())),
        "{err}"
    );
    // The first one is untouched: still connected.
    wait_connected(&w.url, &token, &ep);
}
