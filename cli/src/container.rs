//! `fxr container`: container images that can host fxr workers, built from this host.
//!
//! A worker runs as `/fxr/fxr worker` inside the container, with this `fxr` executable
//! bind-mounted there by the runtime's command template. The image must hold the shared
//! libraries that executable links, `/bin/sh`, and the mount points the runtimes expect. This
//! command builds such an image as a root filesystem directory (for `bwrap` and `charliecloud`)
//! and, with `--podman NAME`, imports it into podman's local store: nothing is pulled.

use crate::exit;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(clap::Subcommand, Debug)]
pub enum ContainerCmd {
    /// Build a root filesystem that can host fxr workers, from this host's files.
    Image(ImageArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Directory to build the root filesystem in (created; must be empty if it exists).
    pub dir: PathBuf,
    /// Text written to /etc/fxr-image, so a task can tell which image it runs in.
    #[arg(long, default_value = "fxr-worker-image")]
    pub label: String,
    /// Also import it into podman's local store as this image name.
    #[arg(long)]
    pub podman: Option<String>,
    /// Also copy this host's `python3` (the interpreter, its standard library without tests,
    /// and the libraries they link) so the image can run Python functions.
    #[arg(long)]
    pub python: bool,
}

pub fn run(cmd: ContainerCmd, json: bool) -> anyhow::Result<u8> {
    match cmd {
        ContainerCmd::Image(a) => {
            let exe = std::env::current_exe().context("cannot find this executable")?;
            build_rootfs(&a.dir, &exe, &a.label)?;
            if a.python {
                add_python(&a.dir)?;
            }
            if let Some(name) = &a.podman {
                podman_import(&a.dir, name)?;
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({"dir": a.dir, "podman": a.podman, "label": a.label})
                );
            } else {
                println!("{}", a.dir.display());
            }
            Ok(exit::OK)
        }
    }
}

/// Programs copied into every image, besides the libraries `fxr` needs.
const TOOLS: &[&str] = &["/bin/sh", "/bin/cat", "/bin/ls", "/bin/echo", "/bin/sleep"];

/// Builds a root filesystem in `dir` with `/bin/sh`, a few tools, the libraries `exe` and they
/// link, the mount points runtimes bind over, and `/etc/fxr-image` holding `label`.
pub fn build_rootfs(dir: &Path, exe: &Path, label: &str) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    for d in [
        "bin", "dev", "proc", "sys", "tmp", "etc", "home", "root", "mnt", "run", "var", "fxr",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    // A mount point for runtimes that bind the worker executable itself.
    std::fs::write(dir.join("fxr/fxr"), b"")?;
    let mut files: Vec<PathBuf> = TOOLS
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    let mut libs = Vec::new();
    for bin in TOOLS.iter().map(Path::new).chain([exe]) {
        if bin.exists() {
            libs.extend(linked_libraries(bin)?);
        }
    }
    libs.sort();
    libs.dedup();
    files.extend(libs);
    for f in &files {
        let rel = f.strip_prefix("/").unwrap_or(f);
        let to = dir.join(rel);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(f, &to).with_context(|| format!("cannot copy {}", f.display()))?;
    }
    std::fs::write(dir.join("etc/fxr-image"), format!("{label}\n"))?;
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    for f in ["etc/hosts", "etc/resolv.conf"] {
        std::fs::write(dir.join(f), b"")?;
    }
    Ok(())
}

/// Standard-library directories left out of images: tests, GUIs and installers.
const PYTHON_SKIP: &[&str] = &[
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "__pycache__",
    "site-packages",
    "dist-packages",
];

/// Copies this host's `python3` into the image at the same paths, with `/usr/bin/python3`
/// pointing to it.
fn add_python(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os,sys,sysconfig\nprint(os.path.realpath(sys.executable))\nprint(sysconfig.get_path('stdlib'))\nprint(sysconfig.get_config_var('LIBDIR') or '')\nprint(sysconfig.get_config_var('INSTSONAME') or '')",
        ])
        .output()
        .context("cannot run python3 to find its installation")?;
    anyhow::ensure!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let (Some(exe), Some(stdlib)) = (lines.next(), lines.next()) else {
        bail!("python3 did not name its executable and standard library");
    };
    let (libdir, soname) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let copy = |from: &Path| -> anyhow::Result<()> {
        let to = dir.join(from.strip_prefix("/").unwrap_or(from));
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
        Ok(())
    };
    let mut shared = vec![PathBuf::from(exe)];
    let shared_lib = Path::new(libdir).join(soname);
    if !soname.is_empty() && shared_lib.is_file() {
        shared.push(shared_lib);
    }
    // The standard library, file by file, skipping tests and the like.
    let mut stack = vec![PathBuf::from(stdlib)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let p = e?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_dir() {
                if !PYTHON_SKIP.contains(&name) {
                    stack.push(p);
                }
            } else if p.is_file() {
                if name.ends_with(".so") {
                    shared.push(p.clone());
                }
                copy(&p)?;
            }
        }
    }
    let mut libs = Vec::new();
    for s in &shared {
        copy(s)?;
        libs.extend(linked_libraries(s)?);
    }
    libs.sort();
    libs.dedup();
    for l in &libs {
        copy(l)?;
    }
    let link = dir.join("usr/bin/python3");
    std::fs::create_dir_all(dir.join("usr/bin"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(exe, &link)?;
    Ok(())
}

/// The shared libraries `bin` links, as `ldd` lists them (the dynamic loader included).
fn linked_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd to find the libraries fxr needs")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => l.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .filter(|p| p.exists())
        .collect())
}

/// Imports a root filesystem directory into podman's local store as `name`.
pub fn podman_import(dir: &Path, name: &str) -> anyhow::Result<()> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let stdout = tar.stdout.take().context("tar has no stdout")?;
    let out = Command::new("podman")
        .args(["import", "-q", "-", name])
        .stdin(stdout)
        .stderr(Stdio::piped())
        .output()
        .context("cannot run podman import")?;
    let tar_ok = tar.wait()?.success();
    if !out.status.success() || !tar_ok {
        bail!(
            "podman import {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
