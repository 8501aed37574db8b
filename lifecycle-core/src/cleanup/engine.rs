//! The engine: runs the phases in order, at most once each, shared by concurrent callers.
//!
//! # Design
//!
//! Each phase has a slot: an atomic state, the recorded outcome, and the wakers of callers
//! waiting for it behind a mutex (all from [`crate::sync`], so `--cfg loom` model-checks
//! them).
//!
//! ```text
//! PENDING ──CAS──▶ RUNNING ──swap(AcqRel)──▶ DONE      (outcome written first)
//!    │               └─CAS─▶ RUNNING|WAITING ─swap─▶ DONE, then wake the waiters
//!    └──────────────CAS──────────────────────────▶ SKIPPED   (outcome is always `Skipped`)
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
//! The outcome needs no lock: only the claimer writes it, before it publishes `DONE` with a
//! release swap, and readers read it only after observing `DONE` with an acquire load; no one
//! writes it again until `reset(&mut self)`.
//!
//! A caller that finds a phase `RUNNING` waits for it without any runtime primitive: under
//! the waker-list lock it registers its waker, then sets the `WAITING` bit with a CAS that
//! fails if the phase has become final meanwhile (then it is ready at once). The runner
//! publishes `DONE` with a swap; if the value it replaced had `WAITING`, it takes the lock —
//! which the waiter held while registering — and wakes everyone. Both sides are
//! read-modify-writes of one atomic, so one is ordered first: either the runner sees
//! `WAITING` and wakes the registered waker, or the waiter's CAS sees `DONE`. No wake-up is
//! lost, and a phase nobody waits for never touches the lock. If the runner's future is
//! dropped mid-phase, a drop guard records [`PhaseOutcome::Cancelled`] the same way, so
//! nobody waits forever.
//!
//! A [`PhaseObserver`] is called by the claimer while the phase is still `RUNNING`, before the
//! outcome is published, so its calls are ordered like the phases themselves. A phase skipped
//! while an observer is attached goes `PENDING → RUNNING → SKIPPED` for the same reason (the
//! observer is told in between); without one it is claimed `SKIPPED` directly.

use super::phase::{Action, PhaseFuture};
use super::{CleanupReport, Phase, PhaseId, PhaseKind, PhaseOutcome, PhaseReport};
use crate::observe::PhaseObserver;
use crate::sync::{lock, AtomicU8, Mutex, Ordering, UnsafeCell};
use core::fmt;
use core::future::Future;
use core::marker::PhantomData;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

/// Not claimed yet.
const PENDING: u8 = 0;
/// Claimed by a caller that is running it.
const RUNNING: u8 = 1;
/// Final: ran (or was cancelled); the outcome is recorded in the slot.
const DONE: u8 = 2;
/// Final: skipped by an `execute_from` that started after it.
const SKIPPED: u8 = 3;
/// Set on `RUNNING` once a caller waits for the phase: the runner must wake it.
const WAITING: u8 = 4;

fn is_final(state: u8) -> bool {
    state == DONE || state == SKIPPED
}

/// The bookkeeping of one phase.
struct Slot {
    /// `PENDING`, `RUNNING` (possibly with `WAITING`), `DONE` or `SKIPPED`.
    state: AtomicU8,
    /// The outcome and duration of the run that ran the phase; written by its claimer before
    /// `DONE` is published, read only after `DONE` is observed.
    outcome: UnsafeCell<Option<(PhaseOutcome, Duration)>>,
    /// Wakers of callers waiting for the phase to become final.
    waiters: Mutex<Vec<Waker>>,
}

// SAFETY: `outcome` is the only field that is not `Sync` by itself. It is written only by the
// one caller whose compare-and-swap claimed the phase (`PENDING → RUNNING`), before that
// caller publishes `DONE` with a release swap; it is read only after an acquire load has
// observed `DONE`; and it is written again only by `reset(&mut self)`, which excludes all
// other access. So no write is ever concurrent with another access. `PhaseOutcome` itself is
// `Send + Sync`.
unsafe impl Sync for Slot {}

impl Slot {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(PENDING),
            outcome: UnsafeCell::new(None),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// The state, without the `WAITING` bit.
    fn load(&self) -> u8 {
        self.state.load(Ordering::Acquire) & !WAITING
    }

