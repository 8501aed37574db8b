//! `#[cleanup_phases]`: parse ([`attr`], [`ast`]) → expand ([`expand`]).

mod ast;
mod attr;
mod expand;

use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

/// Default names: `CleanupPhases` → `CleanupPhase` / `CleanupOrchestrator`; any other
/// `Foo` → `FooPhase` / `FooOrchestrator`.
fn default_names(strukt: &Ident) -> (Ident, Ident) {
    let text = strukt.to_string();
    match text.strip_suffix("Phases") {
        Some(prefix) if !prefix.is_empty() => (
            format_ident!("{prefix}Phase"),
            format_ident!("{prefix}Orchestrator"),
        ),
        _ => (
            format_ident!("{text}Phase"),
            format_ident!("{text}Orchestrator"),
        ),
    }
}

/// Expands `#[cleanup_phases(args)] item`; on error, the item as written plus the errors.
#[allow(clippy::needless_pass_by_value)] // the proc-macro entry point hands over owned streams
pub fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = match crate::item::parse(&input) {
        Ok(item) => item,
        Err(tokens) => return tokens,
    };
    let syn::Item::Struct(item) = item else {
        return crate::item::wrong_kind(
            &item,
            &input,
            "`#[cleanup_phases]` applies to a struct with named fields, one per phase",
        );
    };
    let mut cx = Ctxt::default();
    let args = attr::parse_args(&mut cx, args);
    let phases = ast::phases(&mut cx, &item);
    let (default_phase, default_orchestrator) = default_names(&item.ident);
    let phase_enum = args.phase.unwrap_or(default_phase);
    let orchestrator = args.orchestrator.unwrap_or(default_orchestrator);
    for generated in [&phase_enum, &orchestrator] {
        if *generated == item.ident {
            cx.error_spanned_by(
                generated,
                format!("the generated type `{generated}` would collide with the struct of the same name"),
            );
        }
    }
    if phase_enum == orchestrator {
        cx.error_spanned_by(
            &orchestrator,
            format!("the orchestrator and the phase enum would both be named `{orchestrator}`"),
        );
    }
    if !cx.is_ok() {
        let stripped = expand::strip_helpers(&item);
        let errors = cx.into_compile_errors();
        return quote!(#stripped #errors);
    }
    let krate = args
        .krate
        .unwrap_or_else(|| syn::parse_quote!(::lifecycle_core));
    expand::expand(&item, &phases, &phase_enum, &orchestrator, &krate)
}
