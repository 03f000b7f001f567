//! Routing: which of several endpoints a task goes to.

use super::*;

impl Hub {
    /// The endpoint for one task of container type `kind` among `candidates`, by `policy`;
    /// `planned` counts the tasks of the same submission already routed to each, which the
    /// hub does not hold yet.
    pub fn route(
        &mut self,
        candidates: &[String],
        policy: Policy,
        kind: &str,
        planned: &HashMap<String, u64>,
    ) -> Option<String> {
        if candidates.is_empty() {
            return None;
        }
        let planned_for = |id: &String| planned.get(id).copied().unwrap_or(0);
        if policy == Policy::Warm {
            // The connected endpoint reporting the most idle warm workers of the type; without
            // any, the least loaded.
            let warm = |id: &String| -> u64 {
                self.endpoints
                    .get(id)
                    .filter(|e| e.connected())
                    .and_then(|e| e.status.as_ref())
                    .map_or(0, |s| {
                        s.managers
                            .iter()
                            .flat_map(|m| m.capacity.iter())
                            .filter(|c| c.container == kind)
                            .map(|c| u64::from(c.warm))
                            .sum()
                    })
            };
            if let Some(best) = candidates
                .iter()
                .filter(|c| warm(c) > 0)
                .max_by_key(|c| warm(c))
            {
                return Some(best.clone());
            }
            return self.route(candidates, Policy::LeastLoaded, kind, planned);
        }
        if policy == Policy::ShortestWait {
            let wait = |id: &String| {
                let v = self.view(id);
                let ahead = v.open + planned_for(id);
                v.expected_wait_ms(ahead)
            };
            let best = (0..candidates.len())
                .min_by(|a, b| {
                    wait(&candidates[*a])
                        .partial_cmp(&wait(&candidates[*b]))
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
                .unwrap_or(0);
            return Some(candidates[best].clone());
        }
        let i = match policy {
            Policy::Warm | Policy::ShortestWait => 0,
            Policy::Random => fastrand::usize(0..candidates.len()),
            Policy::RoundRobin => {
                self.rr = self.rr.wrapping_add(1);
                self.rr % candidates.len()
            }
            Policy::LeastLoaded => {
                let load = |id: &String| -> (bool, f64) {
                    let Some(e) = self.endpoints.get(id) else {
                        return (true, f64::MAX);
                    };
                    let workers = e.status.as_ref().map_or(0, |s| {
                        s.managers.iter().map(|m| u64::from(m.workers)).sum::<u64>()
                    });
                    let open = e.open + planned_for(id);
                    (!e.connected(), open as f64 / (workers.max(1) as f64))
                };
                (0..candidates.len())
                    .min_by(|a, b| {
                        load(&candidates[*a])
                            .partial_cmp(&load(&candidates[*b]))
                            .unwrap_or(std::cmp::Ordering::Equal)
                    })
                    .unwrap_or(0)
            }
        };
        Some(candidates[i].clone())
    }
}

/// How a submission naming several endpoints picks one for each task.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    utoipa::ToSchema,
    Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    Random,
    RoundRobin,
    LeastLoaded,
    /// The endpoint reporting the most idle workers of the function's container type.
    Warm,
    /// The endpoint where a task would start soonest: a free worker, else a block's start-up
    /// where blocks may be added, plus the tasks ahead of it over every worker it can have.
    ShortestWait,
}
