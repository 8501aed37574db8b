//! The engine's public face: [`CleanupEngine`], its construction, settings and queries.
//!
//! How a run proceeds is in [`super::runner`]; the per-phase atomic protocol it relies on is
//! in [`super::slot`]; the cancel guard and panic capture in [`super::cancel`] and
//! [`super::panic`].

use super::slot::{Slot, State};
#[cfg(doc)]
use super::PhaseOutcome;
use super::{CleanupReport, Phase, PhaseId};
use crate::observe::PhaseObserver;
use core::fmt;
use core::marker::PhantomData;
use core::time::Duration;
use std::sync::Arc;

/// Runs the phases of `P` in order, each at most once until [`reset`](Self::reset), and
/// reports every phase's outcome.
///
/// `#[cleanup_phases]` generates an orchestrator that wraps one; it can also be used
/// directly with a hand-written [`PhaseId`] enum.
///
/// - **Order.** A phase never starts before every earlier phase is final.
/// - **At most once.** A phase runs at most once over the engine's life; later runs report
///   it as [`PhaseOutcome::AlreadyDone`] with the original outcome.
/// - **To the end.** A phase that fails, panics, outlives its timeout or is cancelled is
///   recorded, and the next phase still runs.
/// - **Concurrency.** Any number of [`execute`](Self::execute) /
///   [`execute_from`](Self::execute_from) calls may run at once (the engine is `Send + Sync`
///   and their futures are `Send`): each phase is run by exactly one of them, the others
///   wait for it, and every call returns once every phase is final, with a report covering
///   all phases. Waiting needs no runtime: any executor works.
/// - **Cancellation.** If the future of the call running a phase is dropped, the phase's
///   future is dropped, the phase is recorded as [`PhaseOutcome::Cancelled`], and waiting
///   calls carry on with the next phase. (Leaking that future with `mem::forget` instead
///   would leave its phase running forever, and its waiters with it.)
/// - **Observer.** A [`PhaseObserver`] attached with [`with_observer`](Self::with_observer)
///   sees each phase start and reach its final outcome, exactly once per phase until
///   [`reset`](Self::reset), in order; without one, the engine only checks an `Option`.
/// - **Timeouts.** A phase with a timeout ([`PhaseId::default_timeout`],
///   [`with_timeout`](Self::with_timeout)) is abandoned when it outlives it, and recorded
///   as [`PhaseOutcome::TimedOut`]. Timeouts use `tokio::time`, so running an asynchronous
///   phase that has one needs a Tokio runtime with time enabled (without one, the phase is
///   recorded as panicked); phases without a timeout touch no Tokio timer. Timeouts cannot
///   interrupt [`Phase::sync`] actions.
///
/// # Example
///
/// ```
/// use core::fmt;
/// use core::time::Duration;
/// use lifecycle_core::cleanup::{CleanupEngine, Phase, PhaseId, PhaseOutcome};
/// use std::error::Error as _;
///
/// #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// enum Step {
///     StopIo,
///     ShutdownVm,
///     RemoveDir,
/// }
///
/// impl PhaseId for Step {
///     const ALL: &'static [Self] = &[Step::StopIo, Step::ShutdownVm, Step::RemoveDir];
///     fn index(self) -> usize {
///         self as usize
///     }
///     fn name(self) -> &'static str {
///         match self {
///             Step::StopIo => "stop_io",
///             Step::ShutdownVm => "shutdown_vm",
///             Step::RemoveDir => "remove_dir",
///         }
///     }
///     fn default_timeout(self) -> Option<Duration> {
///         None
///     }
/// }
///
/// impl fmt::Display for Step {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         f.write_str(self.name())
///     }
/// }
///
/// let engine = CleanupEngine::<Step>::new(vec![
///     Phase::sync(|| Ok::<(), std::io::Error>(())),
///     Phase::new(|| async { Err::<(), _>("guest did not power off") }),
///     Phase::noop(),
/// ])
/// .with_timeout(Step::ShutdownVm, Duration::from_secs(5));
///
/// let runtime = tokio::runtime::Builder::new_current_thread()
///     .enable_time()
///     .build()?;
/// let report = runtime.block_on(engine.execute());
/// println!("{report}");
/// assert_eq!(report.failed_phases(), [Step::ShutdownVm]);
/// assert!(engine.is_complete());
///
/// // Every phase ran once; a second run reports what the first one saw.
/// let again = runtime.block_on(engine.execute());
/// assert!(matches!(again.get(Step::StopIo).outcome, PhaseOutcome::AlreadyDone(_)));
///
/// let err = again.into_result().unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "cleanup failed in 1 of 3 phases: shutdown_vm (failed)"
/// );
/// // The phase's own error is the source, so an error chain shows it once.
/// assert_eq!(err.source().unwrap().to_string(), "guest did not power off");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CleanupEngine<P: PhaseId> {
    pub(super) actions: Vec<Phase>,
    pub(super) timeouts: Vec<Option<Duration>>,
    pub(super) slots: Box<[Slot]>,
    pub(super) observer: Option<Arc<dyn PhaseObserver<P>>>,
    _phases: PhantomData<fn() -> P>,
}

