//! What a cleanup run reports: per-phase outcomes and durations, and the combined error.

use super::{BoxError, PhaseId};
use core::fmt;
use core::time::Duration;
use std::error::Error;
use std::sync::Arc;

/// The error a phase returned, shared so that every report that mentions it (the run that
/// ran the phase, and every concurrent or later run that finds it done) can hold it.
#[derive(Clone)]
pub struct PhaseFailure(Arc<dyn Error + Send + Sync + 'static>);

impl PhaseFailure {
    /// Wraps a phase's error.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(Arc::from(error.into()))
    }

    /// The error the phase returned.
    pub fn cause(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl From<BoxError> for PhaseFailure {
    fn from(error: BoxError) -> Self {
        Self(Arc::from(error))
    }
}

impl fmt::Display for PhaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for PhaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Error for PhaseFailure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// How one phase ended, as seen by one run.
#[derive(Debug, Clone)]
pub enum PhaseOutcome {
    /// The phase succeeded (or was a [`Phase::noop`](super::Phase::noop)).
    Ok,
    /// The phase returned an error.
    Failed(PhaseFailure),
    /// The phase outlived its timeout (carried here) and was abandoned: its future was
    /// dropped unfinished.
    TimedOut(Duration),
    /// The phase panicked; carries the panic message (or a placeholder when the payload
    /// is not a string).
    Panicked(String),
    /// The phase was not run: a run started from a later phase
    /// ([`CleanupEngine::execute_from`](super::CleanupEngine::execute_from)) passed it by.
    Skipped,
    /// The run that was running the phase was dropped before the phase finished; the
    /// phase's future was dropped with it.
    Cancelled,
    /// The phase had already been run (or skipped) by another run, concurrent or earlier,
    /// which saw the carried outcome. Never nested.
    AlreadyDone(Box<PhaseOutcome>),
}

impl PhaseOutcome {
    /// Whether the phase did not complete successfully: [`Failed`](Self::Failed),
    /// [`TimedOut`](Self::TimedOut), [`Panicked`](Self::Panicked) or
    /// [`Cancelled`](Self::Cancelled), also when carried by [`AlreadyDone`](Self::AlreadyDone).
    /// [`Skipped`](Self::Skipped) is not an error.
    pub fn is_error(&self) -> bool {
        match self {
            Self::Ok | Self::Skipped => false,
            Self::Failed(_) | Self::TimedOut(_) | Self::Panicked(_) | Self::Cancelled => true,
            Self::AlreadyDone(inner) => inner.is_error(),
        }
    }

    /// The outcome of the run that actually ran (or skipped) the phase: the carried
    /// outcome for [`AlreadyDone`](Self::AlreadyDone), `self` otherwise.
    pub fn original(&self) -> &PhaseOutcome {
        match self {
            Self::AlreadyDone(inner) => inner.original(),
            other => other,
        }
    }

    /// The error the phase returned, if it [`Failed`](Self::Failed) (also when carried by
    /// [`AlreadyDone`](Self::AlreadyDone)).
    pub fn failure(&self) -> Option<&PhaseFailure> {
        match self.original() {
            Self::Failed(failure) => Some(failure),
            _ => None,
        }
    }

    /// How a failed outcome went wrong, for [`CleanupError`]'s message: its kind and the
    /// details no `source()` carries (the timeout, the panic message), never the error a
    /// failed phase returned, which `source()` gives.
    fn failure_kind(&self) -> String {
        match self.original() {
            Self::Failed(_) => "failed".to_owned(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for PhaseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Failed(failure) => write!(f, "failed: {failure}"),
            Self::TimedOut(timeout) => write!(f, "timed out after {timeout:?}"),
            Self::Panicked(message) => write!(f, "panicked: {message}"),
            Self::Skipped => f.write_str("skipped"),
            Self::Cancelled => f.write_str("cancelled"),
            Self::AlreadyDone(inner) => write!(f, "already done: {inner}"),
        }
    }
}

/// One phase's line in a [`CleanupReport`].
#[derive(Debug, Clone)]
pub struct PhaseReport<P> {
    /// The phase.
    pub phase: P,
    /// How it ended, as seen by this run.
    pub outcome: PhaseOutcome,
    /// How long the phase's action ran; for [`PhaseOutcome::AlreadyDone`], how long it ran
    /// in the run that ran it. Zero for skipped phases and no-ops.
    pub duration: Duration,
}

/// The result of one [`CleanupEngine::execute`](super::CleanupEngine::execute) or
/// [`execute_from`](super::CleanupEngine::execute_from): one [`PhaseReport`] for every
/// phase of `P::ALL`, in order.
///
/// `Display` renders a table (phase, outcome, duration) followed by a summary line.
#[derive(Debug, Clone)]
#[must_use = "a cleanup report carries the phases' errors; check `has_errors()` or call `into_result()`"]
pub struct CleanupReport<P> {
    phases: Vec<PhaseReport<P>>,
    total: Duration,
}

impl<P: PhaseId> CleanupReport<P> {
    /// Builds a report; `phases` must hold one entry per phase of `P::ALL`, in order.
    pub(crate) fn new(phases: Vec<PhaseReport<P>>, total: Duration) -> Self {
        debug_assert_eq!(phases.len(), P::ALL.len());
        Self { phases, total }
    }

    /// Every phase's report, in cleanup order.
    pub fn phases(&self) -> &[PhaseReport<P>] {
        &self.phases
    }

    /// The report of `phase`.
    ///
    /// # Panics
    ///
    /// Only if `P` breaks the [`PhaseId`] contract (`phase.index()` outside `P::ALL`).
    pub fn get(&self, phase: P) -> &PhaseReport<P> {
        &self.phases[phase.index()]
    }

    /// Whether any phase ended in an error ([`PhaseOutcome::is_error`]), including errors
    /// of phases another run ran ([`PhaseOutcome::AlreadyDone`]).
    pub fn has_errors(&self) -> bool {
        self.phases.iter().any(|r| r.outcome.is_error())
    }

    /// The phases that ended in an error, in cleanup order.
    pub fn failed_phases(&self) -> Vec<P> {
        self.phases
            .iter()
            .filter(|r| r.outcome.is_error())
            .map(|r| r.phase)
            .collect()
    }

    /// Wall-clock time of the whole run: from when it began its first phase (running it, or
    /// waiting for another run to finish it) until every phase was final, waits included.
    /// Zero when the run had nothing to run or wait for (every phase already final, skipped
    /// or a no-op): the clock is only read around work.
    pub fn total_duration(&self) -> Duration {
        self.total
    }

    /// `Ok(self)` when no phase ended in an error, otherwise a [`CleanupError`] naming
    /// every failed phase.
    pub fn into_result(self) -> Result<Self, CleanupError<P>> {
        if self.has_errors() {
            Err(CleanupError::new(self))
        } else {
            Ok(self)
        }
    }
}

impl<P: PhaseId> fmt::Display for CleanupReport<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcomes: Vec<String> = self.phases.iter().map(|r| r.outcome.to_string()).collect();
        let phase_width = self
            .phases
            .iter()
            .map(|r| r.phase.name().len())
            .chain([5])
            .max()
            .unwrap_or(5);
        let outcome_width = outcomes
            .iter()
            .map(String::len)
            .chain([7])
            .max()
            .unwrap_or(7);
        writeln!(
            f,
            "{:<phase_width$}  {:<outcome_width$}  duration",
            "phase", "outcome"
        )?;
        for (r, outcome) in self.phases.iter().zip(&outcomes) {
            writeln!(
                f,
                "{:<phase_width$}  {:<outcome_width$}  {:.1?}",
                r.phase.name(),
                outcome,
                r.duration
            )?;
        }
        write!(
            f,
            "{} phases, {} failed, total {:.1?}",
            self.phases.len(),
            self.phases.iter().filter(|r| r.outcome.is_error()).count(),
            self.total
        )
    }
}

/// One failed phase of a [`CleanupError`].
///
/// Its message says which phase and how it failed; [`source`](Error::source) is the
/// error the phase returned, when it returned one.
#[derive(Debug, Clone)]
pub struct PhaseError<P> {
    phase: P,
    outcome: PhaseOutcome,
    duration: Duration,
}

impl<P: PhaseId> PhaseError<P> {
    /// The phase that failed.
    pub fn phase(&self) -> P {
        self.phase
    }

    /// Its outcome as reported (possibly [`PhaseOutcome::AlreadyDone`]); always an error.
    pub fn outcome(&self) -> &PhaseOutcome {
        &self.outcome
    }

    /// How long the phase ran.
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

impl<P: PhaseId> fmt::Display for PhaseError<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = self.phase.name();
        match self.outcome.original() {
            PhaseOutcome::Failed(_) => write!(f, "cleanup phase {phase} failed"),
            PhaseOutcome::TimedOut(timeout) => {
                write!(f, "cleanup phase {phase} timed out after {timeout:?}")
            }
            PhaseOutcome::Panicked(message) => {
                write!(f, "cleanup phase {phase} panicked: {message}")
            }
            PhaseOutcome::Cancelled => write!(f, "cleanup phase {phase} was cancelled"),
            other => write!(f, "cleanup phase {phase}: {other}"),
        }
    }
}

