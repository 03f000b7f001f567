//! The broker's promise, tried as an attacker and as a heavy user would: every acknowledged task
//! gets exactly one result, its own, at any size and backlog. Each test is one way that promise
//! was once broken. Real broker and endpoint processes, real sockets on loopback; a raw
//! WebSocket plays the attacker's endpoint link.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use fxr_protocol::{BrokerMsg, LinkMsg, Outcome, TaskId, TaskResult};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::broker_world::*;
use support::{wait_until, FXR};

fn task(url: &str, token: &str, id: u64) -> Value {
    call("GET", &format!("{url}/v1/tasks/{id}"), Some(token), None).1
}

fn echo(w: &World, token: &str) -> String {
    register(
        &w.url,
        token,
        json!({"name": "echo", "kind": "builtin", "builtin": "echo"}),
    )
}

#[test]
fn an_endpoint_cannot_report_results_for_tasks_routed_elsewhere() {
    let w = World::new();
    let alice = w.user("alice");
    let mallory = w.user("mallory");
    let _broker = w.broker(&[]);
    let ea = w.create_endpoint("alice", &alice, "a", 1);
    let em = w.create_endpoint("mallory", &mallory, "m", 1);
    let f = echo(&w, &alice);
    let ids = submit(
        &w.url,
        &alice,
        vec![json!({"function_id": f, "endpoint_id": ea, "args": {"x": "real"}})],
    );
    // Mallory owns an endpoint and claims Alice's task over its link.
    let mut ws = raw_link(&w.url, &em, &credential(&w, "mallory", "m"));
    link_send(
        &mut ws,
        &LinkMsg::Results {
            results: vec![TaskResult {
                id: TaskId(ids[0]),
                outcome: Outcome::Success(br#"{"x":"forged"}"#.to_vec()),
                run_us: 0,
            }],
        },
    );
    // The broker acknowledges it (so a confused endpoint forgets it) but records nothing.
    let ack = loop {
        match link_recv(&mut ws) {
            Some(BrokerMsg::ResultsStored { tasks }) => break tasks,
            Some(_) => continue,
            None => panic!("the link closed before the acknowledgement"),
        }
    };
    assert_eq!(ack, vec![TaskId(ids[0])]);
    let t = task(&w.url, &alice, ids[0]);
    assert_eq!(t["state"], "pending", "{t}");
    assert_eq!(
        metric(&metrics(&w.url), "fxr_broker_foreign_results_total", &[]),
        1.0
    );
    drop(ws);
    let _endpoint = w.endpoint("alice", &alice, "a");
    let r = wait_all(&w.url, &alice, &ids, Duration::from_secs(60));
    assert_eq!(r[0]["result"], json!({"x": "real"}), "{}", r[0]);
}

#[test]
fn a_second_link_connection_replaces_the_first_without_taking_the_endpoint_offline() {
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &alice, "a", 1);
    let _endpoint = w.endpoint("alice", &alice, "a");
    wait_connected(&w.url, &alice, &ep);
    let mut ws = raw_link(&w.url, &ep, &credential(&w, "alice", "a"));
    let _ = ws.close(None);
    while link_recv(&mut ws).is_some() {}
    drop(ws);
    let f = echo(&w, &alice);
    let tasks: Vec<Value> = (0..20)
        .map(|i| json!({"function_id": f, "endpoint_id": ep, "args": {"i": i}}))
        .collect();
    let ids = submit(&w.url, &alice, tasks);
    let r = wait_all(&w.url, &alice, &ids, Duration::from_secs(60));
    assert_complete(&r, &ids);
    let (_, st) = call(
        "GET",
        &format!("{}/v1/endpoints/{ep}", w.url),
        Some(&alice),
        None,
    );
    assert_eq!(st["connected"], true, "{st}");
    assert!(metric(&metrics(&w.url), "fxr_broker_links_replaced_total", &[]) >= 1.0);
}

fn big_args(i: usize, mib: usize) -> Value {
    json!({"i": i, "pad": "x".repeat(mib << 20)})
}

