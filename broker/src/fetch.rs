//! Chunk requests in flight to endpoints, for results kept in a node's store.
//!
//! A client's `GET /v1/tasks/{id}/data` asks the task's endpoint for the object one chunk at a
//! time ([`fxr_protocol::BrokerMsg::Fetch`]); each request waits here, under a number, for the
//! endpoint's [`fxr_protocol::LinkMsg::Data`]. An answer is taken only from the endpoint that
//! was asked; a request that is not answered in time is forgotten, and a late answer dropped.

use fxr_protocol::DataReply;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The requests waiting for an endpoint's answer.
#[derive(Debug, Default)]
pub struct Fetches {
    next: u64,
    waiting: HashMap<u64, (Arc<str>, oneshot::Sender<DataReply>)>,
}

impl Fetches {
    /// Registers a request to `endpoint`; its number, and where the answer will arrive.
    pub fn open(&mut self, endpoint: &str) -> (u64, oneshot::Receiver<DataReply>) {
        self.next += 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(self.next, (Arc::from(endpoint), tx));
        (self.next, rx)
    }

    /// Hands an answer to its request, if `endpoint` is the one asked; false when nobody waits.
    pub fn answer(&mut self, endpoint: &str, request: u64, reply: DataReply) -> bool {
        match self.waiting.get(&request) {
            Some((asked, _)) if &**asked == endpoint => {}
            _ => return false,
        }
        match self.waiting.remove(&request) {
            Some((_, tx)) => tx.send(reply).is_ok(),
            None => false,
        }
    }

    /// Forgets a request (answered, timed out, or its client gone).
    pub fn forget(&mut self, request: u64) {
        self.waiting.remove(&request);
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> DataReply {
        DataReply::Chunk {
            size: 1,
            checksum: 0,
            offset: 0,
            bytes: vec![7],
        }
    }

    #[test]
    fn an_answer_reaches_its_request_only_from_the_endpoint_asked() {
        let mut f = Fetches::default();
        let (a, mut rx_a) = f.open("ep-a");
        let (b, _rx_b) = f.open("ep-b");
        assert_ne!(a, b);
        assert!(
            !f.answer("ep-b", a, chunk()),
            "another endpoint cannot answer"
        );
        assert!(rx_a.try_recv().is_err());
        assert!(f.answer("ep-a", a, chunk()));
        assert_eq!(rx_a.try_recv().ok(), Some(chunk()));
        assert!(!f.answer("ep-a", a, chunk()), "answered once");
        f.forget(b);
        assert!(f.is_empty());
        assert!(
            !f.answer("ep-b", b, chunk()),
            "a forgotten request takes no answer"
        );
    }
}
