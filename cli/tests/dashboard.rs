//! The dashboard in a real browser: Debian's Chromium, headless, driven over the WebDriver
//! protocol by its own chromedriver. The test signs in with a user's token, sees the user's
//! endpoint connected with its block, submits a task through the API and sees it appear and
//! finish with its output, all while the page updates itself.
//!
//! Runs when `chromium` and `chromedriver` are installed; with `FXR_REQUIRE_BROWSER=1` (as CI
//! sets) their absence fails. `FXR_DASHBOARD_SCREENSHOT=FILE` saves a screenshot at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::broker_world::*;
use support::have;

/// A WebDriver session on a chromedriver this test started.
struct Browser {
    _driver: Proc,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Option<Browser> {
        let chromium = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|c| have(c));
        if chromium.is_none() || !have("chromedriver") {
            assert!(
                std::env::var("FXR_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "FXR_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed"
            );
            eprintln!("skipping: chromium or chromedriver is not installed");
            return None;
        }
        let port = free_port();
        let driver = Proc(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let driver_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        while call("GET", &format!("{driver_url}/status"), None, None).1["value"]["ready"] != true {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let binary = String::from_utf8(
            Command::new("sh")
                .args(["-c", &format!("command -v {}", chromium.unwrap())])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary.trim(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let (status, v) = call(
            "POST",
            &format!("{driver_url}/session"),
            None,
            Some(&caps.to_string()),
        );
        assert_eq!(status, 200, "a browser session: {v}");
        let sid = v["value"]["sessionId"].as_str().unwrap();
        Some(Browser {
            _driver: driver,
            base: format!("{driver_url}/session/{sid}"),
            _profile: profile,
        })
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = call(
            "POST",
            &format!("{}{path}", self.base),
            None,
            Some(&body.to_string()),
        );
        assert_eq!(status, 200, "{path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    /// Runs JavaScript in the page and returns its value.
    fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
    }

    fn element(&self, css: &str) -> String {
        let v = self.post("/element", json!({"using": "css selector", "value": css}));
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.post(&format!("/element/{e}/value"), json!({ "text": text }));
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.post(&format!("/element/{e}/click"), json!({}));
    }

    /// Polls `script` until it returns a truthy value, or panics with what it last saw.
    fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the page shows {}",
                self.js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &str) {
        let (_, v) = call("GET", &format!("{}/screenshot", self.base), None, None);
        std::fs::write(path, base64_decode(v["value"].as_str().unwrap())).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call("DELETE", &self.base, None, None);
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn the_dashboard_signs_in_and_shows_endpoints_and_tasks_live() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let w = World::new();
    let token = w.user("alice");
    let _broker = w.broker(&[]);
    let ep = w.create_endpoint("alice", &token, "site", 2);
    let _endpoint = w.endpoint("alice", &token, "site");
    wait_connected(&w.url, &token, &ep);

    // A wrong token is refused on the page.
    browser.go(&format!("{}/dashboard", w.url));
    browser.type_into("#token", "not-a-token");
    browser.click("#login-button");
    browser.wait_for(
        "a refusal",
        "return document.getElementById('login-error').textContent",
    );

    // The right one: the user's endpoint with its block, connected.
    browser.type_into("#token", &token);
    browser.click("#login-button");
    browser.wait_for(
        "signed in",
        "return document.getElementById('who').textContent.includes('alice')",
    );
    browser.wait_for(
        "the endpoint, connected, with its block",
        "const r = document.querySelector('tr[data-endpoint=\"site\"]'); \
         return r && r.innerText.includes('connected') && r.innerText.includes('site-1')",
    );
    browser.wait_for(
        "the live event stream",
        "return document.getElementById('live').textContent === 'live'",
    );

    // A task submitted through the API appears, then finishes with its output.
    let f = register(
        &w.url,
        &token,
        json!({"name": "hello", "kind": "shell", "command": "sleep 0.5; echo hello from the dashboard test"}),
    );
    let ids = submit(
        &w.url,
        &token,
        vec![json!({"function_id": f, "endpoint_id": ep, "args": {}})],
    );
    let id = ids[0];
    browser.wait_for(
        "the task, listed",
        &format!("return !!document.querySelector('tr[data-task=\"{id}\"]')"),
    );
    let row = browser.wait_for(
        "the task, finished",
        &format!(
            "const r = document.querySelector('tr[data-task=\"{id}\"]'); \
             return r && r.dataset.state === 'succeeded' && r.innerText"
        ),
    );
    let row = row.as_str().unwrap();
    assert!(row.contains("hello from the dashboard test"), "{row}");
    assert!(
        row.contains("hello") && row.contains("site"),
        "function and endpoint by name: {row}"
    );
    browser.wait_for(
        "the counts",
        "return Number(document.getElementById('n-succeeded').textContent) >= 1",
    );
    // A task past its walltime shows among the failures by kind.
    let slow = register(
        &w.url,
        &token,
        json!({"name": "slow", "kind": "shell", "command": "sleep 5", "walltime_ms": 200}),
    );
    submit(
        &w.url,
        &token,
        vec![json!({"function_id": slow, "endpoint_id": ep, "args": {}})],
    );
    browser.wait_for(
        "a timeout among the failures",
        "return document.getElementById('failures').innerText.includes('timeout')",
    );
    if let Ok(path) = std::env::var("FXR_DASHBOARD_SCREENSHOT") {
        browser.screenshot(&path);
    }
}
