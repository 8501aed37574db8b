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

use crate::ctxt::Ctxt;
use crate::options::{eq_path, eq_value, Grammar};
use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Attribute, Ident, Path, Token};

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

/// All options, as given (the shared grammar of [`crate::options`]: every mistake reported,
/// the valid options kept).
#[derive(Default)]
pub struct MachineArgs {
    /// The generated machine's name, if given.
    pub machine: Option<Ident>,
    /// The path to lifecycle-core, if renamed.
    pub krate: Option<Path>,
    /// The transition table (empty if not given).
    pub transitions: Vec<TransitionDecl>,
}

const GRAMMAR: Grammar = Grammar {
    options: &[
        ("machine", "machine = Name"),
        ("crate", "crate = path"),
        ("transitions", "transitions(...)"),
    ],
};

/// Parses the options, recording every error in `cx`.
pub fn parse_args(cx: &mut Ctxt, args: TokenStream) -> MachineArgs {
    let mut parsed = MachineArgs::default();
    GRAMMAR.parse(cx, args, |_, key, input| {
        if key == "machine" {
            parsed.machine = Some(eq_value(input)?);
        } else if key == "crate" {
            parsed.krate = Some(eq_path(input)?);
        } else {
            let content;
            syn::parenthesized!(content in input);
            let rows = Punctuated::<TransitionDecl, Token![,]>::parse_terminated(&content)?;
            parsed.transitions = rows.into_iter().collect();
        }
        Ok(())
    });
    parsed
}
