//! Cross-cutting checks of a declaration, each a small named function that records its
//! errors in the [`Ctxt`] so one build shows every mistake.

use super::ast::Enum;
use super::attr::{MachineArgs, Sources, TransitionDecl};
use crate::case::{closest, to_snake_case};
use crate::ctxt::Ctxt;
use proc_macro2::Span;
use syn::Ident;

/// Where the first occurrence of a duplicate is, for the error at the second one: `line 4`.
///
/// Stable `proc_macro` cannot attach a note to an error (`Diagnostic` is unstable), and a
/// second `compile_error!` at the first occurrence reads as a second mistake. So the error
/// sits at the second occurrence and names the line of the first in its message.
fn place(first: &impl syn::spanned::Spanned) -> String {
    line_of(first.span()).map_or_else(
        || "an earlier line".to_owned(),
        |line| format!("line {line}"),
    )
}

/// The line `span` starts on, when the compiler can say (not in unit tests).
fn line_of(span: Span) -> Option<usize> {
    proc_macro::is_available().then(|| span.unwrap().line())
}

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
            Some(first) => cx.error_spanned_by(
                attr,
                format!(
                    "several initial states: `{}` on {} is already marked `#[initial]`",
                    enm.states[first].ident,
                    place(enm.states[first].ident),
                ),
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
            Sources::Any(star) => (Some(any_sources(cx, enm, decl, *star, target)), true),
            Sources::List(idents) => (list_sources(cx, enm, idents), false),
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

/// `*`: every non-terminal state except the target. A machine already in the target would
/// otherwise "win" the transition again and again (its compare-and-swap succeeds without
/// changing anything), so every racer of a `fail: * => Failed` would believe it failed the
/// machine; with the target excluded exactly one does.
fn any_sources(
    cx: &mut Ctxt,
    enm: &Enum,
    decl: &TransitionDecl,
    star: syn::Token![*],
    target: Option<usize>,
) -> Vec<usize> {
    let sources: Vec<usize> = (0..enm.states.len())
        .filter(|&i| enm.states[i].terminal.is_none() && Some(i) != target)
        .collect();
    if sources.is_empty() && target.is_some() {
        cx.error_spanned_by(
            star,
            format!(
                "`*` matches no state: every state other than `{}` is terminal, so transition `{}` could never happen",
                decl.target, decl.name
            ),
        );
    }
    sources
}

fn list_sources(cx: &mut Ctxt, enm: &Enum, idents: &[Ident]) -> Option<Vec<usize>> {
    let mut sources = Vec::with_capacity(idents.len());
    let mut ok = true;
    for (i, ident) in idents.iter().enumerate() {
        if idents[..i].contains(ident) {
            cx.error_spanned_by(ident, format!("state `{ident}` listed twice as a source"));
        }
        match resolve_state(cx, enm, ident) {
            Some(index) => sources.push(index),
            None => ok = false,
        }
    }
    ok.then_some(sources)
}

/// A transition from a state to itself is refused: its compare-and-swap would "succeed"
/// without changing anything, which tells the caller it won a race that did not happen. To
/// ask whether the machine is in a state, use `is_<state>()`.
fn check_self_loops(cx: &mut Ctxt, transitions: &[Resolved]) {
    for t in transitions {
        let Sources::List(idents) = &t.decl.sources else {
            continue;
        };
        for (ident, &source) in idents.iter().zip(&t.sources) {
            if source == t.target {
                cx.error_spanned_by(
                    ident,
                    format!(
                        "transition `{}` leads from `{ident}` to `{ident}` itself: a self-loop would report a change that did not happen; remove `{ident}` from its sources (to test the state, use `is_{}()`)",
                        t.decl.name,
                        to_snake_case(&ident.to_string()),
                    ),
                );
            }
        }
    }
}

fn check_duplicate_transitions(cx: &mut Ctxt, transitions: &[Resolved]) {
    for (i, t) in transitions.iter().enumerate() {
        if let Some(first) = transitions[..i].iter().find(|f| f.name == t.name) {
            let message = if first.decl.name == t.decl.name {
                format!(
                    "duplicate transition `{}`: already declared on {}",
                    t.decl.name,
                    place(&first.decl.name)
                )
            } else {
                format!(
                    "transition `{}` generates `try_{}`, which transition `{}` on {} already generates; rename one of them",
                    t.decl.name,
                    t.name,
                    first.decl.name,
                    place(&first.decl.name)
                )
            };
            cx.error_spanned_by(&t.decl.name, message);
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
            cx.error_spanned_by(
                state.ident,
                format!(
                    "discriminant {raw} of `{}` is already used by `{}` on {}",
                    state.ident,
                    first.ident,
                    place(first.ident)
                ),
            );
        }
    }
}

fn check_name_collisions(cx: &mut Ctxt, enm: &Enum, machine: &Ident) {
    for (i, state) in enm.states.iter().enumerate() {
        if let Some(first) = enm.states[..i].iter().find(|s| s.name == state.name) {
            cx.error_spanned_by(
                state.ident,
                format!(
                    "state `{}` generates `is_{}` and the name `{}`, which `{}` on {} already generates; rename one of them",
                    state.ident,
                    state.name,
                    state.name,
                    first.ident,
                    place(first.ident)
                ),
            );
        }
    }
    check_generated_items(cx, enm);
    if *machine == enm.item.ident {
        cx.error_spanned_by(
            machine,
            format!(
                "the machine type `{machine}` would collide with the state enum of the same name; give `machine = ...` another name"
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

/// The associated items generated on the state enum. A variant of the same name wins every
/// `Enum::NAME` path, so `const INITIAL: Self = Enum::INITIAL` would silently name the
/// variant, and the other items would not type-check.
const ENUM_ITEMS: [(&str, &str); 9] = [
    ("ALL", "associated constant"),
    ("INITIAL", "associated constant"),
    ("TRANSITIONS", "associated constant"),
    ("MERMAID", "associated constant"),
    ("name", "associated function"),
    ("is_terminal", "associated function"),
    ("to_raw", "associated function"),
    ("from_raw", "associated function"),
    ("can_transition", "associated function"),
];

fn check_generated_items(cx: &mut Ctxt, enm: &Enum) {
    let e = &enm.item.ident;
    for state in &enm.states {
        let ident = state.ident.to_string();
        let ident = ident.strip_prefix("r#").unwrap_or(&ident);
        if let Some((item, kind)) = ENUM_ITEMS.iter().find(|(item, _)| *item == ident) {
            cx.error_spanned_by(
                state.ident,
                format!(
                    "state `{ident}` collides with the {kind} `{e}::{item}` that `#[state_machine]` generates; rename the state"
                ),
            );
        }
    }
}

/// The one `StateMachine` trait method a `try_<transition>` can be named like. The inherent
/// method would shadow the trait's at every `machine.try_apply(...)` call.
const TRAIT_TRY_METHOD: &str = "try_apply";

fn check_transition_methods(cx: &mut Ctxt, transitions: &[Resolved]) {
    for t in transitions {
        let method = format!("try_{}", t.name);
        if method == TRAIT_TRY_METHOD {
            cx.error_spanned_by(
                &t.decl.name,
                format!(
                    "transition `{}` generates `try_{}`, which would shadow `StateMachine::{method}`; rename the transition",
                    t.decl.name, t.name
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
    check_self_loops(cx, &transitions);
    check_transition_methods(cx, &transitions);
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
