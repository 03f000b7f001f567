//! The world of the broker tests: a broker on a free port with its SQLite file in a temp dir
//! (or, with `FXR_TEST_STORE=postgres`, a fresh database in a PostgreSQL cluster the test
//! process starts), users, endpoints started as `fxr endpoint start`, and a small HTTP client.

use super::FXR;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        super::stop_child(&mut self.0, Duration::from_secs(20));
    }
}

pub fn kill9(p: &mut Proc) {
    let _ = p.0.kill();
    let _ = p.0.wait();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub port: u16,
    db: String,
}

/// The store the broker tests run on: `FXR_TEST_STORE=postgres` or SQLite.
pub fn postgres_store() -> bool {
    std::env::var("FXR_TEST_STORE").is_ok_and(|v| v == "postgres")
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let db = if postgres_store() {
            fxr_broker::store::pgcluster::shared_database().expect("a PostgreSQL database")
        } else {
            dir.path().join("broker.db").display().to_string()
        };
        World {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            port,
            db,
        }
    }

    /// A world whose brokers use the store `db` (a second broker may share it).
    pub fn with_db(db: String) -> World {
        World { db, ..World::new() }
    }

    /// The broker's `--db`.
    pub fn db(&self) -> &str {
        &self.db
    }

    pub fn broker(&self, extra: &[&str]) -> Proc {
        self.broker_on(self.port, extra)
    }

    /// A broker on `port` with the world's store (a second broker shares a PostgreSQL store).
    pub fn broker_on(&self, port: u16, extra: &[&str]) -> Proc {
        let p = Command::new(FXR)
            .args([
                "broker",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--db",
            ])
            .arg(self.db())
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Proc(p)
    }

    pub fn user(&self, name: &str) -> String {
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

    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join(format!("home-{user}"))
    }

    pub fn fxr(&self, user: &str, token: &str) -> Command {
        let mut c = Command::new(FXR);
        c.env("FXR_HOME", self.home(user))
            .env("FXR_BROKER", &self.url)
            .env("FXR_TOKEN", token);
        c
    }

    pub fn endpoint(&self, user: &str, token: &str, name: &str) -> Proc {
        let p = self
            .fxr(user, token)
            .args(["endpoint", "start", name, "--foreground"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Proc(p)
    }

    /// Sets `key = value` (a TOML value: `10485760`, `"/path"`) in table `[table]` of a created
    /// endpoint's `endpoint.toml`, replacing the key if it is there.
    pub fn configure(&self, user: &str, name: &str, table: &str, key: &str, value: &str) {
        let toml = self
            .home(user)
            .join("endpoints")
            .join(name)
            .join("endpoint.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with(&format!("{key} =")))
            .map(str::to_string)
            .collect();
        let header = format!("[{table}]");
        let at = match lines.iter().position(|l| l.trim() == header) {
            Some(i) => i + 1,
            None => {
                lines.push(header);
                lines.len()
            }
        };
        lines.insert(at, format!("{key} = {value}"));
        std::fs::write(&toml, lines.join("\n") + "\n").unwrap();
    }

    pub fn create_endpoint(&self, user: &str, token: &str, name: &str, workers: u32) -> String {
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

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
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

pub fn register(url: &str, token: &str, body: Value) -> String {
    let (s, v) = call(
        "POST",
        &format!("{url}/v1/functions"),
        Some(token),
        Some(&body.to_string()),
    );
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

pub fn submit(url: &str, token: &str, tasks: Vec<Value>) -> Vec<u64> {
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
pub fn wait_all(url: &str, token: &str, ids: &[u64], limit: Duration) -> Vec<Value> {
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
                    let text = resp
                        .body_mut()
                        .with_config()
                        .limit(1 << 30)
                        .read_to_string()
                        .unwrap();
                    let v: Value = serde_json::from_str(&text).unwrap();
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

pub fn assert_complete(results: &[Value], ids: &[u64]) {
    let got: HashSet<u64> = results.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(results.len(), ids.len());
    assert_eq!(got, ids.iter().copied().collect::<HashSet<_>>());
    for t in results {
        assert_eq!(t["state"], "succeeded", "{t}");
    }
}

pub fn wait_connected(url: &str, token: &str, id: &str) {
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

/// The credential `fxr endpoint create` wrote for `user`'s endpoint `name`.
pub fn credential(w: &World, user: &str, name: &str) -> String {
    std::fs::read_to_string(w.home(user).join("endpoints").join(name).join("credential"))
        .unwrap()
        .trim()
        .to_string()
}

/// A raw endpoint link, as any holder of the credential could open it.
pub type RawLink = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

pub fn raw_link(url: &str, endpoint: &str, credential: &str) -> RawLink {
    use tungstenite::client::IntoClientRequest;
    let ws_url = format!(
        "{}/v1/endpoints/{endpoint}/link",
        url.replacen("http://", "ws://", 1)
    );
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    let (ws, _) = tungstenite::connect(req).unwrap();
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws
}

pub fn link_send(ws: &mut RawLink, msg: &fxr_protocol::LinkMsg) {
    let frame = fxr_protocol::encode(msg).unwrap();
    ws.send(tungstenite::Message::Binary(frame.into())).unwrap();
}

/// The next protocol message on a raw link (skipping others), or None when it closed.
pub fn link_recv(ws: &mut RawLink) -> Option<fxr_protocol::BrokerMsg> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Binary(b)) => return fxr_protocol::decode(&b).ok(),
            Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The broker's or an interchange's `/metrics`, parsed.
pub fn metrics(url: &str) -> prometheus_parse::Scrape {
    let mut resp = agent().get(&format!("{url}/metrics")).call().unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.body_mut().read_to_string().unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of a sample of `name` whose labels include `labels`.
pub fn metric(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .collect();
    assert_eq!(found.len(), 1, "one sample of {name} {labels:?}");
    found[0]
}

/// Resident memory of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
