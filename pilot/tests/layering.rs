//! Architecture invariants that the source itself shows: the manager's I/O edge is a leaf, and
//! the core does no I/O.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
                let text = std::fs::read_to_string(&p).unwrap();
                // Unit tests at the end of a file may use what the code must not.
                let code = text
                    .split("#[cfg(test)]\nmod tests")
                    .next()
                    .unwrap_or_default();
                // Comments may name what the code must not use.
                let code: String = code
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                out.push((rel.display().to_string(), code));
            }
        }
    }
    out
}

#[test]
fn no_module_but_lib_imports_the_manager_loop() {
    for (path, text) in sources() {
        if path.ends_with("lib.rs") || path.ends_with("manager.rs") {
            continue;
        }
        assert!(
            !text.contains("crate::manager"),
            "{path} imports the manager loop"
        );
    }
}

#[test]
fn the_manager_core_does_no_io() {
    for (path, text) in sources() {
        if !(path.ends_with("src/core.rs") || path.contains("src/core/")) {
            continue;
        }
        for io in [
            "std::process",
            "std::net",
            "std::fs",
            "std::thread",
            "Instant::now",
            "nng::",
            "crate::link",
            "crate::pool",
        ] {
            if path.ends_with("tests.rs") && io == "Instant::now" {
                continue;
            }
            assert!(!text.contains(io), "{path} uses {io}");
        }
    }
}
