//! The checks on a parsed [`Input`], each a small named function, all errors accumulated:
//! the struct's shape, its phases, and the names the expansion will generate.

use super::ast::{Input, PhaseField};
use crate::ctxt::Ctxt;
use quote::format_ident;
use syn::{Fields, Ident, Path};

/// What the expansion needs: the checked phases and the resolved names.
pub struct Model<'a> {
    pub input: &'a Input<'a>,
    pub phases: Vec<&'a PhaseField<'a>>,
    pub phase_enum: Ident,
    pub orchestrator: Ident,
    pub krate: Path,
}

/// Checks `input`; `None` if anything is wrong (every error recorded in `cx`).
pub fn validate<'a>(cx: &mut Ctxt, input: &'a Input<'a>) -> Option<Model<'a>> {
    check_not_generic(cx, input);
    check_shape(cx, input);
    let phases = distinct_phases(cx, input);
    let (default_phase, default_orchestrator) = default_names(&input.item.ident);
    let phase_enum = input.args.phase.clone().unwrap_or(default_phase);
    let orchestrator = input
        .args
        .orchestrator
        .clone()
        .unwrap_or(default_orchestrator);
    check_generated_names(cx, input, &phase_enum, &orchestrator);
    let krate = input
        .args
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::lifecycle_core));
    cx.is_ok().then_some(Model {
        input,
        phases,
        phase_enum,
        orchestrator,
        krate,
    })
}

fn check_not_generic(cx: &mut Ctxt, input: &Input) {
    let generics = &input.item.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        cx.error_spanned_by(
            generics,
            "`#[cleanup_phases]` structs cannot be generic: each field holds a `Phase`",
        );
    }
}

fn check_shape(cx: &mut Ctxt, input: &Input) {
    match &input.item.fields {
        Fields::Named(named) if named.named.is_empty() => cx.error_spanned_by(
            named,
            "`#[cleanup_phases]` needs at least one phase (field); use `Phase::noop()` for phases that do not apply",
        ),
        Fields::Named(_) => {}
        Fields::Unnamed(unnamed) => cx.error_spanned_by(
            unnamed,
            "`#[cleanup_phases]` needs named fields: each field's name is its phase's name",
        ),
        Fields::Unit => cx.error_spanned_by(
            &input.item.ident,
            "`#[cleanup_phases]` needs a struct with named fields, one per phase",
        ),
    }
}

/// The phases, minus any field that maps to a phase an earlier field already maps to (`a_b`
/// and `r#a_b` are one phase), each reported at the later field with a note at the first.
fn distinct_phases<'a>(cx: &mut Ctxt, input: &'a Input<'a>) -> Vec<&'a PhaseField<'a>> {
    let mut phases: Vec<&PhaseField> = Vec::with_capacity(input.fields.len());
    for phase in &input.fields {
        if let Some(first) = phases
            .iter()
            .find(|p| p.variant == phase.variant || p.name == phase.name)
        {
            cx.duplicate(
                phase.ident,
                format!(
                    "field `{}` maps to phase `{}` (`{}`), as field `{}` already does",
                    phase.ident, phase.variant, phase.name, first.ident
                ),
                first.ident,
                "first mapped here",
            );
            continue;
        }
        phases.push(phase);
    }
    phases
}

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

/// The two generated types must not take the struct's name, nor each other's.
fn check_generated_names(cx: &mut Ctxt, input: &Input, phase_enum: &Ident, orchestrator: &Ident) {
    for generated in [phase_enum, orchestrator] {
        if *generated == input.item.ident {
            cx.error_spanned_by(
                generated,
                format!("the generated type `{generated}` would collide with the struct of the same name"),
            );
        }
    }
    if phase_enum == orchestrator {
        cx.error_spanned_by(
            orchestrator,
            format!("the orchestrator and the phase enum would both be named `{orchestrator}`"),
        );
    }
}
