//! The annotated struct, checked: named fields only, at least one, no two fields mapping to
//! the same phase, no generics.

use super::attr::parse_field_attrs;
use crate::case::{to_camel_case, to_snake_case};
use crate::ctxt::Ctxt;
use quote::format_ident;
use syn::{Field, Fields, Ident, ItemStruct};

/// One phase: a field of the struct.
pub struct PhaseField<'a> {
    pub field: &'a Field,
    pub ident: &'a Ident,
    /// The phase enum's variant (`HotplugStop`).
    pub variant: Ident,
    /// The `snake_case` name (`hotplug_stop`).
    pub name: String,
    /// The `#[phase(timeout = ...)]`, as (seconds, nanoseconds).
    pub timeout: Option<(u64, u32)>,
}

/// Reads and checks the struct's fields.
pub fn phases<'a>(cx: &mut Ctxt, item: &'a ItemStruct) -> Vec<PhaseField<'a>> {
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        cx.error_spanned_by(
            &item.generics,
            "`#[cleanup_phases]` structs cannot be generic: each field holds a `Phase`",
        );
    }
    let named = match &item.fields {
        Fields::Named(named) => named,
        Fields::Unnamed(unnamed) => {
            cx.error_spanned_by(
                unnamed,
                "`#[cleanup_phases]` needs named fields: each field's name is its phase's name",
            );
            return Vec::new();
        }
        Fields::Unit => {
            cx.error_spanned_by(
                &item.ident,
                "`#[cleanup_phases]` needs a struct with named fields, one per phase",
            );
            return Vec::new();
        }
    };
    if named.named.is_empty() {
        cx.error_spanned_by(
            named,
            "`#[cleanup_phases]` needs at least one phase (field); use `Phase::noop()` for phases that do not apply",
        );
    }
    let mut phases: Vec<PhaseField<'a>> = Vec::with_capacity(named.named.len());
    for field in &named.named {
        let Some(ident) = field.ident.as_ref() else {
            continue;
        };
        let text = ident.to_string();
        let phase = PhaseField {
            field,
            ident,
            variant: format_ident!("{}", to_camel_case(&text)),
            name: to_snake_case(text.strip_prefix("r#").unwrap_or(&text)),
            timeout: parse_field_attrs(cx, &field.attrs),
        };
        if let Some(first) = phases
            .iter()
            .find(|p| p.variant == phase.variant || p.name == phase.name)
        {
            cx.duplicate(
                ident,
                format!(
                    "field `{ident}` maps to phase `{}` (`{}`), as field `{}` already does",
                    phase.variant, phase.name, first.ident
                ),
                first.ident,
                "first mapped here",
            );
            continue;
        }
        phases.push(phase);
    }
    phases
}
