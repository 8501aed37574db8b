//! The runner: one `execute` / `execute_from` call walking the phases in order.
//!
//! Every call walks the phases in order and leaves phase `i` only once it is final, so:
//!
//! > **Phase `i` is claimed (`PENDING → RUNNING` or `PENDING → SKIPPED`) only after every
//! > phase `j < i` is final.**
//!
//! The claim makes exactly one caller the claimer of each phase ([`super::slot`]), so each
//! phase runs (or is skipped) exactly once, and never before its predecessors are finished.
//!
//! A [`PhaseObserver`] is called by the claimer while the phase is still `RUNNING`, before the
//! outcome is published, so its calls are ordered like the phases themselves. A phase skipped
//! while an observer is attached goes `PENDING → RUNNING → SKIPPED` for the same reason (the
//! observer is told in between); without one it is claimed `SKIPPED` directly.
//!
//! Durations cost one clock read per phase that runs, plus one for the start: a phase starts
//! when the caller's previous phase ended (or when it stopped waiting). No-op phases read no
//! clock and, without an observer, take one compare-and-swap (`PENDING → DONE`) each.

use super::cancel::RunGuard;
use super::engine::CleanupEngine;
use super::panic::{catch, notify, CatchUnwind};
use super::phase::{Action, PhaseFuture};
use super::slot::{Slot, State};
use super::{CleanupReport, PhaseId, PhaseKind, PhaseOutcome, PhaseReport};
use crate::observe::PhaseObserver;
use core::time::Duration;
use std::time::Instant;

/// Tells the observer, if any, that `phase` reached its final outcome.
pub(super) fn report_finished<P: PhaseId>(
    observer: Option<&dyn PhaseObserver<P>>,
    phase: P,
    kind: PhaseKind,
    outcome: &PhaseOutcome,
    duration: Duration,
) {
    if let Some(observer) = observer {
        notify(phase, "phase_finished", || {
            observer.phase_finished(phase, kind, outcome, duration);
        });
    }
}

impl<P: PhaseId> CleanupEngine<P> {
    pub(super) async fn run_from(&self, from: usize) -> CleanupReport<P> {
        // The clock is read lazily: when this call first runs or waits for a phase (the
        // start of its total), then once per phase it runs (a phase starts when the previous
        // one ended, or when the wait before it ended). No-op phases and phases found final
        // read no clock at all.
        let mut started: Option<Instant> = None;
        let mut mark: Option<Instant> = None;
        let mut reports = Vec::with_capacity(P::ALL.len());
        for (i, (&phase, slot)) in P::ALL.iter().zip(self.slots.iter()).enumerate() {
            let kind = self.actions[i].kind();
            let (outcome, duration) = loop {
                match slot.load() {
                    State::DONE => {
                        // A no-op's outcome is always `Ok` in no time; its fast path below
                        // records nothing in the slot.
                        let (outcome, duration) = if kind == PhaseKind::Noop {
                            (PhaseOutcome::Ok, Duration::ZERO)
                        } else {
                            slot.recorded()
                        };
                        break (PhaseOutcome::AlreadyDone(Box::new(outcome)), duration);
                    }
                    State::SKIPPED => {
                        break (
                            PhaseOutcome::AlreadyDone(Box::new(PhaseOutcome::Skipped)),
                            Duration::ZERO,
                        );
                    }
                    State::RUNNING => {
                        started.get_or_insert_with(Instant::now);
                        slot.wait_final().await;
                        mark = Some(Instant::now());
                    }
                    _ => {
                        // PENDING. Every earlier phase is final: this loop left each of them
                        // only once it was, and final states last until `reset(&mut self)`.
                        // So claiming phase `i` here keeps the order invariant.
                        if i < from {
                            if self.claim_skipped(i, phase, slot) {
                                break (PhaseOutcome::Skipped, Duration::ZERO);
                            }
                        } else if kind == PhaseKind::Noop && self.observer.is_none() {
                            // Straight to DONE: nothing runs, nobody can be waiting on a
                            // phase that was never RUNNING, and readers know the outcome.
                            if slot.claim(State::DONE) {
                                break (PhaseOutcome::Ok, Duration::ZERO);
                            }
                        } else if slot.claim(State::RUNNING) {
                            let start = *mark.get_or_insert_with(Instant::now);
                            started.get_or_insert(start);
                            let (outcome, duration, end) =
                                self.run_claimed(i, phase, slot, start).await;
                            mark = Some(end);
                            break (outcome, duration);
                        }
                        // Another call claimed it first: look again.
                    }
                }
            };
            reports.push(PhaseReport {
                phase,
                outcome,
                duration,
            });
        }
        let total = started.map_or(Duration::ZERO, |s| mark.unwrap_or(s).duration_since(s));
        let report = CleanupReport::new(reports, total);
        #[cfg(feature = "tracing")]
        if report.has_errors() {
            let failed: Vec<&str> = report.failed_phases().iter().map(|p| p.name()).collect();
            tracing::warn!(
                failed = %failed.join(", "),
                "cleanup finished with {} failed phase(s)",
                failed.len()
            );
        }
        report
    }

