//! `fxr endpoint configure NAME`: print the settings in force (defaults included), change them
//! with `--set TABLE.KEY=VALUE` (checked before anything is written), or print the job script
//! a block would run with `--dry-run`.

use super::{endpoint_dir, run as running, StartArgs};
use crate::exit;
use anyhow::{bail, Context};
use fxr_interchange::config::EndpointConfig;
use fxr_interchange::scaling::{next_block_id, render_block};

#[derive(clap::Args, Debug)]
pub struct ConfigureArgs {
    pub name: String,
    /// The endpoint's directory (default: $FXR_HOME/endpoints/NAME).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Set a key, `provider.partition=debug` (a TOML value, or else a string); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the job script the next block would run (with the changes of `--set`, which are
    /// not saved) instead of writing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Sets `key` (dotted: `provider.partition`) in a TOML document to `value`, read as a TOML
/// value when it is one (`4`, `true`, `"x"`, `["a"]`) and as a string otherwise.
pub fn set_key(doc: &mut toml::Table, key: &str, value: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("`{key}` is not a key (write TABLE.KEY, `provider.partition`)");
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, tables) = parts.split_last().context("empty key")?;
    let mut at = doc;
    for t in tables {
        let entry = at
            .entry((*t).to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(table) => table,
            _ => bail!("`{t}` in `{key}` is not a table"),
        };
    }
    at.insert((*last).to_string(), parsed);
    Ok(())
}

/// The configuration `doc` describes, checked as `fxr endpoint start` checks it.
fn checked(doc: &toml::Table) -> anyhow::Result<EndpointConfig> {
    let text = toml::to_string(doc)?;
    let cfg: EndpointConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    cfg.validate().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

/// Default `fxr endpoint start` settings, as if no option were given.
fn default_start_args() -> anyhow::Result<StartArgs> {
    use clap::{Args, FromArgMatches};
    let matches =
        StartArgs::augment_args(clap::Command::new("start")).try_get_matches_from(["start"])?;
    Ok(StartArgs::from_arg_matches(&matches)?)
}

/// The job script the next block of endpoint `name` (in `dir`, configured by `config`) would
/// run. The manager port is chosen when the endpoint starts; the script shows 0 in its place.
pub fn dry_run_script(
    name: &str,
    dir: &std::path::Path,
    mut config: EndpointConfig,
) -> anyhow::Result<String> {
    let store = config.engine.store_dir.clone().map_or_else(
        || crate::storedir::configured_store_dir(name, dir),
        std::path::PathBuf::from,
    );
    config.engine.store_dir = Some(store.to_string_lossy().into_owned());
    let mut a = default_start_args()?;
    a.name = Some(name.to_string());
    a.dir = Some(dir.to_path_buf());
    let args = running::from_config(&a, &config)?;
    let secret_file = dir.join("secret");
    let scaler = if config.provider.kind == "local" {
        let cmd = running::local_pilot_cmd(&args, &secret_file, 0, &store)?;
        running::local_scaler_config(&args, &dir.join("blocks"), cmd)
    } else {
        running::batch_scaler_config(&config, dir, 0, &secret_file)?.0
    };
    Ok(render_block(&scaler, &next_block_id(&scaler))?)
}

pub fn run(a: ConfigureArgs) -> anyhow::Result<u8> {
    let dir = endpoint_dir(&a.name, a.dir.as_deref());
    let path = dir.join("endpoint.toml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "endpoint {} is not configured here (no {})",
            a.name,
            path.display()
        )
    })?;
    let mut doc: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not valid TOML: {e}", path.display()))?;
    for s in &a.set {
        let (key, value) = s
            .split_once('=')
            .with_context(|| format!("`{s}` is not KEY=VALUE"))?;
        set_key(&mut doc, key.trim(), value.trim())?;
    }
    let cfg = checked(&doc)
        .with_context(|| format!("the changed {} would be invalid", path.display()))?;
    if a.dry_run {
        // With the changes of `--set`, which are not saved.
        print!("{}", dry_run_script(&a.name, &dir, cfg)?);
        return Ok(exit::OK);
    }
    if a.set.is_empty() {
        print!("{}", cfg.to_toml());
        return Ok(exit::OK);
    }
    crate::api::write_private(&path, &toml::to_string(&doc)?)?;
    for s in &a.set {
        println!("set {s}");
    }
    if super::lifecycle::running(&dir).is_some() {
        println!(
            "endpoint {} is running: `fxr endpoint restart {}` applies the change",
            a.name, a.name
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_set_as_toml_values_and_checked() {
        let mut doc: toml::Table =
            toml::from_str("name = \"x\"\n[provider]\nkind = \"slurm\"\n").unwrap();
        set_key(&mut doc, "provider.partition", "debug").unwrap();
        set_key(&mut doc, "provider.max_blocks", "8").unwrap();
        set_key(&mut doc, "engine.workers_per_node", "4").unwrap();
        set_key(&mut doc, "provider.exclusive", "true").unwrap();
        let cfg = checked(&doc).unwrap();
        assert_eq!(cfg.provider.partition, "debug");
        assert_eq!(cfg.provider.max_blocks, 8);
        assert_eq!(cfg.engine.workers_per_node, Some(4));
        assert!(cfg.provider.exclusive);
        set_key(&mut doc, "provider.partiton", "debug").unwrap();
        let e = format!("{:#}", checked(&doc).unwrap_err());
        assert!(e.contains("partiton"), "a misspelt key is named: {e}");
        let mut doc: toml::Table = toml::from_str("name = \"x\"\n").unwrap();
        set_key(&mut doc, "provider.launcher", "mpirun").unwrap();
        assert!(format!("{:#}", checked(&doc).unwrap_err()).contains("provider.launcher"));
        assert!(
            set_key(&mut doc, "name.x", "1").is_err(),
            "name is not a table"
        );
        assert!(set_key(&mut doc, "provider..x", "1").is_err());
    }
}