fn check_echoed(r: &[Value], ids: &[u64], mib: usize) {
    assert_complete(r, ids);
    for t in r {
        assert_eq!(
            t["result"]["pad"].as_str().map(str::len),
            Some(mib << 20),
            "task {} got its own large result back",
            t["id"]
        );
    }
}

#[test]
fn large_tasks_queued_while_the_endpoint_is_down_are_sent_in_messages_that_fit() {
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &alice, "a", 2);
    // Results travel whole (over the link, cut into messages), not by reference.
    w.configure("alice", "a", "engine", "result_inline_max", "10485760");
    let f = echo(&w, &alice);
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.extend(submit(
            &w.url,
            &alice,
            vec![json!({"function_id": f, "endpoint_id": ep, "args": big_args(i, 3)})],
        ));
    }
    let _endpoint = w.endpoint("alice", &alice, "a");
    let r = wait_all(&w.url, &alice, &ids, Duration::from_secs(120));
    check_echoed(&r, &ids, 3);
}

#[test]
fn large_tasks_back_to_back_do_not_deadlock_the_link() {
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &alice, "a", 2);
    w.configure("alice", "a", "engine", "result_inline_max", "10485760");
    let _endpoint = w.endpoint("alice", &alice, "a");
    wait_connected(&w.url, &alice, &ep);
    let f = echo(&w, &alice);
    let mut ids = Vec::new();
    for r in 0..10 {
        let tasks = (0..3)
            .map(|i| json!({"function_id": f, "endpoint_id": ep, "args": big_args(r * 3 + i, 3)}))
            .collect();
        ids.extend(submit(&w.url, &alice, tasks));
    }
    let r = wait_all(&w.url, &alice, &ids, Duration::from_secs(180));
    check_echoed(&r, &ids, 3);
    // Small tasks still flow afterwards and the endpoint is live.
    let small: Vec<Value> = (0..100)
        .map(|i| json!({"function_id": f, "endpoint_id": ep, "args": {"i": i}}))
        .collect();
    let ids = submit(&w.url, &alice, small);
    assert_complete(
        &wait_all(&w.url, &alice, &ids, Duration::from_secs(60)),
        &ids,
    );
    let (_, st) = call(
        "GET",
        &format!("{}/v1/endpoints/{ep}", w.url),
        Some(&alice),
        None,
    );
    assert_eq!(st["connected"], true);
    assert!(
        st["last_heartbeat_ms_ago"].as_u64().unwrap() < 10_000,
        "{st}"
    );
}

#[test]
fn tasks_of_a_deleted_function_fail_with_a_reason_and_stay_failed_after_a_restart() {
    let w = World::new();
    let alice = w.user("alice");
    let mut broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &alice, "a", 1);
    let f = echo(&w, &alice);
    let ids = submit(
        &w.url,
        &alice,
        (0..5)
            .map(|_| json!({"function_id": f, "endpoint_id": ep}))
            .collect(),
    );
    let (s, _) = call(
        "DELETE",
        &format!("{}/v1/functions/{f}", w.url),
        Some(&alice),
        None,
    );
    assert_eq!(s, 204);
    let check = || {
        let r = wait_all(&w.url, &alice, &ids, Duration::from_secs(30));
        for t in &r {
            assert_eq!(t["state"], "failed", "{t}");
            assert_eq!(t["error"]["kind"], "function_deleted", "{t}");
        }
    };
    check();
    kill9(&mut broker);
    let _broker = w.broker(&[]);
    check();
    let (s, v) = call(
        "POST",
        &format!("{}/v1/tasks/cancel", w.url),
        Some(&alice),
        Some(&json!({"ids": ids}).to_string()),
    );
    assert_eq!((s, v["cancelled"].as_array().unwrap().len()), (200, 0));
}

