//! The engine: runs the phases in order, at most once each, shared by concurrent callers.
//!
//! # Design
//!
//! Each phase has a slot: an atomic state, the recorded outcome behind a mutex, and the
//! wakers of callers waiting for it behind another mutex (all from [`crate::sync`], so
//! `--cfg loom` model-checks them).
//!
//! ```text
//! PENDING ──CAS──▶ RUNNING ──store(Release)──▶ DONE      (outcome recorded first)
//!    └──────────────CAS──────────────────────▶ SKIPPED   (outcome is always `Skipped`)
//! ```
//!
//! Every call walks the phases in order and leaves phase `i` only once it is final
//! (`DONE` or `SKIPPED`). Final states are permanent until [`CleanupEngine::reset`], which
//! takes `&mut self` and so cannot overlap a run. Hence the invariant:
//!
//! > **Phase `i` is claimed (CAS `PENDING → RUNNING` or `PENDING → SKIPPED`) only after every
//! > phase `j < i` is final.**
//!
//! The compare-and-swap makes exactly one caller the claimer of each phase, so each phase
//! runs (or is skipped) exactly once, and never before its predecessors are finished.
//!
//! A caller that finds a phase `RUNNING` waits for it without any runtime primitive: it
//! checks the state, locks the waker list, checks again and only then registers its waker.
//! The runner records the outcome, stores the final state (Release), then locks the list and
//! wakes everyone. Whichever takes the lock second sees the other's write, so no wake-up is
//! lost. If the runner's future is dropped mid-phase, a drop guard records
//! [`PhaseOutcome::Cancelled`] and does the same, so nobody waits forever.

use super::phase::{Action, PhaseFuture};
use super::{CleanupReport, Phase, PhaseId, PhaseOutcome, PhaseReport};
use crate::sync::{lock, AtomicU8, Mutex, Ordering};
use core::fmt;
use core::future::Future;
use core::marker::PhantomData;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// Not claimed yet.
const PENDING: u8 = 0;
/// Claimed by a caller that is running it.
const RUNNING: u8 = 1;
/// Final: ran (or was cancelled); the outcome is recorded in the slot.
const DONE: u8 = 2;
/// Final: skipped by an `execute_from` that started after it.
const SKIPPED: u8 = 3;

fn is_final(state: u8) -> bool {
    state == DONE || state == SKIPPED
}

/// The bookkeeping of one phase.
struct Slot {
    /// `PENDING`, `RUNNING`, `DONE` or `SKIPPED`.
    state: AtomicU8,
    /// The outcome and duration of the run that ran the phase; written before `DONE` is
    /// stored, read only after `DONE` is observed.
    outcome: Mutex<Option<(PhaseOutcome, Duration)>>,
    /// Wakers of callers waiting for the phase to become final.
    waiters: Mutex<Vec<Waker>>,
}

