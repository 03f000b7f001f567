//! The command line's HTTP client for the broker, and the saved login (`$FXR_HOME/config.toml`,
//! by default `~/.fxr/config.toml`, mode 0600). `FXR_BROKER` and `FXR_TOKEN` override it.

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// fxr's home directory.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("FXR_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from(".fxr"), |h| PathBuf::from(h).join(".fxr"))
}

#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub broker: String,
    pub token: String,
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // `mode` applies only to a new file: one that existed keeps its mode unless it is set.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Creates `dir` if needed and makes it 0700 when it is ours, whatever its mode was. A shared
/// directory (sticky, like `/tmp`, or someone else's) is left alone.
pub fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    // SAFETY: getuid(2) has no failure mode.
    let me = unsafe { libc::getuid() };
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.uid() == me && !sticky && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

impl Profile {
    pub fn load() -> anyhow::Result<Profile> {
        let path = home().join("config.toml");
        let mut p = match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("{} is malformed", path.display()))?
            }
            Err(_) => Profile::default(),
        };
        if let Ok(b) = std::env::var("FXR_BROKER") {
            p.broker = b;
        }
        if let Ok(t) = std::env::var("FXR_TOKEN") {
            p.token = t;
        }
        if p.broker.is_empty() || p.token.is_empty() {
            bail!("not logged in: run `fxr login --broker URL` with the token on standard input (or set FXR_BROKER and FXR_TOKEN)");
        }
        Ok(p)
    }

    pub fn save(&self) -> anyhow::Result<PathBuf> {
        let path = home().join("config.toml");
        write_private(&path, &toml::to_string(self)?)?;
        Ok(path)
    }
}

/// A logged-in client.
pub struct Api {
    pub base: String,
    token: String,
    agent: ureq::Agent,
    /// How the broker's certificate is checked, read once for every connection.
    tls: ureq::tls::TlsConfig,
}

/// Certificates `https://` brokers are checked against: the web PKI's roots, or only the CA
/// bundle (PEM) named by `FXR_CA_CERT`, for a site's own CA.
fn tls_config() -> anyhow::Result<ureq::tls::TlsConfig> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    let Some(path) = std::env::var_os("FXR_CA_CERT") else {
        return Ok(TlsConfig::default());
    };
    let path = PathBuf::from(path);
    let pem = std::fs::read(&path)
        .with_context(|| format!("cannot read FXR_CA_CERT {}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) =
            item.with_context(|| format!("{} is not PEM", path.display()))?
        {
            certs.push(c);
        }
    }
    anyhow::ensure!(
        !certs.is_empty(),
        "FXR_CA_CERT {} holds no certificate",
        path.display()
    );
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&certs))
        .build())
}

