//! Where each endpoint's object store lives on its nodes, and its removal when the endpoint
//! stops.

/// An object store directory, removed when dropped (the endpoint stops).
#[derive(Debug)]
pub struct StoreDir(pub std::path::PathBuf);

impl Drop for StoreDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove the object store");
            }
        }
    }
}

/// The store directory of an endpoint called `name` (`None`: an ad-hoc one). A configured
/// endpoint's name carries a hash of its directory, so two endpoints of the same name (two
/// users, two `FXR_HOME`s) never share a store.
pub fn default_store_dir(name: Option<&str>) -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    match name {
        Some(n) => base.join(format!("fxr-{n}")),
        None => base.join(format!("fxr-local-{}", std::process::id())),
    }
}

/// The default store of the configured endpoint `name` kept in `dir`.
pub fn configured_store_dir(name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let hash = fxr_protocol::fnv1a(dir.as_os_str().as_encoded_bytes().iter().copied());
    default_store_dir(Some(&format!("{name}-{:08x}", hash as u32)))
}