    fn claim(&self, to: u8) -> bool {
        self.state
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The outcome recorded by the run that ran the phase. Call only after observing `DONE`.
    fn recorded(&self) -> (PhaseOutcome, Duration) {
        // SAFETY: the caller observed `DONE` (acquire), so the claimer's write happened
        // before this read, and nothing writes the cell again until `reset(&mut self)`.
        let recorded = self.outcome.with(|p| unsafe { (*p).clone() });
        debug_assert!(recorded.is_some(), "a DONE phase has a recorded outcome");
        // Unreachable fallback: the outcome is always written before DONE is published.
        recorded.unwrap_or((PhaseOutcome::Cancelled, Duration::ZERO))
    }

    /// Records the outcome, publishes `DONE` and wakes the waiters, if any. Called once, by
    /// the phase's claimer.
    fn finish(&self, outcome: PhaseOutcome, duration: Duration) {
        // SAFETY: only the claimer calls `finish`, once, while the phase is RUNNING; no one
        // reads the cell before observing the DONE published below.
        self.outcome
            .with_mut(|p| unsafe { *p = Some((outcome, duration)) });
        self.publish(DONE);
    }

    /// Moves the phase from `RUNNING` to the final state `to` and wakes the waiters, if any.
    /// Called once, by the phase's claimer.
    fn publish(&self, to: u8) {
        // Release publishes the outcome; Acquire pairs with the waiter's CAS that set
        // WAITING, so its registered waker is in the list we lock below.
        let previous = self.state.swap(to, Ordering::AcqRel);
        if previous & WAITING != 0 {
            let waiters = core::mem::take(&mut *lock(&self.waiters));
            for waker in waiters {
                waker.wake();
            }
        }
    }

    /// Resolves once the phase is final.
    fn wait_final(&self) -> impl Future<Output = ()> + Send + '_ {
        core::future::poll_fn(move |cx| {
            if is_final(self.load()) {
                return Poll::Ready(());
            }
            let mut waiters = lock(&self.waiters);
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            // Announce the waker: set WAITING unless the phase became final meanwhile. The
            // runner's swap and this CAS are ordered on one atomic: either it sees WAITING
            // (and wakes us after taking the lock we hold), or this CAS sees the final state.
            let mut current = self.state.load(Ordering::Acquire);
            loop {
                if is_final(current) {
                    return Poll::Ready(());
                }
                if current & WAITING != 0 {
                    return Poll::Pending;
                }
                match self.state.compare_exchange_weak(
                    current,
                    current | WAITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Poll::Pending,
                    Err(actual) => current = actual,
                }
            }
        })
    }
}

/// Calls one hook of a [`PhaseObserver`]. A panic in it is caught (and logged with the
/// `tracing` feature), so the engine still publishes the phase and its waiters go on.
fn notify<P: PhaseId>(phase: P, hook: &'static str, call: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(call)) {
        #[cfg(feature = "tracing")]
        tracing::warn!(
            phase = phase.name(),
            hook,
            panic = %panic_message(&*payload),
            "phase observer panicked; ignored"
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (phase, hook, payload);
    }
}

/// Tells the observer, if any, that `phase` reached its final outcome.
fn report_finished<P: PhaseId>(
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

/// Records [`PhaseOutcome::Cancelled`] (and reports it to the observer) if the run is dropped
/// while it is running a phase.
struct RunGuard<'a, P: PhaseId> {
    slot: &'a Slot,
    start: Instant,
    armed: bool,
    observer: Option<&'a dyn PhaseObserver<P>>,
    phase: P,
    kind: PhaseKind,
}

