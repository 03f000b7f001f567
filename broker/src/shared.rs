//! Several brokers on one shared store (PostgreSQL).
//!
//! Each endpoint links to one broker at a time; that broker holds the endpoint's open tasks in
//! its hub and is the only one that sends them. Every other broker only writes to the store:
//!
//! - a submission for an endpoint linked elsewhere is stored, and its `fxr_tasks` notice makes
//!   the linked broker take the batch from the store ([`Broker::adopt`]);
//! - a broker taking a link takes every open task of that endpoint from the store, before it
//!   reads the first message, so results the endpoint re-sends find their tasks; a broker
//!   losing a link drops that endpoint's tasks from its hub (they stay open in the store);
//! - recorded results send `fxr_done`: other brokers drop those tasks if they hold them (asking
//!   the endpoint to stop them) and hand them to their own watchers, so a client may wait on
//!   any broker;
//! - registry writes send `fxr_registry`, and a broker that meets an id it does not know looks
//!   it up in the store before answering 404.
//!
//! A result is recorded once whoever records it (`complete` changes only pending tasks).

use crate::api::types::TaskInfo;
use crate::store::{Db, Notice, PgStore, StoreError};
use crate::{runnable_from_row, Broker};
use fxr_protocol::TaskId;
use std::collections::HashSet;
use std::sync::Arc;

/// Open tasks taken from the store per read when a link arrives.
const ADOPT_PAGE: usize = 10_000;

/// Most stranded tasks failed per housekeeping round.
const STRANDED_BATCH: usize = 10_000;

