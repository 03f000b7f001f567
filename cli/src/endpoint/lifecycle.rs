//! An endpoint's life as its admin sees it: `fxr endpoint start NAME` runs the endpoint as a
//! child in a session of its own, logging to `endpoint.log`, and returns once the child says it
//! is ready or why it failed; `stop`, `restart`, `delete` and `logs` work from the endpoint's
//! directory, where `endpoint.lock` (held while it runs) and `endpoint.pid` say which process
//! runs it.

use anyhow::{bail, Context};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The variable that hands a detached endpoint the pipe on which it reports readiness.
const READY_FD: &str = "FXR_READY_FD";
/// `endpoint.log` is moved to `endpoint.log.1` at start once it is larger than this.
const LOG_ROTATE: u64 = 16 << 20;
/// How long `stop` waits for the endpoint to drain and exit.
const STOP_WAIT: Duration = Duration::from_secs(120);

/// Where a detached endpoint tells the `fxr endpoint start` that launched it whether it became
/// ready; nothing for an endpoint run in the foreground.
pub struct Ready(Option<std::fs::File>);

impl Ready {
    /// The pipe named by `FXR_READY_FD`, if this process was started detached.
    pub fn from_env() -> Ready {
        let Some(fd) = std::env::var(READY_FD)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
        else {
            return Ready(None);
        };
        std::env::remove_var(READY_FD);
        // SAFETY: fcntl(2) on a descriptor number; an invalid one only yields an error.
        if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Ready(None);
        }
        // SAFETY: the descriptor was opened for us by our parent and nothing else owns it; it
        // is made close-on-exec so no pilot inherits it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: as above, the descriptor is ours alone from here on.
        Ready(Some(unsafe { std::fs::File::from_raw_fd(fd) }))
    }

    fn say(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "{line}");
        }
    }

    pub fn ready(&mut self, info: &serde_json::Value) {
        self.say(&format!("ready {info}"));
    }

    pub fn fail(&mut self, why: &str) {
        self.say(&format!("failed {}", why.replace('\n', " ")));
    }
}

