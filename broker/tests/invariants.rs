//! Architecture invariants that a tool can check: the broker never opens an nng socket (it
//! talks to endpoints only over its WebSocket link), so it must not depend on nng at all.

#[test]
fn the_broker_does_not_depend_on_nng() {
    for forbidden in ["nng", "nng-sys"] {
        let out = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "-p",
                "fxr-broker",
                "-e",
                "normal",
                "-i",
                forbidden,
                "--offline",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        assert!(
            !out.contains(forbidden),
            "fxr-broker depends on {forbidden}:\n{out}"
        );
    }
}
