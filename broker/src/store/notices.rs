//! The shared store's notices: each broker follows `fxr_tasks`, `fxr_done` and `fxr_registry`
//! on a connection of its own ([`PgStore::listen`]); the payloads are made and read here.

use super::pg::{connect, PgStore};
use super::{Notice, Result, StoreError};
use postgres::Client;
use std::time::Duration;

/// Largest `NOTIFY` payload sent (PostgreSQL allows just under 8000 bytes).
const MAX_PAYLOAD: usize = 7000;

impl PgStore {
    /// Follows the notices of every broker on `url` (this one's included) in a thread of its
    /// own until `tx` closes. Sends [`Notice::Resync`] after each (re)connection, since
    /// notices sent while it was away are lost.
    pub fn listen(url: &str, tx: tokio::sync::mpsc::UnboundedSender<Notice>) -> Result<()> {
        // A bad target is an error now; a lost connection later is retried.
        let mut client = Some(Self::listener(url)?);
        let url = url.to_string();
        std::thread::Builder::new()
            .name("fxr-pg-listen".into())
            .spawn(move || {
                while !tx.is_closed() {
                    let mut c = match client.take() {
                        Some(c) => c,
                        None => match Self::listener(&url) {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot follow the shared store; retrying");
                                std::thread::sleep(Duration::from_secs(1));
                                continue;
                            }
                        },
                    };
                    if tx.send(Notice::Resync).is_err() {
                        return;
                    }
                    if let Err(e) = Self::follow(&mut c, &tx) {
                        tracing::warn!(error = %e, "lost the shared store's notices; reconnecting");
                    }
                }
            })
            .map_err(|e| StoreError::Config(format!("cannot start the store listener: {e}")))?;
        Ok(())
    }

    fn listener(url: &str) -> Result<Client> {
        let mut c = connect(url)?;
        c.batch_execute("LISTEN fxr_tasks; LISTEN fxr_done; LISTEN fxr_registry;")?;
        Ok(c)
    }

    /// Forwards notices until the connection fails or closes, or `tx` closes.
    fn follow(
        c: &mut Client,
        tx: &tokio::sync::mpsc::UnboundedSender<Notice>,
    ) -> std::result::Result<(), postgres::Error> {
        use postgres::fallible_iterator::FallibleIterator;
        while !tx.is_closed() {
            {
                let mut notes = c.notifications();
                let mut it = notes.timeout_iter(Duration::from_secs(1));
                while let Some(n) = it.next()? {
                    match parse_notice(n.channel(), n.payload()) {
                        Some(notice) => {
                            if tx.send(notice).is_err() {
                                return Ok(());
                            }
                        }
                        None => tracing::warn!(
                            channel = n.channel(),
                            "malformed notice on the shared store; ignored"
                        ),
                    }
                }
            }
            if c.is_closed() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Reads one notice; `None` when malformed.
pub(crate) fn parse_notice(channel: &str, payload: &str) -> Option<Notice> {
    let mut parts = payload.split(' ');
    let origin = parts.next()?.to_string();
    match channel {
        "fxr_tasks" => {
            let endpoint = parts.next()?.to_string();
            let batch = parts.next()?.parse().ok()?;
            Some(Notice::Tasks {
                origin,
                endpoint,
                batch,
            })
        }
        "fxr_done" => {
            let list = parts.next().unwrap_or_default();
            let tasks = list
                .split(',')
                .filter(|e| !e.is_empty())
                .map(|e| {
                    let mut f = e.split(':');
                    Some((
                        f.next()?.parse().ok()?,
                        f.next()?.parse().ok()?,
                        f.next()?.parse().ok()?,
                    ))
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Notice::Done { origin, tasks })
        }
        "fxr_registry" => Some(Notice::Registry { origin }),
        _ => None,
    }
}

/// `fxr_done` payloads for `done` (owner, batch, id), each below [`MAX_PAYLOAD`].
pub(crate) fn done_payloads(origin: &str, done: &[(i64, u64, u64)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (owner, batch, id) in done {
        let entry = format!("{owner}:{batch}:{id}");
        if !cur.is_empty() && cur.len() + entry.len() + 1 > MAX_PAYLOAD {
            out.push(std::mem::take(&mut cur));
        }
        if cur.is_empty() {
            cur.push_str(origin);
            cur.push(' ');
        } else {
            cur.push(',');
        }
        cur.push_str(&entry);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_through_their_payloads() {
        let done: Vec<(i64, u64, u64)> = (0..2000)
            .map(|i| (i % 3, i as u64 / 10, i as u64))
            .collect();
        let payloads = done_payloads("ab12", &done);
        assert!(payloads.len() > 1, "large lists are split");
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD);
            match parse_notice("fxr_done", p) {
                Some(Notice::Done { origin, tasks }) => {
                    assert_eq!(origin, "ab12");
                    back.extend(tasks);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(back, done);
        assert_eq!(
            parse_notice("fxr_tasks", "ab12 ep-1 42"),
            Some(Notice::Tasks {
                origin: "ab12".into(),
                endpoint: "ep-1".into(),
                batch: 42
            })
        );
        assert_eq!(parse_notice("fxr_tasks", "ab12 ep-1 x"), None);
        assert_eq!(parse_notice("fxr_done", "ab12 1:2"), None);
        assert_eq!(parse_notice("elsewhere", "ab12"), None);
    }
}
