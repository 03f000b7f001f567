//! Where this pilot sits in its block: its rank, the block's size, and (with MPI) the block's
//! inventory.
//!
//! With the `mpi` feature and `--mpi`, every rank initialises MPI; the ranks gather their host
//! names to rank 0, which logs the block's inventory, and wait at a barrier so the whole block
//! registers together. Without MPI the rank comes from the launcher's environment (Slurm, PMI,
//! Open MPI, PBS), and a lone process is rank 0 of 1.

/// This pilot's place in its block. Keeps MPI initialised while it lives.
pub struct Placement {
    pub rank: u32,
    pub size: u32,
    /// Host names by rank, when MPI gathered them (on rank 0).
    pub inventory: Vec<String>,
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("inventory", &self.inventory)
            .finish()
    }
}

fn env_u32(names: &[&str]) -> Option<u32> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok()?.trim().parse().ok())
}

/// Rank and size from the launcher's environment.
pub fn from_env() -> Placement {
    let rank = env_u32(&[
        "SLURM_PROCID",
        "PMI_RANK",
        "PMIX_RANK",
        "OMPI_COMM_WORLD_RANK",
        "ALPS_APP_PE",
    ])
    .unwrap_or(0);
    let size = env_u32(&["SLURM_NTASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"])
        .unwrap_or(1)
        .max(rank + 1);
    Placement {
        rank,
        size,
        inventory: Vec::new(),
        #[cfg(feature = "mpi")]
        _universe: None,
    }
}

/// Whether this build can use MPI.
pub const MPI_ENABLED: bool = cfg!(feature = "mpi");

/// With MPI: initialise, gather host names to rank 0, and meet at a barrier.
#[cfg(feature = "mpi")]
pub fn with_mpi() -> Placement {
    use mpi::traits::*;
    let Some(universe) = mpi::initialize() else {
        tracing::warn!("MPI could not be initialised; using the launcher's environment");
        return from_env();
    };
    let world = universe.world();
    let rank = world.rank() as u32;
    let size = world.size() as u32;
    let mut name = [0u8; 64];
    let host = crate::node::hostname();
    let n = host.len().min(63);
    name[..n].copy_from_slice(&host.as_bytes()[..n]);
    let root = world.process_at_rank(0);
    let mut inventory = Vec::new();
    if rank == 0 {
        let mut all = vec![0u8; 64 * size as usize];
        root.gather_into_root(&name[..], &mut all[..]);
        inventory = all
            .chunks(64)
            .map(|c| {
                String::from_utf8_lossy(&c[..c.iter().position(|b| *b == 0).unwrap_or(64)])
                    .into_owned()
            })
            .collect();
        tracing::info!(size, hosts = ?inventory, "block inventory gathered over MPI");
    } else {
        root.gather_into(&name[..]);
    }
    world.barrier();
    Placement {
        rank,
        size,
        inventory,
        _universe: Some(universe),
    }
}

/// Without the `mpi` feature, `--mpi` falls back to the environment.
#[cfg(not(feature = "mpi"))]
pub fn with_mpi() -> Placement {
    tracing::warn!("this build has no MPI support; using the launcher's environment for the rank");
    from_env()
}
