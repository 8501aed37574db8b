//! The cancel guard: if the future of the call running a phase is dropped mid-phase, the
//! phase is recorded (and reported to the observer) as [`PhaseOutcome::Cancelled`], so the
//! callers waiting on it go on instead of waiting forever.

use super::runner::report_finished;
use super::slot::Slot;
use super::{PhaseId, PhaseKind, PhaseOutcome};
use crate::observe::PhaseObserver;
use core::time::Duration;
use std::time::Instant;

/// Records [`PhaseOutcome::Cancelled`] (and reports it to the observer) if the run is dropped
/// while it is running a phase.
#[must_use = "dropping the guard records the phase as cancelled"]
pub(super) struct RunGuard<'a, P: PhaseId> {
    slot: &'a Slot,
    start: Instant,
    armed: bool,
    observer: Option<&'a dyn PhaseObserver<P>>,
    phase: P,
    kind: PhaseKind,
}

impl<'a, P: PhaseId> RunGuard<'a, P> {
    /// Guards `phase`, claimed (`RUNNING`) in `slot` and started at `start`.
    pub(super) fn arm(
        slot: &'a Slot,
        start: Instant,
        observer: Option<&'a dyn PhaseObserver<P>>,
        phase: P,
        kind: PhaseKind,
    ) -> Self {
        Self {
            slot,
            start,
            armed: true,
            observer,
            phase,
            kind,
        }
    }

    /// Reports and records the phase's outcome and disarms the guard; returns the outcome
    /// with its duration and the instant it ended.
    pub(super) fn complete(mut self, outcome: PhaseOutcome) -> (PhaseOutcome, Duration, Instant) {
        self.armed = false;
        let end = Instant::now();
        let duration = end.duration_since(self.start);
        report_finished(self.observer, self.phase, self.kind, &outcome, duration);
        self.slot.finish(outcome.clone(), duration);
        (outcome, duration, end)
    }
}

impl<P: PhaseId> Drop for RunGuard<'_, P> {
    fn drop(&mut self) {
        if self.armed {
            let duration = self.start.elapsed();
            // The observer runs inside this drop; `notify` keeps a panic in it from
            // escaping (which would abort if this drop is itself part of an unwind).
            report_finished(
                self.observer,
                self.phase,
                self.kind,
                &PhaseOutcome::Cancelled,
                duration,
            );
            self.slot.finish(PhaseOutcome::Cancelled, duration);
        }
    }
}
