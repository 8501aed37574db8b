//! The slot protocol: one phase's state word, its recorded outcome and its waiters.
//!
//! ```text
//! PENDING ──claim──▶ RUNNING ──publish(DONE)──▶ DONE        (outcome written first)
//!    │                  └─set WAITING─▶ RUNNING|WAITING ──publish──▶ DONE, wake the waiters
//!    └──────────claim──────────────────────────────────────▶ SKIPPED (outcome: `Skipped`)
//! ```
//!
//! Every transition is one read-modify-write of the slot's atomic: `claim` is a
//! compare-and-swap from `PENDING`, so exactly one caller claims each phase; `publish` is a
//! swap by that claimer; setting `WAITING` is a compare-and-swap that fails once the state is
//! final. Final states (`DONE`, `SKIPPED`) last until the engine's `reset(&mut self)`, which
//! builds fresh slots and so cannot overlap any access.
//!
//! The outcome needs no lock: only the claimer writes it, before it publishes `DONE` with a
//! release swap, and readers read it only after observing `DONE` with an acquire load.
//!
//! A caller that finds a phase `RUNNING` waits for it without any runtime primitive: under
//! the waker-list lock it registers its waker, then sets `WAITING` with a CAS that fails if
//! the phase became final meanwhile (then it is ready at once). The claimer publishes with a
//! swap; if the value it replaced had `WAITING`, it takes the lock — which the waiter held
//! while registering — and wakes everyone. Both sides are read-modify-writes of one atomic,
//! so one is ordered first: either the claimer sees `WAITING` and wakes the registered
//! waker, or the waiter's CAS sees the final state. No wake-up is lost, and a phase nobody
//! waits for never touches the lock.

use super::PhaseOutcome;
use crate::sync::{lock, AtomicU8, Mutex, Ordering, UnsafeCell};
use core::future::Future;
use core::task::{Poll, Waker};
use core::time::Duration;

/// A slot's state word: one of four states, plus the `WAITING` flag on `RUNNING`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct State(u8);

impl State {
    /// Not claimed yet.
    pub(super) const PENDING: Self = Self(0);
    /// Claimed by a caller that is running it.
    pub(super) const RUNNING: Self = Self(1);
    /// Final: ran (or was cancelled); the outcome is recorded in the slot.
    pub(super) const DONE: Self = Self(2);
    /// Final: skipped by an `execute_from` that started after it.
    pub(super) const SKIPPED: Self = Self(3);
    /// Set on `RUNNING` once a caller waits for the phase: the claimer must wake it.
    const WAITING: u8 = 4;

    /// The state, without the `WAITING` flag.
    const fn from_word(word: u8) -> Self {
        Self(word & !Self::WAITING)
    }

    /// Whether callers wait on the phase (the `WAITING` flag of a raw word).
    const fn has_waiters(word: u8) -> bool {
        word & Self::WAITING != 0
    }

    /// Whether the phase is over for good (until `reset`): `DONE` or `SKIPPED`.
    pub(super) const fn is_final(self) -> bool {
        self.0 == Self::DONE.0 || self.0 == Self::SKIPPED.0
    }

    /// `"pending"`, `"running"`, `"done"` or `"skipped"`.
    pub(super) const fn name(self) -> &'static str {
        match self.0 {
            0 => "pending",
            1 => "running",
            2 => "done",
            _ => "skipped",
        }
    }
}

