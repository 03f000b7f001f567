//! A node's store outlives any one manager, and leaves with the endpoint: managers drained one
//! by one (scaling in) keep it; when the endpoint stops, the last manager of the node removes
//! it, so no store is left on a batch node whose endpoint has stopped. A real interchange and
//! real managers, in this process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fxr_interchange::client::{status, wait_for_workers};
use fxr_interchange::{FrontDoor, Interchange, InterchangeConfig};
use fxr_pilot::pool::ColdStart;
use fxr_pilot::{Fleet, ManagerConfig, StoreConfig, WorkerMode};
use fxr_protocol::{BlockId, ClientMsg, ManagerId};
use std::path::Path;
use std::time::{Duration, Instant};

fn managers(port: u16, store: &Path, ids: &[u64]) -> Fleet {
    Fleet::start(
        ids.iter()
            .map(|id| ManagerConfig {
                interchange: format!("tcp://127.0.0.1:{port}"),
                secret: "s3cret".into(),
                manager_id: ManagerId(*id),
                block_id: BlockId(format!("b-{id}")),
                rank: 0,
                block_size: 1,
                workers: 1,
                prefetch: 0,
                mode: WorkerMode::Simulated {
                    cold_start: ColdStart::default(),
                },
                heartbeat_period: Duration::from_millis(200),
                give_up_after: Duration::from_secs(10),
                python: None,
                store: Some(StoreConfig {
                    root: store.to_path_buf(),
                    capacity: 1 << 20,
                    ttl: None,
                    inline_max: 1 << 20,
                    listen: "tcp://127.0.0.1:0".into(),
                }),
            })
            .collect(),
    )
    .unwrap()
}

#[test]
fn draining_one_manager_keeps_the_store_and_stopping_the_endpoint_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let ic = Interchange::start(InterchangeConfig {
        secret: "s3cret".into(),
        heartbeat_period: Duration::from_millis(200),
        ..InterchangeConfig::default()
    })
    .unwrap();
    let mut door = ic.local_client();
    let first = managers(ic.manager_port(), &store, &[1]);
    let second = managers(ic.manager_port(), &store, &[2]);
    wait_for_workers(&mut door, 2, Duration::from_secs(20)).unwrap();
    assert!(store.join("objects").is_dir());

    // Scaling in: one manager drained on its own leaves the store to the other.
    door.send(ClientMsg::DrainManager {
        manager_id: ManagerId(1),
    })
    .unwrap();
    first.wait().unwrap();
    assert!(
        store.join("objects").is_dir(),
        "a drained manager keeps the store"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&mut door, Duration::from_secs(5))
        .unwrap()
        .managers
        .len()
        != 1
    {
        assert!(Instant::now() < deadline, "manager 1 did not leave");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The endpoint stops: the last manager removes it.
    door.send(ClientMsg::Shutdown).unwrap();
    second.wait().unwrap();
    assert!(!store.exists(), "the last manager removes the store");
    ic.join();
}
