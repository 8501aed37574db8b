//! The vsock listener handed to ttrpc, with a count of open connections.
//!
//! The count exists for the `Shutdown` reply: vsock transmits from a kernel work queue, so
//! a reply can still be queued when `write` returns, and powering off at that moment loses
//! it. The host closes its connection after reading the reply; ttrpc then drops the
//! socket, the count falls to zero, and the agent knows the reply arrived.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};

/// Counts the connections accepted and not yet dropped.
#[derive(Debug, Clone)]
pub struct Connections {
    open: watch::Sender<usize>,
}

impl Connections {
    /// The number of open connections.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Waits until no connection is open, at most `bound`. True if none is.
    pub async fn wait_all_closed(&self, bound: Duration) -> bool {
        let mut rx = self.open.subscribe();
        tokio::time::timeout(bound, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A connection that decrements the count when ttrpc drops it.
struct Tracked {
    stream: VsockStream,
    open: watch::Sender<usize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Binds vsock `port` on any CID and returns a ttrpc listener plus its connection count.
pub fn bind(port: u32) -> io::Result<(ttrpc::asynchronous::transport::Listener, Connections)> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?;
    let (open, _) = watch::channel(0usize);
    let connections = Connections { open: open.clone() };
    let incoming = futures_util::stream::unfold((listener, open), |(listener, open)| async move {
        let item = listener.accept().await.map(|(stream, peer)| {
            tracing::debug!(%peer, "connection accepted");
            open.send_modify(|n| *n += 1);
            Tracked {
                stream,
                open: open.clone(),
            }
        });
        Some((item, (listener, open)))
    });
    Ok((
        ttrpc::asynchronous::transport::Listener::new(incoming),
        connections,
    ))
}
