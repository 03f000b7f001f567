//! Attacks from the same machine, each of which worked before: another user at the front door,
//! the endpoint secret read off the manager link, a recorded registration replayed, endpoint
//! ids probed, registrations without limit, a token left readable. Real processes, sockets and
//! (when the tests run as root) a real second Unix user.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::broker_world::*;
use support::{wait_until, LocalEndpoint, FXR};

/// The `--interchange` and `--secret-file` of a running pilot.
fn pilot_args(pid: u32) -> (String, String) {
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<&str> = cmdline.split('\0').collect();
    let after = |flag: &str| {
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1].to_string()
    };
    (after("--interchange"), after("--secret-file"))
}

fn managers(addr: &str) -> usize {
    let mut c = fxr_interchange::SocketClient::connect(addr).unwrap();
    fxr_interchange::client::status(&mut c, Duration::from_secs(5))
        .unwrap()
        .managers
        .len()
}

/// Bytes a relay saw go one way.
type Recording = Arc<Mutex<Vec<u8>>>;

/// A TCP relay that keeps every byte either side sent: its port, then client to server, then
/// server to client.
fn recording_relay(target: &str) -> (u16, Recording, Recording) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let up = Arc::new(Mutex::new(Vec::new()));
    let down = Arc::new(Mutex::new(Vec::new()));
    let (u, d) = (up.clone(), down.clone());
    let target = target.trim_start_matches("tcp://").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(&target) else {
                return;
            };
            for (mut from, mut to, log) in [
                (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    u.clone(),
                ),
                (server, client, d.clone()),
            ] {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, up, down)
}

#[test]
fn the_secret_never_crosses_the_manager_link_and_a_recorded_registration_is_refused() {
    let ep = LocalEndpoint::start(&["--blocks", "1", "--workers-per-node", "1"], &[]);
    assert!(wait_until(Duration::from_secs(20), || managers(&ep.addr) == 1));
    let (interchange, secret_file) = pilot_args(ep.pilots[0]);
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let (port, up, down) = recording_relay(&interchange);
    let mut pilot = Proc(
        Command::new(FXR)
            .args([
                "pilot",
                "--interchange",
                &format!("tcp://127.0.0.1:{port}"),
                "--secret-file",
                &secret_file,
            ])
            .args(["--simulate-workers", "2", "--block-id", "relayed"])
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || managers(&ep.addr) == 2),
        "registered through the relay"
    );
    let r = ep.run(&["noop"]);
    assert_eq!(r["status"], "succeeded");
    let sent = up.lock().unwrap().clone();
    let received = down.lock().unwrap().clone();
    assert!(sent.len() > 100 && !received.is_empty());
    let hay = |b: &[u8], needle: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    assert!(
        !hay(&sent, secret.trim().as_bytes()),
        "the secret is not on the wire"
    );
    assert!(!hay(&received, secret.trim().as_bytes()));

    // Everything the manager sent, replayed byte for byte on a new connection: the nng
    // handshake and the Hello pass, the old proof does not.
    kill9(&mut pilot);
    assert!(wait_until(Duration::from_secs(30), || managers(&ep.addr) == 1));
    let mut replay = TcpStream::connect(interchange.trim_start_matches("tcp://")).unwrap();
    replay.write_all(&sent).unwrap();
    replay
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = replay.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        hay(&answer, b"proof of the endpoint secret"),
        "refused: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(managers(&ep.addr), 1, "the replay never joined");

    // A listener that does not hold the secret gets no registration from a manager.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let out = Command::new(FXR)
        .args([
            "pilot",
            "--interchange",
            &format!("tcp://127.0.0.1:{fake_port}"),
            "--secret-file",
            &secret_file,
        ])
        .args(["--simulate-workers", "1"])
        .env("FXR_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = Proc(out);
    let (mut conn, _) = fake.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = Vec::new();
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(!hay(&got, secret.trim().as_bytes()));
    assert!(
        !hay(&got, b"relayed") && !hay(&got, b"hostname"),
        "no registration for a stranger"
    );
    kill9(&mut out);
}

#[test]
fn unregistered_connections_are_closed() {
    let ep = LocalEndpoint::start(
        &[
            "--blocks",
            "1",
            "--workers-per-node",
            "1",
            "--register-timeout",
            "1s",
        ],
        &[],
    );
    assert!(wait_until(Duration::from_secs(20), || managers(&ep.addr) == 1));
    let (interchange, _) = pilot_args(ep.pilots[0]);
    let mut idle = TcpStream::connect(interchange.trim_start_matches("tcp://")).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    // nng's own handshake first (8 bytes), then nothing: the interchange hangs up.
    idle.write_all(&[0, b'S', b'P', 0, 0, 0x30, 0, 0]).unwrap();
    let mut total = 0;
    let closed = loop {
        match idle.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(_) => break false,
        }
    };
    assert!(closed, "closed after the deadline ({total} bytes before)");
    assert_eq!(managers(&ep.addr), 1, "the real manager stays");
}

/// A Unix user made for one test and removed after it.
struct TempUser(String);