#[test]
fn cut_output_is_marked_in_the_result() {
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &alice, "a", 1);
    let _endpoint = w.endpoint("alice", &alice, "a");
    let f = register(
        &w.url,
        &alice,
        json!({"name": "loud", "kind": "shell", "command": "head -c 70000000 /dev/zero"}),
    );
    let ids = submit(
        &w.url,
        &alice,
        vec![json!({"function_id": f, "endpoint_id": ep})],
    );
    let r = wait_all(&w.url, &alice, &ids, Duration::from_secs(60));
    // 64 MiB of output is kept (the node has a store), so the value travels by reference.
    assert_eq!(r[0]["state"], "succeeded", "{}", r[0]);
    let body = agent()
        .get(&format!("{}/v1/tasks/{}/data", w.url, ids[0]))
        .header("Authorization", &format!("Bearer {alice}"))
        .call()
        .unwrap()
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["stdout_bytes"], 70_000_000);
    assert_eq!(v["stdout"].as_str().unwrap().len(), 64 << 20);
}

/// POST /v1/tasks; the status, the Retry-After header and the body.
fn submit_raw(url: &str, token: &str, tasks: Vec<Value>) -> (u16, Option<String>, Value) {
    let mut resp = agent()
        .post(&format!("{url}/v1/tasks"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(&json!({ "tasks": tasks }).to_string())
        .unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let body = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    (resp.status().as_u16(), retry, body)
}

#[test]
fn backlog_limits_answer_429_with_retry_after_and_lift_as_work_finishes() {
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&["--max-backlog-endpoint", "100", "--max-backlog-user", "150"]);
    let ea = w.create_endpoint("alice", &alice, "a", 2);
    let eb = w.create_endpoint("alice", &alice, "b", 1);
    let f = echo(&w, &alice);
    let to = |ep: &str, n: usize| -> Vec<Value> {
        (0..n)
            .map(|_| json!({"function_id": f, "endpoint_id": ep}))
            .collect()
    };
    let (s, _, v) = submit_raw(&w.url, &alice, to(&ea, 100));
    assert_eq!(s, 202);
    let first: Vec<u64> = v["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let (s, retry, v) = submit_raw(&w.url, &alice, to(&ea, 1));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("backlog_full"))
    );
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    assert!(v["error"]["message"].as_str().unwrap().contains("endpoint"));
    // The user's own limit counts both endpoints.
    let (s, _, v) = submit_raw(&w.url, &alice, to(&eb, 51));
    assert_eq!(s, 429, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("user"));
    assert_eq!(submit_raw(&w.url, &alice, to(&eb, 50)).0, 202);
    // Nothing refused was stored: exactly 150 tasks exist.
    let m = metrics(&w.url);
    assert_eq!(metric(&m, "fxr_broker_tasks_submitted_total", &[]), 150.0);
    assert_eq!(metric(&m, "fxr_broker_submissions_refused_total", &[]), 2.0);
    let _endpoint = w.endpoint("alice", &alice, "a");
    assert_complete(
        &wait_all(&w.url, &alice, &first, Duration::from_secs(60)),
        &first,
    );
    assert_eq!(submit_raw(&w.url, &alice, to(&ea, 1)).0, 202);
}

#[test]
fn a_large_backlog_is_accepted_run_and_its_memory_given_back() {
    let w = World::new();
    let alice = w.user("alice");
    let broker = w.broker(&[]);
    let pid = broker.0.id();
    let ep = w.create_endpoint("alice", &alice, "a", 2);
    let f = register(
        &w.url,
        &alice,
        json!({"name": "noop", "kind": "builtin", "builtin": "noop"}),
    );
    let base = rss(pid);
    let mut batches = Vec::new();
    for _ in 0..30 {
        let tasks = (0..10_000)
            .map(|_| json!({"function_id": f, "endpoint_id": ep, "args": {"pad": "0123456789012345678901234567890123456789"}}))
            .collect();
        let (s, _, v) = submit_raw(&w.url, &alice, tasks);
        assert_eq!(s, 202);
        batches.push(v["batch_id"].as_u64().unwrap());
    }
    let mut peak = rss(pid);
    let _endpoint = w.endpoint("alice", &alice, "a");
    let done = |m: &prometheus_parse::Scrape| {
        metric(
            m,
            "fxr_broker_tasks_finished_total",
            &[("state", "succeeded")],
        )
    };
    // The peak is while the backlog is held: before the endpoint comes, or (with a shared
    // store, where the broker takes the tasks from the store when the link arrives) while it runs.
    assert!(
        wait_until(Duration::from_secs(120), || {
            peak = peak.max(rss(pid));
            done(&metrics(&w.url)) == 300_000.0
        }),
        "the backlog ran"
    );
    let m = metrics(&w.url);
    for state in ["pending", "dispatched", "queued"] {
        assert_eq!(metric(&m, "fxr_broker_tasks", &[("state", state)]), 0.0);
    }
    // Housekeeping shrinks the drained tables within a few seconds.
    let grown = peak.saturating_sub(base);
    assert!(
        grown > 20 << 20,
        "the backlog took memory: {base} -> {peak}"
    );
    let mut now = peak;
    assert!(
        wait_until(Duration::from_secs(20), || {
            now = rss(pid);
            now < base + grown / 2
        }),
        "memory came back: base {base}, peak {peak}, now {now}"
    );
}

#[test]
fn many_waiting_clients_each_get_their_own_results_and_nothing_of_others() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &alice, "a", 4);
    let _endpoint = w.endpoint("alice", &alice, "a");
    wait_connected(&w.url, &alice, &ep);
    let f = echo(&w, &alice);
    let got: Vec<(u64, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..100)
            .map(|i| {
                let (url, f, ep, alice) = (&w.url, &f, &ep, &alice);
                s.spawn(move || {
                    let ids = submit(
                        url,
                        alice,
                        vec![json!({"function_id": f, "endpoint_id": ep, "args": {"client": i}})],
                    );
                    let (st, v) = call(
                        "POST",
                        &format!("{url}/v1/tasks/wait"),
                        Some(alice),
                        Some(&json!({"ids": ids, "timeout_ms": 60_000}).to_string()),
                    );
                    assert_eq!(st, 200);
                    assert_eq!(v["pending"], 0, "{v}");
                    (i, v["tasks"][0]["result"].clone())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in got {
        assert_eq!(r, json!({"client": i}));
    }
    // Bob waits on Alice's task ids: he is told nothing of them.
    let ids = submit(
        &w.url,
        &alice,
        vec![json!({"function_id": f, "endpoint_id": ep, "args": {"secret": 1}})],
    );
    let (_, v) = call(
        "POST",
        &format!("{}/v1/tasks/wait", w.url),
        Some(&bob),
        Some(&json!({"ids": ids, "timeout_ms": 3000}).to_string()),
    );
    assert_eq!(v["tasks"], json!([]), "{v}");
    assert!(wait_until(Duration::from_secs(10), || metric(
        &metrics(&w.url),
        "fxr_broker_watchers",
        &[]
    ) == 0.0));
}

#[test]
fn long_id_lists_go_in_bodies_and_short_query_strings_say_so() {
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &alice, "a", 2);
    let _endpoint = w.endpoint("alice", &alice, "a");
    let f = echo(&w, &alice);
    let ids = submit(
        &w.url,
        &alice,
        (0..10_000)
            .map(|_| json!({"function_id": f, "endpoint_id": ep}))
            .collect(),
    );
    let r = wait_all(&w.url, &alice, &ids, Duration::from_secs(120));
    assert_complete(&r, &ids);
    let (s, v) = call(
        "POST",
        &format!("{}/v1/tasks/query", w.url),
        Some(&alice),
        Some(&json!({ "ids": ids }).to_string()),
    );
    assert_eq!((s, v["tasks"].as_array().unwrap().len()), (200, 10_000));
    let list: Vec<String> = ids[..1001].iter().map(u64::to_string).collect();
    let (s, v) = call(
        "GET",
        &format!("{}/v1/tasks?ids={}", w.url, list.join(",")),
        Some(&alice),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (414, Some("too_many_ids"))
    );
}

/// Reads a result stream to its end: the ids of its `result` events.
fn read_stream(url: &str, token: &str, query: &str) -> (u16, Vec<u64>) {
    use std::io::BufRead;
    let resp = agent()
        .get(&format!("{url}/v1/tasks/stream?{query}"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, Vec::new());
    }
    let mut ids = Vec::new();
    let mut event = String::new();
    for line in std::io::BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.unwrap();
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            match event.as_str() {
                "result" => {
                    let v: Value = serde_json::from_str(d).unwrap();
                    ids.push(v["id"].as_u64().unwrap());
                }
                // With `grouped`: the results finished together, as one array.
                "results" => {
                    let v: Vec<Value> = serde_json::from_str(d).unwrap();
                    assert!(!v.is_empty());
                    ids.extend(v.iter().map(|t| t["id"].as_u64().unwrap()));
                }
                "end" => break,
                _ => {}
            }
        }
    }
    (status, ids)
}

