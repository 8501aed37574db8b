//! Code generation for a validated [`Model`]. Generated code reaches the runtime only through
//! absolute paths into `lifecycle_core` (or the `crate = …` override).

use super::ast::is_state_helper;
use super::valid::{Model, Resolved, OBSERVER_PARAM};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::{Ident, ItemEnum, Path};

/// Derives the state enum needs; any the user already derives are left out.
const DERIVES: [&str; 6] = ["Clone", "Copy", "PartialEq", "Eq", "Hash", "Debug"];

fn user_derives(item: &ItemEnum) -> Vec<String> {
    let mut found = Vec::new();
    for attr in item.attrs.iter().filter(|a| a.path().is_ident("derive")) {
        let _ = attr.parse_nested_meta(|meta| {
            if let Some(last) = meta.path.segments.last() {
                found.push(last.ident.to_string());
            }
            Ok(())
        });
    }
    found
}

/// The enum as written, minus the `#[initial]` / `#[terminal]` helpers.
pub fn strip_helpers(item: &ItemEnum) -> ItemEnum {
    let mut item = item.clone();
    for variant in &mut item.variants {
        variant.attrs.retain(|a| !is_state_helper(a));
    }
    item
}

/// The Mermaid `stateDiagram-v2` text of the machine.
pub fn mermaid(model: &Model) -> String {
    use std::fmt::Write as _;
    let states = &model.enm.states;
    let mut out = String::from("stateDiagram-v2\n");
    let _ = writeln!(out, "    [*] --> {}", states[model.initial].ident);
    for t in &model.transitions {
        for &s in &t.sources {
            let _ = writeln!(
                out,
                "    {} --> {}: {}",
                states[s].ident, states[t.target].ident, t.name
            );
        }
    }
    for state in states.iter().filter(|s| s.terminal.is_some()) {
        let _ = writeln!(out, "    {} --> [*]", state.ident);
    }
    out
}

struct Ctx<'m, 'a> {
    model: &'m Model<'a>,
    krate: Path,
    enum_ident: &'a Ident,
    repr: Ident,
    atomic: Ident,
}

