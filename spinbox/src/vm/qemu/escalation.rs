//! Shutdown escalation (SPEC §4.6): graceful request → guest power request → QMP `quit`
//! → SIGTERM → SIGKILL → reap.
//!
//! Every step is bounded by its timeout and is cut short the moment QEMU exits: each
//! wait is a wait on the process's exit watch with a timeout, never a fixed sleep. A step
//! whose action fails (e.g. QMP is gone) moves on to the next step at once.

use std::future::Future;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::vm::process::QemuProcess;
use crate::vm::stop::{EscalationPolicy, GracefulError, GracefulHook, GuestRequest, ShutdownStep, StepReport};
use super::qmp::QmpClient;

/// The result of a completed escalation.
#[derive(Debug, Clone)]
pub struct Escalated {
    /// The step during which QEMU exited.
    pub ended_by: ShutdownStep,
    /// QEMU's exit status.
    pub exit_status: ExitStatus,
    /// Every step attempted, in order.
    pub steps: Vec<StepReport>,
    /// The graceful hook's error, if it ran and failed.
    pub graceful_error: Option<GracefulError>,
}

/// QEMU survived every step, SIGKILL included (a process stuck in the kernel).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("QEMU (pid {pid}) did not exit after SIGKILL")]
pub struct NotReaped {
    /// The pid.
    pub pid: u32,
    /// Every step attempted, in order.
    pub steps: Vec<StepReport>,
}

/// Runs the escalation against `process`, using `qmp` for the QMP steps.
pub async fn escalate(
    process: &QemuProcess,
    qmp: &QmpClient,
    policy: &EscalationPolicy,
    graceful: Option<GracefulHook>,
) -> Result<Escalated, NotReaped> {
    let mut steps = Vec::new();
    if let Some(status) = process.exit_status() {
        return Ok(Escalated {
            ended_by: ShutdownStep::AlreadyExited,
            exit_status: status,
            steps,
            graceful_error: None,
        });
    }
    let mut graceful_error = None;
    if let Some(hook) = graceful {
        let request = hook();
        let action = async {
            request.await.map_err(|e| {
                let note = e.to_string();
                graceful_error = Some(e);
                note
            })
        };
        let done = run_step(
            process,
            ShutdownStep::Graceful,
            policy.graceful,
            &mut steps,
            action,
        )
        .await;
        if let Some(done) = done {
            return Ok(done.into_escalated(steps, graceful_error));
        }
    }
    if policy.guest_request != GuestRequest::None {
        let req = policy.guest_request;
        let action = async move {
            let mut notes = Vec::new();
            if matches!(req, GuestRequest::Powerdown | GuestRequest::Both) {
                if let Err(e) = qmp.system_powerdown().await {
                    notes.push(e.to_string());
                }
            }
            if matches!(req, GuestRequest::CtrlAltDelete | GuestRequest::Both) {
                if let Err(e) = qmp.send_ctrl_alt_delete().await {
                    notes.push(e.to_string());
                }
            }
            if notes.is_empty() {
                Ok(())
            } else {
                Err(notes.join("; "))
            }
        };
        if let Some(done) = run_step(
            process,
            ShutdownStep::GuestRequest,
            policy.guest_request_wait,
            &mut steps,
            action,
        )
        .await
        {
            return Ok(done.into_escalated(steps, graceful_error));
        }
    }
    let quit = async { qmp.quit(policy.quit).await.map_err(|e| e.to_string()) };
    if let Some(done) = run_step(
        process,
        ShutdownStep::QmpQuit,
        policy.quit,
        &mut steps,
        quit,
    )
    .await
    {
        return Ok(done.into_escalated(steps, graceful_error));
    }
    for (step, signal, wait) in [
        (ShutdownStep::SigTerm, Signal::SIGTERM, policy.sigterm),
        (ShutdownStep::SigKill, Signal::SIGKILL, policy.sigkill),
    ] {
        let action = async move { process.signal(signal).await.map_err(|e| e.to_string()) };
        if let Some(done) = run_step(process, step, wait, &mut steps, action).await {
            return Ok(done.into_escalated(steps, graceful_error));
        }
    }
    Err(NotReaped {
        pid: process.pid(),
        steps,
    })
}

struct Ended(ShutdownStep, ExitStatus);

impl Ended {
    fn into_escalated(
        self,
        steps: Vec<StepReport>,
        graceful_error: Option<GracefulError>,
    ) -> Escalated {
        Escalated {
            ended_by: self.0,
            exit_status: self.1,
            steps,
            graceful_error,
        }
    }
}

/// Runs `action`, then waits for exit; the whole step is bounded by `timeout` and ends
/// the moment QEMU exits. Returns the exit if it happened within the step. A step is
/// skipped (not recorded) if QEMU exited before it began.
async fn run_step<F>(
    process: &QemuProcess,
    step: ShutdownStep,
    timeout: Duration,
    steps: &mut Vec<StepReport>,
    action: F,
) -> Option<Ended>
where
    F: Future<Output = Result<(), String>>,
{
    if let Some(status) = process.exit_status() {
        // Exited between steps: credit the previous step (it caused the exit).
        let prev = steps.last().map_or(ShutdownStep::AlreadyExited, |s| s.step);
        if let Some(last) = steps.last_mut() {
            last.ended_vm = true;
        }
        return Some(Ended(prev, status));
    }
    let start = Instant::now();
    tracing::debug!(?step, ?timeout, "shutdown step");
    let mut note = None;
    let bounded = async {
        tokio::select! {
            // QEMU exiting ends the step even while the action is still in flight.
            status = process.wait_exit() => Some(status),
            r = action => {
                if let Err(e) = r {
                    note = Some(e);
                    // The action failed: nothing will make QEMU exit in this step, so
                    // move on now rather than wait out the timeout.
                    return process.exit_status();
                }
                Some(process.wait_exit().await)
            }
        }
    };
    let exited = tokio::time::timeout(timeout, bounded).await.ok().flatten();
    let exited = exited.or_else(|| process.exit_status());
    let elapsed = start.elapsed();
    tracing::debug!(
        ?step,
        ?elapsed,
        ended_vm = exited.is_some(),
        ?note,
        "shutdown step done"
    );
    steps.push(StepReport {
        step,
        elapsed,
        ended_vm: exited.is_some(),
        note,
    });
    exited.map(|s| Ended(step, s))
}