impl TempUser {
    fn create() -> Option<TempUser> {
        // SAFETY: geteuid(2) has no failure mode.
        if unsafe { libc::geteuid() } != 0 || !support::have("useradd") {
            eprintln!("skipping: creating a second user needs root and useradd");
            return None;
        }
        let name = format!("fxrt{}", std::process::id() % 100_000);
        let ok = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "useradd {name}");
        Some(TempUser(name))
    }

    /// Runs python3 as this user, connecting to a Unix socket and sending `bytes`; what it
    /// printed.
    fn connect(&self, path: &str, bytes: &[u8]) -> String {
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect({path:?})\nexcept OSError as e:\n print('refused:', e.strerror); sys.exit(0)\ntry:\n s.sendall(bytes.fromhex({:?}))\n s.settimeout(5)\n d=s.recv(100)\n print('answered' if d else 'closed')\nexcept OSError as e:\n print('closed:', e)\n",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let out = Command::new("setpriv")
            .args([
                "--reuid",
                &self.0,
                "--regid",
                &self.0,
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                &script,
            ])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

#[test]
fn another_user_cannot_use_the_front_door() {
    let Some(user) = TempUser::create() else {
        return;
    };
    let ep = LocalEndpoint::start(&["--blocks", "1", "--workers-per-node", "1"], &[]);
    let shutdown = fxr_protocol::encode(&fxr_protocol::ClientMsg::Shutdown).unwrap();
    // The socket file and its directory are the owner's alone.
    let said = user.connect(&ep.addr, &shutdown);
    assert!(said.starts_with("refused: Permission denied"), "{said}");
    // Even with the directory and socket opened to everyone, the endpoint checks who connects.
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::Path::new(&ep.addr).parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&ep.addr, std::fs::Permissions::from_mode(0o777)).unwrap();
    let said = user.connect(&ep.addr, &shutdown);
    assert!(said.starts_with("closed"), "{said}");
    let r = ep.run(&["noop"]);
    assert_eq!(r["status"], "succeeded", "the endpoint did not stop: {r}");
}

#[test]
fn ids_cannot_be_probed_and_registrations_are_bounded() {
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&[
        "--max-functions-per-user",
        "3",
        "--max-endpoints-per-user",
        "1",
    ]);
    let ep = w.create_endpoint("alice", &alice, "one", 1);
    let link = |id: &str| {
        call(
            "GET",
            &format!("{}/v1/endpoints/{id}/link", w.url),
            Some("junk"),
            None,
        )
    };
    let (a, va) = link(&ep);
    let (b, vb) = link("0123456789abcdef0123456789abcdef");
    assert_eq!((a, b), (401, 401));
    assert_eq!(va, vb, "the same answer for a real id and an unknown one");
    for i in 0..3 {
        register(
            &w.url,
            &alice,
            json!({"name": format!("f{i}"), "kind": "builtin", "builtin": "noop"}),
        );
    }
    let (s, v) = call(
        "POST",
        &format!("{}/v1/functions", w.url),
        Some(&alice),
        Some(&json!({"name": "f3", "kind": "builtin", "builtin": "noop"}).to_string()),
    );
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded");
    let (s, v) = call(
        "POST",
        &format!("{}/v1/endpoints", w.url),
        Some(&alice),
        Some(r#"{"name": "two"}"#),
    );
    assert_eq!(s, 403, "{v}");
}

#[test]
fn login_reads_the_token_from_stdin_and_keeps_files_private() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let alice = w.user("alice");
    let _broker = w.broker(&[]);
    let home = w.dir.path().join("loose-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(home.join("config.toml"), "").unwrap();
    std::fs::set_permissions(
        home.join("config.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut child = Command::new(FXR)
        .args(["login", "--broker", &w.url])
        .env("FXR_HOME", &home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{alice}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in as alice"));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home.join("config.toml")), 0o600);
    assert_eq!(mode(&home), 0o700);
    let old = Command::new(FXR)
        .args(["login", "--broker", &w.url, "--token", &alice])
        .output()
        .unwrap();
    assert!(!old.status.success(), "no token on the command line");
}

#[test]
fn a_user_past_the_request_rate_gets_429_with_retry_after() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let _broker = w.broker(&["--max-requests-per-user", "5"]);
    let whoami = |t: &str| {
        agent()
            .get(&format!("{}/v1/whoami", w.url))
            .header("Authorization", &format!("Bearer {t}"))
            .call()
            .unwrap()
    };
    let statuses: Vec<u16> = (0..30).map(|_| whoami(&alice).status().as_u16()).collect();
    let refused = statuses
        .iter()
        .position(|s| *s == 429)
        .expect("refused past the burst");
    assert!(
        refused >= 10,
        "a burst of twice the rate first: {statuses:?}"
    );
    let r = whoami(&alice);
    if r.status() == 429 {
        let wait: u64 = r
            .headers()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&wait), "{wait}");
    }
    assert_eq!(whoami(&bob).status(), 200, "other users are not held back");
    let m = metrics(&w.url);
    assert!(metric(&m, "fxr_broker_requests_rate_limited_total", &[]) >= 1.0);
}

#[test]
fn an_encrypted_endpoint_runs_tasks_end_to_end() {
    let ep = LocalEndpoint::start(
        &["--blocks", "2", "--workers-per-node", "1", "--encrypt"],
        &[],
    );
    assert!(wait_until(Duration::from_secs(20), || managers(&ep.addr) == 2));
    let out = Command::new(FXR)
        .args([
            "--output",
            "json",
            "submit",
            "echo",
            "--endpoint",
            &ep.addr,
            "--count",
            "2000",
        ])
        .args(["--args", r#"{"m": "zebra-marker-0451"}"#])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        results.matches("zebra-marker-0451").count(),
        2000,
        "every task ran, sealed both ways"
    );
    let r = ep.run(&["sleep", "--args", r#"{"ms": 10}"#]);
    assert_eq!(r["status"], "succeeded", "{r}");
}
