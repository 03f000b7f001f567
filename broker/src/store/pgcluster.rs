//! A throwaway PostgreSQL server for tests and benchmarks: a cluster made by Debian's `initdb`
//! in a private temporary directory, listening only on a Unix socket in that directory (mode
//! 0700, so only its owner and root can connect), stopped and removed when dropped.
//!
//! PostgreSQL refuses to run as root; run by root, the server runs as the `postgres` user that
//! Debian's package creates. The server gets `SIGINT` (a fast shutdown) if the thread that
//! started it ends, so a killed test run does not leave it behind.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running throwaway cluster.
#[derive(Debug)]
pub struct TempCluster {
    dir: PathBuf,
    server: Option<Child>,
    next_db: AtomicU64,
}

/// Where `initdb` and `postgres` are: `FXR_PG_BIN`, `PATH`, or the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn bindir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("FXR_PG_BIN") {
        return Some(PathBuf::from(d));
    }
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// The uid and gid to run the server as: `postgres` when we are root, else ourselves.
fn server_user() -> io::Result<Option<(u32, u32)>> {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or_else(|| {
            io::Error::other("running as root, PostgreSQL needs the `postgres` user (apt-get install postgresql)")
        })
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, user: Option<(u32, u32)>) -> io::Result<()> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

impl TempCluster {
    /// Makes and starts a cluster. `durable` keeps PostgreSQL's defaults (`fsync`, synchronous
    /// commits), as a benchmark against SQLite's `synchronous = FULL` needs; otherwise commits
    /// skip the disk flush, which tests do not need.
    pub fn start(durable: bool) -> io::Result<TempCluster> {
        let bin = bindir().ok_or_else(|| {
            io::Error::other("PostgreSQL is not installed (apt-get install postgresql)")
        })?;
        let user = server_user()?;
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).map_err(|e| io::Error::other(e.to_string()))?;
        let name: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("fxr-pg-{name}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let mut cluster = TempCluster {
            dir: dir.clone(),
            server: None,
            next_db: AtomicU64::new(0),
        };
        chown(&dir, user)?;
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "fxr",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, user);
        let out = initdb.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&dir)
            .args(["-c", "listen_addresses=", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("server.log"))?);
        if !durable {
            server.args(["-c", "fsync=off", "-c", "synchronous_commit=off"]);
        }
        as_user(&mut server, user);
        // SAFETY: prctl only sets this process's parent-death signal.
        unsafe {
            server.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cluster.server = Some(server.spawn()?);
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(cluster)
    }

    fn wait_ready(&mut self, wait: Duration) -> io::Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            if postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_ok() {
                return Ok(());
            }
            if let Some(s) = self.server.as_mut() {
                if let Some(status) = s.try_wait()? {
                    let log =
                        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    return Err(io::Error::other(format!(
                        "postgres exited ({status}): {}",
                        log.trim()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "postgres did not accept connections in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The connection string of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("host={} user=fxr dbname={db}", self.dir.display())
    }

    /// Creates a fresh database; returns its connection string.
    pub fn create_database(&self) -> io::Result<String> {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("fxr_{}_{n}", std::process::id());
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(io::Error::other)?;
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(io::Error::other)?;
        Ok(self.url(&name))
    }

    /// Stops the server (a fast shutdown) and removes the cluster.
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            if let Ok(pid) = i32::try_from(s.id()) {
                // SAFETY: signals the server we started, by its own PID.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(s.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

static SHARED: OnceLock<Mutex<Option<TempCluster>>> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(m) = SHARED.get() {
        if let Some(mut c) = m
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            c.stop();
        }
    }
}

/// A fresh database in one cluster shared by the whole process, started on first use (from a
/// thread that lives as long as the process, so the parent-death signal fires only when the
/// process ends) and stopped when the process exits.
pub fn shared_database() -> io::Result<String> {
    let cell = SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new()
            .name("fxr-pg-owner".into())
            .spawn(move || {
                let _ = tx.send(TempCluster::start(false));
                loop {
                    std::thread::park();
                }
            });
        let cluster = match started {
            Ok(_) => rx.recv().map_err(io::Error::other).and_then(|r| r),
            Err(e) => Err(e),
        };
        match cluster {
            Ok(c) => {
                // SAFETY: registers a plain function to run at exit.
                unsafe {
                    libc::atexit(stop_shared);
                }
                Mutex::new(Some(c))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start PostgreSQL");
                Mutex::new(None)
            }
        }
    });
    let guard = cell
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match guard.as_ref() {
        Some(c) => c.create_database(),
        None => Err(io::Error::other(
            "the test PostgreSQL did not start (see the error above)",
        )),
    }
}
