//! One set of checks for every store implementation: SQLite always, PostgreSQL when it is
//! installed (a throwaway cluster this test starts; `FXR_REQUIRE_POSTGRES=1` makes its absence
//! a failure). Then what only a shared store does: notices to the other brokers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fxr_broker::store::{
    pgcluster, Completion, Db, EndpointRow, FunctionRow, NewTask, Notice, PgStore, Store,
    StoreError, TaskFilter,
};
use std::time::{Duration, Instant};

fn postgres() -> Option<String> {
    let required = std::env::var("FXR_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    if pgcluster::bindir().is_none() && !required {
        eprintln!("PostgreSQL is not installed; only SQLite is checked");
        return None;
    }
    Some(pgcluster::shared_database().expect("a PostgreSQL database"))
}

fn function(id: &str, owner: i64, name: &str, spec: &str) -> FunctionRow {
    FunctionRow {
        id: id.into(),
        owner,
        name: name.into(),
        description: String::new(),
        spec: spec.into(),
        public: false,
        shared_with: vec![3, 4],
    }
}

fn new_task(owner: i64, f: &str, ep: &str, args: &[u8]) -> NewTask {
    NewTask {
        owner,
        function_id: f.into(),
        endpoint_id: ep.into(),
        args: args.to_vec(),
    }
}

fn done(id: u64, ok: bool) -> Completion {
    Completion {
        id,
        result: ok.then(|| format!("{id}").into_bytes()),
        data_ref: None,
        error: (!ok).then(|| ("task_error".to_string(), format!("task {id} failed"))),
    }
}