#[test]
fn a_batch_is_followed_over_the_event_stream_without_naming_ids() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &alice, "a", 2);
    let f = register(
        &w.url,
        &alice,
        json!({"name": "sleep", "kind": "builtin", "builtin": "sleep"}),
    );
    let batch = |n: usize| {
        let (s, _, v) = submit_raw(
            &w.url,
            &alice,
            (0..n)
                .map(|_| json!({"function_id": f, "endpoint_id": ep, "args": {"ms": 2}}))
                .collect(),
        );
        assert_eq!(s, 202);
        let ids: Vec<u64> = v["task_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        (v["batch_id"].as_u64().unwrap(), ids)
    };
    let (b1, ids1) = batch(300);
    let (_b2, _ids2) = batch(200);
    let _endpoint = w.endpoint("alice", &alice, "a");
    let (s, got) = read_stream(&w.url, &alice, &format!("batch={b1}"));
    assert_eq!(s, 200);
    assert_eq!(got.len(), ids1.len(), "each task of the batch once");
    assert_eq!(
        got.iter().copied().collect::<HashSet<_>>(),
        ids1.iter().copied().collect::<HashSet<_>>()
    );
    // Followed again after it finished: every result at once, then the end; grouped, the
    // same results in fewer events.
    assert_eq!(
        read_stream(&w.url, &alice, &format!("batch={b1}")).1.len(),
        300
    );
    let (s, grouped) = read_stream(&w.url, &alice, &format!("batch={b1}&grouped=true"));
    assert_eq!(s, 200);
    assert_eq!(
        grouped.iter().copied().collect::<HashSet<_>>(),
        ids1.iter().copied().collect::<HashSet<_>>()
    );
    assert_eq!(grouped.len(), 300, "each once");
    assert_eq!(read_stream(&w.url, &bob, &format!("batch={b1}")).0, 404);
}

