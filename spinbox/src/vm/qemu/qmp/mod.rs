//! QMP, the QEMU Machine Protocol: a line-oriented JSON protocol over a socket.
//!
//! - [`wire`]: the pure decoder from one line to a typed [`wire::QmpMessage`], and the
//!   event types;
//! - [`client`]: the async client (handshake, id-routed replies, timeouts, events).

pub mod client;
pub mod wire;

// The module's public paths; with `test-util` the integration tests use them all.
#[allow(unused_imports)]
pub use client::{QmpClient, QmpError, RunStatus, DEFAULT_COMMAND_TIMEOUT, MAX_LINE_LEN};
#[allow(unused_imports)]
pub use wire::{DecodeError, QmpEvent, QmpEventKind, QmpMessage};
