//! The Python SDK's own tests (`sdk/python/tests`, pytest) against a real broker and endpoint
//! started here. Needs the test environment `make pydeps` builds (pytest and NumPy in
//! `target/pyenv`); skipped without it unless FXR_REQUIRE_PYTEST=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use support::broker_world::{wait_connected, World};

fn pytest_python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = root.join("target/pyenv/bin/python");
    let ok = py.is_file()
        && std::process::Command::new(&py)
            .args(["-c", "import pytest"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    assert!(
        std::env::var("FXR_REQUIRE_PYTEST").is_err(),
        "FXR_REQUIRE_PYTEST is set but {} has no pytest (run `make pydeps`)",
        py.display()
    );
    eprintln!("skipping: no pytest in target/pyenv (run `make pydeps`)");
    None
}

#[test]
fn the_python_sdk_suite_passes_against_a_real_broker_and_endpoint() {
    let Some(python) = pytest_python() else {
        return;
    };
    let w = World::new();
    let _broker = w.broker(&[]);
    let token = w.user("alice");
    let ep = w.create_endpoint("alice", &token, "sdk", 2);
    // The workers' interpreter is the test environment's, which has NumPy.
    w.configure(
        "alice",
        "sdk",
        "python",
        "executable",
        &format!("{:?}", python.to_str().unwrap()),
    );
    let _endpoint = w.endpoint("alice", &token, "sdk");
    wait_connected(&w.url, &token, &ep);
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
    // A container with Python for the container-bound test, where bubblewrap is installed.
    let image = tempfile::tempdir().unwrap();
    let rootfs = image.path().join("rootfs");
    let containers = support::have("bwrap");
    assert!(
        containers || std::env::var("FXR_REQUIRE_CONTAINERS").is_err(),
        "FXR_REQUIRE_CONTAINERS is set but bwrap is not installed"
    );
    if containers {
        support::succeed(
            std::process::Command::new(support::FXR)
                .args(["container", "image"])
                .arg(&rootfs)
                .args(["--label", "sdk-python-image", "--python"]),
        );
    }
    let mut pytest = std::process::Command::new(&python);
    if containers {
        pytest.env("FXR_TEST_CONTAINER", format!("bwrap:{}", rootfs.display()));
    }
    let out = pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&sdk)
        .env("PYTHONPATH", sdk.join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("FXR_HOME", w.home("alice"))
        .env("FXR_BROKER", &w.url)
        .env("FXR_TOKEN", &token)
        .env("FXR_ENDPOINT", "sdk")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    // Without bubblewrap only the container test may skip.
    if containers {
        assert!(
            !text.contains("skipped"),
            "no SDK test may skip here:\n{text}"
        );
    }
}
