//! # lifecycle-core
//!
//! The runtime behind [`macro@state_machine`] and [`macro@cleanup_phases`], and the one crate a
//! user depends on: it re-exports both macros.
//!
//! - [`state`]: transition tables, [`TransitionError`], and the [`LifecycleState`] /
//!   [`StateMachine`] traits every generated machine implements.
//! - [`cleanup`]: the ordered, at-most-once cleanup engine behind `#[cleanup_phases]`.
//! - [`observe`]: observers of transitions ([`TransitionObserver`]) and of cleanup phases
//!   ([`PhaseObserver`]), free when unused.
//!
//! Every atomic and lock comes from one internal module, so building with
//! `RUSTFLAGS="--cfg loom"` model-checks all of them with [loom](https://docs.rs/loom).
//!
//! # Example
//!
//! A lifecycle declared as a transition table, and its teardown declared as ordered phases:
//!
//! ```
//! use lifecycle_core::{cleanup_phases, state_machine, Phase};
//! use std::sync::Arc;
//!
//! #[state_machine(transitions(
//!     /// Boot the sandbox.
//!     boot: Created => Running,
//!     pause: Running => Paused,
//!     resume: Paused => Running,
//!     stop: Running | Paused => Stopped,
//!     crash: * => Stopped,
//! ))]
//! enum Sandbox {
//!     #[initial]
//!     Created,
//!     Running,
//!     Paused,
//!     #[terminal]
//!     Stopped,
//! }
//!
//! #[cleanup_phases]
//! struct TeardownPhases {
//!     close_console: Phase,
//!     #[phase(timeout = "2s")]
//!     stop_vmm: Phase,
//!     remove_dir: Phase,
//! }
//!
//! // One byte, shared by every thread through `&self`.
//! let sandbox = Arc::new(AtomicSandbox::new());
//! assert_eq!(sandbox.try_boot(), Ok(Sandbox::Created));
//! let racer = {
//!     let sandbox = Arc::clone(&sandbox);
//!     std::thread::spawn(move || sandbox.try_pause().is_ok())
//! };
//! let paused = racer.join().unwrap();
//! // `stop` accepts either live state, and moves straight from it to Stopped.
//! let from = sandbox.try_stop().unwrap();
//! assert_eq!(from, if paused { Sandbox::Paused } else { Sandbox::Running });
//! assert!(sandbox.is_stopped() && Sandbox::Stopped.is_terminal());
//! // A refused transition says what it expected and what it saw.
//! let refused = sandbox.try_resume().unwrap_err();
//! assert_eq!(refused.observed(), Sandbox::Stopped);
//!
//! let teardown = TeardownOrchestrator::new(TeardownPhases {
//!     close_console: Phase::sync(|| Ok::<(), std::io::Error>(())),
//!     stop_vmm: Phase::new(|| async { Ok::<(), std::io::Error>(()) }),
//!     remove_dir: Phase::noop(),
//! });
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
//! let report = rt.block_on(teardown.execute());
//! assert!(!report.has_errors());
//! assert_eq!(teardown.completed_phases(), TeardownPhase::ALL);
//! ```

mod cas;
pub mod cleanup;
pub mod observe;
pub mod state;
mod sync;

pub use cleanup::{
    BoxError, CleanupEngine, CleanupError, CleanupReport, Phase, PhaseError, PhaseFailure, PhaseId,
    PhaseKind, PhaseOutcome, PhaseReport,
};
pub use lifecycle_macros::{cleanup_phases, state_machine};
pub use observe::{NoObserver, PhaseObserver, TransitionObserver};
pub use state::{LifecycleState, StateMachine, Transition, TransitionError, UnknownStateError};

/// Items used by macro expansions. Not a public API: no stability guarantees.
#[doc(hidden)]
pub mod __private {
    pub use crate::cas::{refused, RawAtomic, Step};
    pub use crate::sync::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
    pub use core::time::Duration;

    /// Emits the debug event of a successful transition when the `tracing` feature is on.
    ///
    /// Inlined, it is only the level check (with no subscriber, or DEBUG off, one relaxed
    /// load): the event itself is built out of line, so its code does not make every `try_*`
    /// too large to inline. It takes the states, not their names, so the names are looked up
    /// only for an enabled event.
    #[inline]
    #[allow(unused_variables)]
    pub fn trace_transition<S: crate::LifecycleState>(
        machine: &'static str,
        transition: &'static str,
        from: S,
        to: S,
    ) {
        #[cfg(feature = "tracing")]
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            emit_transition(machine, transition, from.name(), to.name());
        }
    }

    #[cfg(feature = "tracing")]
    #[cold]
    #[inline(never)]
    fn emit_transition(
        machine: &'static str,
        transition: &'static str,
        from: &'static str,
        to: &'static str,
    ) {
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