/// Every behaviour the broker relies on, on a fresh store.
fn conformance(s: &mut Store) {
    // Users.
    let alice = s.add_user("alice", "h-alice").unwrap();
    let bob = s.add_user("bob", "h-bob").unwrap();
    assert_ne!(alice, bob);
    assert!(s.add_user("alice", "h-other").is_err(), "names are unique");
    assert_eq!(s.user_by_token("h-bob").unwrap().unwrap().id, bob);
    assert!(s.user_by_token("nope").unwrap().is_none());
    assert_eq!(s.user_by_name("alice").unwrap().unwrap().id, alice);
    assert_eq!(s.user_name(bob).unwrap().as_deref(), Some("bob"));
    assert_eq!(s.user_name(9999).unwrap(), None);

    // Functions: unique names per owner, identical re-registration, quota.
    assert_eq!(
        s.put_function(&function("f1", alice, "add", "{1}"), 2)
            .unwrap(),
        None
    );
    assert_eq!(
        s.put_function(&function("f9", alice, "add", "{1}"), 2)
            .unwrap(),
        Some("f1".into())
    );
    assert!(matches!(
        s.put_function(&function("f9", alice, "add", "{2}"), 2),
        Err(StoreError::Taken(_))
    ));
    assert_eq!(
        s.put_function(&function("f2", bob, "add", "{2}"), 2)
            .unwrap(),
        None
    );
    assert_eq!(
        s.put_function(&function("f3", alice, "mul", "{3}"), 2)
            .unwrap(),
        None
    );
    assert!(matches!(
        s.put_function(&function("f4", alice, "div", "{4}"), 2),
        Err(StoreError::Quota(_))
    ));
    let f1 = s.function("f1").unwrap().unwrap();
    assert_eq!((f1.owner, f1.shared_with.clone()), (alice, vec![3, 4]));
    assert_eq!(s.functions().unwrap().len(), 3);
    assert!(s.delete_function("f3").unwrap());
    assert!(!s.delete_function("f3").unwrap());
    assert!(s.function("f3").unwrap().is_none());

    // Endpoints.
    let ep = |id: &str, owner| EndpointRow {
        id: id.into(),
        owner,
        name: id.into(),
        credential_hash: format!("c-{id}"),
        shared_with: vec![],
    };
    s.put_endpoint(&ep("e1", alice), 1).unwrap();
    assert!(matches!(
        s.put_endpoint(&ep("e2", alice), 1),
        Err(StoreError::Quota(_))
    ));
    s.put_endpoint(&ep("e2", bob), 1).unwrap();
    assert_eq!(s.endpoints().unwrap().len(), 2);
    assert_eq!(s.endpoint("e2").unwrap().unwrap().owner, bob);
    assert!(s.endpoint("e9").unwrap().is_none());
    assert!(s.delete_endpoint("e2").unwrap());
    assert_eq!(s.endpoints().unwrap().len(), 1);

    // Tasks: a submission keeps its order, ids only grow.
    let (b1, created, ids) = s
        .insert_tasks(
            alice,
            &[
                new_task(alice, "f1", "e1", b"[1]"),
                new_task(alice, "f1", "e2", b"[2]"),
                new_task(alice, "f1", "e1", b""),
            ],
        )
        .unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let (b2, _, more) = s
        .insert_tasks(bob, &[new_task(bob, "f2", "e1", b"[9]")])
        .unwrap();
    assert!(b2 > b1 && more[0] > ids[2]);
    assert_eq!(s.batch_owner(b1).unwrap(), Some(alice));
    assert_eq!(s.batch_owner(b2 + 100).unwrap(), None);
    let rows = s.batch_tasks(b1).unwrap();
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert_eq!(rows[0].args, b"[1]");
    assert_eq!(rows[2].args, b"");
    assert!(rows
        .iter()
        .all(|r| r.state == "pending" && r.created_ms == created && r.batch == b1));

    // Open tasks, by endpoint and batch.
    assert_eq!(s.open_tasks().unwrap().len(), 4);
    let of_e1: Vec<u64> = s
        .open_tasks_of("e1", None, 0, 100)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(of_e1, vec![ids[0], ids[2], more[0]]);
    let of_b1: Vec<u64> = s
        .open_tasks_of("e1", Some(b1), 0, 100)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(of_b1, vec![ids[0], ids[2]]);
    assert_eq!(s.open_task_ids_of_function("f1").unwrap(), ids);
    // A page at a time, after an id.
    let page: Vec<u64> = s
        .open_tasks_of("e1", None, ids[0], 1)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(page, vec![ids[2]]);

    // Results: the first one counts, also within one batch of completions.
    let fresh = s
        .complete(&[done(ids[0], true), done(ids[1], false), done(ids[0], false)])
        .unwrap();
    assert_eq!(fresh, vec![true, true, false]);
    assert_eq!(
        s.complete(&[done(ids[0], false), done(777_777, true)])
            .unwrap(),
        vec![false, false]
    );
    let got = s.tasks(&[ids[0], ids[1], 777_777]).unwrap();
    assert_eq!(got.len(), 2);
    let first = got.iter().find(|r| r.id == ids[0]).unwrap();
    assert_eq!(first.state, "succeeded");
    assert_eq!(
        first.result.as_deref(),
        Some(format!("{}", ids[0]).as_bytes())
    );
    let second = got.iter().find(|r| r.id == ids[1]).unwrap();
    assert_eq!(
        (second.state.as_str(), second.error_kind.as_deref()),
        ("failed", Some("task_error"))
    );
    assert!(second.completed_ms.is_some());
    assert_eq!(s.open_tasks_of("e1", Some(b1), 0, 100).unwrap().len(), 1);

    // Listing with filters and a cursor.
    let mut f = TaskFilter {
        owner: alice,
        limit: 2,
        ..TaskFilter::default()
    };
    let page = s.list_tasks(&f).unwrap();
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    f.cursor = Some(ids[1]);
    let page = s.list_tasks(&f).unwrap();
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[0]]);
    let f = TaskFilter {
        owner: alice,
        state: Some("pending".into()),
        endpoint_id: Some("e1".into()),
        oldest_first: true,
        limit: 10,
        ..TaskFilter::default()
    };
    assert_eq!(
        s.list_tasks(&f)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        vec![ids[2]]
    );

    // Counts.
    let stats = s.task_stats(alice, 0, 60_000).unwrap();
    let mut by_state = stats.by_state.clone();
    by_state.sort();
    assert_eq!(
        by_state,
        vec![
            ("failed".into(), 1),
            ("pending".into(), 1),
            ("succeeded".into(), 1)
        ]
    );
    assert_eq!(stats.failures, vec![("task_error".into(), 1)]);
    let (ok, failed) = stats
        .finished
        .iter()
        .fold((0, 0), |(a, b), (_, x, y)| (a + x, b + y));
    assert_eq!((ok, failed), (1, 1));

    // Purging keeps open tasks.
    assert_eq!(s.purge(i64::MAX).unwrap(), 2);
    assert_eq!(s.open_tasks().unwrap().len(), 2);
}

#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::parse(&dir.path().join("t.db").display().to_string());
    assert!(matches!(db, Db::Sqlite(_)));
    let mut s = db.open().unwrap();
    assert!(!s.shared());
    conformance(&mut s);
    assert_eq!(s.open_counts(1, &[]).unwrap(), None, "the hub counts them");
}

