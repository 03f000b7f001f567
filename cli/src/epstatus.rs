//! `fxr endpoint status`: one view of an endpoint (`EndpointInfo`), whether it comes from the
//! broker or from a standalone endpoint's front door, printed the same way in both cases.

use fxr_broker::api::types::EndpointInfo;
use std::fmt::Write;

/// `1h02m`, `5m07s`, `42s`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The status as text; `now_ms` is the wall clock, for the age of scheduler errors.
pub fn render(e: &EndpointInfo, standalone: Option<&str>, now_ms: u64) -> String {
    let mut t = String::new();
    let name = if e.name.is_empty() {
        "(ad hoc)"
    } else {
        &e.name
    };
    let _ = match standalone {
        Some(addr) => writeln!(t, "endpoint {name}: standalone at {addr}"),
        None => {
            let heard = e
                .last_heartbeat_ms_ago
                .map(|ms| format!(", last report {} ago", age(ms / 1000)))
                .unwrap_or_default();
            writeln!(
                t,
                "endpoint {name} ({}): {}, owner {}{heard}",
                e.id,
                if e.connected { "connected" } else { "offline" },
                e.owner
            )
        }
    };
    let provider = if e.provider.is_empty() {
        "unknown"
    } else {
        &e.provider
    };
    let _ = writeln!(
        t,
        "provider {provider}: {} blocks; managers {}; workers {} ({} busy, {} idle)",
        e.blocks
            .iter()
            .filter(|b| !matches!(b.state.as_str(), "ended" | "failed"))
            .count(),
        e.managers,
        e.workers,
        e.workers_busy,
        e.workers_idle
    );
    let mut tasks = format!(
        "tasks: queued {}, running {}, completed {}, failed {}",
        e.queued, e.running, e.completed, e.failed
    );
    if standalone.is_none() {
        let _ = write!(tasks, ", waiting at the broker {}", e.backlog);
    }
    let _ = writeln!(t, "{tasks}");
    if e.cold_starts + e.container_switches + e.container_errors > 0 {
        let _ = writeln!(
            t,
            "containers: cold starts {}, switches {}, errors {}",
            e.cold_starts, e.container_switches, e.container_errors
        );
    }
    if !e.blocks.is_empty() {
        let _ = writeln!(
            t,
            "{:<16} {:<10} {:<9} {:>5} {:>7} {:>8} {:>7} {:>5}",
            "BLOCK", "JOB", "STATE", "NODES", "AGE", "MANAGERS", "WORKERS", "BUSY"
        );
        for b in &e.blocks {
            let _ = writeln!(
                t,
                "{:<16} {:<10} {:<9} {:>5} {:>7} {:>8} {:>7} {:>5}",
                b.id,
                b.job.as_deref().unwrap_or("-"),
                b.state,
                b.nodes,
                age(b.age_s),
                b.managers,
                b.workers,
                b.workers_busy
            );
            if !b.reason.is_empty() {
                let _ = writeln!(t, "    why: {}", b.reason);
            }
            if let Some(m) = &b.message {
                let _ = writeln!(t, "    {m}");
            }
        }
    }
    if let Some(r) = &e.requested {
        let _ = writeln!(
            t,
            "the broker asks for {} blocks (max_blocks {}; holds {}s more): {}",
            r.blocks, e.max_blocks, r.valid_s, r.reason
        );
    }
    if !e.scheduler_errors.is_empty() {
        let _ = writeln!(t, "scheduler errors (oldest first):");
        for x in &e.scheduler_errors {
            let ago = now_ms.saturating_sub(x.at_ms) / 1000;
            let _ = writeln!(t, "  {} ago  {}  {}", age(ago), x.block, x.message);
        }
    }
    if let Some(g) = &e.gave_up {
        let _ = writeln!(t, "{g}");
    }
    t
}

