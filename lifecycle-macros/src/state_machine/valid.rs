//! Cross-cutting checks of a declaration, each a small named function that records its
//! errors in the [`Ctxt`] so one build shows every mistake.

use super::ast::Enum;
use super::attr::{MachineArgs, Sources, TransitionDecl};
use crate::case::{closest, to_snake_case};
use crate::ctxt::Ctxt;
use syn::Ident;

/// A transition whose states are resolved to indices into [`Enum::states`].
pub struct Resolved<'a> {
    pub decl: &'a TransitionDecl,
    /// `snake_case` name; the method is `try_<name>`.
    pub name: String,
    pub sources: Vec<usize>,
    pub from_any: bool,
    pub target: usize,
}

/// A declaration that passed every check.
pub struct Model<'a> {
    pub enm: Enum<'a>,
    pub initial: usize,
    pub transitions: Vec<Resolved<'a>>,
    pub machine: Ident,
}

fn resolve_state(cx: &mut Ctxt, enm: &Enum, ident: &Ident) -> Option<usize> {
    if let Some(index) = enm.state(ident) {
        return Some(index);
    }
    let names = enm
        .states
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>();
    let suggestion = closest(&ident.to_string(), names.iter().map(String::as_str))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    cx.error_spanned_by(
        ident,
        format!("unknown state `{ident}` in transition table{suggestion}"),
    );
    None
}

fn check_initial(cx: &mut Ctxt, enm: &Enum) -> Option<usize> {
    let mut initial: Option<usize> = None;
    for (index, state) in enm.states.iter().enumerate() {
        let Some(attr) = state.initial else { continue };
        match initial {
            None => initial = Some(index),
            Some(first) => cx.duplicate(
                attr,
                format!(
                    "several initial states: `{}` is already marked `#[initial]`",
                    enm.states[first].ident
                ),
                enm.states[first].initial,
                "first initial state marked here",
            ),
        }
    }
    if initial.is_none() {
        let message = if enm.states.is_empty() {
            "a `#[state_machine]` enum needs at least one state"
        } else {
            "no initial state: mark exactly one variant with `#[initial]`"
        };
        cx.error_spanned_by(&enm.item.ident, message);
    }
    initial
}

fn resolve_transitions<'a>(
    cx: &mut Ctxt,
    enm: &Enum,
    decls: &'a [TransitionDecl],
) -> Vec<Resolved<'a>> {
    let mut resolved = Vec::with_capacity(decls.len());
    for decl in decls {
        let target = resolve_state(cx, enm, &decl.target);
        let (sources, from_any) = match &decl.sources {
            Sources::Any(star) => {
                let sources: Vec<usize> = (0..enm.states.len())
                    .filter(|&i| enm.states[i].terminal.is_none())
                    .collect();
                if sources.is_empty() {
                    cx.error_spanned_by(star, "`*` matches no state: every state is terminal");
                }
                (Some(sources), true)
            }
            Sources::List(idents) => {
                let mut sources = Vec::with_capacity(idents.len());
                let mut ok = true;
                for (i, ident) in idents.iter().enumerate() {
                    if let Some(first) = idents[..i].iter().find(|f| *f == ident) {
                        cx.duplicate(
                            ident,
                            format!("state `{ident}` listed twice as a source"),
                            first,
                            "first listed here",
                        );
                    }
                    match resolve_state(cx, enm, ident) {
                        Some(index) => sources.push(index),
                        None => ok = false,
                    }
                }
                (ok.then_some(sources), false)
            }
        };
        if let (Some(sources), Some(target)) = (sources, target) {
            resolved.push(Resolved {
                decl,
                name: to_snake_case(&decl.name.to_string()),
                sources,
                from_any,
                target,
            });
        }
    }
    resolved
}

fn check_duplicate_transitions(cx: &mut Ctxt, transitions: &[Resolved]) {
    for (i, t) in transitions.iter().enumerate() {
        if let Some(first) = transitions[..i].iter().find(|f| f.name == t.name) {
            let message = if first.decl.name == t.decl.name {
                format!("duplicate transition `{}`", t.decl.name)
            } else {
                format!(
                    "transition `{}` generates `try_{}`, which transition `{}` already generates",
                    t.decl.name, t.name, first.decl.name
                )
            };
            cx.duplicate(
                &t.decl.name,
                message,
                &first.decl.name,
                "first declared here",
            );
        }
    }
}

