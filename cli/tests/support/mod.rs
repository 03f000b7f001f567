//! Helpers shared by the integration tests: waiting with a deadline, stopping a child process
//! this test started, reading JSON lines. Each test binary uses a part of them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod broker_world;

use std::process::Child;
use std::time::{Duration, Instant};

pub const FXR: &str = env!("CARGO_BIN_EXE_fxr");

/// Runs `cmd` to the end and asserts that it succeeded, showing its stderr if not.
pub fn succeed(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Waits up to `limit` for a child to exit; its exit code (-1 for a signal), or None.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let mut code = None;
    wait_until(limit, || match child.try_wait() {
        Ok(Some(s)) => {
            code = Some(s.code().unwrap_or(-1));
            true
        }
        _ => false,
    });
    code
}

/// Stops a child this test started: SIGTERM, then SIGKILL if it is still there after `grace`.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        if wait_exit(child, grace).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether an executable named `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The JSON objects among a command's output lines.
pub fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A local endpoint (`fxr endpoint start --local ARGS`) started by a test, stopped when dropped.
pub struct LocalEndpoint {
    pub child: std::process::Child,
    /// Its front door: the path of its Unix socket.
    pub addr: String,
    pub pilots: Vec<u32>,
    /// Its standard output, kept open while it runs: a closed pipe could kill it if it wrote.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl LocalEndpoint {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> LocalEndpoint {
        use std::io::BufRead;
        let mut child = std::process::Command::new(FXR)
            .args(["--output", "json", "endpoint", "start", "--local"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let addr = v["endpoint"].as_str().unwrap().to_string();
        let pilots = v["pilot_pids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_u64())
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default();
        LocalEndpoint {
            child,
            addr,
            pilots,
            _stdout: stdout,
        }
    }

    /// `fxr run --endpoint ADDR ARGS`; the result line as JSON.
    pub fn run(&self, args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new(FXR)
            .args([
                "--output",
                "json",
                "run",
                "--endpoint",
                &self.addr,
                "--timeout",
                "60s",
            ])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("null"))
            .unwrap_or(serde_json::Value::Null)
    }

    /// SIGTERM, and its exit code within `limit`.
    pub fn stop(&mut self, limit: Duration) -> Option<i32> {
        // SAFETY: signalling the endpoint this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_exit(&mut self.child, limit)
    }
}

impl Drop for LocalEndpoint {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(20));
    }
}
