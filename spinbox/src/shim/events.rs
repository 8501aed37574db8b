//! The shim's event stream: state changes, cleanup phases (every one, no-ops and timed-out
//! ones included), VM boot and exit, console lines.
//!
//! # Bounded
//!
//! The stream holds at most [`EVENT_CAPACITY`] events; a consumer that falls behind never
//! makes the shim's memory grow. What gives way when it is full:
//! - console lines are sent only while more than [`CONSOLE_RESERVE`] slots are free, so a
//!   chatty guest cannot crowd out lifecycle events;
//! - any event that finds no room is dropped and counted, and the next event that fits is
//!   preceded by [`ShimEvent::Dropped`] with the count, so the consumer knows.
//!
//! The shim never waits for the consumer. The `event_close` cleanup phase ends the stream
//! when the shim's final teardown is done: its own `PhaseFinished` is the last event (then,
//! if events were dropped since the last notice, a final `Dropped`), then `recv` returns
//! `None`.
//!
//! Each `State` event is exact (the transition that happened, sent by the task that made
//! it), but two transitions made on different tasks at the same instant may arrive in
//! either order; [`Shim::state`](super::Shim::state) is the authority on the current state.

use crate::cleanup::CleanupPhase;
use crate::state::ShimState;
use crate::vm::ExitInfo;
use lifecycle_core::{PhaseKind, PhaseOutcome};
use std::process::ExitStatus;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;

/// How many events the stream holds before it drops.
pub const EVENT_CAPACITY: usize = 256;

/// Console lines are not sent unless more slots than this are free.
pub const CONSOLE_RESERVE: usize = 64;

/// Why the VM stopped, as far as the host could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitCause {
    /// The VMM's exit status.
    pub status: ExitStatus,
    /// The VMM's shutdown reason (QEMU: the last QMP `SHUTDOWN` event's `reason`, such as
    /// `guest-shutdown` or `host-signal`), if one arrived.
    pub shutdown_reason: Option<String>,
    /// Whether the guest reported a panic.
    pub guest_panicked: bool,
    /// A helper the VM needed died first, and the backend ended the VM because of it.
    pub helper_died: Option<crate::vm::HelperExit>,
    /// Whether the exit was requested by the shim (delete or shutdown) rather than a crash.
    pub intentional: bool,
}

impl ExitCause {
    pub(crate) fn new(info: ExitInfo, intentional: bool) -> Self {
        Self {
            status: info.status,
            shutdown_reason: info.shutdown_reason,
            guest_panicked: info.guest_panicked,
            helper_died: info.helper_died,
            intentional,
        }
    }
}

impl std::fmt::Display for ExitCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = ExitInfo {
            status: self.status,
            shutdown_reason: self.shutdown_reason.clone(),
            guest_panicked: self.guest_panicked,
            helper_died: self.helper_died.clone(),
        };
        write!(f, "{info}")?;
        if !self.intentional {
            f.write_str(", unexpected")?;
        }
        Ok(())
    }
}

/// Boot timings of a creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimings {
    /// VM start → the agent's readiness notice.
    pub ready: Duration,
    /// Readiness notice → the shim's first agent connection answered.
    pub ready_to_first_rpc: Duration,
    /// VM start → the first agent connection answered.
    pub first_rpc: Duration,
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
    /// A cleanup phase started (every kind, no-ops included).
    PhaseStarted {
        /// The phase.
        phase: CleanupPhase,
        /// How it was declared.
        kind: PhaseKind,
    },
    /// A cleanup phase reached its outcome: ok, failed, timed out, panicked, cancelled or
    /// skipped.
    PhaseFinished {
        /// The phase.
        phase: CleanupPhase,
        /// How it was declared.
        kind: PhaseKind,
        /// Its outcome.
        outcome: PhaseOutcome,
        /// How long it took.
        duration: Duration,
    },
    /// The VM exited without being asked to; the shim is tearing it down.
    VmExited(ExitCause),
    /// A line from the guest's serial console.
    Console(String),
    /// This many events were dropped because the consumer fell behind.
    Dropped(u64),
}

/// The receiving side of the stream.
pub type EventReceiver = mpsc::Receiver<ShimEvent>;

