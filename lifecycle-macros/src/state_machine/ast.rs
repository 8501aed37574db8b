//! The annotated enum, read into a form that keeps every original node for error spans.

use crate::ctxt::Ctxt;
use syn::{Attribute, Expr, ExprLit, ExprUnary, Fields, Ident, ItemEnum, Lit, UnOp};

/// The unsigned integer the machine stores.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Repr {
    U8,
    U16,
    U32,
    U64,
}

impl Repr {
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::U16 => "u16",
            Self::U32 => "u32",
            Self::U64 => "u64",
        }
    }

    pub fn atomic(self) -> &'static str {
        match self {
            Self::U8 => "AtomicU8",
            Self::U16 => "AtomicU16",
            Self::U32 => "AtomicU32",
            Self::U64 => "AtomicU64",
        }
    }

    pub fn max(self) -> u64 {
        match self {
            Self::U8 => u8::MAX.into(),
            Self::U16 => u16::MAX.into(),
            Self::U32 => u32::MAX.into(),
            Self::U64 => u64::MAX,
        }
    }
}

/// One state (enum variant).
pub struct State<'a> {
    pub ident: &'a Ident,
    /// The discriminant, explicit or implied (previous + 1, starting at 0). `None` when the
    /// written discriminant could not be evaluated (an error has been recorded).
    pub raw: Option<u64>,
    /// The `#[initial]` attribute, if present.
    pub initial: Option<&'a Attribute>,
    /// The `#[terminal]` attribute, if present.
    pub terminal: Option<&'a Attribute>,
    /// The `snake_case` name.
    pub name: String,
}

/// The enum as the macro sees it.
pub struct Enum<'a> {
    pub item: &'a ItemEnum,
    pub repr: Repr,
    pub states: Vec<State<'a>>,
}

fn is_helper(attr: &Attribute, name: &str) -> bool {
    attr.path().is_ident(name)
}

/// Whether an attribute is one of this macro's helpers (removed from the output).
pub fn is_state_helper(attr: &Attribute) -> bool {
    is_helper(attr, "initial") || is_helper(attr, "terminal")
}

fn read_repr(cx: &mut Ctxt, item: &ItemEnum) -> Repr {
    let mut repr = Repr::U8;
    for attr in item.attrs.iter().filter(|a| a.path().is_ident("repr")) {
        let result = attr.parse_nested_meta(|meta| {
            let Some(ident) = meta.path.get_ident() else {
                return Ok(());
            };
            match ident.to_string().as_str() {
                "u8" => repr = Repr::U8,
                "u16" => repr = Repr::U16,
                "u32" => repr = Repr::U32,
                "u64" => repr = Repr::U64,
                "i8" | "i16" | "i32" | "i64" | "i128" | "u128" | "isize" | "usize" => {
                    return Err(meta.error(format!(
                        "`#[repr({ident})]` is not supported by `#[state_machine]`: use u8, u16, u32 or u64"
                    )));
                }
                _ => {}
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    repr
}

/// Evaluates an explicit discriminant: an integer literal, or a negated one.
fn eval_discriminant(cx: &mut Ctxt, expr: &Expr, repr: Repr) -> Option<u64> {
    let out_of_range = |cx: &mut Ctxt, shown: &str| {
        cx.error_spanned_by(
            expr,
            format!(
                "discriminant {shown} does not fit in the machine's `{}` (0..={})",
                repr.name(),
                repr.max()
            ),
        );
    };
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => match int.base10_parse::<u64>() {
            Ok(value) if value <= repr.max() => Some(value),
            _ => {
                out_of_range(cx, int.base10_digits());
                None
            }
        },
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr: inner,
            ..
        }) if matches!(
            **inner,
            Expr::Lit(ExprLit {
                lit: Lit::Int(_),
                ..
            })
        ) =>
        {
            out_of_range(cx, &format!("-{}", quote::ToTokens::to_token_stream(inner)));
            None
        }
        _ => {
            cx.error_spanned_by(
                expr,
                "`#[state_machine]` discriminants must be integer literals",
            );
            None
        }
    }
}

impl<'a> Enum<'a> {
    /// Reads the enum, recording every structural error (fields, generics, repr, discriminants).
    pub fn from_item(cx: &mut Ctxt, item: &'a ItemEnum) -> Self {
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            cx.error_spanned_by(
                &item.generics,
                "`#[state_machine]` enums cannot be generic: a state is a plain value",
            );
        }
        let repr = read_repr(cx, item);
        let mut states = Vec::with_capacity(item.variants.len());
        let mut next: Option<u64> = Some(0);
        for variant in &item.variants {
            if !matches!(variant.fields, Fields::Unit) {
                cx.error_spanned_by(
                    &variant.fields,
                    format!(
                        "state `{}` has fields: `#[state_machine]` states are fieldless variants",
                        variant.ident
                    ),
                );
            }
            let raw = match &variant.discriminant {
                Some((_, expr)) => eval_discriminant(cx, expr, repr),
                None => match next {
                    Some(v) if v <= repr.max() => Some(v),
                    Some(v) => {
                        cx.error_spanned_by(
                            &variant.ident,
                            format!(
                                "implicit discriminant {v} of `{}` does not fit in `{}`",
                                variant.ident,
                                repr.name()
                            ),
                        );
                        None
                    }
                    None => None,
                },
            };
            next = raw.and_then(|v| v.checked_add(1));
            let find = |name: &str| -> Vec<&'a Attribute> {
                variant
                    .attrs
                    .iter()
                    .filter(|a| is_helper(a, name))
                    .collect()
            };
            let initial = find("initial");
            let terminal = find("terminal");
            for attr in initial.iter().chain(&terminal) {
                if let Err(e) = attr.meta.require_path_only() {
                    cx.syn_error(e);
                }
            }
            for dup in initial.iter().skip(1).chain(terminal.iter().skip(1)) {
                cx.error_spanned_by(dup, "attribute given twice on the same state");
            }
            states.push(State {
                ident: &variant.ident,
                raw,
                initial: initial.first().copied(),
                terminal: terminal.first().copied(),
                name: crate::case::to_snake_case(&variant.ident.to_string()),
            });
        }
        Self { item, repr, states }
    }

    /// The state named `ident`, if declared.
    pub fn state(&self, ident: &Ident) -> Option<usize> {
        self.states.iter().position(|s| s.ident == ident)
    }
}
