//! The readiness notice: once the ttrpc server listens, the agent connects to the host
//! (CID 2, port 1025) and writes `READY <version>\n`. The host dials the agent only after
//! this, so nothing connects while the guest's vsock driver is still coming up (which can
//! wedge a vhost-user vsock backend).

use std::time::Duration;

use spinbox_protocol::{HOST_CID, READY_PORT, READY_PREFIX};
use tokio::io::AsyncWriteExt;
use tokio_vsock::{VsockAddr, VsockStream};

/// Attempts before giving up (the host listens before the VM starts, so the first one
/// normally succeeds).
const ATTEMPTS: u32 = 20;

/// Sends the notice, retrying a few times with a short pause.
pub async fn announce() {
    let line = format!("{READY_PREFIX}{}\n", crate::VERSION);
    for attempt in 1..=ATTEMPTS {
        match send(&line).await {
            Ok(()) => {
                tracing::info!(attempt, "readiness announced");
                return;
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "readiness notice failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::error!("host never took the readiness notice; still serving");
}

async fn send(line: &str) -> std::io::Result<()> {
    let mut s = VsockStream::connect(VsockAddr::new(HOST_CID, READY_PORT)).await?;
    s.write_all(line.as_bytes()).await?;
    s.flush().await?;
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}