/// Prints the status as text or as one JSON object.
pub fn print(e: &EndpointInfo, standalone: Option<&str>, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
    } else {
        print!("{}", render(e, standalone, fxr_protocol::data::now_ms()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fxr_protocol::{
        BlockId, BlockReport, EndpointStatus, ManagerId, ManagerStatus, ProviderStatus,
        SchedulerError,
    };

    fn status() -> EndpointStatus {
        EndpointStatus {
            managers: vec![ManagerStatus {
                manager_id: ManagerId(7),
                block_id: BlockId("ep-3".into()),
                hostname: "n1".into(),
                workers: 4,
                in_flight: 9,
                draining: false,
                simulated: false,
                capacity: vec![],
                counters: Default::default(),
            }],
            provider: ProviderStatus {
                kind: "slurm".into(),
                blocks: vec![
                    BlockReport {
                        id: "ep-2".into(),
                        job: None,
                        state: "failed".into(),
                        nodes: 2,
                        age_ms: 125_000,
                        message: Some("sbatch: error: invalid partition specified".into()),
                        reason: "init_blocks = 1".into(),
                    },
                    BlockReport {
                        id: "ep-3".into(),
                        job: Some("1042".into()),
                        state: "running".into(),
                        nodes: 2,
                        age_ms: 5_000,
                        message: None,
                        reason: "the broker asked for 2 blocks: 12 tasks open for 4 workers".into(),
                    },
                ],
                errors: vec![SchedulerError {
                    at_ms: 1_000_000,
                    block: "ep-2".into(),
                    message: "sbatch: error: invalid partition specified".into(),
                }],
                gave_up: None,
                max_blocks: 2,
                slots_per_block: 4,
                block_start_ms: Some(3_000),
            },
            queued: 3,
            running: 9,
            completed: 10,
            failed: 1,
            stopping: false,
            requested: Some(fxr_protocol::ProvisionRequest {
                blocks: 2,
                backlog: 12,
                reason: "12 tasks open for 4 workers".into(),
                valid_ms: 20_500,
            }),
        }
    }

    #[test]
    fn both_modes_print_blocks_errors_and_unquoted_names() {
        let info = EndpointInfo {
            id: "abc".into(),
            name: "mysite".into(),
            owner: "alice".into(),
            connected: true,
            ..EndpointInfo::default()
        }
        .with_status(&status());
        assert_eq!(
            (info.workers, info.workers_busy, info.workers_idle),
            (4, 4, 0)
        );
        let text = render(&info, None, 1_062_000);
        assert!(
            text.starts_with("endpoint mysite (abc): connected, owner alice"),
            "{text}"
        );
        assert!(!text.contains('"'), "no quoted strings: {text}");
        assert!(
            text.contains(
                "ep-3             1042       running       2      5s        1       4     4"
            ),
            "{text}"
        );
        assert!(
            text.contains("ep-2             -          failed        2   2m05s"),
            "{text}"
        );
        assert!(
            text.contains("1m02s ago  ep-2  sbatch: error: invalid partition specified"),
            "{text}"
        );
        assert!(text.contains("waiting at the broker 0"));
        assert!(
            text.contains("ep-3             1042       running       2      5s        1       4     4\n    why: the broker asked for 2 blocks: 12 tasks open for 4 workers\n"),
            "{text}"
        );
        assert!(
            text.contains("the broker asks for 2 blocks (max_blocks 2; holds 21s more): 12 tasks open for 4 workers"),
            "{text}"
        );
        let local = render(
            &EndpointInfo::default().with_status(&status()),
            Some("127.0.0.1:9"),
            1_062_000,
        );
        assert!(
            local.starts_with("endpoint (ad hoc): standalone at 127.0.0.1:9"),
            "{local}"
        );
        // Below the first line, the same text but for the broker's own queue.
        let body = |t: &str| {
            t.lines()
                .skip(1)
                .map(|l| l.replace(", waiting at the broker 0", ""))
                .collect::<Vec<_>>()
        };
        assert_eq!(body(&text), body(&local));
    }

    #[test]
    fn a_manager_of_an_unknown_block_gets_a_row() {
        let mut s = status();
        s.managers[0].block_id = BlockId("by-hand".into());
        let info = EndpointInfo::default().with_status(&s);
        let b = info.blocks.iter().find(|b| b.id == "by-hand").unwrap();
        assert_eq!((b.managers, b.workers, b.state.as_str()), (1, 4, "running"));
    }
}
