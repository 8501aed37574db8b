//! `#[cleanup_phases]`: parse ([`attr`], [`ast`]) → validate ([`valid`]) → expand ([`expand`]).

mod ast;
mod attr;
mod expand;
mod valid;

use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use quote::quote;

/// Expands `#[cleanup_phases(args)] item`. On error the struct is emitted as written (minus
/// the `#[phase]` helpers) beside the errors, so the rest of the crate still type-checks.
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
    let parsed = ast::Input::from_syn(&mut cx, args, &item);
    let parsed_ok = cx.is_ok();
    match valid::validate(&mut cx, &parsed) {
        Some(model) if parsed_ok => expand::expand(&model),
        _ => {
            let stripped = expand::strip_helpers(&item);
            let errors = cx.into_compile_errors();
            quote!(#stripped #errors)
        }
    }
}
