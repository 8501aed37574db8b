//! # lifecycle-macros
//!
//! Procedural macros behind `lifecycle-core`. Depend on `lifecycle-core`, which re-exports
//! them and provides the runtime they expand to. Each macro only hands its tokens to its
//! module's `expand` (parse → validate → expand, errors accumulated so one build shows them
//! all).

mod case;
mod cleanup_phases;
mod ctxt;
mod item;
mod options;
mod state_machine;

#[cfg(test)]
mod declarations;
#[cfg(test)]
mod snapshot_tests;

use proc_macro::TokenStream;

/// Turns a fieldless enum into a lock-free state machine.
///
/// # Declaration
///
/// ```text
/// #[state_machine(
///     machine = Name,              // optional; default `Atomic<Enum>`
///     crate = path,                // optional; default `::lifecycle_core`
///     transitions(
///         /// docs for try_name
///         name: Source => Target,  // one source: a single compare-exchange
///         name: A | B => Target,   // several sources
///         name: * => Target,       // any non-terminal state except Target
///     ),
/// )]
/// #[repr(u8)]                      // u8 (default), u16, u32 or u64
/// enum State { #[initial] A, B, #[terminal] C }
/// ```
///
/// Exactly one variant is `#[initial]`; `#[terminal]` states have no way out. Discriminants,
/// explicit (integer literals) or implied, are what the atomic stores.
///
/// `*` never includes the transition's own target: a machine already in `Target` refuses the
/// transition, so of several threads racing it exactly one wins. A self-loop written out
/// (`name: A => A`) is an error, as its compare-and-swap would report a change that did not
/// happen.
///
/// Derives may be written below the attribute (the macro derives only what is missing) or
/// above it: rustc hides a derive written above an attribute macro from the macro, so the
/// macro reads those from the source file. A derive above it inside `cfg_attr`, or on an item
/// another macro produced, is not seen: write it below.
///
/// # Generated
///
/// On the enum: derives of `Clone`, `Copy`, `PartialEq`, `Eq`, `Hash`, `Debug` (those not
/// already derived); `ALL`, `INITIAL`, `TRANSITIONS` (name, sources, target), `MERMAID`;
/// `const fn` `name`, `is_terminal`, `to_raw`, `from_raw`, `can_transition`; `Display` (the
/// `snake_case` name), `TryFrom<repr>`, `From<Enum> for repr` and
/// `lifecycle_core::LifecycleState`. No state may share a name with these items, and no
/// transition may be called `apply` (its `try_apply` would shadow `StateMachine::try_apply`).
///
/// The machine, `Machine<O = NoObserver>`: one atomic of the repr's width plus an observer
/// `O` (`lifecycle_core::TransitionObserver`; the default `NoObserver` is zero-sized, so
/// `size_of` is the repr's), `const fn new` and `Default` (unobserved), `const fn
/// with_observer(observer)`, `observer()`, `state`, `is_<state>` per state,
/// `try_<transition>` per transition (returns the state it left, or a `TransitionError` naming
/// the transition, its sources and target and the state observed; a success is
/// reported to the observer), `force` (unconditional swap, the escape hatch; reported to the
/// observer's `on_force`), `Debug` and `lifecycle_core::StateMachine` (whose `try_apply` takes
/// a table entry). Every method takes `&self`: there is no `reset`, `force(Enum::INITIAL)` goes
/// back to the start. With `lifecycle-core`'s `tracing` feature, each successful transition
/// emits a debug event (machine, transition, from, to).
///
/// Successful transitions and `force` are `AcqRel`; reads are `Acquire`: writes made before a
/// successful transition are visible to whoever observes the state it entered.
///
/// # Example
///
/// ```
/// use lifecycle_core::state_machine;
///
/// #[state_machine(machine = Door, transitions(
///     open: Closed | Ajar => Open,
///     close: Open => Closed,
///     nudge: Closed => Ajar,
///     remove: * => Removed,
/// ))]
/// #[repr(u16)]
/// enum DoorState { #[initial] Closed = 10, Ajar, Open, #[terminal] Removed }
///
/// let door = Door::new();
/// assert_eq!(std::mem::size_of::<Door>(), 2);
/// assert_eq!(door.try_nudge(), Ok(DoorState::Closed));
/// assert_eq!(door.try_open(), Ok(DoorState::Ajar));
/// assert_eq!(door.try_nudge().unwrap_err().observed(), DoorState::Open);
/// assert_eq!(DoorState::Open.to_raw(), 12);
/// assert_eq!(door.force(DoorState::Removed), DoorState::Open);
/// assert!(door.try_remove().is_err());
/// ```
#[proc_macro_attribute]
pub fn state_machine(args: TokenStream, input: TokenStream) -> TokenStream {
    state_machine::expand(args.into(), input.into()).into()
}

