//! Container runtimes: the command line that starts a worker inside a container.
//!
//! A runtime is a command template run by `/bin/sh -c "exec TEMPLATE"`, with these placeholders
//! replaced by shell-quoted values:
//!
//! | placeholder | value |
//! |---|---|
//! | `{image}` | the function's image, in the runtime's terms |
//! | `{options}` | the function's extra options, each quoted, separated by spaces |
//! | `{worker}` | the path of this `fxr` executable, to bind-mount into the container |
//! | `{worker_dir}` | the directory holding it |
//! | `{worker_name}` | its file name, for runtimes that bind the directory |
//! | `{store}` | the node's object store directory (empty when there is none) |
//! | `{store_options}` | the runtime's options that bind the store at the same path and pass the worker its `FXR_*` variables, followed by a space (empty without a store, or for a runtime fxr does not know) |
//!
//! Inside the container the worker is `/fxr/fxr worker`, so an image needs an (empty) `/fxr`
//! directory and the shared libraries the executable links (`fxr container image` builds such
//! an image from this host). Sites override a template, or add a runtime, in `endpoint.toml`:
//! `[containers.NAME] command = "..."`.

use crate::exec::shell_quote;
use fxr_protocol::ContainerSpec;
use std::path::Path;

/// The runtimes fxr knows, with their default templates. `bwrap`, `podman` and `charliecloud` are
/// exercised by the test suite; the others follow each tool's documented command line.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "bwrap",
        "bwrap --unshare-all --die-with-parent --new-session --ro-bind {image} / --proc /proc \
         --dev /dev --tmpfs /tmp --ro-bind {worker} /fxr/fxr {store_options}{options} /fxr/fxr worker",
    ),
    (
        "podman",
        "podman run --rm -i --pull=never --sig-proxy=false --runtime runc --network none \
         --log-driver none \
         --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 -v {worker}:/fxr/fxr:ro {store_options}{options} \
          {image} /fxr/fxr worker",
    ),
    (
        "charliecloud",
        "env USER=\"${USER:-$(id -un)}\" ch-run --no-passwd -b {worker_dir}:/fxr {store_options}{options} {image} \
         -- /fxr/{worker_name} worker",
    ),
    (
        "apptainer",
        "apptainer exec --containall --bind {worker}:/fxr/fxr {store_options}{options} {image} /fxr/fxr worker",
    ),
    (
        "singularity",
        "singularity exec --containall --bind {worker}:/fxr/fxr {store_options}{options} {image} /fxr/fxr worker",
    ),
    (
        "shifter",
        "shifter --image={image} --volume={worker_dir}:/fxr {store_options}{options} /fxr/{worker_name} worker",
    ),
    (
        "docker",
        "docker run --rm -i --network none -v {worker}:/fxr/fxr:ro {store_options}{options} {image} /fxr/fxr worker",
    ),
];

/// Per runtime, the options that bind the node's store (`{store}`) at the same path inside the
/// container, and pass on the store's variables where the runtime does not pass the
/// environment by itself (podman and docker start containers with a clean one).
const STORE_OPTIONS: &[(&str, &str)] = &[
    ("bwrap", "--bind {store} {store}"),
    (
        "podman",
        "-v {store}:{store} --env FXR_STORE --env FXR_STORE_CAPACITY --env FXR_DATA_NODE \
         --env FXR_SECRET",
    ),
    ("charliecloud", "-b {store}:{store}"),
    ("apptainer", "--bind {store}"),
    ("singularity", "--bind {store}"),
    ("shifter", "--volume={store}:{store}"),
    (
        "docker",
        "-v {store}:{store} --env FXR_STORE --env FXR_STORE_CAPACITY --env FXR_DATA_NODE \
         --env FXR_SECRET",
    ),
];

/// The template for `runtime`: the site's own first, then the built-in one.
pub fn template<'a>(runtime: &str, site: &'a [(String, String)]) -> Option<&'a str> {
    site.iter()
        .find(|(name, _)| name == runtime)
        .map(|(_, t)| t.as_str())
        .or_else(|| {
            BUILTIN
                .iter()
                .find(|(name, _)| *name == runtime)
                .map(|(_, t)| *t)
        })
}

