//! The `#[state_machine(...)]` argument grammar:
//!
//! ```text
//! args        := option (',' option)* ','?
//! option      := 'machine' '=' Ident
//!              | 'crate' '=' (Path | "string")
//!              | 'transitions' '(' transition (',' transition)* ','? ')'
//! transition  := outer-attribute* Ident ':' sources '=>' Ident
//! sources     := '*' | Ident ('|' Ident)*
//! ```

use proc_macro2::Span;
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Attribute, Ident, LitStr, Path, Token};

mod kw {
    syn::custom_keyword!(machine);
    syn::custom_keyword!(transitions);
}

/// Where a transition may start.
pub enum Sources {
    /// `*`: any non-terminal state.
    Any(Token![*]),
    /// `A | B`: exactly these states.
    List(Vec<Ident>),
}

/// One row of the transition table.
pub struct TransitionDecl {
    /// Doc comments and other attributes, forwarded to the `try_*` method.
    pub attrs: Vec<Attribute>,
    /// The transition's name as written.
    pub name: Ident,
    /// Its sources.
    pub sources: Sources,
    /// Its target state.
    pub target: Ident,
}

impl Parse for TransitionDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let name: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let sources = if input.peek(Token![*]) {
            Sources::Any(input.parse()?)
        } else {
            let list = Punctuated::<Ident, Token![|]>::parse_separated_nonempty(input)?;
            Sources::List(list.into_iter().collect())
        };
        input.parse::<Token![=>]>()?;
        let target: Ident = input.parse()?;
        Ok(Self {
            attrs,
            name,
            sources,
            target,
        })
    }
}

/// An option given to `#[state_machine(...)]`, kept with its key for error spans.
pub enum MachineOption {
    /// `machine = Name`.
    Machine(kw::machine, Ident),
    /// `crate = path`.
    Crate(Token![crate], Path),
    /// `transitions(...)`.
    Transitions(kw::transitions, Vec<TransitionDecl>),
}

impl MachineOption {
    fn key_span(&self) -> Span {
        match self {
            Self::Machine(k, _) => k.span,
            Self::Crate(k, _) => k.span,
            Self::Transitions(k, _) => k.span,
        }
    }

    fn key_name(&self) -> &'static str {
        match self {
            Self::Machine(..) => "machine",
            Self::Crate(..) => "crate",
            Self::Transitions(..) => "transitions",
        }
    }
}

impl Parse for MachineOption {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::machine) {
            let key = input.parse()?;
            input.parse::<Token![=]>()?;
            Ok(Self::Machine(key, input.parse()?))
        } else if lookahead.peek(Token![crate]) {
            let key = input.parse()?;
            input.parse::<Token![=]>()?;
            let path = if input.peek(LitStr) {
                input.parse::<LitStr>()?.parse()?
            } else {
                Path::parse_mod_style(input)?
            };
            Ok(Self::Crate(key, path))
        } else if lookahead.peek(kw::transitions) {
            let key = input.parse()?;
            let content;
            syn::parenthesized!(content in input);
            let rows = Punctuated::<TransitionDecl, Token![,]>::parse_terminated(&content)?;
            Ok(Self::Transitions(key, rows.into_iter().collect()))
        } else if input.peek(Ident::peek_any) {
            let unknown = Ident::parse_any(input)?;
            Err(syn::Error::new(
                unknown.span(),
                format!(
                    "unknown option `{unknown}`; expected `machine = Name`, `crate = path` or `transitions(...)`"
                ),
            ))
        } else {
            Err(lookahead.error())
        }
    }
}

/// All options, duplicates rejected at their second occurrence.
#[derive(Default)]
pub struct MachineArgs {
    /// The generated machine's name, if given.
    pub machine: Option<Ident>,
    /// The path to lifecycle-core, if renamed.
    pub krate: Option<Path>,
    /// The transition table (empty if not given).
    pub transitions: Vec<TransitionDecl>,
}

impl Parse for MachineArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let options = Punctuated::<MachineOption, Token![,]>::parse_terminated(input)?;
        let mut args = Self::default();
        let mut seen: Vec<(&'static str, Span)> = Vec::new();
        for option in options {
            if let Some(&(_, first)) = seen.iter().find(|(k, _)| *k == option.key_name()) {
                let mut error = syn::Error::new(
                    option.key_span(),
                    format!("duplicate option `{}`", option.key_name()),
                );
                error.combine(syn::Error::new(first, "first given here"));
                return Err(error);
            }
            seen.push((option.key_name(), option.key_span()));
            match option {
                MachineOption::Machine(_, name) => args.machine = Some(name),
                MachineOption::Crate(_, path) => args.krate = Some(path),
                MachineOption::Transitions(_, rows) => args.transitions = rows,
            }
        }
        Ok(args)
    }
}
