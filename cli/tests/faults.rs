//! Faults injected into a running federation: 100,000 tasks go through the broker to an
//! endpoint with two blocks, and while they run the broker, the interchange, a manager and a
//! worker are each killed with SIGKILL at a moment drawn at random (by how far the run has
//! got), and restarted where a user would restart them (the broker and the endpoint by hand,
//! the block by the endpoint's scaling loop, the worker by its manager). Then the store must
//! hold exactly one successful result for every acknowledged task: none lost, none twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::broker_world::*;

/// The children of a process.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.rsplit(')').next().unwrap_or("");
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn cmdline(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', " ")
}

/// Tasks finished so far, or None while the broker is down.
fn finished(url: &str, token: &str) -> Option<u64> {
    let (s, v) = call("GET", &format!("{url}/v1/tasks/stats"), Some(token), None);
    (s == 200).then(|| {
        v["by_state"]["succeeded"].as_u64().unwrap_or(0)
            + v["by_state"]["failed"].as_u64().unwrap_or(0)
    })
}

#[derive(Debug, Clone, Copy)]
enum Victim {
    Broker,
    Interchange,
    Manager,
    Worker,
}

#[test]
fn killing_every_part_at_random_loses_and_duplicates_no_result() {
    const TASKS: usize = 100_000;
    let w = World::new();
    let token = w.user("alice");
    let mut broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &token, "site", 2);
    w.configure("alice", "site", "provider", "init_blocks", "2");
    let mut endpoint = w.endpoint("alice", &token, "site");
    wait_connected(&w.url, &token, &ep);
    let f = register(
        &w.url,
        &token,
        json!({"name": "sleep", "kind": "builtin", "builtin": "sleep"}),
    );
    let mut ids = Vec::with_capacity(TASKS);
    for _ in 0..TASKS / 10_000 {
        let tasks: Vec<Value> = (0..10_000)
            .map(|_| json!({"function_id": f, "endpoint_id": ep, "args": {"ms": 1}}))
            .collect();
        ids.extend(submit(&w.url, &token, tasks));
    }
    assert_eq!(ids.len(), TASKS);

    // When each part dies: a fraction of the run drawn from the clock, in a random order.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut plan: Vec<(f64, Victim)> = [
        Victim::Broker,
        Victim::Interchange,
        Victim::Manager,
        Victim::Worker,
    ]
    .into_iter()
    .map(|v| (0.05 + (next() % 600) as f64 / 1000.0, v))
    .collect();
    plan.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!("fault plan (seed {seed}): {plan:?}");

    let deadline = Instant::now() + Duration::from_secs(600);
    for (at, victim) in plan {
        let goal = (at * TASKS as f64) as u64;
        loop {
            assert!(
                Instant::now() < deadline,
                "the run stalled before {victim:?} at {at:.2}"
            );
            if finished(&w.url, &token).is_some_and(|n| n >= goal) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        match victim {
            Victim::Broker => {
                kill9(&mut broker);
                broker = w.broker(&[]);
            }
            Victim::Interchange => {
                kill9(&mut endpoint);
                endpoint = w.endpoint("alice", &token, "site");
            }
            Victim::Manager | Victim::Worker => {
                // A block (or its worker) may still be starting after an earlier kill.
                let pick = |pid: u32| -> Option<u32> {
                    let pilots = children(pid)
                        .into_iter()
                        .filter(|p| cmdline(*p).contains(" pilot "));
                    match victim {
                        Victim::Manager => pilots.into_iter().next(),
                        _ => pilots
                            .flat_map(children)
                            .find(|p| cmdline(*p).contains(" worker")),
                    }
                };
                let target = loop {
                    if let Some(p) = pick(endpoint.0.id()) {
                        break p;
                    }
                    assert!(Instant::now() < deadline, "no {victim:?} to kill");
                    std::thread::sleep(Duration::from_millis(50));
                };
                // SAFETY: killing a process this test's endpoint started.
                unsafe { libc::kill(target as i32, libc::SIGKILL) };
            }
        }
        eprintln!("killed the {victim:?} at {at:.2} of the run");
    }
    let results = wait_all(&w.url, &token, &ids, Duration::from_secs(600));
    assert_complete(&results, &ids);

    // From the store itself: one row per acknowledged task, each with its one result.
    drop(broker);
    let mut store = fxr_broker::store::Db::parse(w.db()).open_reader().unwrap();
    let rows = store.tasks(&ids).unwrap();
    assert_eq!(rows.len(), TASKS, "one row per task, none lost");
    let mut seen = std::collections::HashSet::new();
    for r in &rows {
        assert!(seen.insert(r.id), "task {} twice", r.id);
        assert_eq!(r.state, "succeeded", "task {}", r.id);
        assert!(
            r.result.is_some() && r.error_kind.is_none(),
            "task {}",
            r.id
        );
    }
    drop(endpoint);
}
