//! Architecture invariants that the source itself shows (ARCHITECTURE.md): the I/O-free cores
//! of the interchange and of the manager, and who may import the loops around them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

/// The code of every `.rs` file under `CRATE/src`, as (path from the crate, text), without
/// comments (they may name what the code must not use) and without a file's trailing unit-test
/// module (tests may use what the code must not).
fn sources(krate: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(krate);
    let mut out = Vec::new();
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                let code = text
                    .split("#[cfg(test)]\nmod tests")
                    .next()
                    .unwrap_or_default();
                let code: String = code
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                let rel = p.strip_prefix(&root).unwrap().display().to_string();
                out.push((rel, code));
            }
        }
    }
    assert!(!out.is_empty(), "no sources under {}", root.display());
    out
}

/// Asserts that no file of `krate` for which `pick` holds uses any of `banned`.
fn none_use(krate: &str, pick: impl Fn(&str) -> bool, banned: &[&str]) {
    for (path, text) in sources(krate) {
        if !pick(&path) {
            continue;
        }
        for b in banned {
            let exempt = *b == "Instant::now" && path.ends_with("tests.rs");
            assert!(exempt || !text.contains(b), "{krate}/{path} uses {b}");
        }
    }
}

const IO: &[&str] = &[
    "std::process",
    "std::net",
    "std::fs",
    "std::thread",
    "Instant::now",
    "nng::",
    "tokio::",
];

#[test]
fn only_lib_imports_the_interchange_core() {
    none_use(
        "interchange",
        |p| !p.ends_with("src/lib.rs") && !p.ends_with("src/core.rs"),
        &["crate::core"],
    );
}

#[test]
fn the_dispatcher_does_no_io() {
    none_use("interchange", |p| p.contains("src/dispatch/"), IO);
}

#[test]
fn only_lib_imports_the_manager_loop() {
    none_use(
        "pilot",
        // The loops that drive managers: one thread each (`manager.rs`) or many to a thread
        // (`group.rs`).
        |p| {
            !p.ends_with("src/lib.rs")
                && !p.ends_with("src/manager.rs")
                && !p.ends_with("src/group.rs")
        },
        &["crate::manager"],
    );
}

#[test]
fn the_manager_core_does_no_io() {
    let mut banned = IO.to_vec();
    banned.extend(["crate::link", "crate::pool"]);
    none_use(
        "pilot",
        |p| p.ends_with("src/core.rs") || p.contains("src/core/"),
        &banned,
    );
}
