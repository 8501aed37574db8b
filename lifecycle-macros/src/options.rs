//! The option grammar both attribute macros share (`#[state_machine(...)]`,
//! `#[cleanup_phases(...)]` and the per-field `#[phase(...)]`):
//!
//! ```text
//! options := option (',' option)* ','?
//! option  := key value          value: whatever the key takes, up to the next top-level ','
//! ```
//!
//! The list is split at its top-level commas first, and each option is parsed on its own, so
//! one bad option never hides the others:
//!
//! - an unknown key is reported at the key, with the list of known options;
//! - a repeated key is reported at its second occurrence, with a note at the first, and the
//!   first one is kept;
//! - a value that does not parse is reported where it goes wrong;
//! - every other option is still applied, so the checks that follow see what the user meant
//!   and do not add errors that only follow from the first one.

use crate::ctxt::Ctxt;
use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::ext::IdentExt as _;
use syn::parse::{ParseStream, Parser as _};
use syn::{Ident, LitStr, Path, Token};

/// The options one attribute accepts.
pub struct Grammar {
    /// Each option's key and how it is written (`("machine", "machine = Name")`), in the
    /// order the "expected" list of an unknown-option error names them.
    pub options: &'static [(&'static str, &'static str)],
}

impl Grammar {
    /// The tail of an unknown-option error: "expected `a = X`, `b = Y` or `c(...)`".
    fn expected(&self) -> String {
        let forms: Vec<String> = self
            .options
            .iter()
            .map(|(_, form)| format!("`{form}`"))
            .collect();
        match forms.split_last() {
            Some((last, [])) => format!("expected {last}"),
            Some((last, rest)) => format!("expected {} or {last}", rest.join(", ")),
            None => "this attribute takes no options".to_owned(),
        }
    }

    /// Parses `args`, recording every error in `cx`, and calls `apply` once per known,
    /// first-given option with its key and a stream positioned after the key. `apply` must
    /// consume the whole value; what it leaves is reported as unexpected.
    pub fn parse(
        &self,
        cx: &mut Ctxt,
        args: TokenStream,
        mut apply: impl FnMut(&mut Ctxt, &Ident, ParseStream) -> syn::Result<()>,
    ) {
        let mut seen: Vec<Ident> = Vec::new();
        for option in split_top_level(args) {
            let (key, value) = match key_and_value(option) {
                Ok(parts) => parts,
                Err(error) => {
                    cx.syn_error(error);
                    continue;
                }
            };
            if !self.options.iter().any(|(known, _)| key == known) {
                cx.error_spanned_by(&key, format!("unknown option `{key}`; {}", self.expected()));
                continue;
            }
            if let Some(first) = seen.iter().find(|first| **first == key) {
                cx.duplicate(
                    &key,
                    format!("duplicate option `{key}`"),
                    first,
                    "first given here",
                );
                continue;
            }
            let parser = |input: ParseStream| apply(cx, &key, input);
            if let Err(error) = parser.parse2(value) {
                cx.syn_error(error);
            }
            seen.push(key);
        }
    }
}

/// Splits an option list at its top-level commas (commas inside `(...)` stay with their
/// option); empty entries (a trailing comma) are dropped.
fn split_top_level(args: TokenStream) -> Vec<TokenStream> {
    let mut options = Vec::new();
    let mut current = Vec::new();
    for token in args {
        match &token {
            TokenTree::Punct(p) if p.as_char() == ',' && p.spacing() == Spacing::Alone => {
                options.push(core::mem::take(&mut current));
            }
            _ => current.push(token),
        }
    }
    options.push(current);
    options
        .into_iter()
        .filter(|tokens| !tokens.is_empty())
        .map(TokenStream::from_iter)
        .collect()
}

/// An option's key (any identifier, keywords such as `crate` included) and the rest.
fn key_and_value(option: TokenStream) -> syn::Result<(Ident, TokenStream)> {
    let parser = |input: ParseStream| {
        if !input.peek(Ident::peek_any) {
            return Err(input.error("expected an option name"));
        }
        let key = Ident::parse_any(input)?;
        let value: TokenStream = input.parse()?;
        Ok((key, value))
    };
    parser.parse2(option)
}

/// `= T`, the value of a `key = value` option.
pub fn eq_value<T: syn::parse::Parse>(input: ParseStream) -> syn::Result<T> {
    input.parse::<Token![=]>()?;
    input.parse()
}

/// `= path` or `= "path"`, the value of a `crate = …` option.
pub fn eq_path(input: ParseStream) -> syn::Result<Path> {
    input.parse::<Token![=]>()?;
    if input.peek(LitStr) {
        input.parse::<LitStr>()?.parse()
    } else {
        Path::parse_mod_style(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    const GRAMMAR: Grammar = Grammar {
        options: &[("name", "name = Ident"), ("crate", "crate = path")],
    };

    /// Parses `args` and returns the applied options and the error messages, in order.
    fn run(args: TokenStream) -> (Vec<String>, Vec<String>) {
        let mut cx = Ctxt::default();
        let mut applied = Vec::new();
        GRAMMAR.parse(&mut cx, args, |_, key, input| {
            let value = if key == "crate" {
                let path = eq_path(input)?;
                quote!(#path).to_string()
            } else {
                eq_value::<Ident>(input)?.to_string()
            };
            applied.push(format!("{key}={value}"));
            Ok(())
        });
        (applied, cx.messages())
    }

    #[test]
    fn every_valid_option_is_applied() {
        let (applied, errors) = run(quote!(name = A, crate = "::x::y",));
        assert_eq!(applied, ["name=A", "crate=:: x :: y"]);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn a_duplicate_is_reported_once_and_the_others_still_apply() {
        let (applied, errors) = run(quote!(name = A, crate = k, name = B));
        assert_eq!(applied, ["name=A", "crate=k"]);
        assert_eq!(errors, ["duplicate option `name`", "first given here"]);
    }

    #[test]
    fn an_unknown_option_lists_the_known_ones() {
        let (applied, errors) = run(quote!(runner = R, name = A));
        assert_eq!(applied, ["name=A"]);
        assert_eq!(
            errors,
            ["unknown option `runner`; expected `name = Ident` or `crate = path`"]
        );
    }

    #[test]
    fn a_bad_value_does_not_hide_the_next_option() {
        let (applied, errors) = run(quote!(name = 3, crate = k extra, flag = x));
        // `crate = k` parsed before the stray token was found; the error stops the build.
        assert_eq!(applied, ["crate=k"]);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0], "expected identifier");
        assert_eq!(errors[1], "unexpected token");
        assert!(errors[2].starts_with("unknown option `flag`"));
    }

    #[test]
    fn a_bad_value_still_counts_as_given() {
        // Two mistakes, two errors: the bad value, and giving the option twice.
        let (applied, errors) = run(quote!(name = 3, name = A));
        assert!(applied.is_empty(), "{applied:?}");
        assert_eq!(
            errors,
            [
                "expected identifier",
                "duplicate option `name`",
                "first given here"
            ]
        );
    }

    #[test]
    fn a_list_that_does_not_start_with_a_name() {
        let (applied, errors) = run(quote!(= A, name = B));
        assert_eq!(applied, ["name=B"]);
        assert_eq!(errors, ["expected an option name"]);
    }

    #[test]
    fn commas_inside_groups_stay_with_their_option() {
        let tokens = split_top_level(quote!(a(x, y), b = 1,));
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].to_string(), "a (x , y)");
    }
}
