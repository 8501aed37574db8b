//! The spinbox guest agent protocol (`proto/agent.proto`), shared by the host's VM manager
//! and the in-guest agent.
//!
//! The messages ([`agent`]) and the async ttrpc service glue ([`agent_ttrpc`]: the
//! [`System`](agent_ttrpc::System) trait a server implements,
//! [`create_system`](agent_ttrpc::create_system) to register it, and the
//! [`SystemClient`](agent_ttrpc::SystemClient)) are generated at build time by
//! `ttrpc-codegen` with rust-protobuf, with no `protoc` involved.

/// The vsock port the agent serves ttrpc on.
pub const AGENT_PORT: u32 = 1024;

/// The host vsock port the agent connects to once it serves, to announce readiness.
pub const READY_PORT: u32 = 1025;

/// The host's vsock CID (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;

/// The line the agent sends on the readiness connection, followed by its version and `\n`.
pub const READY_PREFIX: &str = "READY ";

/// Protobuf messages of `agent.proto` (generated).
#[allow(
    warnings,
    missing_docs,
    clippy::all,
    clippy::pedantic,
    unused_qualifications,
    rustdoc::all
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The async ttrpc `System` service: server trait, registration and client (generated).
#[allow(
    warnings,
    missing_docs,
    clippy::all,
    clippy::pedantic,
    unused_qualifications,
    rustdoc::all
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub use protobuf;
pub use ttrpc;