/// The bookkeeping of one phase.
pub(super) struct Slot {
    /// A [`State`] word, possibly with the `WAITING` flag.
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
// observed `DONE`; and it is written again only after `reset(&mut self)` replaced the slot,
// which excludes all other access. So no write is ever concurrent with another access.
// `PhaseOutcome` itself is `Send + Sync`.
unsafe impl Sync for Slot {}

impl Slot {
    pub(super) fn new() -> Self {
        Self {
            state: AtomicU8::new(State::PENDING.0),
            outcome: UnsafeCell::new(None),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// The current state.
    pub(super) fn load(&self) -> State {
        // Acquire: observing DONE makes the claimer's outcome write visible (see `recorded`).
        State::from_word(self.state.load(Ordering::Acquire))
    }

    /// Claims the phase (`PENDING → to`); false if another caller claimed it first.
    #[must_use = "only the caller whose claim succeeded may run or skip the phase"]
    pub(super) fn claim(&self, to: State) -> bool {
        // AcqRel on success: the claim is ordered after every earlier phase was observed
        // final by this caller. Acquire on failure: the caller then looks at what won.
        self.state
            .compare_exchange(State::PENDING.0, to.0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The outcome recorded by the run that ran the phase. Call only after observing `DONE`.
    pub(super) fn recorded(&self) -> (PhaseOutcome, Duration) {
        // SAFETY: the caller observed `DONE` (acquire), so the claimer's write happened
        // before this read, and nothing writes the cell again until `reset(&mut self)`.
        let recorded = self.outcome.with(|p| unsafe { (*p).clone() });
        debug_assert!(recorded.is_some(), "a DONE phase has a recorded outcome");
        // Unreachable fallback: the outcome is always written before DONE is published.
        recorded.unwrap_or((PhaseOutcome::Cancelled, Duration::ZERO))
    }

    /// Records the outcome, publishes `DONE` and wakes the waiters, if any. Called once, by
    /// the phase's claimer.
    pub(super) fn finish(&self, outcome: PhaseOutcome, duration: Duration) {
        // SAFETY: only the claimer calls `finish`, once, while the phase is RUNNING; no one
        // reads the cell before observing the DONE published below.
        self.outcome
            .with_mut(|p| unsafe { *p = Some((outcome, duration)) });
        self.publish(State::DONE);
    }

    /// Moves the phase from `RUNNING` to the final state `to` and wakes the waiters, if any.
    /// Called once, by the phase's claimer.
    pub(super) fn publish(&self, to: State) {
        debug_assert!(to.is_final());
        // Release publishes the outcome; Acquire pairs with the waiter's CAS that set
        // WAITING, so its registered waker is in the list we lock below.
        let previous = self.state.swap(to.0, Ordering::AcqRel);
        if State::has_waiters(previous) {
            let waiters = core::mem::take(&mut *lock(&self.waiters));
            for waker in waiters {
                waker.wake();
            }
        }
    }

    /// Resolves once the phase is final.
    pub(super) fn wait_final(&self) -> impl Future<Output = ()> + Send + '_ {
        core::future::poll_fn(move |cx| {
            if self.load().is_final() {
                return Poll::Ready(());
            }
            let mut waiters = lock(&self.waiters);
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            // Announce the waker: set WAITING unless the phase became final meanwhile. The
            // claimer's swap and this CAS are ordered on one atomic: either it sees WAITING
            // (and wakes us after taking the lock we hold), or this CAS sees the final state.
            let mut current = self.state.load(Ordering::Acquire);
            loop {
                if State::from_word(current).is_final() {
                    return Poll::Ready(());
                }
                if State::has_waiters(current) {
                    return Poll::Pending;
                }
                // AcqRel: Release orders our waker registration (under the lock) before the
                // flag; Acquire on failure sees a final state's outcome.
                match self.state.compare_exchange_weak(
                    current,
                    current | State::WAITING,
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{Slot, State};
    use crate::cleanup::PhaseOutcome;
    use core::time::Duration;

    #[test]
    fn only_done_and_skipped_are_final() {
        assert!(!State::PENDING.is_final());
        assert!(!State::RUNNING.is_final());
        assert!(State::DONE.is_final());
        assert!(State::SKIPPED.is_final());
        assert!(!State::from_word(State::RUNNING.0 | State::WAITING).is_final());
        assert_eq!(
            State::from_word(State::RUNNING.0 | State::WAITING),
            State::RUNNING
        );
    }

    #[test]
    fn one_claim_wins() {
        let slot = Slot::new();
        assert!(slot.claim(State::RUNNING));
        assert!(!slot.claim(State::RUNNING));
        assert!(!slot.claim(State::SKIPPED));
        assert_eq!(slot.load(), State::RUNNING);
        slot.finish(PhaseOutcome::Ok, Duration::from_millis(3));
        assert_eq!(slot.load(), State::DONE);
        assert!(matches!(slot.recorded(), (PhaseOutcome::Ok, d) if d == Duration::from_millis(3)));
    }

    #[test]
    fn names() {
        let names = [State::PENDING, State::RUNNING, State::DONE, State::SKIPPED].map(State::name);
        assert_eq!(names, ["pending", "running", "done", "skipped"]);
    }
}
