//! QMP, the QEMU Machine Protocol: a line-oriented JSON protocol over a socket.
//!
//! - [`wire`]: the pure decoder from one line to a typed [`wire::QmpMessage`], and the
//!   event types;
//! - [`client`]: the async client (handshake, id-routed replies, timeouts, events).

pub mod client;
pub mod wire;

pub use client::{QmpClient, QmpError, RunStatus, DEFAULT_COMMAND_TIMEOUT, MAX_LINE_LEN};
pub use wire::{DecodeError, QmpEvent, QmpEventKind, QmpMessage};
