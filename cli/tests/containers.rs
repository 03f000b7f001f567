//! Containers end to end: functions registered with a container run inside it, on real runtimes
//! (bubblewrap, podman with runc, charliecloud), with images built here from this host's files
//! and never pulled. A runtime that is missing skips its part, unless FXR_REQUIRE_CONTAINERS=1
//! (set by CI) makes its absence a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::broker_world::{register, submit, wait_all, wait_connected, World};
use support::{have, LocalEndpoint, FXR};

/// Whether `runtime` (whose executable is `tool`) can be tested here.
fn runtime(runtime: &str, tool: &str) -> bool {
    if have(tool) {
        return true;
    }
    assert!(
        std::env::var("FXR_REQUIRE_CONTAINERS").is_err(),
        "FXR_REQUIRE_CONTAINERS is set but `{tool}` ({runtime}) is not installed"
    );
    eprintln!("skipping {runtime}: `{tool}` is not installed");
    false
}

/// An image built by `fxr container image`: a root filesystem, and its podman copy if asked
/// for (removed from podman's store when dropped).
struct Image {
    dir: PathBuf,
    podman: Option<String>,
    _tmp: tempfile::TempDir,
}

impl Image {
    fn build(label: &str, podman: bool) -> Image {
        Image::build_with(label, podman, &[])
    }

    fn build_with(label: &str, podman: bool, extra: &[&str]) -> Image {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rootfs");
        let name = format!("localhost/fxr-test-{}-{label}", std::process::id());
        let mut c = Command::new(FXR);
        c.args(["container", "image"])
            .arg(&dir)
            .args(["--label", label])
            .args(extra);
        if podman {
            c.args(["--podman", &name]);
        }
        support::succeed(&mut c);
        assert!(dir.join("etc/fxr-image").is_file());
        Image {
            dir,
            podman: podman.then_some(name),
            _tmp: tmp,
        }
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Some(name) = &self.podman {
            let _ = Command::new("podman").args(["rmi", "-f", name]).output();
        }
    }
}

fn stdout_of(t: &Value) -> String {
    let r = &t["result"];
    r["stdout"].as_str().unwrap_or_default().trim().to_string()
}

#[test]
fn functions_registered_with_each_runtime_run_inside_its_container() {
    let mut cases: Vec<(&str, Image, String)> = Vec::new();
    if runtime("bwrap", "bwrap") {
        let img = Image::build("made-for-bwrap", false);
        let c = format!("bwrap:{}", img.path());
        cases.push(("made-for-bwrap", img, c));
    }
    if runtime("podman", "podman") {
        let img = Image::build("made-for-podman", true);
        let c = format!("podman:{}", img.podman.clone().unwrap());
        cases.push(("made-for-podman", img, c));
    }
    if runtime("charliecloud", "ch-run") {
        let img = Image::build("made-for-charliecloud", false);
        let c = format!("charliecloud:{}", img.path());
        cases.push(("made-for-charliecloud", img, c));
    }
    if cases.is_empty() {
        return;
    }
    let w = World::new();
    let _broker = w.broker(&[]);
    let token = w.user("alice");
    let ep = w.create_endpoint("alice", &token, "site", 2);
    let _endpoint = w.endpoint("alice", &token, "site");
    wait_connected(&w.url, &token, &ep);
    let mut tasks = Vec::new();
    for (label, _, container) in &cases {
        // Registered through the command line, as a user would.
        let out = support::succeed(
            w.fxr("alice", &token)
                .args(["function", "register", "--name", label])
                .args(["--shell", "cat /etc/fxr-image; echo type=$FXR_T"])
                .args(["--container", container]),
        );
        let fid = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let (s, v) = support::broker_world::call(
            "GET",
            &format!("{}/v1/functions/{fid}", w.url),
            Some(&token),
            None,
        );
        assert_eq!(s, 200);
        assert_eq!(
            format!(
                "{}:{}",
                v["container"]["runtime"].as_str().unwrap(),
                v["container"]["image"].as_str().unwrap()
            ),
            *container
        );
        tasks.push((label.to_string(), fid));
    }
    // The same command on the node itself: the host has no /etc/fxr-image.
    let bare = register(
        &w.url,
        &token,
        json!({"name": "bare", "kind": "shell", "command": "cat /etc/fxr-image"}),
    );
    let mut specs = Vec::new();
    for (_, f) in &tasks {
        for _ in 0..3 {
            specs.push(json!({"function_id": f, "endpoint_id": ep}));
        }
    }
    specs.push(json!({"function_id": bare, "endpoint_id": ep}));
    let ids = submit(&w.url, &token, specs);
    let results = wait_all(&w.url, &token, &ids, Duration::from_secs(180));
    let by_id = |id: u64| results.iter().find(|t| t["id"] == id).unwrap();
    for (i, (label, _)) in tasks.iter().enumerate() {
        for k in 0..3 {
            let t = by_id(ids[i * 3 + k]);
            assert_eq!(t["state"], "succeeded", "{label}: {t}");
            assert_eq!(stdout_of(t).lines().next(), Some(label.as_str()), "{t}");
        }
    }
    let t = by_id(*ids.last().unwrap());
    assert_ne!(
        stdout_of(t).lines().next(),
        Some(cases[0].0),
        "the bare function does not see an image's files: {t}"
    );
}