impl Broker {
    /// Follows the other brokers' notices until the broker stops; nothing for a store of one
    /// broker.
    pub async fn follow_store(
        self: &Arc<Self>,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, StoreError> {
        let Db::Postgres(url) = &self.config.db else {
            return Ok(None);
        };
        if !self.shared {
            return Ok(None);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // The first connection is made here, so a bad target fails the start.
        let url = url.clone();
        tokio::task::spawn_blocking(move || PgStore::listen(&url, tx))
            .await
            .map_err(|e| StoreError::Config(format!("store listener: {e}")))??;
        let me = self.clone();
        Ok(Some(tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                me.on_notice(n).await;
            }
        })))
    }

    async fn on_notice(&self, n: Notice) {
        let outcome = match n {
            Notice::Tasks {
                origin,
                endpoint,
                batch,
            } if origin != self.origin => {
                if !self.hub().linked(&endpoint) {
                    return;
                }
                self.adopt(&endpoint, Some(batch)).await.map(drop)
            }
            Notice::Done { origin, tasks } if origin != self.origin => {
                self.finished_elsewhere(tasks).await
            }
            Notice::Registry { origin } if origin != self.origin => self.reload_registry().await,
            Notice::Resync => self.resync().await,
            _ => Ok(()),
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, "cannot follow the shared store");
        }
    }

    /// The endpoints linked to this broker now.
    fn linked_endpoints(&self) -> Vec<String> {
        self.hub()
            .endpoints()
            .filter(|(_, e)| e.connected())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Re-reads everything notices might have said while they were not heard.
    async fn resync(&self) -> Result<(), StoreError> {
        self.reload_registry().await?;
        let linked = self.linked_endpoints();
        for ep in linked {
            self.adopt(&ep, None).await?;
        }
        Ok(())
    }

    async fn reload_registry(&self) -> Result<(), StoreError> {
        let fresh = self
            .read(|s| {
                let mut r = crate::Registry::default();
                r.load(s)?;
                Ok(r)
            })
            .await?;
        let mut reg = self.reg_mut();
        reg.functions = fresh.functions;
        reg.endpoints = fresh.endpoints;
        Ok(())
    }

    /// With a shared store, looks up in the store the functions and endpoints among these ids
    /// that this broker does not know yet (another broker may have just registered them).
    pub async fn refresh(
        &self,
        functions: impl IntoIterator<Item = String>,
        endpoints: impl IntoIterator<Item = String>,
    ) -> Result<(), StoreError> {
        if !self.shared {
            return Ok(());
        }
        let (functions, endpoints): (Vec<String>, Vec<String>) = {
            let reg = self.reg();
            let f: HashSet<String> = functions
                .into_iter()
                .filter(|id| !reg.functions.contains_key(id))
                .collect();
            let e: HashSet<String> = endpoints
                .into_iter()
                .filter(|id| !reg.endpoints.contains_key(id))
                .collect();
            (f.into_iter().collect(), e.into_iter().collect())
        };
        if functions.is_empty() && endpoints.is_empty() {
            return Ok(());
        }
        let (found_f, found_e) = self
            .read(move |s| {
                let mut f = Vec::new();
                for id in &functions {
                    if let Some(row) = s.function(id)? {
                        f.push(row);
                    }
                }
                let mut e = Vec::new();
                for id in &endpoints {
                    if let Some(row) = s.endpoint(id)? {
                        e.push(row);
                    }
                }
                Ok((f, e))
            })
            .await?;
        let mut reg = self.reg_mut();
        for f in found_f {
            let func = runnable_from_row(&f)?;
            reg.functions.insert(f.id.clone(), (f, func));
        }
        for e in found_e {
            reg.endpoints.insert(e.id.clone(), e);
        }
        Ok(())
    }

    /// Takes from the store the open tasks of `endpoint` (of one batch, or all) that this
    /// broker does not hold yet, and sends what the endpoint's credit allows. Returns how many
    /// were taken.
    pub async fn adopt(&self, endpoint: &str, batch: Option<u64>) -> Result<usize, StoreError> {
        let mut after = 0;
        let mut taken = 0;
        loop {
            let ep = endpoint.to_string();
            let rows = self
                .read(move |s| s.open_tasks_of(&ep, batch, after, ADOPT_PAGE))
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            let full = rows.len() == ADOPT_PAGE;
            taken += rows.len();
            self.refresh(rows.iter().map(|r| r.function_id.clone()), [])
                .await?;
            let orphans = {
                let reg = self.reg();
                let mut hub = self.hub();
                let orphans = reg.requeue(&mut hub, rows);
                hub.pump(endpoint);
                orphans
            };
            if !orphans.is_empty() {
                self.db(move |s| s.complete(&orphans)).await?;
            }
            if !full {
                break;
            }
        }
        tracing::debug!(
            endpoint_id = endpoint,
            taken,
            "took open tasks from the shared store"
        );
        Ok(taken)
    }

    /// With a shared store, whether `user` may add `per_endpoint` tasks under the backlog
    /// limits, counting the open tasks every broker holds. Brokers check before they insert,
    /// so two submissions at once may pass a limit by what they add.
    pub async fn admit_shared(
        &self,
        user: i64,
        per_endpoint: &std::collections::HashMap<String, u64>,
    ) -> Result<Result<(), crate::hub::Refusal>, StoreError> {
        let eps: Vec<String> = per_endpoint.keys().cloned().collect();
        let wanted = eps.clone();
        let Some((user_open, open)) = self.read(move |s| s.open_counts(user, &wanted)).await?
        else {
            return Ok(Ok(()));
        };
        let by_ep: std::collections::HashMap<&str, u64> =
            eps.iter().map(String::as_str).zip(open).collect();
        Ok(self.config.limits.admit(user_open, per_endpoint, |ep| {
            by_ep.get(ep).copied().unwrap_or(0)
        }))
    }

    /// With a shared store, how many of these results, which this broker does not hold, are
    /// for open tasks routed to another endpoint than `endpoint`.
    pub async fn foreign_elsewhere(
        &self,
        endpoint: &str,
        ids: &[TaskId],
    ) -> Result<usize, StoreError> {
        if !self.shared || ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<u64> = ids.iter().map(|t| t.0).collect();
        let rows = self.read(move |s| s.tasks(&ids)).await?;
        Ok(rows
            .iter()
            .filter(|r| r.state == "pending" && r.endpoint_id != endpoint)
            .count())
    }

    /// Every second: confirms the links this broker holds, and returns the open tasks whose
    /// endpoint has had no link at any broker for `endpoint_wait`, to fail.
    pub(crate) async fn shared_housekeeping(&self) -> Result<Vec<u64>, StoreError> {
        let linked = self.linked_endpoints();
        let cutoff = crate::store::now_ms() - self.config.endpoint_wait.as_millis() as i64;
        let stranded = self
            .db(move |s| {
                s.links_alive(&linked)?;
                s.stranded(cutoff, STRANDED_BATCH)
            })
            .await?;
        // Another broker may hold some of them under a link this one has not heard of.
        let hub = self.hub();
        Ok(stranded
            .into_iter()
            .filter(|id| hub.live_state(*id).is_none())
            .collect())
    }

    /// Tasks another broker recorded results for: dropped here (their endpoint, if it has
    /// them, is asked to stop), and handed to this broker's watchers.
    async fn finished_elsewhere(&self, tasks: Vec<(i64, u64, u64)>) -> Result<(), StoreError> {
        let ids: Vec<u64> = tasks.iter().map(|t| t.2).collect();
        {
            let mut hub = self.hub();
            hub.close_elsewhere(&ids);
            hub.finished(ids.iter().copied());
        }
        let wanted: Vec<u64> = {
            let w = self.watchers();
            tasks
                .iter()
                .filter(|(owner, batch, id)| w.interested(*id, *batch, *owner))
                .map(|t| t.2)
                .collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let rows = self.read(move |s| s.tasks(&wanted)).await?;
        let infos: Vec<(i64, u64, TaskInfo)> = rows
            .into_iter()
            .map(|t| (t.owner, t.batch, crate::api::tasks::task_info(self, t)))
            .collect();
        let mut w = self.watchers();
        for (owner, batch, info) in infos {
            w.notify(owner, batch, &Arc::new(info));
        }
        Ok(())
    }
}
