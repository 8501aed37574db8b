//! The compare-and-swap behind every generated `try_*` method.
//!
//! Generated methods call [`Step::from_one`] (one source) or [`Step::from_any_of`] (several
//! sources, or `*`), so each expansion is one call and the memory orderings are chosen and
//! explained here, once. Both are `#[inline]` generics, instantiated in the user's crate:
//! after inlining, a `try_*` is the same compare-exchange a hand-written machine would do.
//! A refused transition builds its error in [`refused`], which is `#[cold]` and never
//! inlined, so the error's construction stays out of the success path's code.

use crate::observe::TransitionObserver;
use crate::state::{LifecycleState, Transition, TransitionError};
use crate::sync::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// The atomic integer a machine stores its state in (one per supported `repr`).
pub trait RawAtomic {
    /// The integer stored.
    type Raw: Copy + Eq;

    /// An `Acquire` load: the writes published by the transition that stored the value are
    /// visible to the caller.
    fn load_acquire(&self) -> Self::Raw;

    /// A strong compare-exchange, `AcqRel` on success and `Acquire` on failure.
    ///
    /// On success, `Release` publishes the caller's writes to whoever later observes `new`
    /// (or any later state), and `Acquire` makes visible the writes published by the
    /// transition that stored `current`. On failure, `Acquire` does the same for the state
    /// observed, so a refused caller may act on what that state's writer published.
    fn compare_exchange_acq_rel(
        &self,
        current: Self::Raw,
        new: Self::Raw,
    ) -> Result<Self::Raw, Self::Raw>;

    /// [`compare_exchange_acq_rel`](Self::compare_exchange_acq_rel), allowed to fail
    /// spuriously: for retry loops, where a spurious failure costs one more turn.
    fn compare_exchange_weak_acq_rel(
        &self,
        current: Self::Raw,
        new: Self::Raw,
    ) -> Result<Self::Raw, Self::Raw>;
}

macro_rules! raw_atomic {
    ($($atomic:ident => $raw:ty),*) => {$(
        impl RawAtomic for $atomic {
            type Raw = $raw;

            #[inline]
            fn load_acquire(&self) -> $raw {
                self.load(Ordering::Acquire)
            }

            #[inline]
            fn compare_exchange_acq_rel(&self, current: $raw, new: $raw) -> Result<$raw, $raw> {
                self.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            }

            #[inline]
            fn compare_exchange_weak_acq_rel(
                &self,
                current: $raw,
                new: $raw,
            ) -> Result<$raw, $raw> {
                self.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
            }
        }
    )*};
}

raw_atomic!(AtomicU8 => u8, AtomicU16 => u16, AtomicU32 => u32, AtomicU64 => u64);

/// One generated transition's constants: the machine's name (for tracing), the table entry,
/// and the target's discriminant.
pub struct Step<S: 'static, R> {
    /// The machine type's name.
    pub machine: &'static str,
    /// The transition's entry in the state enum's `TRANSITIONS`.
    pub transition: &'static Transition<S>,
    /// `transition.target`'s discriminant.
    pub target: R,
}

/// The methods are `#[inline(always)]`: with the `tracing` feature the event's callsite makes
/// them too large for the inliner's taste, and the resulting call per transition measured
/// 2.3 times the hand-written compare-exchange.
impl<S: LifecycleState> Step<S, S::Raw> {
    /// A transition with one source: a single strong compare-exchange from `source` (whose
    /// state is `from`) to the target. A strong one, because a spurious failure would
    /// refuse a transition the machine allowed.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn from_one<A, O>(
        self,
        atomic: &A,
        source: S::Raw,
        from: S,
        observer: &O,
    ) -> Result<S, TransitionError<S>>
    where
        A: RawAtomic<Raw = S::Raw>,
        O: TransitionObserver<S>,
    {
        match atomic.compare_exchange_acq_rel(source, self.target) {
            Ok(_) => {
                self.entered(from, observer);
                Ok(from)
            }
            Err(seen) => Err(refused(self.transition, seen)),
        }
    }

    /// A transition with several sources (or `*`): a load, then a compare-exchange from
    /// exactly the value read while that value is a source (`is_source` tells the sources'
    /// discriminants). The machine moves straight from the observed source to the
    /// target, never through another state; a weak compare-exchange suffices, as a failure
    /// (spurious or not) re-reads the state and tries again.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn from_any_of<A, O>(
        self,
        atomic: &A,
        is_source: impl Fn(S::Raw) -> bool,
        observer: &O,
    ) -> Result<S, TransitionError<S>>
    where
        A: RawAtomic<Raw = S::Raw>,
        O: TransitionObserver<S>,
    {
        let mut current = atomic.load_acquire();
        let from = loop {
            if !is_source(current) {
                return Err(refused(self.transition, current));
            }
            match atomic.compare_exchange_weak_acq_rel(current, self.target) {
                Ok(_) => break decode(current),
                Err(actual) => current = actual,
            }
        };
        self.entered(from, observer);
        Ok(from)
    }

    /// After the compare-and-swap that won, on the winning thread: the `tracing` event (if
    /// the feature is on), then the observer. With `NoObserver` both are empty and inlined
    /// away, leaving the compare-and-swap alone.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn entered<O: TransitionObserver<S>>(&self, from: S, observer: &O) {
        crate::__private::trace_transition(
            self.machine,
            self.transition.name,
            from,
            self.transition.target,
        );
        observer.on_transition(self.transition, from);
    }
}

