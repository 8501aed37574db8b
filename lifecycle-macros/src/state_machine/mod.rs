//! `#[state_machine]`: parse ([`attr`], [`ast`]) → validate ([`valid`]) → expand ([`expand`]).

mod ast;
mod attr;
mod expand;
mod valid;

use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use quote::quote;

/// Expands `#[state_machine(args)] item`. On error the item is emitted as written (minus
/// the helper attributes) beside the errors, so the rest of the crate still type-checks.
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
    let parsed_ok = cx.is_ok();
    match valid::validate(&mut cx, enm, &args) {
        Some(model) if parsed_ok && cx.is_ok() => expand::expand(&model, krate),
        _ => {
            let stripped = expand::strip_helpers(&item);
            let errors = cx.into_compile_errors();
            quote!(#stripped #errors)
        }
    }
}