impl<P: PhaseId> CleanupEngine<P> {
    /// Builds an engine from one action per phase, in `P::ALL` order. Timeouts start at
    /// each phase's [`PhaseId::default_timeout`].
    ///
    /// # Panics
    ///
    /// If `actions.len() != P::ALL.len()`, or if `P` breaks the [`PhaseId`] contract
    /// (`P::ALL[i].index() != i`). Code generated by `#[cleanup_phases]` never does.
    pub fn new(actions: Vec<Phase>) -> Self {
        assert_eq!(
            actions.len(),
            P::ALL.len(),
            "CleanupEngine::<{}>::new: got {} phase actions for {} phases (one per phase, in order)",
            core::any::type_name::<P>(),
            actions.len(),
            P::ALL.len(),
        );
        for (i, phase) in P::ALL.iter().enumerate() {
            assert_eq!(
                phase.index(),
                i,
                "PhaseId contract broken: {phase}.index() is not its position in ALL",
            );
        }
        Self {
            actions,
            timeouts: P::ALL.iter().map(|p| p.default_timeout()).collect(),
            slots: P::ALL.iter().map(|_| Slot::new()).collect(),
            observer: None,
            _phases: PhantomData,
        }
    }

    /// Reports every phase's start and final outcome to `observer` (builder form of
    /// [`set_observer`](Self::set_observer)).
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn PhaseObserver<P>>) -> Self {
        self.set_observer(Some(observer));
        self
    }

    /// Attaches a phase observer, replacing any previous one, or (with `None`) detaches it.
    /// Takes `&mut self`, so it never changes during a run; [`reset`](Self::reset) keeps it.
    pub fn set_observer(&mut self, observer: Option<Arc<dyn PhaseObserver<P>>>) {
        self.observer = observer;
    }

    /// Sets `phase`'s timeout (builder form of [`set_timeout`](Self::set_timeout)).
    #[must_use]
    pub fn with_timeout(mut self, phase: P, timeout: Duration) -> Self {
        self.set_timeout(phase, Some(timeout));
        self
    }

    /// Sets or (with `None`) removes `phase`'s timeout.
    pub fn set_timeout(&mut self, phase: P, timeout: Option<Duration>) {
        self.timeouts[phase.index()] = timeout;
    }

    /// `phase`'s current timeout.
    pub fn timeout(&self, phase: P) -> Option<Duration> {
        self.timeouts[phase.index()]
    }

    /// Runs every phase not yet run, in order; same as
    /// [`execute_from`](Self::execute_from) the first phase.
    ///
    /// Returns once every phase is final, with a report covering every phase.
    pub async fn execute(&self) -> CleanupReport<P> {
        self.run_from(0).await
    }

    /// Runs `from` and every phase after it that is not yet run, in order: the recovery
    /// path for a setup that failed part-way, when the phases before `from` never applied
    /// (nothing of theirs was created, so there is nothing of theirs to clean up).
    ///
    /// Phases before `from` that no run has claimed yet are claimed as
    /// [`PhaseOutcome::Skipped`](super::PhaseOutcome::Skipped) and **stay skipped until
    /// [`reset`](Self::reset)**: a later `execute` reports them as
    /// [`AlreadyDone`](super::PhaseOutcome::AlreadyDone)`(Skipped)` and does not run them.
    /// (Go's `ExecutePartial` leaves them runnable instead, so a later full run there would
    /// stop hotplug after the event loop is closed.) Phases before `from` that are already
    /// final are reported as `AlreadyDone`. A skip is not an error. When the earlier phases
    /// may apply after all, call [`execute`](Self::execute), not this.
    ///
    /// Returns once every phase is final, with a report covering every phase.
    pub async fn execute_from(&self, from: P) -> CleanupReport<P> {
        self.run_from(from.index()).await
    }

    /// The phases that ran, whatever their outcome (ok, failed, panicked, timed out or
    /// cancelled), in order. Skipped phases are not among them: see
    /// [`skipped_phases`](Self::skipped_phases).
    pub fn completed_phases(&self) -> Vec<P> {
        self.phases_in(State::DONE)
    }

    /// The phases an [`execute_from`](Self::execute_from) passed by, in order; they will not
    /// run until [`reset`](Self::reset).
    pub fn skipped_phases(&self) -> Vec<P> {
        self.phases_in(State::SKIPPED)
    }

    /// Whether no phase is left to run or running: each one ran or was skipped.
    pub fn is_complete(&self) -> bool {
        self.slots.iter().all(|slot| slot.load().is_final())
    }

    fn phases_in(&self, state: State) -> Vec<P> {
        P::ALL
            .iter()
            .zip(self.slots.iter())
            .filter(|(_, slot)| slot.load() == state)
            .map(|(&phase, _)| phase)
            .collect()
    }

    /// Forgets every phase's state and outcome, so the next run runs them all again.
    /// Timeouts and the observer are kept.
    pub fn reset(&mut self) {
        // Fresh slots, in place (no allocation): `&mut self` means no run can be looking at
        // the old ones.
        for slot in &mut self.slots {
            *slot = Slot::new();
        }
    }
}

impl<P: PhaseId> fmt::Debug for CleanupEngine<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Entry<'a>(&'a Phase, Option<Duration>, &'static str);
        impl fmt::Debug for Entry<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?} {}", self.0, self.2)?;
                if let Some(timeout) = self.1 {
                    write!(f, " timeout={timeout:?}")?;
                }
                Ok(())
            }
        }
        let mut map = f.debug_map();
        for (i, phase) in P::ALL.iter().enumerate() {
            map.entry(
                &format_args!("{phase}"),
                &Entry(
                    &self.actions[i],
                    self.timeouts[i],
                    self.slots[i].load().name(),
                ),
            );
        }
        map.finish()
    }
}
