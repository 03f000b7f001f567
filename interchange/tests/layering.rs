//! Architecture invariants that the source itself shows: only `lib.rs` knows the core, and the
//! dispatcher does no I/O.

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
fn no_module_but_lib_imports_the_core() {
    for (path, text) in sources() {
        if path.ends_with("src/lib.rs") || path.ends_with("src/core.rs") {
            continue;
        }
        assert!(!text.contains("crate::core"), "{path} imports the core");
    }
}

#[test]
fn the_dispatcher_does_no_io() {
    for (path, text) in sources() {
        if !path.contains("src/dispatch/") {
            continue;
        }
        for io in [
            "std::process",
            "std::net",
            "std::fs",
            "std::thread",
            "nng::",
            "tokio::",
        ] {
            assert!(!text.contains(io), "{path} uses {io}");
        }
        if !path.ends_with("tests.rs") {
            assert!(!text.contains("Instant::now"), "{path} reads the clock");
        }
    }
}