    /// Claims phase `i` as skipped (and reports it to the observer); false if another call
    /// claimed it first.
    fn claim_skipped(&self, i: usize, phase: P, slot: &Slot) -> bool {
        let Some(observer) = self.observer.as_deref() else {
            // Nobody waits on a phase that was never RUNNING.
            return slot.claim(State::SKIPPED);
        };
        // Through RUNNING, so the observer hears of the skip before any call moves past it.
        if !slot.claim(State::RUNNING) {
            return false;
        }
        let kind = self.actions[i].kind();
        report_finished(
            Some(observer),
            phase,
            kind,
            &PhaseOutcome::Skipped,
            Duration::ZERO,
        );
        slot.publish(State::SKIPPED);
        true
    }

    /// Runs phase `i`, which this call has claimed (`RUNNING`) at `start`, and publishes its
    /// outcome. Returns the outcome, the duration and when it ended.
    async fn run_claimed(
        &self,
        i: usize,
        phase: P,
        slot: &Slot,
        start: Instant,
    ) -> (PhaseOutcome, Duration, Instant) {
        let kind = self.actions[i].kind();
        let observer = self.observer.as_deref();
        if let Some(observer) = observer {
            notify(phase, "phase_started", || {
                observer.phase_started(phase, kind);
            });
        }
        if kind == PhaseKind::Noop {
            // Nothing runs: no clock, no span.
            report_finished(observer, phase, kind, &PhaseOutcome::Ok, Duration::ZERO);
            // Readers know a no-op's outcome; nothing to record.
            slot.publish(State::DONE);
            return (PhaseOutcome::Ok, Duration::ZERO, start);
        }
        let guard = RunGuard::arm(slot, start, observer, phase, kind);
        #[cfg(feature = "tracing")]
        let outcome = {
            use tracing::Instrument;
            let span = tracing::info_span!("cleanup_phase", phase = phase.name());
            // A disabled span (no subscriber wants it) would still be entered and exited on
            // every poll; skip the wrapper then.
            if span.is_disabled() {
                self.run_action(i).await
            } else {
                self.run_action(i).instrument(span).await
            }
        };
        #[cfg(not(feature = "tracing"))]
        let outcome = {
            let _ = phase;
            self.run_action(i).await
        };
        let (outcome, duration, end) = guard.complete(outcome);
        #[cfg(feature = "tracing")]
        tracing::debug!(phase = phase.name(), %outcome, ?duration, "cleanup phase finished");
        (outcome, duration, end)
    }

    /// Runs phase `i`'s action, turning errors, panics and timeouts into its outcome.
    async fn run_action(&self, i: usize) -> PhaseOutcome {
        let f = match &self.actions[i].action {
            Action::Noop => return PhaseOutcome::Ok,
            Action::Sync(f) => {
                return match catch(f) {
                    Ok(Ok(())) => PhaseOutcome::Ok,
                    Ok(Err(error)) => PhaseOutcome::Failed(error.into()),
                    Err(message) => PhaseOutcome::Panicked(message),
                }
            }
            Action::Async(f) => f,
        };
        let future: PhaseFuture = match catch(f) {
            Ok(future) => future,
            Err(message) => return PhaseOutcome::Panicked(message),
        };
        let Some(timeout) = self.timeouts[i] else {
            return match CatchUnwind(future).await {
                Ok(Ok(())) => PhaseOutcome::Ok,
                Ok(Err(error)) => PhaseOutcome::Failed(error.into()),
                Err(message) => PhaseOutcome::Panicked(message),
            };
        };
        // Creating the timer panics outside a Tokio runtime with time enabled.
        let timed = match catch(|| Box::pin(tokio::time::timeout(timeout, future))) {
            Ok(timed) => timed,
            Err(message) => return PhaseOutcome::Panicked(message),
        };
        match CatchUnwind(timed).await {
            Ok(Ok(Ok(()))) => PhaseOutcome::Ok,
            Ok(Ok(Err(error))) => PhaseOutcome::Failed(error.into()),
            Ok(Err(_elapsed)) => PhaseOutcome::TimedOut(timeout),
            Err(message) => PhaseOutcome::Panicked(message),
        }
    }
}