impl<P: PhaseId> Error for PhaseError<P> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.outcome
            .failure()
            .map(|failure| failure.cause() as &(dyn Error + 'static))
    }
}

/// A cleanup run in which at least one phase failed, panicked, timed out or was
/// cancelled; built by [`CleanupReport::into_result`].
///
/// The message names every failed phase with how it failed, and leaves the error a phase
/// returned to [`source`](Error::source), so an error-chain print (`error: cause: cause`)
/// shows each cause once:
/// `cleanup failed in 2 of 7 phases: vm_shutdown (failed), mount_cleanup (timed out after 5s)`,
/// then `: disk busy` from `source()`.
///
/// An error has one `source()` chain, so it carries the error of the first phase that
/// returned one (`None` when every failure is a timeout, panic or cancellation, which the
/// message describes in full). [`failures`](Self::failures) gives every failed phase, each
/// a [`PhaseError`] with its own `source()`; the report's `Display` shows every cause.
#[derive(Debug, Clone)]
pub struct CleanupError<P> {
    report: CleanupReport<P>,
    failures: Vec<PhaseError<P>>,
}

impl<P: PhaseId> CleanupError<P> {
    fn new(report: CleanupReport<P>) -> Self {
        let failures = report
            .phases
            .iter()
            .filter(|r| r.outcome.is_error())
            .map(|r| PhaseError {
                phase: r.phase,
                outcome: r.outcome.clone(),
                duration: r.duration,
            })
            .collect();
        Self { report, failures }
    }

