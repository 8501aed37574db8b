//! Observers: hooks that see every transition of a generated machine and every phase of a
//! cleanup run, for metrics, audit logs or progress output. Both are free when unused.
//!
//! - A [`TransitionObserver`] is carried by the machine itself: `#[state_machine]` makes the
//!   machine generic, `AtomicFoo<O = NoObserver>`, and [`NoObserver`]'s empty, always-inlined
//!   hooks leave `try_*` compiling to exactly the code of a machine without observers. Attach
//!   one with `AtomicFoo::with_observer(observer)`; `&T`, `Box<T>` and `Arc<T>` of an
//!   observer are observers too, so `Arc<dyn TransitionObserver<S> + Send + Sync>` works.
//! - A [`PhaseObserver`] is attached to a cleanup engine at run time
//!   ([`CleanupEngine::with_observer`](crate::CleanupEngine::with_observer), or the generated
//!   orchestrator's `with_observer`); without one, the engine only checks an `Option`.
//!
//! Observers add no synchronization of their own: they are called by the thread (or task)
//! that made the change, after the compare-and-swap that decided it.
//!
//! # Example
//!
//! ```
//! use lifecycle_core::observe::TransitionObserver;
//! use lifecycle_core::{state_machine, Transition};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Mutex;
//!
//! #[state_machine(transitions(
//!     boot: Created => Running,
//!     stop: Running => Stopped,
//! ))]
//! enum Vm {
//!     #[initial]
//!     Created,
//!     Running,
//!     #[terminal]
//!     Stopped,
//! }
//!
//! /// Counts transitions and keeps an audit line per transition.
//! #[derive(Default)]
//! struct Audit {
//!     count: AtomicUsize,
//!     lines: Mutex<Vec<String>>,
//! }
//!
//! impl TransitionObserver<Vm> for Audit {
//!     fn on_transition(&self, transition: &'static Transition<Vm>, from: Vm) {
//!         self.count.fetch_add(1, Ordering::Relaxed);
//!         let line = format!("{}: {from} -> {}", transition.name, transition.target);
//!         self.lines.lock().unwrap().push(line);
//!     }
//!
//!     fn on_force(&self, from: Vm, to: Vm) {
//!         self.lines.lock().unwrap().push(format!("forced: {from} -> {to}"));
//!     }
//! }
//!
//! let vm = AtomicVm::with_observer(Audit::default());
//! vm.try_boot().unwrap();
//! assert!(vm.try_boot().is_err()); // refused transitions are not reported
//! vm.force(Vm::Created);
//! vm.try_boot().unwrap();
//! vm.try_stop().unwrap();
//! assert_eq!(vm.observer().count.load(Ordering::Relaxed), 3);
//! assert_eq!(
//!     *vm.observer().lines.lock().unwrap(),
//!     [
//!         "boot: created -> running",
//!         "forced: running -> created",
//!         "boot: created -> running",
//!         "stop: running -> stopped",
//!     ]
//! );
//!
//! // Without an observer the machine is still one byte.
//! assert_eq!(std::mem::size_of::<AtomicVm>(), 1);
//! ```

use crate::cleanup::{PhaseId, PhaseKind, PhaseOutcome};
use crate::state::Transition;
use core::time::Duration;
use std::sync::Arc;

/// Sees every successful transition (and every `force`) of a generated machine.
///
/// The machine calls it after the compare-and-swap (or swap) that made the change, on the
/// thread that made it, with no lock held. Calls from different threads are not serialized:
/// two transitions made in quick succession by different threads may be reported in either
/// order, but each call's `from` and `transition.target` are exactly the change it reports,
/// and every successful transition is reported exactly once. Refused transitions are not
/// reported. Keep the hooks quick: they run inside `try_*`.
pub trait TransitionObserver<S: 'static> {
    /// Called after every successful `try_*` (once, by the thread whose compare-and-swap won),
    /// with the table entry and the state it left.
    fn on_transition(&self, transition: &'static Transition<S>, from: S);

    /// Called after `force` with the state it replaced and the state it set (default:
    /// nothing).
    fn on_force(&self, from: S, to: S) {
        let _ = (from, to);
    }
}

/// The observer of a machine nobody observes: a zero-sized type whose hooks are empty and
/// always inlined, so a machine carrying it is as small and as fast as one without hooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NoObserver;

