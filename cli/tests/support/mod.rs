//! Helpers shared by the integration tests: waiting with a deadline, stopping a child process
//! this test started, reading JSON lines. Each test binary uses a part of them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod broker_world;

use std::process::Child;
use std::time::{Duration, Instant};

pub const FXR: &str = env!("CARGO_BIN_EXE_fxr");

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