    /// Every failed phase, in cleanup order (never empty).
    pub fn failures(&self) -> &[PhaseError<P>] {
        &self.failures
    }

    /// The whole report of the run.
    pub fn report(&self) -> &CleanupReport<P> {
        &self.report
    }

    /// Gives back the whole report of the run.
    pub fn into_report(self) -> CleanupReport<P> {
        self.report
    }
}

impl<P: PhaseId> fmt::Display for CleanupError<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cleanup failed in {} of {} phases: ",
            self.failures.len(),
            self.report.phases.len()
        )?;
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "{} ({})",
                failure.phase.name(),
                failure.outcome.failure_kind()
            )?;
        }
        Ok(())
    }
}

impl<P: PhaseId> Error for CleanupError<P> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.failures
            .iter()
            .find_map(|failure| failure.outcome.failure())
            .map(|failure| failure.cause() as &(dyn Error + 'static))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::test_phases::{TestError, T};
    use super::*;

    fn report(outcomes: Vec<PhaseOutcome>) -> CleanupReport<T> {
        let phases = T::ALL
            .iter()
            .zip(outcomes)
            .map(|(&phase, outcome)| PhaseReport {
                phase,
                outcome,
                duration: Duration::from_millis(1),
            })
            .collect();
        CleanupReport::new(phases, Duration::from_millis(7))
    }

    fn failed(msg: &'static str) -> PhaseOutcome {
        PhaseOutcome::Failed(PhaseFailure::new(TestError(msg)))
    }

    #[test]
    fn is_error_per_variant() {
        assert!(!PhaseOutcome::Ok.is_error());
        assert!(!PhaseOutcome::Skipped.is_error());
        assert!(failed("x").is_error());
        assert!(PhaseOutcome::TimedOut(Duration::from_secs(1)).is_error());
        assert!(PhaseOutcome::Panicked("p".into()).is_error());
        assert!(PhaseOutcome::Cancelled.is_error());
        assert!(PhaseOutcome::AlreadyDone(Box::new(failed("x"))).is_error());
        assert!(!PhaseOutcome::AlreadyDone(Box::new(PhaseOutcome::Ok)).is_error());
        assert!(!PhaseOutcome::AlreadyDone(Box::new(PhaseOutcome::Skipped)).is_error());
    }

    #[test]
    fn outcome_display() {
        assert_eq!(PhaseOutcome::Ok.to_string(), "ok");
        assert_eq!(failed("disk busy").to_string(), "failed: disk busy");
        assert_eq!(
            PhaseOutcome::TimedOut(Duration::from_secs(5)).to_string(),
            "timed out after 5s"
        );
        assert_eq!(
            PhaseOutcome::AlreadyDone(Box::new(PhaseOutcome::Skipped)).to_string(),
            "already done: skipped"
        );
    }

    /// The message, then every `source()`, as `spinbox` and `anyhow`'s `{:#}` print them.
    fn chain(error: &(dyn Error + 'static)) -> String {
        let causes: Vec<String> = std::iter::successors(Some(error), |e| (*e).source())
            .map(ToString::to_string)
            .collect();
        causes.join(": ")
    }

    #[test]
    fn error_names_every_failed_phase_and_exposes_causes() {
        let mut outcomes = vec![PhaseOutcome::Ok; 7];
        outcomes[3] = failed("disk busy");
        outcomes[5] = PhaseOutcome::TimedOut(Duration::from_secs(5));
        let report = report(outcomes);
        assert!(report.has_errors());
        assert_eq!(report.failed_phases(), [T::VmShutdown, T::MountCleanup]);
        let err = report.into_result().unwrap_err();
        assert_eq!(
            err.to_string(),
            "cleanup failed in 2 of 7 phases: vm_shutdown (failed), \
             mount_cleanup (timed out after 5s)"
        );
        assert_eq!(err.source().unwrap().to_string(), "disk busy");
        let failures = err.failures();
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0].phase(), T::VmShutdown);
        assert_eq!(failures[0].source().unwrap().to_string(), "disk busy");
        assert_eq!(failures[1].phase(), T::MountCleanup);
        assert!(failures[1].source().is_none());
        assert_eq!(
            failures[1].to_string(),
            "cleanup phase mount_cleanup timed out after 5s"
        );
        assert_eq!(err.report().phases().len(), 7);
    }

    #[test]
    fn error_chain_shows_each_cause_once() {
        let mut outcomes = vec![PhaseOutcome::Ok; 7];
        outcomes[0] = PhaseOutcome::AlreadyDone(Box::new(PhaseOutcome::Panicked("boom".into())));
        outcomes[4] = PhaseOutcome::Cancelled;
        outcomes[6] = failed("closed");
        let err = report(outcomes).into_result().unwrap_err();
        assert_eq!(
            chain(&err),
            "cleanup failed in 3 of 7 phases: hotplug_stop (panicked: boom), \
             network_cleanup (cancelled), event_close (failed): closed"
        );
        assert_eq!(
            chain(&err.failures()[2]),
            "cleanup phase event_close failed: closed"
        );
    }

    #[test]
    fn error_without_a_returned_error_has_no_source() {
        let mut outcomes = vec![PhaseOutcome::Ok; 7];
        outcomes[1] = PhaseOutcome::TimedOut(Duration::from_millis(1500));
        let err = report(outcomes).into_result().unwrap_err();
        assert_eq!(
            chain(&err),
            "cleanup failed in 1 of 7 phases: io_shutdown (timed out after 1.5s)"
        );
        assert!(err.source().is_none());
    }

    #[test]
    fn clean_report_into_result_is_ok() {
        let mut outcomes = vec![PhaseOutcome::Ok; 7];
        outcomes[2] = PhaseOutcome::Skipped;
        let report = report(outcomes).into_result().unwrap();
        assert!(!report.has_errors());
        assert!(report.failed_phases().is_empty());
        assert_eq!(report.get(T::ConnClose).outcome.to_string(), "skipped");
        assert_eq!(report.total_duration(), Duration::from_millis(7));
    }

    #[test]
    fn report_display_is_a_table() {
        let mut outcomes = vec![PhaseOutcome::Ok; 7];
        outcomes[3] = failed("disk busy");
        let text = report(outcomes).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 9, "{text}");
        assert!(lines[0].starts_with("phase "), "{text}");
        assert!(lines[0].ends_with("duration"), "{text}");
        assert!(lines[4].starts_with("vm_shutdown "), "{text}");
        assert!(lines[4].contains("failed: disk busy"), "{text}");
        assert!(lines[4].ends_with("1.0ms"), "{text}");
        // Columns line up.
        let col = lines[0].find("outcome").unwrap();
        assert!(lines[1..8].iter().all(|l| !l[col..].starts_with(' ')));
        assert_eq!(lines[8], "7 phases, 1 failed, total 7.0ms");
    }

    #[test]
    fn failure_delegates() {
        let failure = PhaseFailure::new(TestError("gone"));
        assert_eq!(failure.to_string(), "gone");
        assert_eq!(format!("{failure:?}"), "TestError(\"gone\")");
        assert_eq!(failure.cause().to_string(), "gone");
        let clone = failure.clone();
        assert!(clone.cause().is::<TestError>());
    }
}
