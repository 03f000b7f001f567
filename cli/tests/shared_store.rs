//! Two brokers on one PostgreSQL store serve the same users, functions and endpoints: tasks
//! submitted to either run on an endpoint linked to the other, results are waited for on
//! either, and when the endpoint's link moves from one broker to the other mid-run, no task is
//! lost and none has two results. Runs when PostgreSQL is installed (`FXR_REQUIRE_POSTGRES=1`
//! makes its absence a failure).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use fxr_broker::store::{pgcluster, Db};
use serde_json::{json, Value};
use std::time::Duration;
use support::broker_world::*;

fn have_postgres() -> bool {
    let required = std::env::var("FXR_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    if pgcluster::bindir().is_none() && !required {
        eprintln!("PostgreSQL is not installed; skipping");
        return false;
    }
    true
}

fn sleeps(f: &str, ep: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"function_id": f, "endpoint_id": ep, "args": {"ms": i % 3}}))
        .collect()
}

/// Points a created endpoint at another broker.
fn retarget(w: &World, user: &str, name: &str, url: &str) {
    let toml = w
        .home(user)
        .join("endpoints")
        .join(name)
        .join("endpoint.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let moved: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("broker =") {
                format!("broker = \"{url}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(
        moved.join("\n"),
        text.trim_end(),
        "endpoint.toml names its broker"
    );
    std::fs::write(&toml, moved.join("\n") + "\n").unwrap();
}

/// Two brokers on one fresh PostgreSQL database, and a user; `None` without PostgreSQL.
struct Two {
    w: World,
    token: String,
    url_b: String,
    _a: Proc,
    _b: Proc,
}

fn two_brokers() -> Option<Two> {
    if !have_postgres() {
        return None;
    }
    let w = World::with_db(pgcluster::shared_database().expect("a PostgreSQL database"));
    let token = w.user("alice");
    let _a = w.broker(&[]);
    let port_b = free_port();
    let url_b = format!("http://127.0.0.1:{port_b}");
    let _b = w.broker_on(port_b, &[]);
    Some(Two {
        w,
        token,
        url_b,
        _a,
        _b,
    })
}

/// Alice's endpoint `site` with `workers`, registered at and linked to the first broker, and a
/// `sleep` function registered at `function_at`: (endpoint id, its process, function id).
fn site_and_sleep(
    w: &World,
    token: &str,
    workers: u32,
    function_at: &str,
) -> (String, Proc, String) {
    let ep = w.create_endpoint("alice", token, "site", workers);
    let endpoint = w.endpoint("alice", token, "site");
    wait_connected(&w.url, token, &ep);
    let f = register(
        function_at,
        token,
        json!({"name": "sleep", "kind": "builtin", "builtin": "sleep"}),
    );
    (ep, endpoint, f)
}

#[test]
fn two_brokers_on_one_store_lose_and_duplicate_nothing() {
    let Some(Two {
        w,
        token,
        url_b,
        _a,
        _b,
    }) = two_brokers()
    else {
        return;
    };

    // Registered at A, linked to A; the function registered at B.
    let (ep, endpoint, f) = site_and_sleep(&w, &token, 4, &url_b);
    // B knows the endpoint and A the function, without a restart.
    let (s, _) = call(
        "GET",
        &format!("{url_b}/v1/endpoints/{ep}"),
        Some(&token),
        None,
    );
    assert_eq!(s, 200);
    let (s, _) = call(
        "GET",
        &format!("{}/v1/functions/{f}", w.url),
        Some(&token),
        None,
    );
    assert_eq!(s, 200);

    // Submitted to each broker, waited for on the other.
    let via_b = submit(&url_b, &token, sleeps(&f, &ep, 3000));
    let via_a = submit(&w.url, &token, sleeps(&f, &ep, 3000));
    assert_complete(
        &wait_all(&w.url, &token, &via_b, Duration::from_secs(120)),
        &via_b,
    );
    assert_complete(
        &wait_all(&url_b, &token, &via_a, Duration::from_secs(120)),
        &via_a,
    );

    // The link moves from A to B while tasks are open at both.
    let before_a = submit(&w.url, &token, sleeps(&f, &ep, 2000));
    let before_b = submit(&url_b, &token, sleeps(&f, &ep, 2000));
    drop(endpoint);
    let queued_a = submit(&w.url, &token, sleeps(&f, &ep, 2000));
    retarget(&w, "alice", "site", &url_b);
    let endpoint = w.endpoint("alice", &token, "site");
    wait_connected(&url_b, &token, &ep);
    let after_a = submit(&w.url, &token, sleeps(&f, &ep, 2000));
    let mut moved: Vec<u64> = [before_a, before_b, queued_a, after_a].concat();
    assert_complete(
        &wait_all(&w.url, &token, &moved, Duration::from_secs(180)),
        &moved,
    );

    // From the store: one row and one result per task.
    let mut all = [via_a, via_b].concat();
    all.append(&mut moved);
    let mut store = Db::parse(w.db()).open_reader().unwrap();
    let rows = store.tasks(&all).unwrap();
    assert_eq!(rows.len(), all.len(), "one row per task");
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        assert!(seen.insert(r.id), "task {} twice", r.id);
        assert_eq!(r.state, "succeeded", "task {}: {:?}", r.id, r.error_message);
    }
    drop(endpoint);
}

#[test]
fn a_cancel_or_a_deletion_at_one_broker_reaches_tasks_held_by_the_other() {
    let Some(Two {
        w,
        token,
        url_b,
        _a,
        _b,
    }) = two_brokers()
    else {
        return;
    };
    let (ep, _endpoint, f) = site_and_sleep(&w, &token, 1, &w.url);
    // One worker, long tasks: most wait at A, linked to the endpoint.
    let tasks: Vec<Value> = (0..20)
        .map(|_| json!({"function_id": f, "endpoint_id": ep, "args": {"ms": 60_000}}))
        .collect();
    let ids = submit(&w.url, &token, tasks);
    let (s, v) = call(
        "POST",
        &format!("{url_b}/v1/tasks/cancel"),
        Some(&token),
        Some(&json!({"ids": ids[..10]}).to_string()),
    );
    assert_eq!(s, 200, "{v}");
    let cancelled = wait_all(&w.url, &token, &ids[..10], Duration::from_secs(60));
    for r in &cancelled {
        assert_eq!(r["state"], "failed", "{r}");
        assert_eq!(r["error"]["kind"], "cancelled", "{r}");
    }
    // Deleting the function at B fails the rest, wherever they are.
    let (s, v) = call(
        "DELETE",
        &format!("{url_b}/v1/functions/{f}"),
        Some(&token),
        None,
    );
    assert_eq!(s, 204, "{v}");
    let rest = wait_all(&w.url, &token, &ids[10..], Duration::from_secs(60));
    for r in &rest {
        assert_eq!(r["error"]["kind"], "function_deleted", "{r}");
    }
    // The other broker hears of it by a notice, so shortly, not at once.
    let gone = || {
        call(
            "GET",
            &format!("{}/v1/functions/{f}", w.url),
            Some(&token),
            None,
        )
        .0 == 404
    };
    assert!(
        support::wait_until(Duration::from_secs(10), gone),
        "the deletion reached the other broker"
    );
}
