//! Task history and the CLI's output for people: `GET /v1/tasks` by filters and cursor,
//! `fxr task list|show`, `fxr whoami`, unique function names, `submit --progress` in a log,
//! shell results as text, exit codes, JSON errors, completions. The real broker and endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use support::broker_world::*;

fn page(url: &str, token: &str, query: &str) -> Value {
    let (s, v) = call("GET", &format!("{url}/v1/tasks?{query}"), Some(token), None);
    assert_eq!(s, 200, "{query}: {v}");
    v
}

/// Walks every page of a listing; returns the ids in the order seen.
fn walk(url: &str, token: &str, query: &str, limit: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let mut q = format!("{query}&limit={limit}");
        if let Some(c) = cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let v = page(url, token, &q);
        seen.extend(
            v["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_u64().unwrap()),
        );
        match v["next_cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => return seen,
        }
    }
}

#[test]
fn pagination_sees_every_task_once_while_tasks_are_submitted() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let _broker = w.broker(&[]);
    // An endpoint that never connects: the tasks stay pending.
    let ep = w.create_endpoint("alice", &alice, "idle", 1);
    let f = register(
        &w.url,
        &alice,
        json!({"name": "noop", "kind": "builtin", "builtin": "noop"}),
    );
    let g = register(
        &w.url,
        &alice,
        json!({"name": "sleep", "kind": "builtin", "builtin": "sleep"}),
    );
    let before = submit(
        &w.url,
        &alice,
        vec![json!({"function_id": g, "endpoint_id": ep})],
    );

    // Oldest first, a page at a time, while another thread submits 40 batches of 50.
    let url = w.url.clone();
    let token = alice.clone();
    let (f2, ep2) = (f.clone(), ep.clone());
    let submitter = std::thread::spawn(move || {
        let mut ids = Vec::new();
        for _ in 0..40 {
            let tasks = (0..50)
                .map(|_| json!({"function_id": f2, "endpoint_id": ep2}))
                .collect();
            ids.extend(submit(&url, &token, tasks));
        }
        ids
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut cursor: Option<u64> = None;
    let mut done_submitting = false;
    loop {
        let mut q = "order=asc&limit=37".to_string();
        if let Some(c) = cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let v = page(&w.url, &alice, &q);
        let got: Vec<u64> = v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect();
        if let Some(last) = got.last() {
            cursor = Some(*last);
        }
        seen.extend(&got);
        if got.is_empty() || v["next_cursor"].is_null() {
            if done_submitting {
                break;
            }
            done_submitting = submitter.is_finished();
        }
    }
    let submitted = submitter.join().unwrap();
    let unique: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no task twice");
    let all: HashSet<u64> = submitted.iter().chain(&before).copied().collect();
    assert_eq!(unique, all, "every task once");
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "in order");

    // Newest first over the same tasks; filters.
    let desc = walk(&w.url, &alice, "state=pending", 100);
    assert_eq!(desc.len(), 2001);
    assert!(desc.windows(2).all(|p| p[0] > p[1]));
    assert_eq!(walk(&w.url, &alice, &format!("function={g}"), 10), before);
    assert_eq!(
        walk(&w.url, &alice, "state=succeeded", 10),
        Vec::<u64>::new()
    );
    assert_eq!(
        walk(&w.url, &alice, &format!("endpoint={ep}&since_ms=0"), 1000).len(),
        2001
    );
    let t0 = page(&w.url, &alice, &format!("ids={}", before[0]))["tasks"][0]["created_ms"]
        .as_i64()
        .unwrap();
    assert_eq!(
        walk(&w.url, &alice, &format!("until_ms={}", t0 + 1), 1000),
        before
    );
    // Another user sees none of them.
    assert!(page(&w.url, &bob, "")["tasks"]
        .as_array()
        .unwrap()
        .is_empty());
    // Bad parameters name themselves.
    for (q, word) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("state=done", "state"),
        ("ids=1&state=pending", "ids"),
        ("colour=red", "colour"),
    ] {
        let (s, v) = call(
            "GET",
            &format!("{}/v1/tasks?{q}", w.url),
            Some(&alice),
            None,
        );
        assert_eq!(s, 422, "{q}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(word),
            "{q}: {v}"
        );
    }
    // Stats count them.
    let (s, st) = call(
        "GET",
        &format!("{}/v1/tasks/stats", w.url),
        Some(&alice),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(st["by_state"]["pending"], 2001, "{st}");
}