fn check_terminal_sources(cx: &mut Ctxt, enm: &Enum, transitions: &[Resolved]) {
    for t in transitions {
        let Sources::List(idents) = &t.decl.sources else {
            continue;
        };
        for (ident, &source) in idents.iter().zip(&t.sources) {
            if enm.states[source].terminal.is_some() {
                cx.error_spanned_by(
                    ident,
                    format!(
                        "transition `{}` leaves `{ident}`, which is `#[terminal]`: no transition may leave a terminal state",
                        t.decl.name
                    ),
                );
            }
        }
    }
}

fn check_reachable(cx: &mut Ctxt, enm: &Enum, initial: usize, transitions: &[Resolved]) {
    let mut reached = vec![false; enm.states.len()];
    reached[initial] = true;
    let mut changed = true;
    while changed {
        changed = false;
        for t in transitions {
            if !reached[t.target] && t.sources.iter().any(|&s| reached[s]) {
                reached[t.target] = true;
                changed = true;
            }
        }
    }
    for (state, reached) in enm.states.iter().zip(reached) {
        if !reached {
            cx.error_spanned_by(
                state.ident,
                format!(
                    "state `{}` is unreachable from the initial state `{}`: no chain of transitions leads to it",
                    state.ident, enm.states[initial].ident
                ),
            );
        }
    }
}

fn check_discriminants(cx: &mut Ctxt, enm: &Enum) {
    for (i, state) in enm.states.iter().enumerate() {
        let Some(raw) = state.raw else { continue };
        if let Some(first) = enm.states[..i].iter().find(|s| s.raw == Some(raw)) {
            cx.duplicate(
                state.ident,
                format!(
                    "discriminant {raw} of `{}` is already used by `{}`",
                    state.ident, first.ident
                ),
                first.ident,
                "first used here",
            );
        }
    }
}

fn check_name_collisions(cx: &mut Ctxt, enm: &Enum, machine: &Ident) {
    for (i, state) in enm.states.iter().enumerate() {
        if let Some(first) = enm.states[..i].iter().find(|s| s.name == state.name) {
            cx.duplicate(
                state.ident,
                format!(
                    "state `{}` generates `is_{}` and the name `{}`, which `{}` already generates",
                    state.ident, state.name, state.name, first.ident
                ),
                first.ident,
                "first generated for this state",
            );
        }
    }
    if *machine == enm.item.ident {
        cx.error_spanned_by(
            machine,
            format!(
                "the machine type `{machine}` would collide with the state enum of the same name"
            ),
        );
    }
    // The machine is generic over its observer, `Machine<O = NoObserver>`: inside its impls
    // a type named `O` would be shadowed by that parameter.
    for (ident, what) in [(&enm.item.ident, "state enum"), (machine, "machine type")] {
        if ident == OBSERVER_PARAM {
            cx.error_spanned_by(
                ident,
                format!(
                    "the {what} `{ident}` would collide with the machine's observer type parameter `{OBSERVER_PARAM}`; rename it"
                ),
            );
        }
    }
}

/// The name of the generated machine's observer type parameter.
pub const OBSERVER_PARAM: &str = "O";

/// Runs every check; `None` when any failed (the errors are in `cx`).
pub fn validate<'a>(cx: &mut Ctxt, enm: Enum<'a>, args: &'a MachineArgs) -> Option<Model<'a>> {
    check_discriminants(cx, &enm);
    let initial = check_initial(cx, &enm);
    let transitions = resolve_transitions(cx, &enm, &args.transitions);
    check_duplicate_transitions(cx, &transitions);
    check_terminal_sources(cx, &enm, &transitions);
    let machine = args
        .machine
        .clone()
        .unwrap_or_else(|| quote::format_ident!("Atomic{}", enm.item.ident));
    check_name_collisions(cx, &enm, &machine);
    // Reachability is only meaningful once every name resolved.
    if let (Some(initial), true) = (initial, cx.is_ok()) {
        check_reachable(cx, &enm, initial, &transitions);
    }
    let initial = initial?;
    cx.is_ok().then_some(Model {
        enm,
        initial,
        transitions,
        machine,
    })
}
