//! How the dispatcher picks a manager for the next batch of tasks.

use std::str::FromStr;

/// A dispatch policy, chosen per endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// A manager chosen uniformly among those with room (the paper's baseline).
    Random,
    /// Managers with room in turn.
    RoundRobin,
    /// The manager with the smallest share of its slots in use.
    #[default]
    LeastLoaded,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "random" => Ok(Policy::Random),
            "round-robin" => Ok(Policy::RoundRobin),
            "least-loaded" => Ok(Policy::LeastLoaded),
            other => Err(format!(
                "unknown dispatch policy `{other}` (expected random, round-robin or least-loaded)"
            )),
        }
    }
}

impl Policy {
    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::RoundRobin => "round-robin",
            Policy::LeastLoaded => "least-loaded",
        }
    }
}