/// Takes `endpoint.lock` if no process holds it: `None` while the endpoint runs.
pub fn try_lock(dir: &Path) -> anyhow::Result<Option<std::fs::File>> {
    let path = dir.join("endpoint.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(f))
}

/// The process running the endpoint in `dir`, if one does.
pub fn running(dir: &Path) -> Option<i32> {
    if !dir.join("endpoint.toml").exists() {
        return None;
    }
    match try_lock(dir) {
        // Only a real process id: 0 or -1 given to kill(2) would signal a group or everyone.
        Ok(None) => std::fs::read_to_string(dir.join("endpoint.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|p| *p > 1),
        _ => None,
    }
}

/// The endpoint's log.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("endpoint.log")
}

/// Starts the endpoint in `dir` as a detached child running `args` (a `start ... --foreground`
/// command line), and waits up to `wait` for it to say it is ready.
pub fn detach(
    name: &str,
    dir: &Path,
    args: Vec<OsString>,
    json: bool,
    wait: Duration,
) -> anyhow::Result<u8> {
    if let Some(pid) = running(dir) {
        bail!("endpoint {name} is already running (pid {pid}); stop it with `fxr endpoint stop {name}`");
    }
    let log = log_path(dir);
    if std::fs::metadata(&log).is_ok_and(|m| m.len() > LOG_ROTATE) {
        let _ = std::fs::rename(&log, dir.join("endpoint.log.1"));
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let _ = writeln!(
        out,
        "--- fxr endpoint start {name} (pid {})",
        std::process::id()
    );
    let (read_end, write_end) = pipe()?;
    let write_fd = write_end.as_raw_fd();
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env(READY_FD, write_fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    if std::env::var_os("FXR_LOG").is_none() {
        // A log file is read later: what happened, not only what went wrong.
        cmd.env("FXR_LOG", "info");
    }
    // SAFETY: only async-signal-safe calls between fork and exec: the child keeps the pipe's
    // write end across exec and leaves this terminal's session.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::fcntl(write_fd, libc::F_SETFD, 0);
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the endpoint process")?;
    drop(write_end);
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::fs::File::from(read_end)
            .take(1 << 16)
            .read_to_string(&mut line);
        let _ = tx.send(line);
    });
    let said = match rx.recv_timeout(wait) {
        Ok(line) => line,
        Err(_) => bail!(
            "endpoint {name} (pid {pid}) did not become ready within {wait:?}; it is still starting: see {}",
            log.display()
        ),
    };
    let said = said.trim();
    if let Some(info) = said.strip_prefix("ready ") {
        if json {
            let mut v: serde_json::Value = serde_json::from_str(info).unwrap_or_default();
            v["log"] = serde_json::json!(log);
            v["name"] = serde_json::json!(name);
            println!("{v}");
        } else {
            println!(
                "endpoint {name} is ready (pid {pid}); its log is {}",
                log.display()
            );
        }
        return Ok(crate::exit::OK);
    }
    if let Some(why) = said.strip_prefix("failed ") {
        bail!("endpoint {name} did not start: {why}");
    }
    bail!(
        "endpoint {name} exited while starting; the end of {}:\n{}",
        log.display(),
        tail(&log, 20)
    )
}

/// A pipe whose both ends are close-on-exec.
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2(2) fills the two descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot create a pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops the endpoint in `dir` and waits until it has drained and exited. False when it was
/// not running.
pub fn stop(name: &str, dir: &Path) -> anyhow::Result<bool> {
    let Some(pid) = running(dir) else {
        let _ = std::fs::remove_file(dir.join("endpoint.pid"));
        return Ok(false);
    };
    // SAFETY: kill(2) on the pid the endpoint wrote while it holds its lock.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!(
            "cannot signal endpoint {name} (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    // The lock is released when the process has exited.
    let deadline = Instant::now() + STOP_WAIT;
    while try_lock(dir)?.is_none() {
        if Instant::now() >= deadline {
            bail!("endpoint {name} (pid {pid}) is still draining after {STOP_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(true)
}

/// Prints the endpoint's log (or a block's), the last `lines` of it, then, with `follow`, what
/// is appended until the endpoint stops.
pub fn logs(dir: &Path, block: Option<&str>, lines: usize, follow: bool) -> anyhow::Result<()> {
    let files = match block {
        None => vec![log_path(dir)],
        Some(b) => block_logs(&dir.join("blocks"), b),
    };
    if files.is_empty() || !files.iter().any(|f| f.exists()) {
        bail!(
            "no log found for {} in {}",
            block.map_or("the endpoint".to_string(), |b| format!("block {b}")),
            dir.display()
        );
    }
    let mut stdout = std::io::stdout().lock();
    let mut offsets = Vec::new();
    for f in &files {
        if files.len() > 1 {
            writeln!(stdout, "==> {} <==", f.display())?;
        }
        let text = tail(f, lines);
        if !text.is_empty() {
            writeln!(stdout, "{text}")?;
        }
        offsets.push(std::fs::metadata(f).map_or(0, |m| m.len()));
    }
    stdout.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        // Read what was appended; once the endpoint has stopped, one last read and done.
        let stopped = running(dir).is_none();
        for (f, offset) in files.iter().zip(offsets.iter_mut()) {
            let Ok(mut file) = std::fs::File::open(f) else {
                continue;
            };
            let len = file.metadata().map_or(0, |m| m.len());
            if len < *offset {
                *offset = 0; // rotated
            }
            if len > *offset {
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(*offset))?;
                std::io::copy(&mut (&mut file).take(len - *offset), &mut stdout)?;
                *offset = len;
                stdout.flush()?;
            }
        }
        if stopped {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A block's log files in `blocks/`: `BLOCK.log` (local), `fxr-BLOCK.JOB.out` (Slurm),
/// `fxr-BLOCK.out` (PBS).
fn block_logs(dir: &Path, block: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let Some(f) = p.file_name().and_then(|f| f.to_str()) else {
                return false;
            };
            let f = f.strip_prefix("fxr-").unwrap_or(f);
            f.strip_prefix(block).is_some_and(|r| r.starts_with('.'))
                && [".log", ".out", ".err"].iter().any(|x| f.ends_with(x))
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_logs_match_the_block_only() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "ep-1.log",
            "ep-1.sh",
            "fxr-ep-1.77.out",
            "ep-10.log",
            "fxr-ep-2.out",
        ] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let names: Vec<String> = block_logs(d.path(), "ep-1")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ep-1.log", "fxr-ep-1.77.out"]);
    }

    #[test]
    fn the_lock_tells_whether_an_endpoint_runs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("endpoint.toml"), "name = \"x\"\n").unwrap();
        std::fs::write(d.path().join("endpoint.pid"), "4242").unwrap();
        assert_eq!(running(d.path()), None, "a pid file without the lock held");
        let held = try_lock(d.path()).unwrap().unwrap();
        assert_eq!(running(d.path()), Some(4242));
        assert!(try_lock(d.path()).unwrap().is_none());
        drop(held);
        assert_eq!(running(d.path()), None);
    }
}
