//! The shim's event stream: state changes, cleanup phases, VM boot and exit, console lines.
//! The `event_close` cleanup phase ends it, so a consumer sees the end of the stream when the
//! shim is done.

use crate::cleanup::CleanupPhase;
use crate::state::ShimState;
use crate::vm::manager::BootTimings;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// Why the VM stopped, as far as the host could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitCause {
    /// QEMU's exit status.
    pub status: ExitStatus,
    /// The reason of QEMU's last QMP `SHUTDOWN` event (`guest-shutdown`, `host-signal`, …),
    /// if one arrived.
    pub shutdown_reason: Option<String>,
    /// Whether the guest reported a panic (`GUEST_PANICKED`).
    pub guest_panicked: bool,
    /// Whether the exit was requested by the shim (delete or shutdown) rather than a crash.
    pub intentional: bool,
}

impl std::fmt::Display for ExitCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QEMU {}", self.status)?;
        if let Some(reason) = &self.shutdown_reason {
            write!(f, " ({reason})")?;
        }
        if self.guest_panicked {
            f.write_str(", guest panicked")?;
        }
        if !self.intentional {
            f.write_str(", unexpected")?;
        }
        Ok(())
    }
}

/// Something the shim did or saw.
#[derive(Debug, Clone)]
pub enum ShimEvent {
    /// The lifecycle state changed.
    State {
        /// The state left.
        from: ShimState,
        /// The state entered.
        to: ShimState,
    },
    /// The VM booted and its agent answered.
    Booted(BootTimings),
    /// A cleanup phase started.
    PhaseStarted(CleanupPhase),
    /// A cleanup phase's action returned (timeouts and panics show in the final report).
    PhaseFinished {
        /// The phase.
        phase: CleanupPhase,
        /// Its error, if it failed.
        error: Option<String>,
        /// How long it took.
        duration: Duration,
    },
    /// The VM exited without being asked to; the shim is tearing itself down.
    VmExited(ExitCause),
    /// A line from the guest's serial console.
    Console(String),
}

/// The sending side; `close` ends the stream for the consumer.
#[derive(Debug)]
pub(crate) struct EventSender {
    tx: Mutex<Option<mpsc::UnboundedSender<ShimEvent>>>,
}

impl EventSender {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<ShimEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                tx: Mutex::new(Some(tx)),
            },
            rx,
        )
    }

    /// Sends `event` unless the stream is closed or nobody listens (events are advisory).
    pub(crate) fn send(&self, event: ShimEvent) {
        if let Some(tx) = self
            .tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            let _ = tx.send(event);
        }
    }

    /// Ends the stream: the consumer receives what was sent, then `None`.
    pub(crate) fn close(&self) {
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}
