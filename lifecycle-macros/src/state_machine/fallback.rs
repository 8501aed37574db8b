//! What a rejected declaration expands to: the enum with stubs of its generated items, and a
//! stub of its machine, so that the only errors shown are the macro's own (as thiserror's
//! fallback implementations do).
//!
//! Without them every use of the machine type, of one of its methods or of the enum's
//! generated items would add a "cannot find" or "no method" error on top of the real mistake. The stub's bodies are
//! `unreachable!()`: a crate with a rejected declaration never builds, so they never run.

use super::ast::Repr;
use super::attr::MachineArgs;
use super::expand::{strip_helpers, user_derives, DERIVES};
use super::valid::OBSERVER_PARAM;
use crate::case::to_snake_case;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Fields, ItemEnum, Path};

/// The enum (helpers and discriminants stripped) and, when its name is usable, the machine.
pub fn fallback(
    item: &ItemEnum,
    args: &MachineArgs,
    krate: &Path,
    repr: Repr,
    derived_above: &[String],
) -> TokenStream {
    let mut stripped = strip_helpers(item);
    // The discriminants may be what was rejected (out of range for the repr): rustc would
    // report each again, and every later one as an overflow.
    for variant in &mut stripped.variants {
        variant.discriminant = None;
    }
    let fieldless = item
        .variants
        .iter()
        .all(|v| matches!(v.fields, Fields::Unit));
    let existing = user_derives(item);
    let derives: Vec<_> = DERIVES
        .iter()
        .filter(|d| fieldless && !existing.iter().chain(derived_above).any(|x| x == *d))
        .map(|d| format_ident!("{d}"))
        .collect();
    let derive = (!derives.is_empty()).then(|| quote!(#[derive(#(#derives),*)]));
    let usable = fieldless && item.generics.params.is_empty();
    let items = usable.then(|| enum_stub(item, krate, repr));
    let machine = machine_stub(item, args, krate);
    quote! {
        #derive
        #stripped
        #items
        #machine
    }
}

/// The enum's generated associated items and trait impls, with the same signatures.
fn enum_stub(item: &ItemEnum, krate: &Path, repr: Repr) -> TokenStream {
    let e = &item.ident;
    let repr = format_ident!("{}", repr.name());
    let initial = item.variants.first().map(|v| {
        let v = &v.ident;
        quote!(pub const INITIAL: #e = #e::#v;)
    });
    quote! {
        #[allow(dead_code, missing_docs, clippy::all, clippy::pedantic)]
        impl #e {
            pub const ALL: &'static [#e] = &[];
            #initial
            pub const TRANSITIONS: &'static [#krate::Transition<#e>] = &[];
            pub const MERMAID: &'static str = "";
            pub const fn name(self) -> &'static str { ::core::unreachable!() }
            pub const fn is_terminal(self) -> bool { ::core::unreachable!() }
            pub const fn to_raw(self) -> #repr { ::core::unreachable!() }
            pub const fn from_raw(_raw: #repr) -> ::core::result::Result<#e, #krate::UnknownStateError> {
                ::core::unreachable!()
            }
            pub const fn can_transition(_from: #e, _to: #e) -> bool { ::core::unreachable!() }
        }

        #[automatically_derived]
        impl ::core::fmt::Display for #e {
            fn fmt(&self, _f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::unreachable!()
            }
        }
    }
}

fn machine_stub(item: &ItemEnum, args: &MachineArgs, krate: &Path) -> Option<TokenStream> {
    let e = &item.ident;
    let machine = args
        .machine
        .clone()
        .unwrap_or_else(|| format_ident!("Atomic{e}"));
    // Those names are themselves the error, and a generic enum cannot be named without its
    // parameters: a stub would only add a second error.
    if machine == *e || machine == OBSERVER_PARAM || *e == OBSERVER_PARAM {
        return None;
    }
    if !item.generics.params.is_empty() {
        return None;
    }
    let o = format_ident!("{OBSERVER_PARAM}");
    let vis = &item.vis;
    // Each method once, even when two names collide (that collision is an error already).
    let mut methods: Vec<String> = Vec::new();
    let mut unique = |method: String| {
        let new = !methods.contains(&method);
        methods.push(method.clone());
        new.then(|| format_ident!("{method}"))
    };
    let predicates: Vec<_> = item
        .variants
        .iter()
        .filter_map(|v| unique(format!("is_{}", to_snake_case(&v.ident.to_string()))))
        .collect();
    let transitions: Vec<_> = args
        .transitions
        .iter()
        .filter_map(|t| unique(format!("try_{}", to_snake_case(&t.name.to_string()))))
        .collect();
    let predicates = predicates
        .iter()
        .map(|method| quote!(pub fn #method(&self) -> bool { ::core::unreachable!() }));
    let transitions = transitions.iter().map(|method| {
        quote! {
            pub fn #method(&self) -> ::core::result::Result<#e, #krate::TransitionError<#e>> {
                ::core::unreachable!()
            }
        }
    });
    Some(quote! {
        #[allow(dead_code, missing_docs)]
        #vis struct #machine<#o = #krate::NoObserver>(::core::marker::PhantomData<#o>);

        #[allow(dead_code, missing_docs, clippy::all, clippy::pedantic)]
        impl #machine {
            pub const fn new() -> Self { ::core::unreachable!() }
        }

        #[allow(dead_code, missing_docs, clippy::all, clippy::pedantic)]
        impl<#o> #machine<#o> {
            pub const fn with_observer(_observer: #o) -> Self { ::core::unreachable!() }
            pub fn observer(&self) -> &#o { ::core::unreachable!() }
            pub fn state(&self) -> #e { ::core::unreachable!() }
            pub fn force(&self, _to: #e) -> #e { ::core::unreachable!() }
            #(#predicates)*
            #(#transitions)*
        }

        #[automatically_derived]
        impl ::core::default::Default for #machine {
            fn default() -> Self { ::core::unreachable!() }
        }
    })
}
