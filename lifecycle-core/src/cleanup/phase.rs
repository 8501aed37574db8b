//! Phase identities ([`PhaseId`]) and phase actions ([`Phase`]).

use super::BoxError;
use core::fmt::{self, Debug, Display};
use core::future::Future;
use core::hash::Hash;
use core::pin::Pin;
use core::time::Duration;

/// Identifies the phases of one cleanup; implemented by the enums `#[cleanup_phases]`
/// generates (one variant per struct field), or by hand.
///
/// Contract (the engine asserts the first two when it is built):
/// - [`ALL`](Self::ALL) lists every phase once, in cleanup order;
/// - `ALL[p.index()] == p` for every phase `p`;
/// - [`name`](Self::name) is the phase's `snake_case` name (the struct field's name), and
///   `Display` writes the same name.
pub trait PhaseId: Copy + Eq + Hash + Debug + Display + Send + Sync + 'static {
    /// Every phase, in cleanup order.
    const ALL: &'static [Self];

    /// This phase's position in [`ALL`](Self::ALL).
    fn index(self) -> usize;

    /// This phase's `snake_case` name (`hotplug_stop`).
    fn name(self) -> &'static str;

    /// The timeout declared for this phase (`#[phase(timeout = "5s")]`), if any.
    ///
    /// An engine starts with these; [`CleanupEngine::with_timeout`] and
    /// [`CleanupEngine::set_timeout`] override them.
    ///
    /// [`CleanupEngine::with_timeout`]: super::CleanupEngine::with_timeout
    /// [`CleanupEngine::set_timeout`]: super::CleanupEngine::set_timeout
    fn default_timeout(self) -> Option<Duration>;
}

/// The future an asynchronous phase action returns, boxed.
pub(crate) type PhaseFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

type AsyncAction = Box<dyn Fn() -> PhaseFuture + Send + Sync>;
type SyncAction = Box<dyn Fn() -> Result<(), BoxError> + Send + Sync>;

/// How a phase acts.
pub(crate) enum Action {
    /// Calls the closure and awaits the future it returns.
    Async(AsyncAction),
    /// Calls the closure inline, in the poll of the engine's future.
    Sync(SyncAction),
    /// Does nothing; the outcome is `Ok`.
    Noop,
}

/// How a [`Phase`] was built, and so how the engine runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PhaseKind {
    /// [`Phase::new`]: an async closure whose future is awaited.
    Async,
    /// [`Phase::sync`]: a closure run inline.
    Sync,
    /// [`Phase::noop`]: nothing runs.
    Noop,
}

impl PhaseKind {
    /// `"async"`, `"sync"` or `"noop"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::Sync => "sync",
            Self::Noop => "noop",
        }
    }
}

impl Display for PhaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One phase's action: what the engine runs for that phase.
///
/// An action runs at most once per engine run-through, but again after
/// [`CleanupEngine::reset`](super::CleanupEngine::reset), so it is an `Fn` that builds a
/// fresh future each time.
///
/// ```
/// use lifecycle_core::cleanup::Phase;
///
/// let stop = Phase::new(|| async { Ok::<(), std::io::Error>(()) });
/// let close = Phase::sync(|| Ok::<(), std::io::Error>(()));
/// let unused = Phase::noop();
/// assert!(unused.is_noop() && !stop.is_noop() && !close.is_noop());
/// ```
pub struct Phase {
    pub(crate) action: Action,
}

impl Phase {
    /// An asynchronous phase: `f` is called once per run and the future it returns is
    /// awaited (and dropped, unfinished, if the phase times out or the run is cancelled).
    pub fn new<F, Fut, E>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let action: AsyncAction = Box::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        Self {
            action: Action::Async(action),
        }
    }

    /// A synchronous phase: `f` runs inline when the engine's future polls the phase.
    ///
    /// It blocks the polling thread while it runs, and a timeout cannot interrupt it, so
    /// keep it short (closing a file descriptor, flipping a flag).
    pub fn sync<F, E>(f: F) -> Self
    where
        F: Fn() -> Result<(), E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let action: SyncAction = Box::new(move || f().map_err(Into::into));
        Self {
            action: Action::Sync(action),
        }
    }

    /// An explicit "does not apply": the phase is still part of the order and its
    /// outcome is [`PhaseOutcome::Ok`](super::PhaseOutcome::Ok), but nothing runs.
    pub fn noop() -> Self {
        Self {
            action: Action::Noop,
        }
    }

    /// Whether this is [`Phase::noop`].
    pub fn is_noop(&self) -> bool {
        matches!(self.action, Action::Noop)
    }

    /// How this phase was built: [`Phase::new`], [`Phase::sync`] or [`Phase::noop`].
    pub fn kind(&self) -> PhaseKind {
        match self.action {
            Action::Async(_) => PhaseKind::Async,
            Action::Sync(_) => PhaseKind::Sync,
            Action::Noop => PhaseKind::Noop,
        }
    }
}

impl Debug for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Phase")
            .field(&format_args!("{}", self.kind()))
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn debug_names_the_kind() {
        assert_eq!(
            format!("{:?}", Phase::new(|| async { Ok::<(), BoxError>(()) })),
            "Phase(async)"
        );
        assert_eq!(
            format!("{:?}", Phase::sync(|| Ok::<(), BoxError>(()))),
            "Phase(sync)"
        );
        assert_eq!(format!("{:?}", Phase::noop()), "Phase(noop)");
    }

    #[test]
    fn kind_says_how_the_phase_was_built() {
        assert_eq!(
            Phase::new(|| async { Ok::<(), BoxError>(()) }).kind(),
            PhaseKind::Async
        );
        assert_eq!(
            Phase::sync(|| Ok::<(), BoxError>(())).kind(),
            PhaseKind::Sync
        );
        assert_eq!(Phase::noop().kind(), PhaseKind::Noop);
        assert_eq!(PhaseKind::Sync.to_string(), "sync");
    }

    #[test]
    fn only_noop_is_noop() {
        assert!(Phase::noop().is_noop());
        assert!(!Phase::sync(|| Ok::<(), BoxError>(())).is_noop());
        assert!(!Phase::new(|| async { Ok::<(), BoxError>(()) }).is_noop());
    }

    #[test]
    fn phase_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Phase>();
    }
}