impl Api {
    pub fn new(broker: &str, token: &str) -> anyhow::Result<Api> {
        let tls = tls_config()?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(330)))
            .tls_config(tls.clone())
            .build();
        Ok(Api {
            base: broker.trim_end_matches('/').to_string(),
            token: token.to_string(),
            agent: config.into(),
            tls,
        })
    }

    pub fn from_profile() -> anyhow::Result<Api> {
        let p = Profile::load()?;
        Api::new(&p.broker, &p.token)
    }

    fn finish<T: DeserializeOwned>(
        &self,
        what: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<T> {
        let mut resp = resp.with_context(|| format!("cannot reach the broker at {}", self.base))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{what}: {} {msg}", status.as_u16());
        }
        if text.is_empty() {
            return serde_json::from_str("null").context("empty answer");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{what}: unexpected answer from the broker"))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let r = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        self.finish(&format!("GET {path}"), r)
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let r = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .send_json(body);
        self.finish(&format!("POST {path}"), r)
    }

    /// Copies a binary answer (`GET path`) into `out`, checking its length and the CRC-32 the
    /// broker sends in `X-Fxr-Checksum`; returns the bytes copied.
    pub fn download(&self, path: &str, out: &mut dyn std::io::Write) -> anyhow::Result<u64> {
        let resp = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("cannot reach the broker at {}", self.base))?;
        if !resp.status().is_success() {
            let r: anyhow::Result<serde_json::Value> =
                self.finish(&format!("GET {path}"), Ok(resp));
            r?;
            bail!("GET {path}: unexpected answer");
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let expected = header("x-fxr-checksum")
            .and_then(|c| u32::from_str_radix(&c, 16).ok())
            .context("the broker sent no X-Fxr-Checksum")?;
        let length: Option<u64> = header("content-length").and_then(|l| l.parse().ok());
        let mut reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => bail!("GET {path}: the download broke after {total} bytes: {e}"),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            total += n as u64;
        }
        if let Some(l) = length {
            anyhow::ensure!(total == l, "GET {path}: {total} of {l} bytes arrived");
        }
        let sum = hasher.finalize();
        anyhow::ensure!(
            sum == expected,
            "GET {path}: checksum {sum:08x}, the broker said {expected:08x}"
        );
        Ok(total)
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        let r = self
            .agent
            .delete(&format!("{}{path}", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        self.finish::<serde_json::Value>(&format!("DELETE {path}"), r)
            .map(|_| ())
    }

    /// Follows results over the broker's event stream (`POST /v1/tasks/stream` with `body`),
    /// calling `on_result` for each finished task, until the stream ends. Fails when no event
    /// (result or keep-alive) or no result arrives for `idle`.
    pub fn follow(
        &self,
        body: &serde_json::Value,
        idle: std::time::Duration,
        on_result: &mut dyn FnMut(serde_json::Value) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        use std::io::BufRead;
        // No overall timeout: a stream lasts as long as its tasks run. The broker sends a
        // keep-alive every 15 s, so a silent connection is noticed.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(std::time::Duration::from_secs(10)))
            .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
            .tls_config(self.tls.clone())
            .build()
            .into();
        let resp = agent
            .post(&format!("{}/v1/tasks/stream", self.base))
            .header("Authorization", &format!("Bearer {}", self.token))
            .send_json(body)
            .with_context(|| format!("cannot reach the broker at {}", self.base))?;
        if !resp.status().is_success() {
            let r: anyhow::Result<serde_json::Value> =
                self.finish("POST /v1/tasks/stream", Ok(resp));
            r?;
            bail!("POST /v1/tasks/stream: unexpected answer");
        }
        let reader =
            std::io::BufReader::new(resp.into_body().into_with_config().limit(u64::MAX).reader());
        let mut event = String::new();
        let mut data = String::new();
        let mut last = std::time::Instant::now();
        for line in reader.lines() {
            let line = line.context("the result stream broke")?;
            if line.is_empty() {
                match event.as_str() {
                    "result" => {
                        last = std::time::Instant::now();
                        let v = serde_json::from_str(&data)
                            .context("an undecodable result on the stream")?;
                        on_result(v)?;
                    }
                    "end" => return Ok(()),
                    "error" => bail!("the broker ended the result stream: {data}"),
                    _ => {}
                }
                event.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
            if last.elapsed() > idle {
                bail!("no result for {idle:?}");
            }
        }
        bail!("the broker closed the result stream before the tasks finished")
    }

    /// Resolves a function given by id or by name.
    pub fn function_id(&self, name_or_id: &str) -> anyhow::Result<String> {
        let all: Vec<serde_json::Value> = self.get("/v1/functions")?;
        self.resolve(&all, name_or_id, "function")
    }

    /// Resolves an endpoint given by id or by name.
    pub fn endpoint_id(&self, name_or_id: &str) -> anyhow::Result<String> {
        let all: Vec<serde_json::Value> = self.get("/v1/endpoints")?;
        self.resolve(&all, name_or_id, "endpoint")
    }

    /// An id, or a name: names are unique per owner, so among others' shared things of the
    /// same name the caller's own wins.
    fn resolve(&self, all: &[serde_json::Value], key: &str, what: &str) -> anyhow::Result<String> {
        if all.iter().any(|f| f["id"] == key) {
            return Ok(key.to_string());
        }
        let named: Vec<&serde_json::Value> = all.iter().filter(|f| f["name"] == key).collect();
        let id = |v: &serde_json::Value| v["id"].as_str().unwrap_or_default().to_string();
        match named.as_slice() {
            [one] => Ok(id(one)),
            [] => bail!("no {what} `{key}` that you may use"),
            _ => {
                let me: serde_json::Value = self.get("/v1/whoami")?;
                let mine: Vec<&&serde_json::Value> =
                    named.iter().filter(|v| v["owner"] == me["name"]).collect();
                match mine.as_slice() {
                    [one] => Ok(id(one)),
                    _ => bail!(
                        "{} {what}s named `{key}` are shared with you (owners {}); use an id",
                        named.len(),
                        named
                            .iter()
                            .map(|v| v["owner"].as_str().unwrap_or("?"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
        }
    }
}