impl Slot {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(PENDING),
            outcome: Mutex::new(None),
            waiters: Mutex::new(Vec::new()),
        }
    }

    fn load(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    fn claim(&self, to: u8) -> bool {
        self.state
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The outcome recorded by the run that ran the phase. Call only after observing `DONE`.
    fn recorded(&self) -> (PhaseOutcome, Duration) {
        let recorded = lock(&self.outcome).clone();
        debug_assert!(recorded.is_some(), "a DONE phase has a recorded outcome");
        // Unreachable fallback: the outcome is always written before DONE is published.
        recorded.unwrap_or((PhaseOutcome::Cancelled, Duration::ZERO))
    }

    /// Records the outcome, publishes `DONE` and wakes every waiter.
    fn finish(&self, outcome: PhaseOutcome, duration: Duration) {
        *lock(&self.outcome) = Some((outcome, duration));
        self.state.store(DONE, Ordering::Release);
        let waiters = core::mem::take(&mut *lock(&self.waiters));
        for waker in waiters {
            waker.wake();
        }
    }

    /// Resolves once the phase is final.
    fn wait_final(&self) -> impl Future<Output = ()> + Send + '_ {
        core::future::poll_fn(move |cx| {
            if is_final(self.load()) {
                return Poll::Ready(());
            }
            let mut waiters = lock(&self.waiters);
            // Re-check under the lock: the runner stores the final state before it takes
            // this lock to wake, so either we see the state now or it sees our waker.
            if is_final(self.load()) {
                return Poll::Ready(());
            }
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// Records [`PhaseOutcome::Cancelled`] if the run is dropped while it is running a phase.
struct RunGuard<'a> {
    slot: &'a Slot,
    start: Instant,
    armed: bool,
}

impl RunGuard<'_> {
    /// Records the phase's outcome and disarms the guard.
    fn complete(mut self, outcome: PhaseOutcome) -> (PhaseOutcome, Duration) {
        self.armed = false;
        let duration = self.start.elapsed();
        self.slot.finish(outcome.clone(), duration);
        (outcome, duration)
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.slot
                .finish(PhaseOutcome::Cancelled, self.start.elapsed());
        }
    }
}

/// Polls a future, turning a panic into `Err(message)`.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.get_mut().0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(&*payload))),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

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
///     "cleanup failed in 1 of 3 phases: shutdown_vm (guest did not power off)"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct CleanupEngine<P: PhaseId> {
    actions: Vec<Phase>,
    timeouts: Vec<Option<Duration>>,
    slots: Box<[Slot]>,
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
            _phases: PhantomData,
        }
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

    /// Runs `from` and every phase after it that is not yet run, in order, for recovery
    /// from a failure part-way through a setup.
    ///
    /// Phases before `from` that no run has claimed yet are claimed as
    /// [`PhaseOutcome::Skipped`], so no later run can run them after a later phase; the ones
    /// already final are reported as [`PhaseOutcome::AlreadyDone`]. Returns once every
    /// phase is final, with a report covering every phase.
    pub async fn execute_from(&self, from: P) -> CleanupReport<P> {
        self.run_from(from.index()).await
    }

    /// The phases in a final state (run, cancelled or skipped), in order.
    pub fn completed_phases(&self) -> Vec<P> {
        P::ALL
            .iter()
            .zip(self.slots.iter())
            .filter(|(_, slot)| is_final(slot.load()))
            .map(|(&phase, _)| phase)
            .collect()
    }

    /// Whether every phase is final.
    pub fn is_complete(&self) -> bool {
        self.slots.iter().all(|slot| is_final(slot.load()))
    }

    /// Forgets every phase's state and outcome, so the next run runs them all again.
    /// Timeouts are kept.
    pub fn reset(&mut self) {
        for slot in &self.slots {
            slot.state.store(PENDING, Ordering::Relaxed);
            *lock(&slot.outcome) = None;
            lock(&slot.waiters).clear();
        }
    }

    async fn run_from(&self, from: usize) -> CleanupReport<P> {
        let started = Instant::now();
        let mut reports = Vec::with_capacity(P::ALL.len());
        for (i, (&phase, slot)) in P::ALL.iter().zip(self.slots.iter()).enumerate() {
            let (outcome, duration) = loop {
                match slot.load() {
                    DONE => {
                        let (outcome, duration) = slot.recorded();
                        break (PhaseOutcome::AlreadyDone(Box::new(outcome)), duration);
                    }
                    SKIPPED => {
                        break (
                            PhaseOutcome::AlreadyDone(Box::new(PhaseOutcome::Skipped)),
                            Duration::ZERO,
                        );
                    }
                    RUNNING => slot.wait_final().await,
                    _ => {
                        // PENDING. Every earlier phase is final: this loop left each of them
                        // only once it was, and final states last until `reset(&mut self)`.
                        // So claiming phase `i` here keeps the order invariant.
                        if i < from {
                            if slot.claim(SKIPPED) {
                                // Nobody waits on a phase that was never RUNNING.
                                break (PhaseOutcome::Skipped, Duration::ZERO);
                            }
                        } else if slot.claim(RUNNING) {
                            break self.run_claimed(i, phase, slot).await;
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
        let report = CleanupReport::new(reports, started.elapsed());
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

    /// Runs phase `i`, which this call has claimed (`RUNNING`), and publishes its outcome.
    async fn run_claimed(&self, i: usize, phase: P, slot: &Slot) -> (PhaseOutcome, Duration) {
        let guard = RunGuard {
            slot,
            start: Instant::now(),
            armed: true,
        };
        #[cfg(feature = "tracing")]
        let outcome = {
            use tracing::Instrument;
            let span = tracing::info_span!("cleanup_phase", phase = phase.name());
            self.run_action(i).instrument(span).await
        };
        #[cfg(not(feature = "tracing"))]
        let outcome = {
            let _ = phase;
            self.run_action(i).await
        };
        let (outcome, duration) = guard.complete(outcome);
        #[cfg(feature = "tracing")]
        tracing::debug!(phase = phase.name(), %outcome, ?duration, "cleanup phase finished");
        (outcome, duration)
    }

    /// Runs phase `i`'s action, turning errors, panics and timeouts into its outcome.
    async fn run_action(&self, i: usize) -> PhaseOutcome {
        let f = match &self.actions[i].action {
            Action::Noop => return PhaseOutcome::Ok,
            Action::Sync(f) => {
                return match catch_unwind(AssertUnwindSafe(f)) {
                    Ok(Ok(())) => PhaseOutcome::Ok,
                    Ok(Err(error)) => PhaseOutcome::Failed(error.into()),
                    Err(payload) => PhaseOutcome::Panicked(panic_message(&*payload)),
                }
            }
            Action::Async(f) => f,
        };
        let future: PhaseFuture = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(future) => future,
            Err(payload) => return PhaseOutcome::Panicked(panic_message(&*payload)),
        };
        let Some(timeout) = self.timeouts[i] else {
            return match CatchUnwind(future).await {
                Ok(Ok(())) => PhaseOutcome::Ok,
                Ok(Err(error)) => PhaseOutcome::Failed(error.into()),
                Err(message) => PhaseOutcome::Panicked(message),
            };
        };
        // Creating the timer panics outside a Tokio runtime with time enabled.
        let timed = match catch_unwind(AssertUnwindSafe(|| {
            Box::pin(tokio::time::timeout(timeout, future))
        })) {
            Ok(timed) => timed,
            Err(payload) => return PhaseOutcome::Panicked(panic_message(&*payload)),
        };
        match CatchUnwind(timed).await {
            Ok(Ok(Ok(()))) => PhaseOutcome::Ok,
            Ok(Ok(Err(error))) => PhaseOutcome::Failed(error.into()),
            Ok(Err(_elapsed)) => PhaseOutcome::TimedOut(timeout),
            Err(message) => PhaseOutcome::Panicked(message),
        }
    }
}

impl<P: PhaseId> fmt::Debug for CleanupEngine<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Entry<'a>(&'a Phase, Option<Duration>, u8);
        impl fmt::Debug for Entry<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let state = match self.2 {
                    PENDING => "pending",
                    RUNNING => "running",
                    DONE => "done",
                    _ => "skipped",
                };
                write!(f, "{:?} {state}", self.0)?;
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
                &Entry(&self.actions[i], self.timeouts[i], self.slots[i].load()),
            );
        }
        map.finish()
    }
}
