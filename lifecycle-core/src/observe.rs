//! Observers: hooks that see every transition of a generated machine, for metrics, audit
//! logs or progress output, free when unused.
//!
//! A [`TransitionObserver`] is carried by the machine itself: `#[state_machine]` makes the
//! machine generic, `AtomicFoo<O = NoObserver>`, and [`NoObserver`]'s empty, always-inlined
//! hooks leave `try_*` compiling to exactly the code of a machine without observers. Attach
//! one with `AtomicFoo::with_observer(observer)`; `&T`, `Box<T>` and `Arc<T>` of an observer
//! are observers too, so `Arc<dyn TransitionObserver<S> + Send + Sync>` works.
//!
//! Observers add no synchronization of their own: they are called by the thread that made
//! the change, after the compare-and-swap that decided it.
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

use crate::state::Transition;
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
