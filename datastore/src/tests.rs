use super::remote::{fetch, serve, DataRef, Reply, Request};
use super::*;

fn store(capacity: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path().join("store"),
        Limits {
            capacity,
            ttl: None,
        },
    )
    .unwrap();
    (dir, s)
}

#[test]
fn put_get_list_delete_and_keys_are_checked() {
    let (_d, s) = store(1 << 20);
    let m = s.put("a/b.txt", b"hello").unwrap();
    assert_eq!((m.size, m.checksum), (5, crc32fast::hash(b"hello")));
    let o = s.get("a/b.txt").unwrap();
    assert_eq!(o.bytes(), b"hello");
    o.verify().unwrap();
    s.put("empty", b"").unwrap();
    assert_eq!(s.get("empty").unwrap().bytes(), b"");
    let keys: Vec<String> = s.list().unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, vec!["a/b.txt", "empty"]);
    assert!(s.delete("a/b.txt").unwrap());
    assert!(!s.delete("a/b.txt").unwrap());
    assert!(matches!(s.get("a/b.txt"), Err(StoreError::NotFound(_))));
    for bad in [
        "",
        "../x",
        "/etc/passwd",
        ".hidden",
        "a b",
        &"k".repeat(201),
    ] {
        assert!(
            matches!(s.put(bad, b"x"), Err(StoreError::BadKey(_))),
            "{bad}"
        );
    }
    // The file of a key never escapes the store directory.
    assert!(s.path("a/../../x").starts_with(s.root().join("objects")));
}

#[test]
fn a_reader_keeps_its_version_while_the_key_is_replaced() {
    let (_d, s) = store(1 << 20);
    s.put("k", b"one").unwrap();
    let old = s.get("k").unwrap();
    s.put("k", b"two!").unwrap();
    assert_eq!(old.bytes(), b"one");
    assert_eq!(s.get("k").unwrap().bytes(), b"two!");
}

#[test]
fn eviction_keeps_the_store_under_capacity_and_spares_pinned_and_recent_objects() {
    let (_d, s) = store(10_000);
    s.put_from("pinned", 4000, &mut &[1u8; 4000][..], true)
        .unwrap();
    s.put("old", &[2u8; 3000]).unwrap();
    s.put("mid", &[3u8; 3000]).unwrap();
    // Make `old` the most recently used.
    std::thread::sleep(Duration::from_millis(20));
    s.get("old").unwrap();
    s.put("new", &[4u8; 3000]).unwrap();
    let keys: Vec<String> = s.list().unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(
        keys,
        vec!["new", "old", "pinned"],
        "the least recently used went"
    );
    assert!(s.used().unwrap() <= 10_000);
    match s.put("huge", &[0u8; 7000]) {
        Err(StoreError::TooLarge { size, pinned, .. }) => assert_eq!((size, pinned), (7000, 4000)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.put("huger", &[0u8; 10_001]),
        Err(StoreError::TooLarge { .. })
    ));
    assert!(s.used().unwrap() <= 10_000);
}