/// A local endpoint with 2 workers, and `env` for it and its pilots.
fn local(env: &[(&str, &str)]) -> LocalEndpoint {
    LocalEndpoint::start(&["--workers-per-node", "2"], env)
}

/// Runs one `echo` task in `container` on `ep`; its result line.
fn echo_in(ep: &LocalEndpoint, container: &str) -> Value {
    ep.run(&["echo", "--container", container, "--args", "{}"])
}

#[test]
fn tasks_in_containers_share_the_nodes_store_with_tasks_on_the_node() {
    let mut cases: Vec<(&str, Image, String)> = Vec::new();
    if runtime("bwrap", "bwrap") {
        let img = Image::build("store-bwrap", false);
        let c = format!("bwrap:{}", img.path());
        cases.push(("bwrap", img, c));
    }
    if runtime("podman", "podman") {
        let img = Image::build("store-podman", true);
        let c = format!("podman:{}", img.podman.clone().unwrap());
        cases.push(("podman", img, c));
    }
    if runtime("charliecloud", "ch-run") {
        let img = Image::build("store-charliecloud", false);
        let c = format!("charliecloud:{}", img.path());
        cases.push(("charliecloud", img, c));
    }
    if cases.is_empty() {
        return;
    }
    let ep = local(&[]);
    for (name, _img, container) in &cases {
        // Written inside the container, read on the node.
        let key = format!("from-{name}");
        let args = json!({"key": key, "value": format!("written in {name}")}).to_string();
        let r = ep.run(&["put", "--container", container, "--args", &args]);
        assert_eq!(r["status"], "succeeded", "{name}: {r}");
        let args = json!({"key": key, "text": true}).to_string();
        let r = ep.run(&["get", "--args", &args]);
        assert_eq!(
            r["result"]["value"],
            format!("written in {name}"),
            "{name}: {r}"
        );
        // Written on the node, read inside the container, by a built-in and by `fxr data`.
        let r = ep.run(&[
            "put",
            "--args",
            r#"{"key": "from-node", "value": "node data"}"#,
        ]);
        assert_eq!(r["status"], "succeeded", "{r}");
        let r = ep.run(&[
            "get",
            "--container",
            container,
            "--args",
            r#"{"key": "from-node", "text": true}"#,
        ]);
        assert_eq!(r["result"]["value"], "node data", "{name}: {r}");
        let r = ep.run(&[
            "--shell",
            "/fxr/fxr data get from-node -",
            "--container",
            container,
        ]);
        assert_eq!(r["result"]["stdout"], "node data", "{name}: {r}");
    }
}

