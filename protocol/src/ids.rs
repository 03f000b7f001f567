//! Typed identifiers, so that a task id can never be passed where a manager id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A task's identity: unique within one submitter (the local front door or the broker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub u64);

/// A manager's identity, chosen by the manager (random, or derived from block and rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ManagerId(pub u64);

/// The provider's name for a block (a Slurm or PBS job id, or a local counter).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct BlockId(pub String);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ManagerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A hasher for tables keyed by [`TaskId`] (or any integer): one 64×64→128-bit multiply,
/// folded, instead of SipHash's rounds.
///
/// Only for keys the process itself assigns or that come from an authenticated peer (a
/// manager's task ids come from its interchange): it does not resist keys chosen to collide.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let m = u128::from(self.0 ^ n) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`IdHasher`]s: `HashMap<TaskId, V, IdHash>`.
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Consecutive ids (how they are assigned) spread over the low bits, where a table takes
    /// its bucket, and over the top seven, which it keeps as tags.
    #[test]
    fn consecutive_ids_spread_over_buckets_and_tags() {
        let h = IdHash::default();
        let mut low = std::collections::HashSet::new();
        let mut top = std::collections::HashSet::new();
        for i in 0..4096u64 {
            let v = h.hash_one(TaskId(i));
            low.insert(v & 4095);
            top.insert(v >> 57);
        }
        assert!(low.len() > 2500, "{} distinct buckets of 4096", low.len());
        assert_eq!(top.len(), 128, "every tag value is used");
    }
}