#[test]
fn metrics_parse_and_count_the_tasks_run() {
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &alice, "a", 2);
    let port = free_port();
    let _endpoint = Proc(
        w.fxr("alice", &alice)
            .args(["endpoint", "start", "a", "--foreground", "--metrics"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_connected(&w.url, &alice, &ep);
    let f = echo(&w, &alice);
    let fail = register(
        &w.url,
        &alice,
        json!({"name": "fail", "kind": "builtin", "builtin": "fail"}),
    );
    let mut tasks: Vec<Value> = (0..500)
        .map(|_| json!({"function_id": f, "endpoint_id": ep}))
        .collect();
    tasks.extend((0..7).map(|_| json!({"function_id": fail, "endpoint_id": ep})));
    let ids = submit(&w.url, &alice, tasks);
    wait_all(&w.url, &alice, &ids, Duration::from_secs(60));
    let m = metrics(&w.url);
    assert_eq!(metric(&m, "fxr_broker_tasks_submitted_total", &[]), 507.0);
    let fin = |s| metric(&m, "fxr_broker_tasks_finished_total", &[("state", s)]);
    assert_eq!((fin("succeeded"), fin("failed")), (500.0, 7.0));
    assert_eq!(
        metric(&m, "fxr_broker_endpoint_connected", &[("endpoint", &ep)]),
        1.0
    );
    assert!(metric(&m, "fxr_broker_store_commit_seconds_count", &[]) >= 2.0);
    let url = format!("http://127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(10), || {
        let im = metrics(&url);
        metric(
            &im,
            "fxr_interchange_tasks_total",
            &[("event", "completed")],
        ) + metric(&im, "fxr_interchange_tasks_total", &[("event", "failed")])
            == 507.0
    }));
    let im = metrics(&url);
    assert_eq!(metric(&im, "fxr_interchange_managers", &[]), 1.0);
    assert_eq!(
        metric(&im, "fxr_interchange_workers", &[("state", "idle")])
            + metric(&im, "fxr_interchange_workers", &[("state", "busy")]),
        2.0
    );
    assert_eq!(
        metric(&im, "fxr_interchange_blocks", &[("state", "running")]),
        1.0
    );
}

