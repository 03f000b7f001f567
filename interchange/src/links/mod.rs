//! The interchange's sockets: managers below (nng), clients above (TCP or in-process).

pub mod broker;
pub mod data;
pub mod front;
pub mod managers;
