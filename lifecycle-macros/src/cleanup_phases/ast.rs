//! The annotated struct as the macro sees it: its options and one [`PhaseField`] per named
//! field, each keeping the syn node it came from so errors point at the user's tokens.
//! Parsing only; the checks live in [`super::valid`].

use super::attr::{parse_args, parse_field_attrs, PhasesArgs, Timeout};
use crate::case::{to_camel_case, to_snake_case};
use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use quote::format_ident;
use syn::{Field, Fields, Ident, ItemStruct};

/// One phase: a named field of the struct.
pub struct PhaseField<'a> {
    pub field: &'a Field,
    pub ident: &'a Ident,
    /// The phase enum's variant (`HotplugStop`).
    pub variant: Ident,
    /// The `snake_case` name (`hotplug_stop`).
    pub name: String,
    /// The `#[phase(timeout = ...)]`, if given.
    pub timeout: Option<Timeout>,
}

/// The struct and its options, parsed.
pub struct Input<'a> {
    pub item: &'a ItemStruct,
    pub args: PhasesArgs,
    /// One entry per named field, in order (none for tuple and unit structs).
    pub fields: Vec<PhaseField<'a>>,
}

impl<'a> Input<'a> {
    /// Parses the options and the fields' `#[phase(...)]` attributes, recording errors in `cx`.
    pub fn from_syn(cx: &mut Ctxt, args: TokenStream, item: &'a ItemStruct) -> Self {
        let args = parse_args(cx, args);
        let fields = match &item.fields {
            Fields::Named(named) => named.named.iter().filter_map(|f| phase(cx, f)).collect(),
            Fields::Unnamed(_) | Fields::Unit => Vec::new(),
        };
        Self { item, args, fields }
    }
}

fn phase<'a>(cx: &mut Ctxt, field: &'a Field) -> Option<PhaseField<'a>> {
    let ident = field.ident.as_ref()?;
    let text = ident.to_string();
    let text = text.strip_prefix("r#").unwrap_or(&text);
    Some(PhaseField {
        field,
        ident,
        variant: format_ident!("{}", to_camel_case(text)),
        name: to_snake_case(text),
        timeout: parse_field_attrs(cx, &field.attrs),
    })
}
