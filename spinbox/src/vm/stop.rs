//! Stopping a VM, whatever its backend: the escalation policy and its steps, the
//! graceful hook through which the facade asks the guest agent to power off, and what a
//! stop reports.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::agent::{DialError, RpcError};

/// Why the graceful step (the agent's `PrepareShutdown` + `Shutdown`) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GracefulError {
    /// The agent could not be reached.
    #[error("cannot reach the agent")]
    Dial(#[source] Arc<DialError>),
    /// An agent call failed.
    #[error("the agent's {call} call failed")]
    Rpc {
        /// `PrepareShutdown` or `Shutdown`.
        call: &'static str,
        /// The RPC error.
        #[source]
        source: Arc<RpcError>,
    },
}

/// A graceful shutdown request supplied by a higher layer (e.g. the guest agent's
/// `PrepareShutdown` + `Shutdown`). It should return once the request is delivered; the
/// escalation then waits for QEMU to exit, bounded by [`EscalationPolicy::graceful`].
pub type GracefulHook =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), GracefulError>> + Send>> + Send>;

/// Which request(s) to make of the guest through QEMU before quitting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestRequest {
    /// Skip this step.
    None,
    /// ACPI power button (`system_powerdown`); the guest must watch the button.
    Powerdown,
    /// `send-key ctrl-alt-delete`; with `-no-reboot` the resulting reset ends QEMU.
    CtrlAltDelete,
    /// Both, power button first.
    #[default]
    Both,
}

/// Timeouts and choices for the escalation. Defaults suit TCG on a loaded 2-core host;
/// under KVM they are merely generous, since each step ends early when QEMU exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EscalationPolicy {
    /// How long to wait for exit after the graceful hook (default 10 s). Unused without a hook.
    pub graceful: Duration,
    /// Which guest request to make (default both).
    pub guest_request: GuestRequest,
    /// How long to wait for exit after the guest request (default 5 s).
    pub guest_request_wait: Duration,
    /// Bound on `quit`'s reply and the exit that follows (default 3 s).
    pub quit: Duration,
    /// How long to wait for exit after SIGTERM (default 3 s).
    pub sigterm: Duration,
    /// How long to wait for the reaper after SIGKILL (default 5 s; only an
    /// uninterruptible sleep in the kernel can make this expire).
    pub sigkill: Duration,
}

impl Default for EscalationPolicy {
    fn default() -> Self {
        Self {
            graceful: Duration::from_secs(10),
            guest_request: GuestRequest::Both,
            guest_request_wait: Duration::from_secs(5),
            quit: Duration::from_secs(3),
            sigterm: Duration::from_secs(3),
            sigkill: Duration::from_secs(5),
        }
    }
}

/// A step of the escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShutdownStep {
    /// The VM had already exited when shutdown began.
    AlreadyExited,
    /// The higher layer's graceful hook.
    Graceful,
    /// A request to the guest through the VMM (QEMU: `system_powerdown` / ctrl-alt-delete).
    GuestRequest,
    /// The VMM's own orderly exit (QEMU: QMP `quit`).
    QmpQuit,
    /// SIGTERM to the VMM's process group.
    SigTerm,
    /// SIGKILL to the VMM's process group.
    SigKill,
}

/// What one attempted step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// The step.
    pub step: ShutdownStep,
    /// Time from the step's start to QEMU's exit or the step's timeout.
    pub elapsed: Duration,
    /// Whether QEMU exited during this step.
    pub ended_vm: bool,
    /// What went wrong in the step's action, if anything (it then fell through).
    pub note: Option<String>,
}
