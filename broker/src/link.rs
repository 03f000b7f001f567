//! The broker's side of an endpoint link: one WebSocket per connected endpoint.
//!
//! Tasks go down within the credit the endpoint grants; results come up in batches and are
//! acknowledged (`ResultsStored`) only after they are committed to the store, so a crash of
//! either side loses nothing: on reconnect the broker re-sends every task without a result, and
//! the endpoint re-sends every result without an acknowledgement. Duplicates are dropped by
//! task id on both sides.

use crate::Broker;
use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use fxr_protocol::{BrokerMsg, LinkMsg, TaskId};
use std::sync::Arc;

/// Serves one endpoint connection until it closes or the broker stops.
pub async fn run(broker: Arc<Broker>, endpoint: String, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BrokerMsg>();
    let generation = broker.hub().connect(&endpoint, tx.clone());
    tracing::info!(endpoint_id = %endpoint, "endpoint connected");
    let mut stopping = broker.stopping.subscribe();
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(msg) = out else { break };
                let Ok(frame) = fxr_protocol::encode(&msg) else {
                    tracing::error!(endpoint_id = %endpoint, "cannot encode a message for the endpoint");
                    continue;
                };
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    break;
                }
            }
            incoming = stream.next() => {
                let msg = match incoming {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let msg = match fxr_protocol::decode::<LinkMsg>(&msg) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(endpoint_id = %endpoint, error = %e, "undecodable message on the endpoint link; closing it");
                        break;
                    }
                };
                match msg {
                    LinkMsg::Credit { tasks } => broker.hub().grant(&endpoint, tasks),
                    LinkMsg::Received { tasks } => broker.hub().received(&tasks),
                    LinkMsg::Status(s) => broker.hub().set_status(&endpoint, s),
                    LinkMsg::Results { results } => {
                        let ids: Vec<TaskId> = results.iter().map(|r| r.id).collect();
                        match broker.record(results).await {
                            Ok(_) => {
                                let _ = tx.send(BrokerMsg::ResultsStored { tasks: ids });
                            }
                            Err(e) => {
                                // Not acknowledged: the endpoint sends them again after reconnecting.
                                tracing::error!(endpoint_id = %endpoint, error = %e, "cannot store results; dropping the link");
                                break;
                            }
                        }
                    }
                }
            }
            _ = stopping.changed() => break,
        }
    }
    broker.hub().disconnect(&endpoint, generation);
    let _ = sink.close().await;
    tracing::info!(endpoint_id = %endpoint, "endpoint disconnected");
}
