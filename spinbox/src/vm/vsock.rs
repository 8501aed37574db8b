//! Reaching a guest's vsock port from the host, as a ttrpc connection.
//!
//! - **hybrid vsock**: a unix socket served by the VMM or a vhost-user backend
//!   (Firecracker, Cloud Hypervisor, `vhost-device-vsock`). The host connects, writes
//!   `CONNECT <port>\n` in one write, and reads one line; `OK …` means the stream is now
//!   connected to the guest port. Anything else, or EOF first, means it is not.
//!
//! - a plain unix socket with a ttrpc server behind it (the fake backend's in-process agent).
//!
//! Kernel `AF_VSOCK` (QEMU's `vhost-vsock-pci`, which needs `/dev/vhost-vsock`) is not
//! offered: no backend here starts such a device, and the hosts spinbox is tested on lack
//! `/dev/vhost-vsock`. It would be a third variant, added with the device and a test.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest handshake reply line accepted.
const MAX_LINE: usize = 128;

/// Where an agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddress {
    /// Hybrid vsock: the VMM's or backend's unix socket and the guest port.
    Hybrid {
        /// The unix socket (`uds-path` of `vhost-device-vsock`).
        socket: PathBuf,
        /// The guest port.
        port: u32,
    },
    /// A plain unix socket with a ttrpc server behind it.
    Unix(PathBuf),
}

impl AgentAddress {
    /// The same guest reached on another port: for hybrid vsock, the same socket with
    /// `port`; for a plain unix socket `P`, the socket `P.<port>` (how an in-process agent
    /// serves a second port).
    #[must_use]
    pub fn with_port(&self, port: u32) -> AgentAddress {
        match self {
            AgentAddress::Hybrid { socket, .. } => AgentAddress::Hybrid {
                socket: socket.clone(),
                port,
            },
            AgentAddress::Unix(path) => {
                let mut p = path.clone().into_os_string();
                p.push(format!(".{port}"));
                AgentAddress::Unix(p.into())
            }
        }
    }
}

impl std::fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddress::Hybrid { socket, port } => {
                write!(f, "hvsock://{}:{port}", socket.display())
            }
            AgentAddress::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// Errors connecting a stream to an agent address.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be connected (absent, refused, …).
    #[error("cannot connect to {address}")]
    Connect {
        /// The address.
        address: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The hybrid handshake failed on I/O: reset, broken pipe, or EOF before the reply
    /// line (the guest port has no listener, or the guest driver is not up).
    #[error("hybrid vsock handshake with {address} failed")]
    HandshakeIo {
        /// The address.
        address: String,
        /// The I/O error (`UnexpectedEof` when closed before `OK`).
        #[source]
        source: io::Error,
    },
    /// The hybrid endpoint answered something other than `OK …`.
    #[error("hybrid vsock endpoint {address} refused CONNECT: {line:?}")]
    HandshakeRefused {
        /// The address.
        address: String,
        /// The reply line.
        line: String,
    },
    /// The handshake did not complete in time.
    #[error("hybrid vsock handshake with {address} timed out after {after:?}")]
    HandshakeTimeout {
        /// The address.
        address: String,
        /// The bound.
        after: Duration,
    },
}

impl ConnectError {
    /// Whether retrying may succeed: the endpoint is not there yet (absent, refused) or
    /// closed on us (reset, broken pipe, EOF before `OK`). A refusal line, a timeout or
    /// any other I/O error is final.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Connect { source, .. } | ConnectError::HandshakeIo { source, .. } => {
                is_transient_io(source)
            }
            ConnectError::HandshakeRefused { .. } | ConnectError::HandshakeTimeout { .. } => false,
        }
    }
}

/// I/O errors that mean "not there yet" or "closed on us".
pub fn is_transient_io(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            // A full listen backlog (EAGAIN on a non-blocking unix connect).
            | io::ErrorKind::WouldBlock
    )
}

/// Connects to `address` (the handshake bounded by `timeout`) and wraps the stream in an
/// async ttrpc client.
pub async fn connect(
    address: &AgentAddress,
    timeout: Duration,
) -> Result<ttrpc::asynchronous::Client, ConnectError> {
    let socket = connect_socket(address, timeout).await?;
    Ok(ttrpc::asynchronous::Client::new(socket))
}

async fn connect_socket(
    address: &AgentAddress,
    timeout: Duration,
) -> Result<ttrpc::asynchronous::transport::Socket, ConnectError> {
    connect_stream(address, timeout)
        .await
        .map(ttrpc::asynchronous::transport::Socket::new)
}

/// Connects a plain byte stream to `address` (for hybrid vsock, after the `CONNECT`
/// handshake, bounded by `timeout`): what the stdio streams use.
pub async fn connect_stream(
    address: &AgentAddress,
    timeout: Duration,
) -> Result<UnixStream, ConnectError> {
    let name = address.to_string();
    let connect_err = |source| ConnectError::Connect {
        address: name.clone(),
        source,
    };
    match address {
        AgentAddress::Unix(path) => UnixStream::connect(path).await.map_err(connect_err),
        AgentAddress::Hybrid { socket, port } => {
            let mut s = UnixStream::connect(socket).await.map_err(connect_err)?;
            match tokio::time::timeout(timeout, hybrid_handshake(&mut s, *port)).await {
                Err(_) => Err(ConnectError::HandshakeTimeout {
                    address: name,
                    after: timeout,
                }),
                Ok(Err(source)) => Err(ConnectError::HandshakeIo {
                    address: name,
                    source,
                }),
                Ok(Ok(line)) if line.starts_with("OK ") => Ok(s),
                Ok(Ok(line)) => Err(ConnectError::HandshakeRefused {
                    address: name,
                    line,
                }),
            }
        }
    }
}

/// Sends `CONNECT <port>\n` in one write and reads the reply line byte by byte (nothing
/// after the newline may be consumed: it belongs to the ttrpc stream).
async fn hybrid_handshake(s: &mut UnixStream, port: u32) -> io::Result<String> {
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut line = Vec::with_capacity(16);
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > MAX_LINE {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A listener whose backlog is full answers a non-blocking connect with `EAGAIN`; the
    /// dial treats that as "not there yet" and retries.
    #[tokio::test]
    async fn a_full_listen_backlog_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // SAFETY: listen(2) on a socket we own, to shrink its backlog to one.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let address = AgentAddress::Unix(path);
        let mut held = Vec::new();
        let err = loop {
            match connect(&address, Duration::from_secs(1)).await {
                Ok(client) => held.push(client),
                Err(e) => break e,
            }
            assert!(held.len() < 64, "the backlog never filled");
        };
        let ConnectError::Connect { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::WouldBlock, "{err:?}");
        assert!(err.is_transient());
    }
}