// `inline(always)`: the empty hooks must vanish even from unoptimized callers' inlining
// decisions, so `try_*` on an unobserved machine is exactly the compare-and-swap.
#[allow(clippy::inline_always)]
impl<S: 'static> TransitionObserver<S> for NoObserver {
    #[inline(always)]
    fn on_transition(&self, _transition: &'static Transition<S>, _from: S) {}

    #[inline(always)]
    fn on_force(&self, _from: S, _to: S) {}
}

/// Implements [`TransitionObserver`] for a pointer type by forwarding to its pointee.
macro_rules! forward_transition_observer {
    ($($pointer:ty),*) => {$(
        impl<S: 'static, T: TransitionObserver<S> + ?Sized> TransitionObserver<S> for $pointer {
            #[inline]
            fn on_transition(&self, transition: &'static Transition<S>, from: S) {
                (**self).on_transition(transition, from);
            }

            #[inline]
            fn on_force(&self, from: S, to: S) {
                (**self).on_force(from, to);
            }
        }
    )*};
}

forward_transition_observer!(&T, Box<T>, Arc<T>);

/// Sees every phase of a cleanup engine start and reach its final outcome.
///
/// Attached with [`CleanupEngine::with_observer`](crate::CleanupEngine::with_observer) (or
/// the generated orchestrator's `with_observer` / `set_observer`). Each hook is called by the
/// run that claimed the phase, before the phase's outcome is published to other runs, so an
/// observer sees one phase at a time, in cleanup order: `phase_started` then
/// `phase_finished` for a phase that runs, `phase_finished` alone for a skipped one, and
/// never two phases at once, however many runs share the cleanup. A slow hook delays the
/// cleanup; a panicking one is caught and ignored (with a `tracing` warning when the feature
/// is on), and the engine carries on.
///
/// ```
/// use lifecycle_core::{cleanup_phases, Phase, PhaseKind, PhaseObserver, PhaseOutcome};
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// #[cleanup_phases]
/// struct TeardownPhases {
///     close_console: Phase,
///     stop_vm: Phase,
///     remove_dir: Phase,
/// }
///
/// /// Progress lines, as a CLI would print them.
/// #[derive(Default)]
/// struct Progress(Mutex<Vec<String>>);
///
/// impl PhaseObserver<TeardownPhase> for Progress {
///     fn phase_started(&self, phase: TeardownPhase, kind: PhaseKind) {
///         self.0.lock().unwrap().push(format!("{phase} ({kind}) …"));
///     }
///
///     fn phase_finished(&self, phase: TeardownPhase, _: PhaseKind, outcome: &PhaseOutcome, _: Duration) {
///         self.0.lock().unwrap().push(format!("{phase}: {outcome}"));
///     }
/// }
///
/// let progress = Arc::new(Progress::default());
/// let teardown = TeardownOrchestrator::new(TeardownPhases {
///     close_console: Phase::sync(|| Ok::<(), std::io::Error>(())),
///     stop_vm: Phase::new(|| async { Err::<(), _>("QMP socket gone") }),
///     remove_dir: Phase::noop(),
/// })
/// .with_observer(progress.clone());
///
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// rt.block_on(teardown.execute_from(TeardownPhase::StopVm));
/// rt.block_on(teardown.execute()); // everything is done: nothing more is reported
/// assert_eq!(
///     *progress.0.lock().unwrap(),
///     [
///         "close_console: skipped",
///         "stop_vm (async) …",
///         "stop_vm: failed: QMP socket gone",
///         "remove_dir (noop) …",
///         "remove_dir: ok",
///     ]
/// );
/// ```
pub trait PhaseObserver<P: PhaseId>: Send + Sync + 'static {
    /// The run that claimed `phase` is about to run it (every kind, noop included).
    fn phase_started(&self, phase: P, kind: PhaseKind) {
        let _ = (phase, kind);
    }

    /// `phase` reached its final outcome in the run that claimed it: `Ok`, `Failed`,
    /// `TimedOut`, `Panicked`, `Cancelled` (the claiming run was dropped mid-phase), or
    /// `Skipped` (claimed as skipped by `execute_from`; no `phase_started` before it).
    ///
    /// Called exactly once per phase over the engine's life between resets, never for
    /// [`PhaseOutcome::AlreadyDone`]. `duration` is the phase's, as in the report.
    fn phase_finished(
        &self,
        phase: P,
        kind: PhaseKind,
        outcome: &PhaseOutcome,
        duration: Duration,
    ) {
        let _ = (phase, kind, outcome, duration);
    }
}