#[test]
fn a_pilot_that_dies_is_reaped_and_replaced() {
    let mut child = Command::new(FXR)
        .args([
            "--output",
            "json",
            "endpoint",
            "start",
            "--local",
            "--blocks",
            "1",
            "--workers-per-node",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // Kept open to the end: the endpoint may still write, and a closed pipe would kill it.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let mut ep = Proc(child);
    let v: Value = serde_json::from_str(&line).unwrap();
    let addr = v["endpoint"].as_str().unwrap().to_string();
    let victim = v["pilot_pids"][0].as_u64().unwrap() as i32;
    // SAFETY: killing a pilot this test's endpoint started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let mut door = fxr_interchange::SocketClient::connect(&addr).unwrap();
    let status = |door: &mut fxr_interchange::SocketClient| {
        fxr_interchange::client::status(door, Duration::from_secs(5)).unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            let st = status(&mut door);
            st.managers.len() == 1 && st.managers[0].block_id.0 != "local-1"
        }),
        "a new block replaced the dead one: {:?}",
        status(&mut door)
    );
    let zombie = || {
        std::fs::read_to_string(format!("/proc/{victim}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    };
    assert!(
        wait_until(Duration::from_secs(10), || !zombie()),
        "the dead pilot was reaped"
    );
    let tasks: Vec<fxr_protocol::Task> = (0..50)
        .map(|i| fxr_protocol::Task {
            id: TaskId(i),
            function: fxr_protocol::Function::Builtin(fxr_protocol::Builtin::Noop),
            args: vec![],
            attempt: 0,
            container: None,
        })
        .collect();
    let r = fxr_interchange::client::submit_and_wait(
        &mut door,
        tasks,
        50,
        Duration::from_secs(30),
        &mut |_, _| {},
    )
    .unwrap();
    assert!(r.len() == 50 && r.iter().all(TaskResult::is_success));
    let started = Instant::now();
    fxr_interchange::FrontDoor::send(&mut door, fxr_protocol::ClientMsg::Shutdown).unwrap();
    assert_eq!(
        support::wait_exit(&mut ep.0, Duration::from_secs(60)),
        Some(0),
        "stopped in {:?}",
        started.elapsed()
    );
    drop(stdout);
}

#[test]
fn a_silent_link_is_closed_and_its_endpoint_shown_offline() {
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&["--link-idle", "1s"]);
    let ep = w.create_endpoint("alice", &alice, "a", 1);
    let mut ws = raw_link(&w.url, &ep, &credential(&w, "alice", "a"));
    let connected = || {
        call(
            "GET",
            &format!("{}/v1/endpoints/{ep}", w.url),
            Some(&alice),
            None,
        )
        .1["connected"]
            == true
    };
    // The upgrade answers before the broker's side of the link has registered it.
    assert!(wait_until(Duration::from_secs(10), connected));
    // Say nothing: the broker closes the link and stops counting the endpoint as connected.
    let started = Instant::now();
    while link_recv(&mut ws).is_some() {}
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(10), || !connected()));
    assert_eq!(
        metric(&metrics(&w.url), "fxr_broker_links_silent_total", &[]),
        1.0
    );
}