#[test]
fn a_python_function_bound_to_a_container_runs_in_that_containers_interpreter() {
    if !runtime("bwrap", "bwrap") || !have("python3") {
        return;
    }
    let img = Image::build_with("python-image", false, &["--python"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.py");
    std::fs::write(
        &src,
        "import os\ndef where(tag):\n    return {'image': open('/etc/fxr-image').read().strip(), 'pid': os.getpid(), 'tag': tag}\n",
    )
    .unwrap();
    let ep = local(&[]);
    let container = format!("bwrap:{}", img.path());
    let f = format!("{}:where", src.display());
    let run = |tag: &str| {
        ep.run(&[
            "--python",
            &f,
            "--container",
            &container,
            "--args",
            &json!({"args": [tag]}).to_string(),
        ])
    };
    let a = run("first");
    assert_eq!(a["result"]["image"], "python-image", "{a}");
    assert_eq!(a["result"]["tag"], "first");
    // The container's worker keeps its interpreter: the next task of the type reuses it.
    let b = run("second");
    assert_eq!(b["result"]["image"], "python-image", "{b}");
    let pids: std::collections::HashSet<_> = [&a, &b]
        .iter()
        .map(|r| r["result"]["pid"].clone())
        .collect();
    assert!(pids.len() <= 2, "{a} {b}");
}

#[test]
fn a_container_that_cannot_start_fails_with_container_error_and_the_runtimes_message() {
    let mut cases = Vec::new();
    if runtime("bwrap", "bwrap") {
        cases.push((
            "bwrap:/nonexistent/fxr-image".to_string(),
            "/nonexistent/fxr-image",
        ));
    }
    if runtime("podman", "podman") {
        cases.push((
            "podman:localhost/fxr-no-such-image".to_string(),
            "image not known",
        ));
    }
    if runtime("charliecloud", "ch-run") {
        cases.push((
            "charliecloud:/nonexistent/fxr-ch-image".to_string(),
            "/nonexistent/fxr-ch-image",
        ));
    }
    cases.push((
        "rkt:some-image".to_string(),
        "unknown container runtime `rkt`",
    ));
    let ep = local(&[]);
    for (container, needle) in cases {
        let v = echo_in(&ep, &container);
        assert_eq!(v["kind"], "container_error", "{container}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{container}: {msg}");
    }
}

fn routing(image: &Path, policy: &str, types: usize, functions: usize) -> Value {
    let out = support::succeed(
        Command::new(FXR)
            .args(["--output", "json", "bench", "routing", "--mode", "real"])
            .args(["--runtime", "bwrap", "--image"])
            .arg(image)
            .args(["--policy", policy, "--container-types", &types.to_string()])
            .args(["--functions", &functions.to_string()])
            .args(["--managers", "2", "--workers", "2", "--duration-ms", "30"])
            .args(["--cold-routing-interval", "200ms"]),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn warm_routing_starts_fewer_containers_than_random_on_real_workers() {
    if !runtime("bwrap", "bwrap") {
        return;
    }
    let img = Image::build("routing", false);
    let warm = routing(&img.dir, "warm", 4, 80);
    let random = routing(&img.dir, "random", 4, 80);
    for v in [&warm, &random] {
        assert_eq!(v["failed"], 0, "{v}");
        assert_eq!(v["mode"], "real");
    }
    let (w, r) = (
        warm["cold_starts"].as_u64().unwrap(),
        random["cold_starts"].as_u64().unwrap(),
    );
    assert!(w >= 4, "every type started at least once: {warm}");
    assert!(w < r, "warm {w} cold starts, random {r}");
}

#[test]
fn no_type_starves_when_types_outnumber_workers() {
    if !runtime("bwrap", "bwrap") {
        return;
    }
    let img = Image::build("starve", false);
    for policy in ["warm", "warm-hard", "random"] {
        let v = routing(&img.dir, policy, 8, 48);
        assert_eq!(v["failed"], 0, "{policy}: {v}");
        assert!(v["cold_starts"].as_u64().unwrap() >= 8, "{policy}: {v}");
    }
}

#[test]
fn the_apptainer_template_runs_through_a_stand_in_with_apptainers_command_line() {
    // Apptainer has no Debian package: `scripts/apptainer-standin.sh`, installed as `apptainer`
    // on the endpoint's PATH, takes the command line fxr's template produces and runs it with
    // bubblewrap.
    if !runtime("apptainer (stand-in over bwrap)", "bwrap") {
        return;
    }
    let bin = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/apptainer-standin.sh");
    std::os::unix::fs::symlink(&script, bin.path().join("apptainer")).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let img = Image::build("made-for-apptainer", false);
    let ep = local(&[("PATH", path.as_str())]);
    let container = format!("apptainer:{}", img.path());
    let v = ep.run(&["--shell", "cat /etc/fxr-image", "--container", &container]);
    assert_eq!(stdout_of(&v), "made-for-apptainer", "{v}");
    let v = echo_in(&ep, "apptainer:/nonexistent/image.sif");
    assert_eq!(v["kind"], "container_error", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("could not open image"),
        "{v}"
    );
}
