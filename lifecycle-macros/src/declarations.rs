//! spinbox's real declarations, read from its source files and handed over exactly as rustc
//! hands them to an attribute macro (doc comments included, as `#[doc = "..."]`), so the
//! expansion snapshots and the expansion benchmark cannot drift from them.

use proc_macro2::TokenStream;
use quote::ToTokens as _;

/// `spinbox/src/state.rs`: `ShimState`.
pub const SHIM_STATE_SOURCE: &str = include_str!("../../spinbox/src/state.rs");
/// `spinbox/src/shim/session.rs`: `SessionState`.
pub const SESSION_STATE_SOURCE: &str = include_str!("../../spinbox/src/shim/session.rs");

/// The arguments of the `#[macro_name(...)]` attribute on the item `item_name` of `source`,
/// and that item with the attribute removed (the macro's two inputs).
///
/// Panics when the source has no such item: the snapshot or benchmark must then be updated.
pub fn attribute_input(
    source: &str,
    item_name: &str,
    macro_name: &str,
) -> (TokenStream, TokenStream) {
    let file = syn::parse_file(source).expect("the source file parses");
    for mut item in file.items {
        let (attrs, ident) = match &mut item {
            syn::Item::Enum(e) => (&mut e.attrs, e.ident.to_string()),
            syn::Item::Struct(s) => (&mut s.attrs, s.ident.to_string()),
            _ => continue,
        };
        if ident != item_name {
            continue;
        }
        let position = attrs
            .iter()
            .position(|a| {
                a.path()
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == macro_name)
            })
            .unwrap_or_else(|| panic!("`{item_name}` has no `#[{macro_name}]`"));
        let attr = attrs.remove(position);
        let args = match attr.meta {
            syn::Meta::List(list) => list.tokens,
            _ => TokenStream::new(),
        };
        return (args, item.into_token_stream());
    }
    panic!("no item `{item_name}` in the source");
}
