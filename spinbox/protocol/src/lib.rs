//! The spinbox guest agent protocol (`proto/agent.proto`), shared by the host's VM manager
//! and the in-guest agent.
//!
//! The messages ([`agent`]) and the async ttrpc service glue ([`agent_ttrpc`]: the
//! [`System`](agent_ttrpc::System) trait a server implements,
//! [`create_system`](agent_ttrpc::create_system) to register it, and the
//! [`SystemClient`](agent_ttrpc::SystemClient), and the same for [`Task`](agent_ttrpc::Task) and
//! [`Resources`](agent_ttrpc::Resources)) are generated at build time by
//! `ttrpc-codegen` with rust-protobuf, with no `protoc` involved.

pub mod net;

/// The vsock port the agent serves ttrpc on.
pub const AGENT_PORT: u32 = 1024;

/// The host vsock port the agent connects to once it serves, to announce readiness.
pub const READY_PORT: u32 = 1025;

/// Longest wait `Resources.OnlineCpus` accepts, in milliseconds (a minute).
pub const MAX_ONLINE_CPUS_WAIT_MS: u32 = 60_000;

/// The vsock port the agent takes stdio streams on (see `Task` in `proto/agent.proto`).
pub const STDIO_PORT: u32 = 1026;

/// The stream a stdio connection carries, as its header line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StdioStream {
    /// Host → guest: the process's standard input.
    Stdin,
    /// Guest → host: the process's standard output.
    Stdout,
    /// Guest → host: the process's standard error.
    Stderr,
}

impl StdioStream {
    /// The name used in the header line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stdin => "stdin",
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    /// The stream a header names.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "stdin" => Some(Self::Stdin),
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            _ => None,
        }
    }
}

/// Longest stdio header line the agent reads, newline included.
pub const MAX_STDIO_HEADER: usize = 160;

/// The header line of a stdio stream: `"<container_id> <exec_id or -> <stream>\n"`.
///
/// ```
/// use spinbox_protocol::{stdio_header, parse_stdio_header, StdioStream};
/// let line = stdio_header("web", "", StdioStream::Stdout);
/// assert_eq!(line, "web - stdout\n");
/// assert_eq!(parse_stdio_header(&line), Some(("web".into(), String::new(), StdioStream::Stdout)));
/// assert_eq!(parse_stdio_header("web - stdout"), None); // no newline
/// ```
pub fn stdio_header(container_id: &str, exec_id: &str, stream: StdioStream) -> String {
    let exec = if exec_id.is_empty() { "-" } else { exec_id };
    format!("{container_id} {exec} {}\n", stream.name())
}

/// Parses a header line (with its newline): container id, exec id (empty for the init
/// process) and stream. `None` when malformed.
pub fn parse_stdio_header(line: &str) -> Option<(String, String, StdioStream)> {
    let line = line.strip_suffix('\n')?;
    let mut parts = line.split(' ');
    let (container, exec, stream) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || container.is_empty() || exec.is_empty() {
        return None;
    }
    let exec = if exec == "-" { "" } else { exec };
    Some((
        container.to_owned(),
        exec.to_owned(),
        StdioStream::from_name(stream)?,
    ))
}

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

/// The async ttrpc `System`, `Task` and `Resources` services: server trait, registration and client (generated).
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