/// Turns a struct of phases into an ordered, at-most-once cleanup runner.
///
/// # Declaration
///
/// ```text
/// #[cleanup_phases(
///     phase = Name,          // optional; default `<Prefix>Phase` for `<Prefix>Phases`, else `<Struct>Phase`
///     orchestrator = Name,   // optional; default `<Prefix>Orchestrator` / `<Struct>Orchestrator`
///     crate = path,          // optional; default `::lifecycle_core`
/// )]
/// struct Phases {
///     first: Phase,                 // field order is cleanup order
///     #[phase(timeout = "1.5s")]    // optional per-phase timeout: a number and ms, s or m
///     second: Phase,
/// }
/// ```
///
/// Each option may be given once; a build reports every mistaken option at once (unknown,
/// repeated or malformed) and still applies the others. Timeouts are exact: `"250ms"`,
/// `"1.5s"`, `"0.25s"`, `"2m"`; zero, negative, finer than a nanosecond or too large for a
/// `Duration` is a compile error (leave the attribute out for no timeout).
///
/// Each field holds one `lifecycle_core::Phase`: `Phase::new(|| async { … })` for an async
/// action, `Phase::sync(|| …)` for a quick synchronous one, `Phase::noop()` for a phase that
/// does not apply. A struct literal must name every field, so no phase can be forgotten.
///
/// # Generated
///
/// The phase enum (one variant per field, `CamelCase`, ordered) with `ALL`, `COUNT`, `name()`
/// (the field's `snake_case` name), `index()`, `default_timeout()`, `Display` and
/// `lifecycle_core::PhaseId`; and the orchestrator, with:
///
/// - `new(phases)` (and `From<Struct>`): timeouts start as declared;
/// - `execute()`: runs every phase not yet run, in order; `execute_from(phase)`: the
///   recovery path, runs `phase` and the later ones, the earlier ones not yet run are
///   skipped and stay skipped until `reset`;
/// - `completed_phases()` (the phases that ran, whatever their outcome),
///   `skipped_phases()`, `is_complete()` (no phase left to run);
/// - `reset(&mut self)`: forget every outcome so the phases can run again (`&mut`, so it
///   can never race a run);
/// - `with_timeout(phase, d)`, `set_timeout(&mut self, phase, Option<d>)`,
///   `timeout(phase)`;
/// - `with_observer(observer)`, `set_observer(&mut self, Option<observer>)` (a
///   `lifecycle_core::PhaseObserver` that sees every phase start and finish);
/// - `engine()`: the `lifecycle_core::CleanupEngine` underneath, and `Debug`.
///
/// `CleanupEngine` documents the semantics: phases strictly in order, each at most once
/// until `reset`, a failing, panicking or timed-out phase recorded and the next one run,
/// concurrent runs sharing the work.
///
/// # Example
///
/// ```
/// use lifecycle_core::{cleanup_phases, Phase, PhaseOutcome};
/// use std::time::Duration;
///
/// #[cleanup_phases]
/// struct TeardownPhases {
///     stop_io: Phase,
///     #[phase(timeout = "50ms")]
///     stop_vm: Phase,
///     remove_files: Phase,
/// }
///
/// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// let orchestrator = TeardownOrchestrator::new(TeardownPhases {
///     stop_io: Phase::noop(),
///     stop_vm: Phase::new(|| async {
///         tokio::time::sleep(Duration::from_secs(60)).await; // a VM that will not stop
///         Ok::<(), std::io::Error>(())
///     }),
///     remove_files: Phase::sync(|| Err::<(), _>("permission denied")),
/// });
/// let report = rt.block_on(orchestrator.execute());
/// assert!(matches!(report.get(TeardownPhase::StopVm).outcome, PhaseOutcome::TimedOut(_)));
/// assert_eq!(report.failed_phases(), [TeardownPhase::StopVm, TeardownPhase::RemoveFiles]);
/// let error = report.into_result().unwrap_err();
/// assert!(error.to_string().contains("remove_files"));
/// // Every phase ran once; a second run runs nothing again.
/// assert!(orchestrator.is_complete());
/// ```
#[proc_macro_attribute]
pub fn cleanup_phases(args: TokenStream, input: TokenStream) -> TokenStream {
    cleanup_phases::expand(args.into(), input.into()).into()
}