impl Ctx<'_, '_> {
    fn variant(&self, index: usize) -> TokenStream {
        let e = self.enum_ident;
        let v = self.model.enm.states[index].ident;
        quote!(#e::#v)
    }

    fn raw(&self, index: usize) -> Literal {
        let raw = self.model.enm.states[index].raw.unwrap_or_default();
        match self.model.enm.repr {
            super::ast::Repr::U8 => Literal::u8_suffixed(u8::try_from(raw).unwrap_or_default()),
            super::ast::Repr::U16 => Literal::u16_suffixed(u16::try_from(raw).unwrap_or_default()),
            super::ast::Repr::U32 => Literal::u32_suffixed(u32::try_from(raw).unwrap_or_default()),
            super::ast::Repr::U64 => Literal::u64_suffixed(raw),
        }
    }

    fn table_entry(&self, t: &Resolved) -> TokenStream {
        let krate = &self.krate;
        let name = &t.name;
        let sources = t.sources.iter().map(|&s| self.variant(s));
        let target = self.variant(t.target);
        let from_any = t.from_any;
        quote! {
            #krate::Transition {
                name: #name,
                sources: &[#(#sources),*],
                target: #target,
                from_any: #from_any,
            }
        }
    }

    fn try_method(&self, index: usize, t: &Resolved) -> TokenStream {
        let krate = &self.krate;
        let p = quote!(#krate::__private);
        let e = self.enum_ident;
        let method = format_ident!("try_{}", t.name);
        let states = &self.model.enm.states;
        let target_raw = self.raw(t.target);
        let target = self.variant(t.target);
        let machine_name = self.model.machine.to_string();
        let name = &t.name;
        let user_attrs = &t.decl.attrs;
        let sources_text = if t.from_any {
            "any non-terminal state".to_owned()
        } else {
            t.sources
                .iter()
                .map(|&s| format!("`{}`", states[s].ident))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let doc = format!(
            "Transition `{name}`: {sources_text} → `{}`.\n\nReturns the state it left, or an error \
             carrying the state observed when the compare-and-swap failed. A successful \
             transition is reported to the observer.",
            states[t.target].ident
        );
        // After the compare-and-swap that won: the tracing event, then the observer (with
        // `NoObserver`, an empty inlined call that leaves the compare-and-swap alone).
        let trace = quote! {
            #p::trace_transition(#machine_name, #name, #e::name(from), #e::name(#target));
            #krate::TransitionObserver::<#e>::on_transition(&self.observer, &#e::TRANSITIONS[#index], from);
        };
        let refused = quote! {
            #krate::TransitionError::new(&#e::TRANSITIONS[#index], Self::decode(observed))
        };
        let body = if let [single] = t.sources[..] {
            let source_raw = self.raw(single);
            let source = self.variant(single);
            // One compare-exchange. AcqRel on success: Release publishes the caller's writes
            // to whoever later observes the target; Acquire sees the writes published by the
            // transition that entered the source. Acquire on failure makes the observed
            // state's publications visible to the caller too.
            quote! {
                match self.raw.compare_exchange(
                    #source_raw,
                    #target_raw,
                    #p::Ordering::AcqRel,
                    #p::Ordering::Acquire,
                ) {
                    ::core::result::Result::Ok(_) => {
                        let from = #source;
                        #trace
                        ::core::result::Result::Ok(from)
                    }
                    ::core::result::Result::Err(observed) => ::core::result::Result::Err(#refused),
                }
            }
        } else {
            let arms = t.sources.iter().map(|&s| {
                let raw = self.raw(s);
                let v = self.variant(s);
                quote!(#raw => #v,)
            });
            // A load, then compare-exchange from exactly the value read: the machine moves
            // straight from the observed source to the target, never through another state.
            // Orderings as in the single-source case.
            quote! {
                let mut current = self.raw.load(#p::Ordering::Acquire);
                loop {
                    let from = match current {
                        #(#arms)*
                        observed => return ::core::result::Result::Err(#refused),
                    };
                    match self.raw.compare_exchange_weak(
                        current,
                        #target_raw,
                        #p::Ordering::AcqRel,
                        #p::Ordering::Acquire,
                    ) {
                        ::core::result::Result::Ok(_) => {
                            #trace
                            return ::core::result::Result::Ok(from);
                        }
                        ::core::result::Result::Err(actual) => current = actual,
                    }
                }
            }
        };
        quote! {
            #(#user_attrs)*
            #[doc = #doc]
            #[must_use = "a refused transition is an error to handle"]
            #[inline]
            pub fn #method(&self) -> ::core::result::Result<#e, #krate::TransitionError<#e>> {
                #body
            }
        }
    }
}

#[allow(clippy::too_many_lines, clippy::many_single_char_names)]
pub fn expand(model: &Model, krate: Path) -> TokenStream {
    let enm = &model.enm;
    let item = enm.item;
    let enum_ident = &item.ident;
    let vis = &item.vis;
    let cx = Ctx {
        model,
        krate,
        enum_ident,
        repr: format_ident!("{}", enm.repr.name()),
        atomic: format_ident!("{}", enm.repr.atomic()),
    };
    let krate = &cx.krate;
    let p = quote!(#krate::__private);
    let repr = &cx.repr;
    let atomic = &cx.atomic;
    let machine = &model.machine;
    let o = format_ident!("{OBSERVER_PARAM}");
    let e = enum_ident;

    let existing = user_derives(item);
    let derives = DERIVES
        .iter()
        .filter(|d| !existing.iter().any(|x| x == *d))
        .map(|d| format_ident!("{d}"));
    let stripped = strip_helpers(item);

    let n = enm.states.len();
    let all = (0..n).map(|i| cx.variant(i));
    let initial = cx.variant(model.initial);
    let initial_raw = cx.raw(model.initial);
    let names = enm.states.iter().enumerate().map(|(i, s)| {
        let v = cx.variant(i);
        let name = &s.name;
        quote!(#v => #name,)
    });
    let terminals: Vec<TokenStream> = (0..n)
        .filter(|&i| enm.states[i].terminal.is_some())
        .map(|i| cx.variant(i))
        .collect();
    let is_terminal_body = if terminals.is_empty() {
        quote!({
            let _ = self;
            false
        })
    } else {
        quote!(::core::matches!(self, #(#terminals)|*))
    };
    let to_raw = (0..n).map(|i| {
        let v = cx.variant(i);
        let raw = cx.raw(i);
        quote!(#v => #raw,)
    });
    let from_raw = (0..n).map(|i| {
        let v = cx.variant(i);
        let raw = cx.raw(i);
        quote!(#raw => ::core::result::Result::Ok(#v),)
    });
    let decode = (0..n).map(|i| {
        let v = cx.variant(i);
        let raw = cx.raw(i);
        quote!(#raw => #v,)
    });
    let mut pairs = Vec::new();
    for t in &model.transitions {
        for &s in &t.sources {
            if !pairs.contains(&(s, t.target)) {
                pairs.push((s, t.target));
            }
        }
    }
    // `match from { sources => matches!(to, targets) }`, sources sharing a target set merged
    // into one arm: the shape clippy accepts (no unnested or-patterns, no identical arms).
    let mut arms: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    for source in 0..n {
        let mut targets: Vec<usize> = pairs
            .iter()
            .filter(|&&(s, _)| s == source)
            .map(|&(_, t)| t)
            .collect();
        if targets.is_empty() {
            continue;
        }
        targets.sort_unstable();
        match arms.iter_mut().find(|(_, t)| *t == targets) {
            Some((sources, _)) => sources.push(source),
            None => arms.push((vec![source], targets)),
        }
    }
    let can_transition_body = if arms.is_empty() {
        quote!({
            let _ = (from, to);
            false
        })
    } else {
        let covered: usize = arms.iter().map(|(sources, _)| sources.len()).sum();
        let arms = arms.iter().map(|(sources, targets)| {
            let sources = sources.iter().map(|&s| cx.variant(s));
            let targets = targets.iter().map(|&t| cx.variant(t));
            quote!(#(#sources)|* => ::core::matches!(to, #(#targets)|*),)
        });
        let wildcard = (covered < n).then(|| quote!(_ => false,));
        quote!(match from { #(#arms)* #wildcard })
    };
    let table = model.transitions.iter().map(|t| cx.table_entry(t));
    let try_methods = model
        .transitions
        .iter()
        .enumerate()
        .map(|(i, t)| cx.try_method(i, t));
    // By name, then by value: names are unique in the table, and the whole entry must match
    // for it to count as this machine's.
    let dispatch = model.transitions.iter().enumerate().map(|(i, t)| {
        let name = &t.name;
        let method = format_ident!("try_{}", t.name);
        quote!(#name if *transition == #e::TRANSITIONS[#i] => self.#method(),)
    });
    let predicates = enm.states.iter().enumerate().map(|(i, s)| {
        let method = format_ident!("is_{}", s.name);
        let raw = cx.raw(i);
        let doc = format!(
            "Whether the machine is in `{}` (an `Acquire` load).",
            s.ident
        );
        quote! {
            #[doc = #doc]
            #[inline]
            pub fn #method(&self) -> bool {
                self.raw.load(#p::Ordering::Acquire) == #raw
            }
        }
    });

    let type_name = enum_ident.to_string();
    let machine_name = machine.to_string();
    let diagram = mermaid(model);
    let diagram_doc = format!("```text\n{diagram}```");
    let machine_doc = format!(
        "Lock-free machine over [`{e}`]: one `{repr}` atomic, updated only by compare-and-swap \
         (`try_*`) or by [`force`](Self::force).\n\n\
         # Memory ordering\n\n\
         Every successful transition and every `force` is an `AcqRel` read-modify-write, and \
         every read of the state (`state`, `is_*`, a failed `try_*`) is an `Acquire` load. So \
         whatever a thread wrote before a successful transition is visible to any thread that \
         afterwards observes the state it entered (or any later state). A failed `try_*` \
         changes nothing.\n\n\
         # Observer\n\n\
         `O` is a `TransitionObserver` that sees every successful transition (after its \
         compare-and-swap, on the thread that won it) and every `force`. The default, \
         `NoObserver`, is zero-sized with empty inlined hooks: `new()` machines are one atomic \
         and their `try_*` are exactly the compare-and-swap. Attach one with \
         [`with_observer`](Self::with_observer).\n\n\
         # Diagram\n\n{diagram_doc}"
    );
    let new_doc = format!(
        "A machine in the initial state, `{}`, that nobody observes.",
        enm.states[model.initial].ident
    );
    let with_observer_doc = format!(
        "A machine in the initial state, `{}`, that reports every successful transition and \
         every `force` to `observer`.",
        enm.states[model.initial].ident
    );

    quote! {
        #[derive(#(#derives),*)]
        #stripped

        #[automatically_derived]
        impl #e {
            /// Every state, in declaration order.
            pub const ALL: &'static [#e] = &[#(#all),*];
            /// The state a new machine starts in.
            pub const INITIAL: #e = #initial;
            /// Every declared transition (name, sources, target), in declaration order.
            pub const TRANSITIONS: &'static [#krate::Transition<#e>] = &[#(#table),*];
            #[doc = "A Mermaid `stateDiagram-v2` of the machine:\n\n"]
            #[doc = #diagram_doc]
            pub const MERMAID: &'static str = #diagram;

            /// The state's snake_case name.
            #[inline]
            pub const fn name(self) -> &'static str {
                match self { #(#names)* }
            }

            /// Whether no transition leaves this state.
            #[inline]
            pub const fn is_terminal(self) -> bool {
                #is_terminal_body
            }

            /// The state's discriminant, as the machine stores it.
            #[inline]
            pub const fn to_raw(self) -> #repr {
                match self { #(#to_raw)* }
            }

            /// The state whose discriminant is `raw`; an error naming the value otherwise.
            #[inline]
            pub const fn from_raw(raw: #repr) -> ::core::result::Result<#e, #krate::UnknownStateError> {
                match raw {
                    #(#from_raw)*
                    // Lossless widening: every supported repr fits in u64.
                    _ => ::core::result::Result::Err(#krate::UnknownStateError {
                        state_type: #type_name,
                        raw: raw as u64,
                    }),
                }
            }

            /// Whether some declared transition leads from `from` to `to`.
            #[inline]
            pub const fn can_transition(from: #e, to: #e) -> bool {
                #can_transition_body
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Display for #e {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.pad(self.name())
            }
        }

        #[automatically_derived]
        impl ::core::convert::TryFrom<#repr> for #e {
            type Error = #krate::UnknownStateError;
            fn try_from(raw: #repr) -> ::core::result::Result<Self, Self::Error> {
                Self::from_raw(raw)
            }
        }

        #[automatically_derived]
        impl ::core::convert::From<#e> for #repr {
            fn from(state: #e) -> Self {
                state.to_raw()
            }
        }

        #[automatically_derived]
        impl #krate::LifecycleState for #e {
            type Raw = #repr;
            type Machine = #machine;
            const TYPE_NAME: &'static str = #type_name;
            const ALL: &'static [Self] = #e::ALL;
            const INITIAL: Self = #e::INITIAL;
            const TRANSITIONS: &'static [#krate::Transition<Self>] = #e::TRANSITIONS;
            const MERMAID: &'static str = #e::MERMAID;
            fn name(self) -> &'static str { #e::name(self) }
            fn is_terminal(self) -> bool { #e::is_terminal(self) }
            fn to_raw(self) -> #repr { #e::to_raw(self) }
            fn from_raw(raw: #repr) -> ::core::result::Result<Self, #krate::UnknownStateError> {
                #e::from_raw(raw)
            }
            fn can_transition(from: Self, to: Self) -> bool { #e::can_transition(from, to) }
        }

        #[doc = #machine_doc]
        #vis struct #machine<#o = #krate::NoObserver> {
            raw: #p::#atomic,
            observer: #o,
        }

        #[automatically_derived]
        impl #machine {
            #p::maybe_const_fn! {
                #[doc = #new_doc]
                #[must_use]
                pub fn new() -> Self {
                    Self::with_observer(#krate::NoObserver)
                }
            }
        }

        #[automatically_derived]
        impl<#o> #machine<#o> {
            #p::maybe_const_fn! {
                #[doc = #with_observer_doc]
                #[must_use]
                pub fn with_observer(observer: #o) -> Self {
                    Self { raw: #p::#atomic::new(#initial_raw), observer }
                }
            }

            /// The observer this machine reports to.
            #[inline]
            pub fn observer(&self) -> &#o {
                &self.observer
            }

            /// The current state (an `Acquire` load).
            #[inline]
            pub fn state(&self) -> #e {
                Self::decode(self.raw.load(#p::Ordering::Acquire))
            }

            #(#predicates)*

            #[inline]
            fn decode(raw: #repr) -> #e {
                match raw {
                    #(#decode)*
                    // The atomic is private and only ever stores `to_raw` values.
                    _ => ::core::unreachable!(),
                }
            }
        }

        #[automatically_derived]
        impl<#o: #krate::TransitionObserver<#e>> #machine<#o> {
            /// Sets the state unconditionally and returns the one it replaced.
            ///
            /// The escape hatch: it ignores the transition table, so prefer a `try_*` method.
            /// It is an `AcqRel` swap, with the same visibility guarantees as a transition, and
            /// is reported to the observer's `on_force`.
            #[inline]
            pub fn force(&self, to: #e) -> #e {
                let from = Self::decode(self.raw.swap(to.to_raw(), #p::Ordering::AcqRel));
                #p::trace_transition(#machine_name, "force", #e::name(from), #e::name(to));
                #krate::TransitionObserver::<#e>::on_force(&self.observer, from, to);
                from
            }

            #(#try_methods)*
        }

        #[automatically_derived]
        impl ::core::default::Default for #machine {
            /// Same as `new`.
            fn default() -> Self {
                Self::new()
            }
        }

        #[automatically_derived]
        impl<#o> ::core::fmt::Debug for #machine<#o> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(#machine_name).field("state", &self.state()).finish()
            }
        }

        #[automatically_derived]
        impl<#o> #krate::StateMachine for #machine<#o>
        where
            #o: #krate::TransitionObserver<#e> + ::core::marker::Send + ::core::marker::Sync,
        {
            type State = #e;
            fn state(&self) -> #e { #machine::state(self) }
            fn force(&self, to: #e) -> #e { #machine::force(self, to) }
            fn try_apply(
                &self,
                transition: &'static #krate::Transition<#e>,
            ) -> ::core::result::Result<#e, #krate::TransitionError<#e>> {
                match transition.name {
                    #(#dispatch)*
                    _ => ::core::result::Result::Err(
                        #krate::TransitionError::new(transition, #machine::state(self)),
                    ),
                }
            }
        }

    }
}
