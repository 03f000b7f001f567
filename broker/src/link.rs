//! The broker's side of an endpoint link: one WebSocket per connected endpoint.
//!
//! Tasks go down within the credit the endpoint grants and the hub's byte bounds; results come
//! up in batches and are acknowledged (`ResultsStored`) only after they are committed to the
//! store, so a crash of either side loses nothing: on reconnect the broker re-sends every task
//! without a result, and the endpoint re-sends every result without an acknowledgement.
//! Duplicates are dropped by task id on both sides.
//!
//! Reading and writing are independent: a writer task drains the outgoing channel into the
//! socket while the reader handles what arrives, so neither side can block the other by not
//! reading. One connection per endpoint: a newer one tells the older to close. A link silent
//! for `link_idle` is closed. Results for tasks that were not routed to this endpoint are
//! acknowledged (so the endpoint forgets them) but never recorded.

use crate::Broker;
use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use fxr_protocol::{BrokerMsg, FailureKind, LinkMsg, TaskId, TaskResult};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Serves one endpoint connection until it closes, is replaced, falls silent or the broker stops.
pub async fn run(broker: Arc<Broker>, endpoint: String, socket: WebSocket) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<BrokerMsg>();
    let (kick, mut kicked) = tokio::sync::oneshot::channel::<()>();
    let generation = broker.hub().connect(&endpoint, tx.clone(), kick);
    tracing::info!(endpoint_id = %endpoint, generation, "endpoint connected");
    if broker.shared {
        // Before the first message: results the endpoint re-sends must find their tasks.
        let ep = endpoint.clone();
        let taken = match broker.db(move |s| s.link_up(&ep)).await {
            Ok(()) => broker.adopt(&endpoint, None).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = taken {
            tracing::error!(endpoint_id = %endpoint, error = %e, "cannot take the endpoint's tasks from the store; closing the link");
            broker.hub().disconnect(&endpoint, generation);
            return;
        }
    }
    let mut writer = tokio::spawn(write(broker.clone(), endpoint.clone(), sink, rx));
    let mut stopping = broker.stopping.subscribe();
    let idle = broker.config.link_idle;
    loop {
        tokio::select! {
            incoming = tokio::time::timeout(idle, stream.next()) => {
                let msg = match incoming {
                    Ok(Some(Ok(Message::Binary(b)))) => b,
                    Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => break,
                    Ok(Some(Ok(_))) => continue,
                    Err(_) => {
                        broker.metrics.links_silent.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(endpoint_id = %endpoint, ?idle, "endpoint link silent; closing it");
                        break;
                    }
                };
                let msg = match fxr_protocol::decode::<LinkMsg>(&msg) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(endpoint_id = %endpoint, error = %e, "undecodable message on the endpoint link; closing it");
                        break;
                    }
                };
                if !on_message(&broker, &endpoint, &tx, msg).await {
                    break;
                }
            }
            _ = &mut kicked => {
                broker.metrics.links_replaced.fetch_add(1, Ordering::Relaxed);
                tracing::info!(endpoint_id = %endpoint, generation, "a newer link connection replaced this one");
                break;
            }
            _ = &mut writer => break,
            _ = stopping.changed() => break,
        }
    }
    {
        let mut hub = broker.hub();
        hub.disconnect(&endpoint, generation);
        if broker.shared {
            let n = hub.release(&endpoint);
            tracing::debug!(endpoint_id = %endpoint, n, "released the endpoint's tasks to the store");
        }
    }
    if broker.shared && !broker.hub().linked(&endpoint) {
        let ep = endpoint.clone();
        if let Err(e) = broker.db(move |s| s.link_down(&ep)).await {
            tracing::warn!(endpoint_id = %endpoint, error = %e, "cannot record the link's end in the store");
        }
    }
    drop(tx);
    writer.abort();
    tracing::info!(endpoint_id = %endpoint, generation, "endpoint disconnected");
}

/// Handles one message from the endpoint; false closes the link.
async fn on_message(
    broker: &Broker,
    endpoint: &str,
    tx: &tokio::sync::mpsc::UnboundedSender<BrokerMsg>,
    msg: LinkMsg,
) -> bool {
    match msg {
        LinkMsg::Credit { tasks } => broker.hub().grant(endpoint, tasks),
        LinkMsg::Received { tasks } => broker.hub().received(endpoint, &tasks),
        LinkMsg::Status(s) => broker.hub().set_status(endpoint, s),
        LinkMsg::Data { request, reply } => {
            crate::lock(&broker.fetches).answer(endpoint, request, reply);
        }
        LinkMsg::Results { results } => {
            let (mine, mut ignored, mut foreign) = {
                let mut hub = broker.hub();
                let screened = hub.screen(endpoint, results);
                hub.note_runs(endpoint, &screened.0);
                screened
            };
            if broker.shared && foreign < ignored.len() {
                // Tasks this broker does not hold may be open at another.
                match broker.foreign_elsewhere(endpoint, &ignored).await {
                    Ok(n) => foreign += n,
                    Err(e) => {
                        tracing::warn!(endpoint_id = %endpoint, error = %e, "cannot check results against the store")
                    }
                }
            }
            if foreign > 0 {
                broker
                    .metrics
                    .foreign_results
                    .fetch_add(foreign as u64, Ordering::Relaxed);
                tracing::warn!(
                    endpoint_id = %endpoint,
                    foreign,
                    "results for tasks not routed to this endpoint; ignored"
                );
            }
            let ids: Vec<TaskId> = mine.iter().map(|r| r.id).collect();
            if let Err(e) = broker.record(mine).await {
                // Not acknowledged: the endpoint sends them again after reconnecting.
                tracing::error!(endpoint_id = %endpoint, error = %e, "cannot store results; dropping the link");
                return false;
            }
            ignored.extend(ids);
            let _ = tx.send(BrokerMsg::ResultsStored { tasks: ignored });
        }
    }
    true
}

/// Moves outgoing messages into the socket. A task message that cannot be encoded fails its
/// tasks rather than leaving them sent and unanswered.
async fn write(
    broker: Arc<Broker>,
    endpoint: String,
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<BrokerMsg>,
) {
    while let Some(msg) = rx.recv().await {
        let frame = match fxr_protocol::encode(&msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(endpoint_id = %endpoint, error = %e, "cannot encode a message for the endpoint");
                if let BrokerMsg::Tasks { tasks } = msg {
                    let failed: Vec<TaskResult> = tasks
                        .iter()
                        .map(|t| {
                            TaskResult::failure(
                                t.id,
                                FailureKind::Rejected,
                                format!("the task cannot be sent to its endpoint: {e}"),
                            )
                        })
                        .collect();
                    broker
                        .metrics
                        .unsendable
                        .fetch_add(failed.len() as u64, Ordering::Relaxed);
                    // The endpoint never sees them, so it will not give their credit back.
                    broker.hub().grant(&endpoint, failed.len() as u64);
                    if let Err(e) = broker.record(failed).await {
                        tracing::error!(error = %e, "cannot record unsendable tasks");
                    }
                }
                continue;
            }
        };
        if sink.send(Message::Binary(frame.into())).await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}
