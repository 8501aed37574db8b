//! What both attribute macros do first: parse the annotated item, and when it is not the
//! kind they apply to, emit it unchanged beside an error at its keyword (so the rest of the
//! crate still type-checks and the IDE keeps working).

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};

/// The annotated item, or the tokens to emit instead (the input plus the parse error).
pub fn parse(input: &TokenStream) -> Result<syn::Item, TokenStream> {
    syn::parse2(input.clone()).map_err(|e| {
        let error = e.to_compile_error();
        quote!(#input #error)
    })
}

/// The input unchanged, plus `message` at the item's keyword (or the whole item).
pub fn wrong_kind(item: &syn::Item, input: &TokenStream, message: &str) -> TokenStream {
    let blame = match item {
        syn::Item::Struct(s) => s.struct_token.to_token_stream(),
        syn::Item::Enum(e) => e.enum_token.to_token_stream(),
        syn::Item::Union(u) => u.union_token.to_token_stream(),
        syn::Item::Fn(f) => f.sig.fn_token.to_token_stream(),
        syn::Item::Trait(t) => t.trait_token.to_token_stream(),
        syn::Item::Type(t) => t.type_token.to_token_stream(),
        _ => input.clone(),
    };
    let error = syn::Error::new_spanned(blame, message).to_compile_error();
    quote!(#input #error)
}
