//! Who uses a store directory: every manager on a node holds a shared lock on the store's
//! `managers.lock` for as long as it runs. When the endpoint stops, each manager lets go of its
//! lock and then tries for an exclusive one: only the last to leave gets it, and removes the
//! directory. A manager that dies holds nothing (the kernel drops its locks), so it never
//! keeps a store alive, and a manager that is only drained (scaled in) leaves the store to the
//! others and to its successors.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "managers.lock";

/// A manager's hold on a store directory.
#[derive(Debug)]
pub struct Tenancy {
    root: PathBuf,
    file: File,
}

fn flock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: flock(2) on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

impl Tenancy {
    /// Takes a shared hold on the store at `root` (which must exist).
    pub fn hold(root: &Path) -> std::io::Result<Tenancy> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(root.join(LOCK_FILE))?;
        if !flock(&file, libc::LOCK_SH) {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tenancy {
            root: root.to_path_buf(),
            file,
        })
    }

    /// Lets go; removes the store if nobody else holds it. Whether it was removed.
    pub fn leave_and_remove_if_last(self) -> std::io::Result<bool> {
        flock(&self.file, libc::LOCK_UN);
        if !flock(&self.file, libc::LOCK_EX | libc::LOCK_NB) {
            return Ok(false);
        }
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_manager_to_leave_removes_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir_all(root.join("objects")).unwrap();
        let a = Tenancy::hold(&root).unwrap();
        let b = Tenancy::hold(&root).unwrap();
        assert!(!a.leave_and_remove_if_last().unwrap(), "b still holds it");
        assert!(root.join("objects").is_dir());
        assert!(b.leave_and_remove_if_last().unwrap());
        assert!(!root.exists());
    }

    #[test]
    fn a_dropped_hold_keeps_nothing_alive() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir_all(&root).unwrap();
        drop(Tenancy::hold(&root).unwrap());
        let last = Tenancy::hold(&root).unwrap();
        assert!(last.leave_and_remove_if_last().unwrap());
    }
}
