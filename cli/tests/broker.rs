//! End-to-end tests of the broker path: the real `fxr broker serve` and `fxr endpoint start`
//! processes, real HTTP and WebSocket on loopback, a real SQLite file in a temp dir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FXR: &str = env!("CARGO_BIN_EXE_fxr");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn kill9(p: &mut Proc) {
    let _ = p.0.kill();
    let _ = p.0.wait();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct World {
    dir: tempfile::TempDir,
    url: String,
    port: u16,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        World {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            port,
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("broker.db")
    }

    fn broker(&self, extra: &[&str]) -> Proc {
        let p = Command::new(FXR)
            .args([
                "broker",
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--db",
            ])
            .arg(self.db())
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Proc(p)
    }

    fn user(&self, name: &str) -> String {
        let out = Command::new(FXR)
            .args(["broker", "user", "add", name, "--db"])
            .arg(self.db())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join(format!("home-{user}"))
    }

    fn fxr(&self, user: &str, token: &str) -> Command {
        let mut c = Command::new(FXR);
        c.env("FXR_HOME", self.home(user))
            .env("FXR_BROKER", &self.url)
            .env("FXR_TOKEN", token);
        c
    }

    fn endpoint(&self, user: &str, token: &str, name: &str) -> Proc {
        let p = self
            .fxr(user, token)
            .args(["endpoint", "start", name])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Proc(p)
    }

    fn create_endpoint(&self, user: &str, token: &str, name: &str, workers: u32) -> String {
        let out = self
            .fxr(user, token)
            .args([
                "--output",
                "json",
                "endpoint",
                "create",
                name,
                "--workers-per-node",
                &workers.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match (method, body) {
        ("GET", _) => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        ("DELETE", _) => {
            let mut r = a.delete(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        (_, b) => {
            let mut r = a.post(url).header("Content-Type", "application/json");
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.send(b.unwrap_or(""))
        }
    };
    let mut resp = match resp {
        Ok(r) => r,
        // A server may answer 413 and close before reading all of an oversized body; the client
        // then sees a broken pipe or a reset instead of the answer. Report that as status 0.
        Err(ureq::Error::Io(_)) => return (0, Value::Null),
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn register(url: &str, token: &str, body: Value) -> String {
    let (s, v) = call(
        "POST",
        &format!("{url}/v1/functions"),
        Some(token),
        Some(&body.to_string()),
    );
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

fn submit(url: &str, token: &str, tasks: Vec<Value>) -> Vec<u64> {
    let (s, v) = call(
        "POST",
        &format!("{url}/v1/tasks"),
        Some(token),
        Some(&json!({"tasks": tasks}).to_string()),
    );
    assert_eq!(s, 202, "{v}");
    v["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Polls until every id has a result (retrying through broker restarts), or panics at `limit`.
fn wait_all(url: &str, token: &str, ids: &[u64], limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = Vec::new();
        let mut ok = true;
        for chunk in ids.chunks(5000) {
            let body = json!({"ids": chunk, "timeout_ms": 1000}).to_string();
            let a = agent();
            let r = a
                .post(&format!("{url}/v1/tasks/wait"))
                .header("Authorization", &format!("Bearer {token}"))
                .header("Content-Type", "application/json")
                .send(&body);
            match r {
                Ok(mut resp) if resp.status() == 200 => {
                    let v: Value =
                        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
                    if v["pending"] != 0 {
                        ok = false;
                    }
                    all.extend(v["tasks"].as_array().unwrap().clone());
                }
                _ => ok = false,
            }
        }
        if ok {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "tasks did not all finish in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_complete(results: &[Value], ids: &[u64]) {
    let got: HashSet<u64> = results.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(results.len(), ids.len());
    assert_eq!(got, ids.iter().copied().collect::<HashSet<_>>());
    for t in results {
        assert_eq!(t["state"], "succeeded", "{t}");
    }
}

fn wait_connected(url: &str, token: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call(
            "GET",
            &format!("{url}/v1/endpoints/{id}"),
            Some(token),
            None,
        );
        if v["connected"] == true && v["workers"].as_u64().unwrap_or(0) > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "endpoint {id} did not connect: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
        "x".repeat(200_000)
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
        let mut tries = 0;
        let (s, v) = loop {
            let r = call(method, &format!("{url}{path}"), Some(&t), body.as_deref());
            tries += 1;
            if r.0 != 0 || tries == 10 {
                break r;
            }
        };
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

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
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
