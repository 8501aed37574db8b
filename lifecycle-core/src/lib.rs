//! # lifecycle-core
//!
//! The runtime behind [`macro@state_machine`] and [`macro@cleanup_phases`], and the one crate a
//! user depends on: it re-exports both macros.
//!
//! - [`state`]: transition tables, [`TransitionError`], and the [`LifecycleState`] /
//!   [`StateMachine`] traits every generated machine implements.
//! - [`cleanup`]: the ordered, at-most-once cleanup engine behind `#[cleanup_phases]`.
//! - [`sync`]: the atomics and locks all of the above use; `--cfg loom` swaps them for loom's.

pub mod cleanup;
pub mod state;
pub mod sync;

pub use cleanup::{
    BoxError, CleanupEngine, CleanupError, CleanupReport, Phase, PhaseError, PhaseFailure, PhaseId,
    PhaseOutcome, PhaseReport,
};
pub use lifecycle_macros::{cleanup_phases, state_machine};
pub use state::{LifecycleState, StateMachine, Transition, TransitionError, UnknownStateError};

/// Items used by macro expansions. Not a public API: no stability guarantees.
#[doc(hidden)]
pub mod __private {
    pub use crate::sync::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
    pub use core::time::Duration;

    /// Emits the debug event of a successful transition when the `tracing` feature is on.
    #[inline(always)]
    #[allow(unused_variables)]
    pub fn trace_transition(machine: &'static str, transition: &'static str, from: &str, to: &str) {
        #[cfg(feature = "tracing")]
        tracing::debug!(machine, transition, from, to, "state transition");
    }

    /// Declares a `const fn` normally and a plain `fn` under `--cfg loom`, whose atomics
    /// have no `const` constructors.
    #[cfg(not(loom))]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __maybe_const_fn {
        ($(#[$meta:meta])* $vis:vis fn $($rest:tt)*) => { $(#[$meta])* $vis const fn $($rest)* };
    }

    /// Declares a `const fn` normally and a plain `fn` under `--cfg loom`, whose atomics
    /// have no `const` constructors.
    #[cfg(loom)]
    #[macro_export]
    #[doc(hidden)]
    macro_rules! __maybe_const_fn {
        ($(#[$meta:meta])* $vis:vis fn $($rest:tt)*) => { $(#[$meta])* $vis fn $($rest)* };
    }
    pub use crate::__maybe_const_fn as maybe_const_fn;
}
