//! `#[state_machine]`: parse ([`attr`], [`ast`], [`placement`]) → validate ([`valid`]) →
//! expand ([`expand`], or [`fallback`] for a rejected declaration).

mod ast;
mod attr;
mod expand;
mod fallback;
mod placement;
mod valid;

use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use quote::quote;

/// Expands `#[state_machine(args)] item`. On error the enum and a stub of its machine are
/// emitted beside the errors, so the rest of the crate still type-checks and only the
/// macro's errors show.
#[allow(clippy::needless_pass_by_value)] // the proc-macro entry point hands over owned streams
pub fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = match crate::item::parse(&input) {
        Ok(item) => item,
        Err(tokens) => return tokens,
    };
    let syn::Item::Enum(item) = item else {
        return crate::item::wrong_kind(
            &item,
            &input,
            "`#[state_machine]` applies to a fieldless enum; its variants are the states",
        );
    };
    let mut cx = Ctxt::default();
    let args = attr::parse_args(&mut cx, args);
    let krate = args
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::lifecycle_core));
    let enm = ast::Enum::from_item(&mut cx, &item);
    let repr = enm.repr;
    let parsed_ok = cx.is_ok();
    let derived_above = placement::derived_above();
    match valid::validate(&mut cx, enm, &args) {
        Some(model) if parsed_ok && cx.is_ok() => expand::expand(&model, krate, &derived_above),
        _ => {
            let fallback = fallback::fallback(&item, &args, &krate, repr, &derived_above);
            let errors = cx.into_compile_errors();
            quote!(#fallback #errors)
        }
    }
}