struct Tx {
    sender: Option<mpsc::Sender<ShimEvent>>,
    dropped: u64,
    /// Close once `event_close`'s finish has been sent.
    closing: bool,
}

/// The sending side; see the module docs.
pub(crate) struct EventSender {
    tx: Mutex<Tx>,
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tx = self.lock();
        f.debug_struct("EventSender")
            .field("open", &tx.sender.is_some())
            .field("dropped", &tx.dropped)
            .finish()
    }
}

impl EventSender {
    pub(crate) fn new() -> (Self, EventReceiver) {
        let (tx, rx) = mpsc::channel(EVENT_CAPACITY);
        (
            Self {
                tx: Mutex::new(Tx {
                    sender: Some(tx),
                    dropped: 0,
                    closing: false,
                }),
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tx> {
        self.tx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `event` unless the stream is closed or full (see the module docs).
    pub(crate) fn send(&self, event: ShimEvent) {
        let mut state = self.lock();
        let Tx {
            sender: slot,
            dropped,
            ..
        } = &mut *state;
        let Some(sender) = slot.as_ref() else { return };
        if matches!(event, ShimEvent::Console(_)) && sender.capacity() <= CONSOLE_RESERVE {
            *dropped += 1;
            return;
        }
        if *dropped > 0 {
            // The notice needs its own slot, and the event one more.
            if sender.capacity() < 2 {
                *dropped += 1;
                return;
            }
            let _ = sender.try_send(ShimEvent::Dropped(*dropped));
            *dropped = 0;
        }
        match sender.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => *dropped += 1,
            // The consumer went away: nothing to keep.
            Err(mpsc::error::TrySendError::Closed(_)) => *slot = None,
        }
    }

    /// Ends the stream after the `event_close` phase's finish event is sent.
    pub(crate) fn close_after_event_close(&self) {
        self.lock().closing = true;
    }

    /// Sends the `event_close` phase's finish, then closes if the final teardown asked for it.
    pub(crate) fn event_close_finished(&self, event: ShimEvent) {
        self.send(event);
        let mut state = self.lock();
        if state.closing {
            Self::close_locked(&mut state);
        }
    }

    /// Ends the stream now: the consumer receives what was sent (and the count of what was
    /// dropped, if any and if it fits), then `None`.
    pub(crate) fn close(&self) {
        Self::close_locked(&mut self.lock());
    }

    fn close_locked(state: &mut Tx) {
        if let Some(sender) = state.sender.take() {
            if state.dropped > 0 {
                let _ = sender.try_send(ShimEvent::Dropped(state.dropped));
                state.dropped = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_consumer_loses_console_lines_first_and_is_told() {
        let (tx, mut rx) = EventSender::new();
        for i in 0..EVENT_CAPACITY * 2 {
            tx.send(ShimEvent::Console(format!("line {i}")));
        }
        // Console lines stop at the reserve; lifecycle events still fit.
        for _ in 0..CONSOLE_RESERVE {
            tx.send(ShimEvent::Booted(BootTimings {
                ready: Duration::ZERO,
                ready_to_first_rpc: Duration::ZERO,
                first_rpc: Duration::ZERO,
            }));
        }
        let got: Vec<ShimEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let console = EVENT_CAPACITY - CONSOLE_RESERVE;
        let lost_console = EVENT_CAPACITY * 2 - console;
        // The console lines that fit, then the notice of the ones that did not, then the
        // lifecycle events until the stream is full (the last one did not fit).
        assert_eq!(got.len(), EVENT_CAPACITY);
        assert!(got[..console]
            .iter()
            .all(|e| matches!(e, ShimEvent::Console(_))));
        assert!(matches!(got[console], ShimEvent::Dropped(n) if n == lost_console as u64));
        assert!(got[console + 1..]
            .iter()
            .all(|e| matches!(e, ShimEvent::Booted(_))));
        // Room again: the next event is preceded by the count of what was lost since.
        tx.send(ShimEvent::Console("after".into()));
        assert!(matches!(rx.try_recv(), Ok(ShimEvent::Dropped(1))));
        assert!(matches!(rx.try_recv(), Ok(ShimEvent::Console(l)) if l == "after"));
        tx.close();
        assert!(rx.recv().await.is_none());
    }
}
