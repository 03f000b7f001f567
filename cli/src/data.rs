//! `fxr data put|get|ls|rm`: the node's object store from a shell, inside a task (where
//! `FXR_STORE` names the store) or on a node by hand (`--store DIR`).

use crate::exit;
use anyhow::{bail, Context};
use fxr_datastore::{Limits, Store};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// The store's directory (default: $FXR_STORE, which workers set for their tasks).
    #[arg(long, global = true)]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: DataCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCmd {
    /// Store a file (or standard input with `-`) under KEY.
    Put { key: String, file: String },
    /// Write the object KEY to a file (or standard output with `-`).
    Get { key: String, file: String },
    /// List the objects.
    Ls,
    /// Remove the object KEY.
    Rm { key: String },
}

fn open(a: &DataArgs) -> anyhow::Result<Store> {
    let root = match &a.store {
        Some(p) => p.clone(),
        None => PathBuf::from(
            std::env::var_os("FXR_STORE")
                .context("no store: pass --store DIR, or run inside a task (FXR_STORE)")?,
        ),
    };
    let capacity = std::env::var("FXR_STORE_CAPACITY")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(Limits::default().capacity);
    Ok(Store::open(
        root,
        Limits {
            capacity,
            ttl: None,
        },
    )?)
}

pub fn run(a: DataArgs, json: bool) -> anyhow::Result<u8> {
    let store = open(&a)?;
    match &a.cmd {
        DataCmd::Put { key, file } => {
            let meta = if file == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf)?;
                store.put(key, &buf)?
            } else {
                let mut f =
                    std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?;
                let size = f.metadata()?.len();
                store.put_from(key, size, &mut f, false)?
            };
            if json {
                println!("{}", serde_json::to_string(&meta)?);
            }
        }
        DataCmd::Get { key, file } => {
            let obj = store.get(key)?;
            if file == "-" {
                std::io::stdout().lock().write_all(obj.bytes())?;
            } else {
                std::fs::write(file, obj.bytes())
                    .with_context(|| format!("cannot write {file}"))?;
            }
        }
        DataCmd::Ls => {
            for m in store.list()? {
                if json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    println!("{:>12}  {:08x}  {}", m.size, m.checksum, m.key);
                }
            }
        }
        DataCmd::Rm { key } => {
            if !store.delete(key)? {
                bail!("no object `{key}`");
            }
        }
    }
    Ok(exit::OK)
}