#[test]
fn objects_past_the_ttl_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path().join("s"),
        Limits {
            capacity: 1 << 20,
            ttl: Some(Duration::from_millis(50)),
        },
    )
    .unwrap();
    s.put("a", b"1").unwrap();
    std::thread::sleep(Duration::from_millis(80));
    s.put("b", b"2").unwrap();
    assert_eq!(s.sweep().unwrap(), 1);
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn concurrent_writers_and_readers_never_see_a_torn_object() {
    let (_d, s) = store(64 << 20);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..3u8 {
        let s = s.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..300usize {
                // Every version is one byte value repeated, with a size of its own.
                let b = w.wrapping_mul(50).wrapping_add(i as u8);
                s.put(
                    "shared",
                    &vec![b; 1000 + (i * 37 + w as usize * 101) % 50_000],
                )
                .unwrap();
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        let s = s.clone();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let mut seen = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(o) = s.get("shared") {
                    let d = o.bytes();
                    assert!(d.iter().all(|x| *x == d[0]), "a torn object");
                    o.verify().unwrap();
                    seen += 1;
                }
            }
            seen
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

#[test]
fn a_writer_killed_mid_put_leaves_no_object_and_its_draft_is_removed() {
    // The writer is this test binary run again as a child (see `writer_child`), killed with
    // SIGKILL half way through a 256 MiB put.
    if let Ok(root) = std::env::var("FXR_DATASTORE_WRITER") {
        let s = Store::open(
            root,
            Limits {
                capacity: 1 << 30,
                ttl: None,
            },
        )
        .unwrap();
        let mut r = std::io::repeat(7).take(256 << 20);
        let _ = s.put_from("big", 256 << 20, &mut Slow(&mut r), false);
        return;
    }
    let (_d, s) = store(1 << 30);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::a_writer_killed_mid_put_leaves_no_object_and_its_draft_is_removed",
        ])
        .env("FXR_DATASTORE_WRITER", s.root())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the child's draft exists and has data, then kill it mid-write.
    let tmp = s.root().join("tmp");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let started = std::fs::read_dir(&tmp).unwrap().next().is_some();
        if started {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(s.get("big"), Err(StoreError::NotFound(_))));
    assert!(s.list().unwrap().is_empty());
    // The next open removes the dead writer's draft.
    let s2 = Store::open(s.root(), s.limits()).unwrap();
    assert_eq!(std::fs::read_dir(s2.root().join("tmp")).unwrap().count(), 0);
}

/// A reader that hands out 64 KiB at a time, slowly, so the writer can be killed mid-way.
struct Slow<'a>(&'a mut dyn Read);

impl Read for Slow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(1));
        let n = buf.len().min(64 << 10);
        self.0.read(&mut buf[..n])
    }
}

fn peer(
    store: &Store,
    secret: &str,
    corrupt: bool,
) -> impl FnMut(&Request) -> Result<Reply, String> {
    let store = store.clone();
    let secret = secret.to_string();
    move |req| {
        let mut r = serve(&store, &secret, req);
        if corrupt {
            if let Reply::Chunk { bytes, .. } = &mut r {
                if let Some(b) = bytes.get_mut(10) {
                    *b ^= 0xff;
                }
            }
        }
        Ok(r)
    }
}

#[test]
fn a_remote_object_is_fetched_in_chunks_and_a_corrupt_one_is_refused() {
    let (_a, far) = store(64 << 20);
    let (_b, near) = store(64 << 20);
    let data: Vec<u8> = (0..(9 << 20)).map(|i| (i % 251) as u8).collect();
    let m = far.put("in/x", &data).unwrap();
    let r = DataRef {
        key: "in/x".into(),
        node: "tcp://far:1".into(),
        size: m.size,
        checksum: m.checksum,
    };
    let mut calls = 0;
    let mut p = peer(&far, "s", false);
    let mut counting = |req: &Request| {
        calls += 1;
        p(req)
    };
    fetch(&near, &r, "s", &mut counting).unwrap();
    assert_eq!(calls, 3, "9 MiB in 4 MiB chunks");
    assert_eq!(near.get("in/x").unwrap().bytes(), &data[..]);
    // Already here: no call at all.
    let mut none = |_: &Request| -> Result<Reply, String> { panic!("fetched again") };
    fetch(&near, &r, "s", &mut none).unwrap();
    // Corrupted on the way: refused, nothing published.
    let (_c, other) = store(64 << 20);
    let e = fetch(&other, &r, "s", &mut peer(&far, "s", true)).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    assert!(other.list().unwrap().is_empty());
    // A wrong secret is refused by the peer.
    let e = fetch(&other, &r, "wrong", &mut peer(&far, "s", false)).unwrap_err();
    assert!(matches!(e, StoreError::Remote { .. }), "{e}");
    assert!(e.to_string().contains("wrong endpoint secret"), "{e}");
}
