//! Python functions on a real endpoint: a persistent interpreter per worker that keeps compiled
//! functions, JSON and pickled arguments, remote tracebacks, walltimes that replace the
//! interpreter, load errors reported as such, and the interpreter an endpoint configures. Needs
//! `python3`; skipped without it unless FXR_REQUIRE_PYTHON=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::{have, LocalEndpoint, FXR};

fn python_here() -> bool {
    if have("python3") {
        return true;
    }
    assert!(
        std::env::var("FXR_REQUIRE_PYTHON").is_err(),
        "FXR_REQUIRE_PYTHON is set but python3 is not installed"
    );
    eprintln!("skipping: python3 is not installed");
    false
}

const SOURCE: &str = r#"
import os, time
calls = 0

def hello(name, times=1):
    print("this goes to the worker's stderr, not the result")
    return {"greeting": "hello " + name, "times": times}

def count():
    global calls
    calls += 1
    return {"pid": os.getpid(), "calls": calls}

def boom(x):
    return helper(x)

def helper(x):
    raise ValueError("no good: %r" % (x,))

def nap(s):
    time.sleep(s)
    return s

def marker():
    return os.environ.get("FXR_TEST_MARK")

def square(x):
    return x * x

def not_json():
    return {1, 2}
"#;

fn run(ep: &LocalEndpoint, file: &std::path::Path, entry: &str, args: Value) -> Value {
    let f = format!("{}:{entry}", file.display());
    ep.run(&["--python", &f, "--args", &args.to_string()])
}

#[test]
fn python_functions_run_in_a_persistent_interpreter_with_errors_named() {
    if !python_here() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("funcs.py");
    std::fs::write(&file, SOURCE).unwrap();
    // The endpoint's interpreter is configurable: a wrapper that marks its environment.
    let wrapper = tmp.path().join("python-wrapper");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nFXR_TEST_MARK=from-the-wrapper exec python3 \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ep = LocalEndpoint::start(
        &[
            "--blocks",
            "1",
            "--workers-per-node",
            "1",
            "--python",
            wrapper.to_str().unwrap(),
        ],
        &[],
    );

    let r = run(
        &ep,
        &file,
        "hello",
        json!({"args": ["world"], "kwargs": {"times": 3}}),
    );
    assert_eq!(
        r["result"],
        json!({"greeting": "hello world", "times": 3}),
        "{r}"
    );
    // A plain object is keyword arguments.
    let r = run(&ep, &file, "hello", json!({"name": "you"}));
    assert_eq!(r["result"]["greeting"], "hello you", "{r}");
    let r = run(&ep, &file, "marker", json!({}));
    assert_eq!(r["result"], "from-the-wrapper", "{r}");

    // One interpreter, kept: the same process, and module state that persists across tasks.
    let a = run(&ep, &file, "count", json!({}));
    let b = run(&ep, &file, "count", json!({}));
    assert_eq!(a["result"]["pid"], b["result"]["pid"], "{a} {b}");
    assert_eq!(
        b["result"]["calls"].as_u64().unwrap(),
        a["result"]["calls"].as_u64().unwrap() + 1
    );

    // An exception comes back as function_error with the remote traceback, from the function.
    let r = run(&ep, &file, "boom", json!({"args": [7]}));
    assert_eq!(r["kind"], "function_error", "{r}");
    let tb = r["message"].as_str().unwrap();
    assert!(tb.starts_with("Traceback"), "{tb}");
    assert!(tb.contains("in boom") && tb.contains("in helper"), "{tb}");
    assert!(tb.contains("ValueError: no good: 7"), "{tb}");
    assert!(
        !tb.contains("runner"),
        "the runner's frames are left out: {tb}"
    );
    let r = run(&ep, &file, "not_json", json!({}));
    assert!(r["message"].as_str().unwrap().contains("not JSON"), "{r}");

    // Pickled arguments and results.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import pickle,base64;print(base64.b64encode(pickle.dumps(((12,),{}))).decode())",
        ])
        .output()
        .unwrap();
    let b64 = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = run(&ep, &file, "square", json!({"pickle": b64}));
    let back = r["result"]["pickle"].as_str().expect("a pickled result");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import pickle,base64,sys;print(pickle.loads(base64.b64decode(sys.argv[1])))",
            back,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "144");

    // A walltime kills and replaces the interpreter; the next task runs in a new one.
    let f = format!("{}:nap", file.display());
    let r = ep.run(&[
        "--python",
        &f,
        "--walltime",
        "500ms",
        "--args",
        r#"{"args": [30]}"#,
    ]);
    assert_eq!(r["kind"], "timeout", "{r}");
    let c = run(&ep, &file, "count", json!({}));
    assert_ne!(
        c["result"]["pid"], a["result"]["pid"],
        "a fresh interpreter"
    );
    assert_eq!(c["result"]["calls"], 1, "{c}");

    // Load errors: a name the source does not define, a syntax error, are named at once by the
    // command line (which checks the source before sending it).
    let bad = tmp.path().join("bad.py");
    std::fs::write(&bad, "def broken(:\n    pass\n").unwrap();
    let out = std::process::Command::new(FXR)
        .args(["run", "--endpoint", &ep.addr, "--python"])
        .arg(format!("{}:broken", bad.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not valid Python") && err.contains("SyntaxError"),
        "{err}"
    );
    let out = std::process::Command::new(FXR)
        .args(["run", "--endpoint", &ep.addr, "--python"])
        .arg(format!("{}:missing", file.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("defines no function `missing`"), "{err}");
}
