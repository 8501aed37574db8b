//! Code generation for a validated [`Model`]. Generated code reaches the runtime only through
//! absolute paths into `lifecycle_core` (or the `crate = …` override).

use super::ast::is_state_helper;
use super::valid::{Model, Resolved, OBSERVER_PARAM};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::{Ident, ItemEnum, Path};

/// Derives the state enum needs; any the user already derives are left out.
pub const DERIVES: [&str; 6] = ["Clone", "Copy", "PartialEq", "Eq", "Hash", "Debug"];

pub fn user_derives(item: &ItemEnum) -> Vec<String> {
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
    /// `#krate::__private`.
    private: TokenStream,
    enum_ident: &'a Ident,
    repr: Ident,
    atomic: Ident,
    /// The observer type parameter.
    o: Ident,
}

/// The tokens of a validated declaration: the enum and its items, then the machine.
pub fn expand(model: &Model, krate: Path, derived_above: &[String]) -> TokenStream {
    let enm = &model.enm;
    let cx = Ctx {
        private: quote!(#krate::__private),
        model,
        krate,
        enum_ident: &enm.item.ident,
        repr: format_ident!("{}", enm.repr.name()),
        atomic: format_ident!("{}", enm.repr.atomic()),
        o: format_ident!("{OBSERVER_PARAM}"),
    };
    let item = cx.enum_item(derived_above);
    let enum_impl = cx.enum_impl();
    let enum_traits = cx.enum_trait_impls();
    let machine = cx.machine_struct();
    let machine_impl = cx.machine_impl();
    let machine_traits = cx.machine_trait_impls();
    quote! {
        #item
        #enum_impl
        #enum_traits
        #machine
        #machine_impl
        #machine_traits
    }
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

    /// `raw => Enum::Variant,` for every state (or those of `indices`).
    fn raw_arms(&self, indices: impl Iterator<Item = usize>) -> Vec<(Literal, TokenStream)> {
        indices.map(|i| (self.raw(i), self.variant(i))).collect()
    }

    /// The enum as written, helpers stripped, with the derives it needs.
    fn enum_item(&self, derived_above: &[String]) -> TokenStream {
        let item = self.model.enm.item;
        let existing = user_derives(item);
        let derives = DERIVES
            .iter()
            .filter(|d| !existing.iter().chain(derived_above).any(|x| x == *d))
            .map(|d| format_ident!("{d}"))
            .collect::<Vec<_>>();
        let stripped = strip_helpers(item);
        let derive = (!derives.is_empty()).then(|| quote!(#[derive(#(#derives),*)]));
        quote! {
            #derive
            #stripped
        }
    }

    fn enum_impl(&self) -> TokenStream {
        let krate = &self.krate;
        let e = self.enum_ident;
        let repr = &self.repr;
        let enm = &self.model.enm;
        let all = (0..enm.states.len()).map(|i| self.variant(i));
        let initial = self.variant(self.model.initial);
        let table = self.model.transitions.iter().map(|t| self.table_entry(t));
        let diagram = mermaid(self.model);
        let diagram_doc = format!("```text\n{diagram}```");
        let names = enm.states.iter().enumerate().map(|(i, s)| {
            let v = self.variant(i);
            let name = &s.name;
            quote!(#v => #name,)
        });
        let (raws, variants): (Vec<_>, Vec<_>) =
            self.raw_arms(0..enm.states.len()).into_iter().unzip();
        let type_name = e.to_string();
        let is_terminal_body = self.is_terminal_body();
        let can_transition_body = self.can_transition_body();
        quote! {
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
                    match self { #(#variants => #raws,)* }
                }

                /// The state whose discriminant is `raw`; an error naming the value otherwise.
                #[inline]
                pub const fn from_raw(raw: #repr) -> ::core::result::Result<#e, #krate::UnknownStateError> {
                    match raw {
                        #(#raws => ::core::result::Result::Ok(#variants),)*
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
        }
    }

    fn is_terminal_body(&self) -> TokenStream {
        let states = &self.model.enm.states;
        let terminals: Vec<TokenStream> = (0..states.len())
            .filter(|&i| states[i].terminal.is_some())
            .map(|i| self.variant(i))
            .collect();
        if terminals.is_empty() {
            quote!({
                let _ = self;
                false
            })
        } else {
            quote!(::core::matches!(self, #(#terminals)|*))
        }
    }

    /// `match from { sources => matches!(to, targets) }`, sources sharing a target set merged
    /// into one arm: the shape clippy accepts (no unnested or-patterns, no identical arms).
    fn can_transition_body(&self) -> TokenStream {
        let n = self.model.enm.states.len();
        let mut pairs = Vec::new();
        for t in &self.model.transitions {
            for &s in &t.sources {
                if !pairs.contains(&(s, t.target)) {
                    pairs.push((s, t.target));
                }
            }
        }
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
        if arms.is_empty() {
            return quote!({
                let _ = (from, to);
                false
            });
        }
        let covered: usize = arms.iter().map(|(sources, _)| sources.len()).sum();
        let arms = arms.iter().map(|(sources, targets)| {
            let sources = sources.iter().map(|&s| self.variant(s));
            let targets = targets.iter().map(|&t| self.variant(t));
            quote!(#(#sources)|* => ::core::matches!(to, #(#targets)|*),)
        });
        let wildcard = (covered < n).then(|| quote!(_ => false,));
        quote!(match from { #(#arms)* #wildcard })
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

    /// `Display`, `TryFrom<repr>`, `From<Enum> for repr` and `LifecycleState`.
    fn enum_trait_impls(&self) -> TokenStream {
        let krate = &self.krate;
        let e = self.enum_ident;
        let repr = &self.repr;
        let machine = &self.model.machine;
        let type_name = e.to_string();
        quote! {
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
        }
    }

    fn machine_struct(&self) -> TokenStream {
        let krate = &self.krate;
        let p = &self.private;
        let (e, o, atomic) = (self.enum_ident, &self.o, &self.atomic);
        let machine = &self.model.machine;
        let vis = &self.model.enm.item.vis;
        let diagram = mermaid(self.model);
        let doc = format!(
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
             # Diagram\n\n```text\n{diagram}```",
            repr = self.repr,
        );
        quote! {
            #[doc = #doc]
            #vis struct #machine<#o = #krate::NoObserver> {
                raw: #p::#atomic,
                observer: #o,
            }
        }
    }

    /// The constructors and reads (any observer), then `force` and the `try_*` methods
    /// (observers of this enum).
    fn machine_impl(&self) -> TokenStream {
        let krate = &self.krate;
        let p = &self.private;
        let (e, o, atomic, repr) = (self.enum_ident, &self.o, &self.atomic, &self.repr);
        let machine = &self.model.machine;
        let machine_name = machine.to_string();
        let enm = &self.model.enm;
        let initial = enm.states[self.model.initial].ident;
        let initial_raw = self.raw(self.model.initial);
        let new_doc = format!("A machine in the initial state, `{initial}`, that nobody observes.");
        let with_observer_doc = format!(
            "A machine in the initial state, `{initial}`, that reports every successful \
             transition and every `force` to `observer`."
        );
        let predicates = enm.states.iter().enumerate().map(|(i, s)| {
            let method = format_ident!("is_{}", s.name);
            let raw = self.raw(i);
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
        let (raws, variants): (Vec<_>, Vec<_>) =
            self.raw_arms(0..enm.states.len()).into_iter().unzip();
        let try_methods = self
            .model
            .transitions
            .iter()
            .enumerate()
            .map(|(i, t)| self.try_method(i, t));
        quote! {
            impl #machine {
                #p::maybe_const_fn! {
                    #[doc = #new_doc]
                    #[must_use]
                    pub fn new() -> Self {
                        Self::with_observer(#krate::NoObserver)
                    }
                }
            }

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
                        #(#raws => #variants,)*
                        // The atomic is private and only ever stores `to_raw` values.
                        _ => ::core::unreachable!(),
                    }
                }
            }

            impl<#o: #krate::TransitionObserver<#e>> #machine<#o> {
                /// Sets the state unconditionally and returns the one it replaced.
                ///
                /// The escape hatch: it ignores the transition table, so prefer a `try_*` method.
                /// It is an `AcqRel` swap, with the same visibility guarantees as a transition, and
                /// is reported to the observer's `on_force`.
                #[inline]
                pub fn force(&self, to: #e) -> #e {
                    let from = Self::decode(self.raw.swap(to.to_raw(), #p::Ordering::AcqRel));
                    #p::trace_transition(#machine_name, "force", from, to);
                    #krate::TransitionObserver::<#e>::on_force(&self.observer, from, to);
                    from
                }

                #(#try_methods)*
            }
        }
    }

    /// `try_<name>`: one call into `lifecycle_core::__private::Step`, which holds the
    /// compare-and-swap, its memory orderings, the report of a success and the cold
    /// construction of a refusal.
    fn try_method(&self, index: usize, t: &Resolved) -> TokenStream {
        let krate = &self.krate;
        let p = &self.private;
        let e = self.enum_ident;
        let method = format_ident!("try_{}", t.name);
        let states = &self.model.enm.states;
        let machine_name = self.model.machine.to_string();
        let target_raw = self.raw(t.target);
        let user_attrs = &t.decl.attrs;
        let sources_text = if t.from_any && states[t.target].terminal.is_some() {
            "any non-terminal state".to_owned()
        } else if t.from_any {
            format!("any non-terminal state but `{}`", states[t.target].ident)
        } else {
            t.sources
                .iter()
                .map(|&s| format!("`{}`", states[s].ident))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let doc = format!(
            "Transition `{}`: {sources_text} → `{}`.\n\nReturns the state it left, or an error \
             carrying the state observed when the compare-and-swap failed. A successful \
             transition is reported to the observer.",
            t.name, states[t.target].ident
        );
        let step = quote! {
            #p::Step {
                machine: #machine_name,
                transition: &#e::TRANSITIONS[#index],
                target: #target_raw,
            }
        };
        let call = if let [single] = t.sources[..] {
            let (raw, from) = (self.raw(single), self.variant(single));
            quote!(#step.from_one(&self.raw, #raw, #from, &self.observer))
        } else {
            let raws = t.sources.iter().map(|&s| self.raw(s));
            quote! {
                #step.from_any_of(
                    &self.raw,
                    |raw| ::core::matches!(raw, #(#raws)|*),
                    &self.observer,
                )
            }
        };
        quote! {
            #(#user_attrs)*
            #[doc = #doc]
            #[must_use = "a refused transition is an error to handle"]
            #[inline]
            pub fn #method(&self) -> ::core::result::Result<#e, #krate::TransitionError<#e>> {
                #call
            }
        }
    }

    /// `Default`, `Debug` and `StateMachine`.
    fn machine_trait_impls(&self) -> TokenStream {
        let krate = &self.krate;
        let (e, o) = (self.enum_ident, &self.o);
        let machine = &self.model.machine;
        let machine_name = machine.to_string();
        // By name, then by value: names are unique in the table, and the whole entry must
        // match for it to count as this machine's.
        let dispatch = self.model.transitions.iter().enumerate().map(|(i, t)| {
            let name = &t.name;
            let method = format_ident!("try_{}", t.name);
            quote!(#name if *transition == #e::TRANSITIONS[#i] => self.#method(),)
        });
        quote! {
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
}
