//! # lifecycle-macros
//!
//! Procedural macros behind `lifecycle-core`; depend on `lifecycle-core`, which re-exports
//! them and provides the runtime they expand to. Each macro only hands its tokens to its
//! module's `expand`.

mod case;
mod cleanup_phases;
mod ctxt;
mod state_machine;

#[cfg(test)]
mod snapshot_tests;

use proc_macro::TokenStream;

/// Turns a fieldless enum into a lock-free state machine. See `lifecycle_core` for the
/// syntax and the generated API.
#[proc_macro_attribute]
pub fn state_machine(args: TokenStream, input: TokenStream) -> TokenStream {
    state_machine::expand(args.into(), input.into()).into()
}

/// Turns a struct of phases into an ordered, at-most-once cleanup runner. See
/// `lifecycle_core` for the syntax and the generated API.
#[proc_macro_attribute]
pub fn cleanup_phases(args: TokenStream, input: TokenStream) -> TokenStream {
    cleanup_phases::expand(args.into(), input.into()).into()
}