/// The shell command that starts a worker in `spec`, or why there is none.
pub fn command(
    spec: &ContainerSpec,
    site: &[(String, String)],
    worker: &Path,
    store: Option<&Path>,
) -> Result<String, String> {
    let t = template(&spec.runtime, site).ok_or_else(|| {
        let mut known: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        known.extend(site.iter().map(|(n, _)| n.as_str()));
        format!(
            "unknown container runtime `{}` (this endpoint knows {})",
            spec.runtime,
            known.join(", ")
        )
    })?;
    let worker_s = worker.to_string_lossy();
    let dir = worker
        .parent()
        .map_or_else(|| ".".into(), |d| d.to_string_lossy());
    let name = worker
        .file_name()
        .map_or_else(|| "fxr".into(), |n| n.to_string_lossy());
    let options: Vec<String> = spec.options.iter().map(|o| shell_quote(o)).collect();
    let store = store.map_or_else(String::new, |s| shell_quote(&s.to_string_lossy()));
    let store_options = match STORE_OPTIONS.iter().find(|(n, _)| *n == spec.runtime) {
        // Followed by a space, as templates write `{store_options}{options}`.
        Some((_, o)) if !store.is_empty() => fill(o, &[("store", store.clone())]) + " ",
        _ => String::new(),
    };
    Ok(fill(
        t,
        &[
            ("store", store),
            ("store_options", store_options),
            ("image", shell_quote(&spec.image)),
            ("options", options.join(" ")),
            ("worker", shell_quote(&worker_s)),
            ("worker_dir", shell_quote(&dir)),
            ("worker_name", shell_quote(&name)),
        ],
    ))
}

/// Replaces `{name}` placeholders in one pass; other braces are left as they are.
fn fill(t: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(t.len() + 64);
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').and_then(|close| {
            values
                .iter()
                .find(|(n, _)| *n == &after[..close])
                .map(|v| (close, v))
        }) {
            Some((close, (_, v))) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(runtime: &str, image: &str, options: &[&str]) -> ContainerSpec {
        ContainerSpec {
            runtime: runtime.into(),
            image: image.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn placeholders_are_filled_with_quoted_values() {
        let c = command(
            &spec("podman", "img; rm -rf /", &["--env", "A=b c"]),
            &[],
            Path::new("/opt/my fxr/fxr"),
            None,
        )
        .unwrap();
        assert!(c.starts_with("podman run --rm -i --pull=never"), "{c}");
        assert!(c.contains("--runtime runc --network none"), "{c}");
        assert!(
            c.contains(
                "-v '/opt/my fxr/fxr':/fxr/fxr:ro --env 'A=b c' 'img; rm -rf /' /fxr/fxr worker"
            ),
            "{c}"
        );
        // With a store: bound at the same path, its variables passed on, before the options.
        let c = command(
            &spec("podman", "img", &["--env", "A=b"]),
            &[],
            Path::new("/f"),
            Some(Path::new("/dev/shm/fxr ep")),
        )
        .unwrap();
        assert!(
            c.contains("-v /f:/fxr/fxr:ro -v '/dev/shm/fxr ep':'/dev/shm/fxr ep' --env FXR_STORE"),
            "{c}"
        );
        assert!(
            c.contains("--env FXR_SECRET --env A=b img /fxr/fxr worker"),
            "{c}"
        );
        let b = command(
            &spec("bwrap", "/img", &[]),
            &[],
            Path::new("/f"),
            Some(Path::new("/s")),
        )
        .unwrap();
        assert!(b.contains("--ro-bind /f /fxr/fxr --bind /s /s "), "{b}");
    }

    #[test]
    fn a_site_template_overrides_the_builtin_and_unknown_runtimes_are_named() {
        let site = vec![
            (
                "apptainer".to_string(),
                "/opt/apptainer/bin/apptainer run {image} {x}".to_string(),
            ),
            ("mine".to_string(), "mine {image}".to_string()),
        ];
        assert_eq!(
            command(
                &spec("apptainer", "a.sif", &[]),
                &site,
                Path::new("/f"),
                None
            )
            .unwrap(),
            "/opt/apptainer/bin/apptainer run a.sif {x}"
        );
        assert_eq!(
            command(&spec("mine", "i", &[]), &site, Path::new("/f"), None).unwrap(),
            "mine i"
        );
        let e = command(&spec("rkt", "i", &[]), &site, Path::new("/f"), None).unwrap_err();
        assert!(
            e.contains("unknown container runtime `rkt`")
                && e.contains("bwrap")
                && e.contains("mine"),
            "{e}"
        );
    }

    #[test]
    fn every_builtin_runs_the_worker_from_fxr() {
        for (name, _) in BUILTIN {
            let c = command(&spec(name, "img", &[]), &[], Path::new("/x/fxr"), None).unwrap();
            assert!(
                c.contains("/fxr/fxr worker") && c.contains("img"),
                "{name}: {c}"
            );
            assert!(!c.contains('{') || c.contains("${USER"), "{name}: {c}");
        }
    }
}