#[test]
fn postgres_store_conforms() {
    let Some(url) = postgres() else { return };
    let db = Db::parse(&url);
    assert!(matches!(db, Db::Postgres(_)));
    let mut s = db.open().unwrap();
    assert!(s.shared());
    conformance(&mut s);
    // A second broker opening the same database finds the schema and the data.
    let mut again = db.open().unwrap();
    assert_eq!(again.user_by_name("bob").unwrap().unwrap().name, "bob");
    assert_ne!(
        again.origin(),
        s.origin(),
        "each broker has its own identity"
    );

    // Open tasks counted for every broker, kept with the tasks: alice has one left on e1, bob
    // one; e2's task failed.
    let alice = s.user_by_name("alice").unwrap().unwrap().id;
    let eps = ["e1".to_string(), "e2".to_string()];
    assert_eq!(
        again.open_counts(alice, &eps).unwrap(),
        Some((1, vec![2, 0]))
    );

    // Stranded: e1 was never linked, so its tasks count from their creation.
    let open: Vec<u64> = s.open_tasks().unwrap().iter().map(|r| r.id).collect();
    let later = fxr_broker::store::now_ms() + 60_000;
    assert_eq!(s.stranded(later, 100).unwrap(), open);
    assert_eq!(s.stranded(0, 100).unwrap(), Vec::<u64>::new());
    // Linked (and confirmed) at a broker: nothing is stranded, whatever the wait.
    s.link_up("e1").unwrap();
    s.links_alive(&["e1".to_string()]).unwrap();
    assert_eq!(again.stranded(later, 100).unwrap(), Vec::<u64>::new());
    // Another broker's link going down does not end this one's.
    again.link_down("e1").unwrap();
    assert_eq!(s.stranded(later, 100).unwrap(), Vec::<u64>::new());
    // Down at the holder: offline from then on.
    s.link_down("e1").unwrap();
    assert_eq!(again.stranded(later, 1).unwrap(), open[..1].to_vec());
    assert_eq!(
        again
            .stranded(fxr_broker::store::now_ms() - 60_000, 100)
            .unwrap(),
        Vec::<u64>::new()
    );
}

fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Notice>, what: &str) -> Notice {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.try_recv() {
            Ok(n) => return n,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                assert!(Instant::now() < deadline, "no notice: {what}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("listener gone: {e}"),
        }
    }
}

#[test]
fn a_shared_store_tells_other_brokers_what_changed() {
    let Some(url) = postgres() else { return };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    PgStore::listen(&url, tx).unwrap();
    assert_eq!(next(&mut rx, "resync on connect"), Notice::Resync);
    let mut s = Db::parse(&url).open().unwrap();
    let origin = s.origin().to_string();
    let alice = s.add_user("alice", "h").unwrap();
    s.put_function(&function("f1", alice, "add", "{}"), 10)
        .unwrap();
    assert_eq!(
        next(&mut rx, "registry"),
        Notice::Registry {
            origin: origin.clone()
        }
    );
    // One notice per endpoint of a submission, sent on commit.
    let (batch, _, ids) = s
        .insert_tasks(
            alice,
            &[
                new_task(alice, "f1", "e1", b"1"),
                new_task(alice, "f1", "e2", b"2"),
                new_task(alice, "f1", "e1", b"3"),
            ],
        )
        .unwrap();
    let mut eps = [next(&mut rx, "tasks e1"), next(&mut rx, "tasks e2")];
    eps.sort_by_key(|n| format!("{n:?}"));
    for (n, ep) in eps.iter().zip(["e1", "e2"]) {
        assert_eq!(
            *n,
            Notice::Tasks {
                origin: origin.clone(),
                endpoint: ep.into(),
                batch
            }
        );
    }
    // Results: only those newly recorded are announced, with owner and batch.
    s.complete(&[done(ids[0], true), done(ids[0], true), done(ids[2], false)])
        .unwrap();
    let Notice::Done {
        origin: o,
        mut tasks,
    } = next(&mut rx, "done")
    else {
        panic!("expected a done notice")
    };
    tasks.sort_unstable();
    assert_eq!(o, origin);
    assert_eq!(tasks, vec![(alice, batch, ids[0]), (alice, batch, ids[2])]);
    // A large result batch arrives whole, over several notices.
    let many: Vec<NewTask> = (0..3000)
        .map(|i| new_task(alice, "f1", "e3", &[i as u8]))
        .collect();
    let (_, _, big) = s.insert_tasks(alice, &many).unwrap();
    assert!(matches!(next(&mut rx, "tasks e3"), Notice::Tasks { .. }));
    let all: Vec<Completion> = big.iter().map(|id| done(*id, true)).collect();
    s.complete(&all).unwrap();
    let mut heard = 0;
    while heard < big.len() {
        match next(&mut rx, "done, large") {
            Notice::Done { tasks, .. } => heard += tasks.len(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(heard, big.len());
}
