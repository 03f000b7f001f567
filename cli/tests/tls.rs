//! HTTPS end to end with a site's own CA (made here with `openssl`): the broker serves TLS, the
//! CLI and the Python SDK check its certificate against `FXR_CA_CERT`, an endpoint dials its
//! link over `wss://` and runs a task; without the CA, or in clear, nothing gets through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use support::broker_world::*;
use support::{have, succeed, FXR};

/// A CA and a certificate for 127.0.0.1 signed by it, in `dir`.
fn make_ca(dir: &Path) {
    let sh = format!(
        "set -e; cd {d}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=fxr test CA' 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout other.key -out other.pem -days 2 -subj '/CN=someone else' 2>/dev/null",
        d = dir.display()
    );
    let ok = Command::new("sh")
        .args(["-c", &sh])
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl made the test CA");
}

#[test]
fn https_and_wss_work_end_to_end_with_a_site_ca() {
    if !have("openssl") {
        eprintln!("skipping: no openssl to make a test CA");
        return;
    }
    let w = World::new();
    let d = w.dir.path();
    make_ca(d);
    let token = w.user("alice");
    // A bad certificate is refused at start, naming the file.
    let bad = Command::new(FXR)
        .args(["broker", "serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(w.db())
        .args(["--tls-cert", "/nonexistent.pem", "--tls-key"])
        .arg(d.join("server.key"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent.pem"));
    let _broker = w.broker(&[
        "--tls-cert",
        d.join("server.pem").to_str().unwrap(),
        "--tls-key",
        d.join("server.key").to_str().unwrap(),
    ]);
    let url = format!("https://127.0.0.1:{}", w.port);
    let fxr = |ca: Option<&str>| {
        let mut c = Command::new(FXR);
        c.env("FXR_HOME", w.home("alice"))
            .env("FXR_BROKER", &url)
            .env("FXR_TOKEN", &token)
            .env_remove("FXR_CA_CERT");
        if let Some(ca) = ca {
            c.env("FXR_CA_CERT", d.join(ca));
        }
        c
    };
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let err = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // The CLI checks the certificate: the site CA is trusted, the web PKI and another CA are not.
    let ok = succeed(fxr(Some("ca.pem")).arg("whoami"));
    assert!(text(&ok).starts_with("alice"), "{}", text(&ok));
    for ca in [None, Some("other.pem")] {
        let no = fxr(ca).arg("whoami").output().unwrap();
        assert!(!no.status.success(), "{ca:?} must not be trusted");
        assert!(
            err(&no).to_lowercase().contains("certificate") || err(&no).contains("UnknownIssuer"),
            "{}",
            err(&no)
        );
    }
    // Clear HTTP to the TLS port gets nothing.
    let clear = Command::new(FXR)
        .env("FXR_HOME", w.home("alice"))
        .env("FXR_BROKER", format!("http://127.0.0.1:{}", w.port))
        .env("FXR_TOKEN", &token)
        .arg("whoami")
        .output()
        .unwrap();
    assert!(!clear.status.success());

    // An endpoint created with the CA trusts it when it runs in the background; its link is wss.
    succeed(fxr(Some("ca.pem")).args(["endpoint", "create", "site", "--workers-per-node", "1"]));
    let toml =
        std::fs::read_to_string(w.home("alice").join("endpoints/site/endpoint.toml")).unwrap();
    assert!(toml.contains("ca_cert") && toml.contains(&url), "{toml}");
    let started = fxr(None)
        .args(["endpoint", "start", "site"])
        .output()
        .unwrap();
    assert!(started.status.success(), "{}", err(&started));
    let stop = || {
        let _ = fxr(None).args(["endpoint", "stop", "site"]).output();
    };
    succeed(fxr(Some("ca.pem")).args([
        "function",
        "register",
        "--name",
        "hello",
        "--shell",
        "echo over tls",
    ]));
    let run = fxr(Some("ca.pem"))
        .args(["run", "hello", "--endpoint", "site"])
        .output()
        .unwrap();
    stop();
    assert!(run.status.success(), "{}", err(&run));
    assert_eq!(text(&run), "over tls\n");

    // The Python SDK, with the same CA.
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python/src");
    let py = |ca: Option<&str>| {
        let mut c = Command::new("/usr/bin/python3");
        c.args([
            "-c",
            "import fxr; print(fxr.Client().functions()[0]['name'])",
        ])
        .env("PYTHONPATH", &sdk)
        .env("FXR_HOME", w.home("alice"))
        .env("FXR_BROKER", &url)
        .env("FXR_TOKEN", &token)
        .env_remove("FXR_CA_CERT")
        .stdin(Stdio::null());
        if let Some(ca) = ca {
            c.env("FXR_CA_CERT", d.join(ca));
        }
        c.output().unwrap()
    };
    let ok = py(Some("ca.pem"));
    assert_eq!(text(&ok).trim(), "hello", "{}", err(&ok));
    let no = py(None);
    assert!(
        !no.status.success() && err(&no).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        err(&no)
    );
}