/// The state whose discriminant the machine held. Only values the machine stored reach it,
/// so the error arm never runs (and, cold, stays out of the way).
#[inline]
fn decode<S: LifecycleState>(raw: S::Raw) -> S {
    match S::from_raw(raw) {
        Ok(state) => state,
        Err(unknown) => unknown_state(unknown),
    }
}

#[cold]
#[inline(never)]
fn unknown_state(unknown: crate::UnknownStateError) -> ! {
    unreachable!("the machine's atomic is private and only ever stores `to_raw` values: {unknown}")
}

/// The error of a refused transition: `observed` is the discriminant the failed
/// compare-exchange (or the load) saw.
#[cold]
#[inline(never)]
pub fn refused<S: LifecycleState>(
    transition: &'static Transition<S>,
    observed: S::Raw,
) -> TransitionError<S> {
    TransitionError::new(transition, decode(observed))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::state::LifecycleState;

    // Inside lifecycle-core, so `crate = crate`: these tests build with and without the
    // `tracing` feature, the configurations `cargo test -p lifecycle-core` and
    // `cargo test -p lifecycle-core --features tracing` check.
    #[lifecycle_macros::state_machine(crate = crate, transitions(
        start: Idle => Running,
        stop: Running | Paused => Stopped,
        pause: Running => Paused,
        fail: * => Failed,
    ))]
    #[repr(u16)]
    enum Job {
        #[initial]
        Idle = 300,
        Running,
        Paused,
        Failed,
        #[terminal]
        Stopped,
    }

    #[test]
    fn one_source() {
        let job = AtomicJob::new();
        assert_eq!(job.try_start(), Ok(Job::Idle));
        let refused = job.try_start().unwrap_err();
        assert_eq!(refused.observed(), Job::Running);
        assert_eq!(refused.transition(), &Job::TRANSITIONS[0]);
        assert!(job.is_running());
    }

    #[test]
    fn several_sources() {
        let job = AtomicJob::new();
        assert_eq!(job.try_stop().unwrap_err().observed(), Job::Idle);
        job.try_start().unwrap();
        job.try_pause().unwrap();
        assert_eq!(job.try_stop(), Ok(Job::Paused));
        assert_eq!(job.try_stop().unwrap_err().observed(), Job::Stopped);
    }

    #[test]
    fn any_excludes_its_target() {
        assert!(!Job::TRANSITIONS[3].allows(Job::Failed));
        assert!(!Job::can_transition(Job::Failed, Job::Failed));
        let job = AtomicJob::new();
        assert_eq!(job.try_fail(), Ok(Job::Idle));
        // A second racer does not "win" against a machine that already failed.
        let refused = job.try_fail().unwrap_err();
        assert_eq!(refused.observed(), Job::Failed);
        assert_eq!(
            refused.to_string(),
            "transition `fail` to `failed` refused: machine is `failed`, expected any non-terminal state but `failed`"
        );
        // `Failed` is not terminal, yet `*` leaves it out: `*` never includes its own target.
        assert!(!Job::Failed.is_terminal());
        assert_eq!(<Job as LifecycleState>::TRANSITIONS.len(), 4);
    }

    // Derives written above the attribute: rustc expands them on the item as written and
    // hides them from the macro, which finds them in the source and leaves those traits out.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
    #[lifecycle_macros::state_machine(crate = crate, transitions(open: Shut => Open))]
    enum Door {
        #[initial]
        Shut,
        #[terminal]
        Open,
    }

    #[test]
    fn derives_above_the_attribute() {
        let door = AtomicDoor::new();
        assert_eq!(door.try_open(), Ok(Door::Shut));
        assert!(Door::Shut < Door::Open);
        assert_eq!(format!("{:?}", door.state()), "Open");
    }

    #[test]
    fn contended_single_winner() {
        let job = AtomicJob::new();
        job.try_start().unwrap();
        let winners: usize = std::thread::scope(|s| {
            let racers: Vec<_> = (0..4).map(|_| s.spawn(|| job.try_fail().is_ok())).collect();
            racers
                .into_iter()
                .map(|r| usize::from(r.join().unwrap()))
                .sum()
        });
        assert_eq!(winners, 1);
    }
}