impl<P: PhaseId> RunGuard<'_, P> {
    /// Reports and records the phase's outcome and disarms the guard; returns the outcome
    /// with its duration and the instant it ended.
    fn complete(mut self, outcome: PhaseOutcome) -> (PhaseOutcome, Duration, Instant) {
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
    actions: Vec<Phase>,
    timeouts: Vec<Option<Duration>>,
    slots: Box<[Slot]>,
    observer: Option<Arc<dyn PhaseObserver<P>>>,
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
    /// Timeouts and the observer are kept.
    pub fn reset(&mut self) {
        // Fresh slots: `&mut self` means no run can be looking at the old ones.
        self.slots = P::ALL.iter().map(|_| Slot::new()).collect();
    }

    async fn run_from(&self, from: usize) -> CleanupReport<P> {
        let started = Instant::now();
        // When this call last saw the clock: a phase it runs starts when the previous one
        // ended, so each phase costs one clock read, not two.
        let mut mark = started;
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
                    RUNNING => {
                        slot.wait_final().await;
                        mark = Instant::now();
                    }
                    _ => {
                        // PENDING. Every earlier phase is final: this loop left each of them
                        // only once it was, and final states last until `reset(&mut self)`.
                        // So claiming phase `i` here keeps the order invariant.
                        if i < from {
                            if self.claim_skipped(i, phase, slot) {
                                break (PhaseOutcome::Skipped, Duration::ZERO);
                            }
                        } else if slot.claim(RUNNING) {
                            let (outcome, duration, end) =
                                self.run_claimed(i, phase, slot, mark).await;
                            mark = end;
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
        let report = CleanupReport::new(reports, mark.duration_since(started));
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
            return slot.claim(SKIPPED);
        };
        // Through RUNNING, so the observer hears of the skip before any call moves past it.
        if !slot.claim(RUNNING) {
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
        slot.publish(SKIPPED);
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
            slot.finish(PhaseOutcome::Ok, Duration::ZERO);
            return (PhaseOutcome::Ok, Duration::ZERO, start);
        }
        let guard = RunGuard {
            slot,
            start,
            armed: true,
            observer,
            phase,
            kind,
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::test_phases::{TestError, T};
    use super::super::{BoxError, CleanupReport, Phase, PhaseId, PhaseOutcome};
    use super::CleanupEngine;
    use core::future::Future;
    use core::pin::pin;
    use core::task::{Context, Poll, Waker};
    use core::time::Duration;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::sync::Notify;

    /// What a test phase does when it runs.
    #[derive(Debug, Clone, Copy)]
    enum Act {
        Ok,
        Fail,
        /// `tokio::task::yield_now()` mid-way, then Ok.
        Yield,
        /// Sleeps this many milliseconds mid-way, then Ok.
        Sleep(u64),
        Panic,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Event {
        Start(T),
        End(T),
    }

    /// Counts each phase's runs and logs every start and end.
    #[derive(Default)]
    struct Probe {
        runs: [AtomicUsize; 7],
        log: Mutex<Vec<Event>>,
    }

    impl Probe {
        fn new() -> Arc<Self> {
            Arc::new(Self::default())
        }

        fn record(&self, event: Event) {
            self.log.lock().unwrap().push(event);
        }

        fn phase(self: &Arc<Self>, phase: T, act: Act) -> Phase {
            let probe = Arc::clone(self);
            Phase::new(move || {
                let probe = Arc::clone(&probe);
                async move {
                    probe.runs[phase.index()].fetch_add(1, Ordering::SeqCst);
                    probe.record(Event::Start(phase));
                    match act {
                        Act::Ok | Act::Fail => {}
                        Act::Yield => tokio::task::yield_now().await,
                        Act::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                        Act::Panic => panic!("boom in {phase}"),
                    }
                    probe.record(Event::End(phase));
                    match act {
                        Act::Fail => Err(TestError(phase.name())),
                        _ => Ok(()),
                    }
                }
            })
        }

        fn engine(self: &Arc<Self>, acts: [Act; 7]) -> CleanupEngine<T> {
            CleanupEngine::new(
                T::ALL
                    .iter()
                    .zip(acts)
                    .map(|(&phase, act)| self.phase(phase, act))
                    .collect(),
            )
        }

        fn runs(&self) -> Vec<usize> {
            self.runs.iter().map(|r| r.load(Ordering::SeqCst)).collect()
        }

        fn log(&self) -> Vec<Event> {
            self.log.lock().unwrap().clone()
        }

        /// The log is `Start(a), End(a), Start(b), End(b), …` with `a < b < …`: no two phases
        /// overlapped and they ran in order. Returns the phases that ran.
        fn assert_sequential(&self) -> Vec<T> {
            let log = self.log();
            assert_eq!(log.len() % 2, 0, "unfinished phase in {log:?}");
            let mut ran = Vec::new();
            for pair in log.chunks(2) {
                let (Event::Start(a), Event::End(b)) = (pair[0], pair[1]) else {
                    panic!("phases overlapped: {log:?}");
                };
                assert_eq!(a, b, "phases overlapped: {log:?}");
                if let Some(&last) = ran.last() {
                    assert!(a.index() > T::index(last), "out of order: {log:?}");
                }
                ran.push(a);
            }
            ran
        }
    }

    fn outcome(report: &CleanupReport<T>, phase: T) -> &PhaseOutcome {
        &report.get(phase).outcome
    }

    fn is_already_done(outcome: &PhaseOutcome, inner: fn(&PhaseOutcome) -> bool) -> bool {
        matches!(outcome, PhaseOutcome::AlreadyDone(o) if inner(o))
    }

    fn ok(o: &PhaseOutcome) -> bool {
        matches!(o, PhaseOutcome::Ok)
    }

    fn failed(o: &PhaseOutcome) -> bool {
        matches!(o, PhaseOutcome::Failed(_))
    }

    fn skipped(o: &PhaseOutcome) -> bool {
        matches!(o, PhaseOutcome::Skipped)
    }

    fn cancelled(o: &PhaseOutcome) -> bool {
        matches!(o, PhaseOutcome::Cancelled)
    }

    const ALL_OK: [Act; 7] = [Act::Ok; 7];

    #[tokio::test]
    async fn runs_every_phase_once_in_order() {
        let probe = Probe::new();
        let engine = probe.engine(ALL_OK);
        let report = engine.execute().await;
        assert_eq!(probe.assert_sequential(), T::ALL);
        assert_eq!(probe.runs(), [1; 7]);
        assert_eq!(report.phases().len(), 7);
        for (entry, &phase) in report.phases().iter().zip(T::ALL) {
            assert_eq!(entry.phase, phase);
            assert!(ok(&entry.outcome), "{report}");
        }
        assert!(!report.has_errors());
        assert!(engine.is_complete());
    }

    #[tokio::test]
    async fn continues_after_errors_and_collects_them_all() {
        let probe = Probe::new();
        let mut acts = ALL_OK;
        acts[0] = Act::Fail;
        acts[3] = Act::Fail;
        acts[6] = Act::Fail;
        let report = probe.engine(acts).execute().await;
        assert_eq!(probe.assert_sequential(), T::ALL);
        assert_eq!(probe.runs(), [1; 7]);
        assert!(report.has_errors());
        assert_eq!(
            report.failed_phases(),
            [T::HotplugStop, T::VmShutdown, T::EventClose]
        );
        let PhaseOutcome::Failed(failure) = outcome(&report, T::VmShutdown) else {
            panic!("{report}");
        };
        assert_eq!(failure.to_string(), "vm_shutdown");
        assert!(ok(outcome(&report, T::MountCleanup)));
    }

    #[tokio::test]
    async fn second_run_reruns_nothing_and_reports_already_done() {
        let probe = Probe::new();
        let mut acts = ALL_OK;
        acts[2] = Act::Fail;
        acts[4] = Act::Sleep(2);
        let engine = probe.engine(acts);
        let first = engine.execute().await;
        let second = engine.execute().await;
        assert_eq!(probe.runs(), [1; 7]);
        for (a, b) in first.phases().iter().zip(second.phases()) {
            let PhaseOutcome::AlreadyDone(inner) = &b.outcome else {
                panic!("{second}");
            };
            assert_eq!(inner.to_string(), a.outcome.to_string());
            assert_eq!(
                a.duration, b.duration,
                "AlreadyDone keeps the original duration"
            );
        }
        assert!(second.get(T::NetworkCleanup).duration >= Duration::from_millis(2));
        assert_eq!(second.failed_phases(), [T::ConnClose]);
        // A third run from a later phase also runs nothing.
        let third = engine.execute_from(T::MountCleanup).await;
        assert_eq!(probe.runs(), [1; 7]);
        assert!(third
            .phases()
            .iter()
            .all(|r| matches!(r.outcome, PhaseOutcome::AlreadyDone(_))));
    }

    #[tokio::test]
    async fn noop_phases_are_ok_and_run_nothing() {
        let probe = Probe::new();
        let actions = T::ALL
            .iter()
            .map(|&p| {
                if p.index() % 2 == 0 {
                    Phase::noop()
                } else {
                    probe.phase(p, Act::Ok)
                }
            })
            .collect();
        let report = CleanupEngine::<T>::new(actions).execute().await;
        assert_eq!(probe.runs(), [0, 1, 0, 1, 0, 1, 0]);
        assert_eq!(
            probe.assert_sequential(),
            [T::IoShutdown, T::VmShutdown, T::MountCleanup]
        );
        assert!(report.phases().iter().all(|r| ok(&r.outcome)));
        assert_eq!(report.get(T::HotplugStop).duration, Duration::ZERO);
    }

    #[tokio::test]
    async fn sync_phases_run_inline_and_convert_errors() {
        let calls = Arc::new(AtomicUsize::new(0));
        let actions = T::ALL
            .iter()
            .map(|&p| {
                let calls = Arc::clone(&calls);
                Phase::sync(move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    match p {
                        T::IoShutdown => Err("plain str error".into()),
                        T::MountCleanup => Err(BoxError::from(format!("umount {p}"))),
                        _ => Ok(()),
                    }
                })
            })
            .collect();
        let report = CleanupEngine::<T>::new(actions).execute().await;
        assert_eq!(calls.load(Ordering::SeqCst), 7);
        assert_eq!(report.failed_phases(), [T::IoShutdown, T::MountCleanup]);
        assert_eq!(
            outcome(&report, T::MountCleanup).to_string(),
            "failed: umount mount_cleanup"
        );
    }

    #[tokio::test]
    async fn execute_from_skips_earlier_phases_and_runs_later_ones() {
        let probe = Probe::new();
        let engine = probe.engine(ALL_OK);
        let report = engine.execute_from(T::VmShutdown).await;
        assert_eq!(probe.runs(), [0, 0, 0, 1, 1, 1, 1]);
        assert_eq!(probe.assert_sequential(), &T::ALL[3..]);
        for &p in &T::ALL[..3] {
            assert!(skipped(outcome(&report, p)), "{report}");
        }
        for &p in &T::ALL[3..] {
            assert!(ok(outcome(&report, p)), "{report}");
        }
        assert!(!report.has_errors(), "skipping is not an error");
        assert!(engine.is_complete());

        // A later full run can never run an earlier phase after a later one ran.
        let again = engine.execute().await;
        assert_eq!(probe.runs(), [0, 0, 0, 1, 1, 1, 1]);
        assert!(is_already_done(outcome(&again, T::HotplugStop), skipped));
        assert!(is_already_done(outcome(&again, T::EventClose), ok));
    }

    #[tokio::test]
    async fn execute_from_after_partial_failure_recovers_the_rest() {
        let probe = Probe::new();
        let engine = probe.engine(ALL_OK);
        let first = engine.execute_from(T::NetworkCleanup).await;
        assert_eq!(first.failed_phases(), []);
        let from_start = engine.execute_from(T::HotplugStop).await;
        assert_eq!(probe.runs(), [0, 0, 0, 0, 1, 1, 1]);
        assert!(is_already_done(
            outcome(&from_start, T::IoShutdown),
            skipped
        ));
    }

    #[tokio::test]
    async fn reset_runs_everything_again() {
        let probe = Probe::new();
        let mut engine = probe
            .engine(ALL_OK)
            .with_timeout(T::ConnClose, Duration::from_secs(9));
        let _ = engine.execute_from(T::ConnClose).await;
        assert!(engine.is_complete());
        engine.reset();
        assert!(engine.completed_phases().is_empty());
        assert!(!engine.is_complete());
        assert_eq!(engine.timeout(T::ConnClose), Some(Duration::from_secs(9)));
        let report = engine.execute().await;
        assert_eq!(probe.runs(), [1, 1, 2, 2, 2, 2, 2]);
        assert!(report.phases().iter().all(|r| ok(&r.outcome)), "{report}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completed_phases_tracks_progress() {
        let started = Arc::new(Notify::new());
        let gate = Arc::new(Notify::new());
        let actions = T::ALL
            .iter()
            .map(|&p| {
                let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
                Phase::new(move || {
                    let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
                    async move {
                        if p == T::ConnClose {
                            started.notify_one();
                            gate.notified().await;
                        }
                        Ok::<(), TestError>(())
                    }
                })
            })
            .collect();
        let engine = Arc::new(CleanupEngine::<T>::new(actions));
        assert!(engine.completed_phases().is_empty());
        let run = tokio::spawn({
            let engine = Arc::clone(&engine);
            async move { engine.execute().await }
        });
        started.notified().await;
        assert_eq!(engine.completed_phases(), [T::HotplugStop, T::IoShutdown]);
        assert!(!engine.is_complete());
        gate.notify_one();
        let report = run.await.unwrap();
        assert!(!report.has_errors());
        assert_eq!(engine.completed_phases(), T::ALL);
        assert!(engine.is_complete());
    }

    #[tokio::test]
    async fn combined_error_names_every_failed_phase() {
        let probe = Probe::new();
        let mut acts = ALL_OK;
        acts[3] = Act::Fail;
        let mut actions: Vec<Phase> = T::ALL
            .iter()
            .zip(acts)
            .map(|(&p, act)| probe.phase(p, act))
            .collect();
        actions[5] = Phase::new(core::future::pending::<Result<(), TestError>>);
        let engine = CleanupEngine::<T>::new(actions)
            .with_timeout(T::MountCleanup, Duration::from_millis(20));
        let err = engine.execute().await.into_result().unwrap_err();
        assert_eq!(
            err.to_string(),
            "cleanup failed in 2 of 7 phases: vm_shutdown (failed), \
             mount_cleanup (timed out after 20ms)"
        );
        let source = std::error::Error::source(&err).expect("first cause");
        assert!(source.is::<TestError>());
        assert_eq!(source.to_string(), "vm_shutdown");
        let failures = err.failures();
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0].phase(), T::VmShutdown);
        assert!(std::error::Error::source(&failures[0])
            .unwrap()
            .is::<TestError>());
        assert_eq!(failures[1].phase(), T::MountCleanup);
        assert!(matches!(
            failures[1].outcome(),
            PhaseOutcome::TimedOut(d) if *d == Duration::from_millis(20)
        ));
        assert_eq!(err.report().phases().len(), 7);
        // Every phase after the failures still ran.
        assert_eq!(probe.runs(), [1, 1, 1, 1, 1, 0, 1]);
    }

    #[tokio::test]
    async fn panicking_phases_are_recorded_and_next_phase_runs() {
        let probe = Probe::new();
        let mut actions: Vec<Phase> = T::ALL
            .iter()
            .map(|&p| {
                probe.phase(
                    p,
                    if p == T::IoShutdown {
                        Act::Panic
                    } else {
                        Act::Ok
                    },
                )
            })
            .collect();
        actions[4] = Phase::sync(|| -> Result<(), TestError> { panic!("sync boom") });
        actions[5] = Phase::new(|| -> core::future::Ready<Result<(), TestError>> {
            panic!("{}", String::from("panicked building the future"))
        });
        let report = CleanupEngine::<T>::new(actions).execute().await;
        assert_eq!(
            report.failed_phases(),
            [T::IoShutdown, T::NetworkCleanup, T::MountCleanup]
        );
        let texts: Vec<String> = report
            .failed_phases()
            .iter()
            .map(|&p| outcome(&report, p).to_string())
            .collect();
        assert_eq!(
            texts,
            [
                "panicked: boom in io_shutdown",
                "panicked: sync boom",
                "panicked: panicked building the future"
            ]
        );
        assert_eq!(probe.runs(), [1, 1, 1, 1, 0, 0, 1]);
        assert!(ok(outcome(&report, T::EventClose)));
    }

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A phase that never finishes, signals `started` when it begins and sets `dropped`
    /// when its future is dropped.
    fn hanging(started: &Arc<Notify>, dropped: &Arc<AtomicBool>) -> Phase {
        let (started, dropped) = (Arc::clone(started), Arc::clone(dropped));
        Phase::new(move || {
            let flag = DropFlag(Arc::clone(&dropped));
            let started = Arc::clone(&started);
            async move {
                let _flag = flag;
                started.notify_one();
                core::future::pending::<Result<(), TestError>>().await
            }
        })
    }

    #[tokio::test]
    async fn hung_phase_times_out_is_dropped_and_next_phase_runs() {
        let probe = Probe::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let mut actions: Vec<Phase> = T::ALL.iter().map(|&p| probe.phase(p, Act::Ok)).collect();
        actions[2] = hanging(&Arc::new(Notify::new()), &dropped);
        let engine =
            CleanupEngine::<T>::new(actions).with_timeout(T::ConnClose, Duration::from_millis(30));
        let report = engine.execute().await;
        let entry = report.get(T::ConnClose);
        assert!(
            matches!(entry.outcome, PhaseOutcome::TimedOut(d) if d == Duration::from_millis(30)),
            "{report}"
        );
        assert!(entry.duration >= Duration::from_millis(30));
        assert!(
            dropped.load(Ordering::SeqCst),
            "abandoned future is dropped"
        );
        assert_eq!(probe.runs(), [1, 1, 0, 1, 1, 1, 1]);
        assert_eq!(report.failed_phases(), [T::ConnClose]);
    }

    #[tokio::test]
    async fn phase_within_its_timeout_is_ok() {
        let probe = Probe::new();
        let mut acts = ALL_OK;
        acts[1] = Act::Sleep(1);
        let engine = probe
            .engine(acts)
            .with_timeout(T::IoShutdown, Duration::from_secs(10));
        let report = engine.execute().await;
        assert!(ok(outcome(&report, T::IoShutdown)), "{report}");
    }

    #[test]
    fn timeouts_start_at_defaults_and_can_be_overridden() {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        enum Two {
            A,
            B,
        }
        impl PhaseId for Two {
            const ALL: &'static [Self] = &[Two::A, Two::B];
            fn index(self) -> usize {
                self as usize
            }
            fn name(self) -> &'static str {
                match self {
                    Two::A => "a",
                    Two::B => "b",
                }
            }
            fn default_timeout(self) -> Option<Duration> {
                (self == Two::A).then_some(Duration::from_secs(5))
            }
        }
        impl core::fmt::Display for Two {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
        let mut engine = CleanupEngine::<Two>::new(vec![Phase::noop(), Phase::noop()]);
        assert_eq!(engine.timeout(Two::A), Some(Duration::from_secs(5)));
        assert_eq!(engine.timeout(Two::B), None);
        engine = engine.with_timeout(Two::B, Duration::from_millis(7));
        assert_eq!(engine.timeout(Two::B), Some(Duration::from_millis(7)));
        engine.set_timeout(Two::A, None);
        assert_eq!(engine.timeout(Two::A), None);
    }

    #[tokio::test]
    async fn dropped_caller_records_cancelled_and_waiter_does_not_hang() {
        let probe = Probe::new();
        let started = Arc::new(Notify::new());
        let dropped = Arc::new(AtomicBool::new(false));
        let mut actions: Vec<Phase> = T::ALL.iter().map(|&p| probe.phase(p, Act::Ok)).collect();
        actions[2] = hanging(&started, &dropped);
        let engine = CleanupEngine::<T>::new(actions);

        // The first caller claims conn_close, which hangs; it is dropped after 20ms. The
        // second caller starts once conn_close is running, and waits for it.
        let (first, second) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(20), engine.execute()),
            async {
                started.notified().await;
                tokio::time::timeout(Duration::from_secs(5), engine.execute()).await
            },
        );
        assert!(first.is_err(), "first caller was dropped mid-phase");
        let report = second.expect("the waiter must not hang");
        assert!(dropped.load(Ordering::SeqCst));
        assert!(
            is_already_done(outcome(&report, T::ConnClose), cancelled),
            "{report}"
        );
        assert!(is_already_done(outcome(&report, T::IoShutdown), ok));
        for &p in &T::ALL[3..] {
            assert!(
                ok(outcome(&report, p)),
                "the waiter runs the rest: {report}"
            );
        }
        assert_eq!(report.failed_phases(), [T::ConnClose]);
        assert_eq!(probe.runs(), [1, 1, 0, 1, 1, 1, 1]);
        assert!(engine.is_complete());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aborted_task_records_cancelled_and_spawned_waiter_finishes() {
        let started = Arc::new(Notify::new());
        let dropped = Arc::new(AtomicBool::new(false));
        let probe = Probe::new();
        let mut actions: Vec<Phase> = T::ALL.iter().map(|&p| probe.phase(p, Act::Yield)).collect();
        actions[4] = hanging(&started, &dropped);
        let engine = Arc::new(CleanupEngine::<T>::new(actions));
        let spawn = |engine: &Arc<CleanupEngine<T>>| {
            let engine = Arc::clone(engine);
            tokio::spawn(async move { engine.execute().await })
        };
        let runner = spawn(&engine);
        started.notified().await;
        let waiter = spawn(&engine);
        tokio::time::sleep(Duration::from_millis(20)).await;
        runner.abort();
        assert!(runner.await.unwrap_err().is_cancelled());
        let report = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter must not hang")
            .unwrap();
        assert!(dropped.load(Ordering::SeqCst));
        assert!(is_already_done(
            outcome(&report, T::NetworkCleanup),
            cancelled
        ));
        assert_eq!(report.failed_phases(), [T::NetworkCleanup]);
        assert_eq!(probe.runs(), [1, 1, 1, 1, 0, 1, 1]);
    }

    /// `n` concurrent `execute` calls, `rounds` times, on phases that yield and sleep.
    async fn concurrent_executes(n: usize, rounds: usize) {
        let acts = [
            Act::Yield,
            Act::Fail,
            Act::Sleep(1),
            Act::Yield,
            Act::Fail,
            Act::Ok,
            Act::Sleep(1),
        ];
        for _ in 0..rounds {
            let probe = Probe::new();
            let engine = Arc::new(probe.engine(acts));
            let calls: Vec<_> = (0..n)
                .map(|_| {
                    let engine = Arc::clone(&engine);
                    tokio::spawn(async move { engine.execute().await })
                })
                .collect();
            let mut reports = Vec::new();
            for call in calls {
                reports.push(call.await.unwrap());
            }
            assert_eq!(probe.runs(), [1; 7], "each phase ran exactly once");
            assert_eq!(
                probe.assert_sequential(),
                T::ALL,
                "in order, never overlapping"
            );
            for report in &reports {
                assert_eq!(report.phases().len(), 7);
                assert_eq!(
                    report.failed_phases(),
                    [T::IoShutdown, T::NetworkCleanup],
                    "every caller sees every failure: {report}"
                );
                for (entry, &phase) in report.phases().iter().zip(T::ALL) {
                    assert_eq!(entry.phase, phase);
                }
            }
            for &phase in T::ALL {
                let runners = reports
                    .iter()
                    .filter(|r| !matches!(outcome(r, phase), PhaseOutcome::AlreadyDone(_)))
                    .count();
                assert_eq!(runners, 1, "exactly one caller ran {phase}");
                for r in &reports {
                    assert!(
                        failed(outcome(r, phase))
                            || ok(outcome(r, phase))
                            || is_already_done(outcome(r, phase), ok)
                            || is_already_done(outcome(r, phase), failed),
                        "{r}"
                    );
                }
            }
            assert!(engine.is_complete());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_concurrent_executes_run_each_phase_exactly_once() {
        concurrent_executes(2, 30).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_concurrent_executes_run_each_phase_exactly_once() {
        concurrent_executes(8, 30).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn execute_from_racing_execute_keeps_order() {
        for _ in 0..50 {
            let probe = Probe::new();
            let engine = Arc::new(probe.engine([Act::Yield; 7]));
            let from = {
                let engine = Arc::clone(&engine);
                tokio::spawn(async move { engine.execute_from(T::VmShutdown).await })
            };
            let all = {
                let engine = Arc::clone(&engine);
                tokio::spawn(async move { engine.execute().await })
            };
            let (from, all) = (from.await.unwrap(), all.await.unwrap());
            probe.assert_sequential();
            let runs = probe.runs();
            assert_eq!(&runs[3..], [1; 4]);
            for &phase in T::ALL {
                let outcomes = [outcome(&from, phase), outcome(&all, phase)];
                let own: Vec<_> = outcomes
                    .iter()
                    .filter(|o| !matches!(o, PhaseOutcome::AlreadyDone(_)))
                    .collect();
                assert_eq!(own.len(), 1, "{phase} claimed once: {from}\n{all}");
                if skipped(own[0]) {
                    assert!(phase.index() < 3);
                    assert_eq!(runs[phase.index()], 0);
                } else {
                    assert!(ok(own[0]));
                    assert_eq!(runs[phase.index()], 1);
                }
            }
            assert!(!from.has_errors() && !all.has_errors());
        }
    }

    /// A minimal executor (thread parking), to show the engine needs no Tokio runtime.
    fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            std::thread::park();
        }
    }

    /// Yields once: wakes itself and returns `Pending`.
    struct YieldOnce(bool);

    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: core::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    #[test]
    fn runs_without_a_tokio_runtime_across_threads() {
        for _ in 0..20 {
            let runs: Arc<[AtomicUsize; 7]> = Arc::default();
            let actions = T::ALL
                .iter()
                .map(|&p| {
                    let runs = Arc::clone(&runs);
                    Phase::new(move || {
                        runs[p.index()].fetch_add(1, Ordering::SeqCst);
                        async move {
                            YieldOnce(false).await;
                            std::thread::sleep(Duration::from_micros(200));
                            YieldOnce(false).await;
                            Ok::<(), TestError>(())
                        }
                    })
                })
                .collect();
            let engine = Arc::new(CleanupEngine::<T>::new(actions));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let engine = Arc::clone(&engine);
                    std::thread::spawn(move || block_on(engine.execute()))
                })
                .collect();
            for thread in threads {
                let report = thread.join().unwrap();
                assert_eq!(report.phases().len(), 7);
                assert!(!report.has_errors(), "{report}");
            }
            let runs: Vec<usize> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
            assert_eq!(runs, [1; 7]);
        }
    }

    #[test]
    fn timeout_outside_tokio_is_recorded_not_propagated() {
        let actions = T::ALL
            .iter()
            .map(|_| Phase::new(|| async { Ok::<(), TestError>(()) }))
            .collect();
        let engine =
            CleanupEngine::<T>::new(actions).with_timeout(T::IoShutdown, Duration::from_secs(1));
        let report = block_on(engine.execute());
        assert!(
            matches!(outcome(&report, T::IoShutdown), PhaseOutcome::Panicked(_)),
            "{report}"
        );
        assert_eq!(report.failed_phases(), [T::IoShutdown]);
    }

    #[test]
    fn engine_is_send_and_sync_and_its_futures_are_send() {
        fn assert_send_sync<X: Send + Sync>(_: &X) {}
        fn assert_send<X: Send>(_: &X) {}
        let engine = CleanupEngine::<T>::new((0..7).map(|_| Phase::noop()).collect());
        assert_send_sync(&engine);
        assert_send(&engine.execute());
        assert_send(&engine.execute_from(T::ConnClose));
    }

    #[test]
    #[should_panic(expected = "got 6 phase actions for 7 phases")]
    fn new_rejects_a_wrong_number_of_actions() {
        let _ = CleanupEngine::<T>::new((0..6).map(|_| Phase::noop()).collect());
    }

    #[test]
    fn debug_shows_each_phase_state() {
        let engine = CleanupEngine::<T>::new((0..7).map(|_| Phase::noop()).collect())
            .with_timeout(T::VmShutdown, Duration::from_secs(3));
        let _ = block_on(engine.execute_from(T::IoShutdown));
        let text = format!("{engine:?}");
        assert!(text.contains("hotplug_stop: Phase(noop) skipped"), "{text}");
        assert!(
            text.contains("vm_shutdown: Phase(noop) done timeout=3s"),
            "{text}"
        );
    }

    #[test]
    fn distinct_phases_in_reports() {
        let engine = CleanupEngine::<T>::new((0..7).map(|_| Phase::noop()).collect());
        let report = block_on(engine.execute());
        let phases: HashSet<T> = report.phases().iter().map(|r| r.phase).collect();
        assert_eq!(phases.len(), 7);
    }
}

/// Model checks of concurrent runs (`RUSTFLAGS="--cfg loom" cargo test --release -p
/// lifecycle-core --lib loom`): every interleaving of the engine's atomics and locks, within a
/// preemption bound, keeps each phase run exactly once and in order, and wakes waiters.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::super::{Phase, PhaseId, PhaseOutcome};
    use super::CleanupEngine;
    use core::future::Future;
    use core::pin::Pin;
    use core::task::{Context, Poll, Waker};
    use core::time::Duration;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum L {
        A,
        B,
    }

    impl PhaseId for L {
        const ALL: &'static [Self] = &[L::A, L::B];
        fn index(self) -> usize {
            self as usize
        }
        fn name(self) -> &'static str {
            match self {
                L::A => "a",
                L::B => "b",
            }
        }
        fn default_timeout(self) -> Option<Duration> {
            None
        }
    }

    impl core::fmt::Display for L {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.name())
        }
    }

    /// Yields once, so another thread can observe the phase `RUNNING` and wait on it.
    struct YieldOnce(bool);

    impl Future for YieldOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    type Log = Arc<Mutex<Vec<L>>>;

    fn engine(log: &Log) -> CleanupEngine<L> {
        let yielding = {
            let log = Arc::clone(log);
            Phase::new(move || {
                let log = Arc::clone(&log);
                async move {
                    YieldOnce(false).await;
                    log.lock().unwrap().push(L::A);
                    Err::<(), _>("a failed")
                }
            })
        };
        let inline = {
            let log = Arc::clone(log);
            Phase::sync(move || {
                log.lock().unwrap().push(L::B);
                Ok::<(), &'static str>(())
            })
        };
        CleanupEngine::new(vec![yielding, inline])
    }

    /// Drives `future` on the current loom thread, parking between polls; a lost wake-up
    /// leaves it parked forever, which loom reports as a deadlock. (`loom::future::block_on`
    /// needs loom's `futures` feature, which this crate does not enable.)
    fn block_on<F: Future>(future: F) -> F::Output {
        struct Unpark(loom::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(loom::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = core::pin::pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            loom::thread::park();
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    #[test]
    fn loom_two_executes_run_each_phase_once_in_order() {
        model(|| {
            let log = Log::default();
            let engine = Arc::new(engine(&log));
            let other = {
                let engine = Arc::clone(&engine);
                loom::thread::spawn(move || block_on(engine.execute()))
            };
            let mine = block_on(engine.execute());
            let theirs = other.join().unwrap();
            assert_eq!(*log.lock().unwrap(), [L::A, L::B]);
            for report in [&mine, &theirs] {
                assert_eq!(report.failed_phases(), [L::A]);
            }
            for &phase in L::ALL {
                let runners = [&mine, &theirs]
                    .iter()
                    .filter(|r| !matches!(r.get(phase).outcome, PhaseOutcome::AlreadyDone(_)))
                    .count();
                assert_eq!(runners, 1);
            }
            assert!(engine.is_complete());
        });
    }

    #[test]
    fn loom_execute_from_racing_execute() {
        model(|| {
            let log = Log::default();
            let engine = Arc::new(engine(&log));
            let other = {
                let engine = Arc::clone(&engine);
                loom::thread::spawn(move || block_on(engine.execute_from(L::B)))
            };
            let all = block_on(engine.execute());
            let from = other.join().unwrap();
            let ran = log.lock().unwrap().clone();
            assert!(ran == [L::A, L::B] || ran == [L::B], "{ran:?}");
            let skipped = matches!(from.get(L::A).outcome, PhaseOutcome::Skipped);
            assert_eq!(skipped, ran == [L::B]);
            let claims = AtomicUsize::new(0);
            for report in [&all, &from] {
                if !matches!(report.get(L::B).outcome, PhaseOutcome::AlreadyDone(_)) {
                    claims.fetch_add(1, Ordering::Relaxed);
                }
            }
            assert_eq!(claims.load(Ordering::Relaxed), 1);
            assert!(engine.is_complete());
        });
    }
}