#[test]
fn function_names_are_unique_per_owner() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let _broker = w.broker(&[]);
    let body =
        json!({"name": "hello", "kind": "builtin", "builtin": "echo", "visibility": "public"});
    let first = register(&w.url, &alice, body.clone());
    // The very same function again: its id, nothing new.
    let (s, v) = call(
        "POST",
        &format!("{}/v1/functions", w.url),
        Some(&alice),
        Some(&body.to_string()),
    );
    assert_eq!((s, v["id"].as_str()), (200, Some(first.as_str())), "{v}");
    // Another function under the name: refused, naming the one that has it.
    let other = json!({"name": "hello", "kind": "builtin", "builtin": "noop"});
    let (s, v) = call(
        "POST",
        &format!("{}/v1/functions", w.url),
        Some(&alice),
        Some(&other.to_string()),
    );
    assert_eq!(s, 409, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("hello") && m.contains(&first), "{m}");
    // Another owner may use the name; each resolves `hello` to their own.
    let bobs = register(&w.url, &bob, body);
    let resolve = |user: &str, token: &str| {
        let out = w
            .fxr(user, token)
            .args(["task", "list", "--function", "hello"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert_eq!(
        resolve("alice", &alice),
        "",
        "alice's own hello wins over bob's public one"
    );
    assert_eq!(resolve("bob", &bob), "");
    assert_ne!(first, bobs);
    let dup = w
        .fxr("alice", &alice)
        .args([
            "function",
            "register",
            "--name",
            "hello",
            "--builtin",
            "noop",
        ])
        .output()
        .unwrap();
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr)
        .contains("already have a different function named `hello`"));
}

#[test]
fn the_cli_speaks_to_people_and_to_scripts() {
    let w = World::new();
    let token = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &token, "site", 2);
    let _endpoint = w.endpoint("alice", &token, "site");
    wait_connected(&w.url, &token, &ep);
    let fxr = |args: &[&str]| w.fxr("alice", &token).args(args).output().unwrap();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // whoami
    let who = fxr(&["whoami"]);
    assert!(text(&who).starts_with("alice (user "), "{}", text(&who));

    // A shell command's output as text; a non-zero exit code is the command's failure.
    support::succeed(w.fxr("alice", &token).args([
        "function",
        "register",
        "--name",
        "greet",
        "--shell",
        "printf 'hello\\nworld\\n'; echo oops >&2; exit {code}",
    ]));
    let ok = fxr(&[
        "run",
        "greet",
        "--endpoint",
        "site",
        "--args",
        "{\"code\": 0}",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", err(&ok));
    assert_eq!(text(&ok), "hello\nworld\n--- stderr\noops\n");
    let bad = fxr(&[
        "run",
        "greet",
        "--endpoint",
        "site",
        "--args",
        "{\"code\": 3}",
    ]);
    assert_eq!(
        bad.status.code(),
        Some(4),
        "a command that returned non-zero"
    );
    assert!(text(&bad).ends_with("--- exit code 3\n"), "{}", text(&bad));

    // --progress in a log: plain lines with rate and failures, never a carriage return.
    let lines: String = (0..30)
        .map(|i| format!("{{\"code\": {}}}\n", i % 10 / 9))
        .collect();
    let args_file = w.dir.path().join("args.jsonl");
    std::fs::write(&args_file, lines).unwrap();
    let sub = fxr(&[
        "submit",
        "--function",
        "greet",
        "--endpoint",
        "site",
        "--progress",
        "--args-file",
        args_file.to_str().unwrap(),
    ]);
    let e = err(&sub);
    assert!(!e.contains('\r'), "{e:?}");
    assert!(
        e.contains("30/30 tasks, 0 failed") && e.contains("tasks/s"),
        "{e}"
    );
    assert!(e.contains("3 commands returned non-zero"), "{e}");
    assert_eq!(sub.status.code(), Some(4));
    // More than 20 results: only the summary (and failures) unless asked.
    assert!(text(&sub).is_empty(), "{}", text(&sub));
    let all = fxr(&[
        "submit",
        "--function",
        "greet",
        "--endpoint",
        "site",
        "--show-results",
        "--args-file",
        args_file.to_str().unwrap(),
    ]);
    assert_eq!(text(&all).matches("task ").count(), 30);

    // Failures: counted in the progress line, listed, and found again in the history.
    let fail = fxr(&[
        "submit",
        "--function",
        "greet",
        "--endpoint",
        "site",
        "--progress",
        "--count",
        "2",
        "--args",
        "{}",
    ]);
    assert_eq!(fail.status.code(), Some(3));
    assert!(err(&fail).contains("2/2 tasks, 2 failed"), "{}", err(&fail));
    assert!(
        text(&fail).contains("failed (rejected)") || text(&fail).contains("failed ("),
        "{}",
        text(&fail)
    );
    let listed = fxr(&["task", "list", "--state", "failed"]);
    let l = text(&listed);
    assert_eq!(l.lines().filter(|x| x.contains("failed")).count(), 2, "{l}");
    assert!(
        l.contains("greet") && l.contains("site"),
        "names, not ids: {l}"
    );
    let ids: Vec<String> = text(&fxr(&["--output", "json", "task", "list", "-n", "1"]))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].to_string())
        .collect();
    let show = fxr(&["task", "show", &ids[0]]);
    assert!(text(&show).contains("function  greet"), "{}", text(&show));

    // Under --output json an error is a JSON object too.
    let e = fxr(&["--output", "json", "run", "nosuch", "--endpoint", "site"]);
    assert_eq!(e.status.code(), Some(1));
    let v: Value = serde_json::from_str(err(&e).trim()).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nosuch"),
        "{v}"
    );

    // Completions for three shells.
    for shell in ["bash", "zsh", "fish"] {
        let c = fxr(&["completions", shell]);
        assert!(c.status.success());
        assert!(
            text(&c).contains("endpoint") && text(&c).contains("whoami"),
            "{shell}"
        );
    }
    assert!(text(&fxr(&["completions", "bash"])).contains("complete -F"));
}
