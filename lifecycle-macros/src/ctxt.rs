//! An error accumulator, so one build reports every mistake in a declaration at once.

use proc_macro2::TokenStream;
use quote::ToTokens;
use std::fmt::Display;

/// Collects `syn::Error`s while a declaration is parsed and validated.
#[derive(Default)]
pub struct Ctxt {
    errors: Vec<syn::Error>,
}

impl Ctxt {
    /// Records an error pointing at `tokens`.
    pub fn error_spanned_by<T: ToTokens, M: Display>(&mut self, tokens: T, message: M) {
        self.errors.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error at the second occurrence of something, with a note at the first.
    pub fn duplicate<A: ToTokens, B: ToTokens, M: Display, N: Display>(
        &mut self,
        second: B,
        message: M,
        first: A,
        note: N,
    ) {
        let mut error = syn::Error::new_spanned(second, message);
        error.combine(syn::Error::new_spanned(first, note));
        self.errors.push(error);
    }

    /// Records an already-built error.
    pub fn syn_error(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// Whether nothing has been recorded.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Every recorded message, notes included, in order (for unit tests).
    #[cfg(test)]
    pub fn messages(&self) -> Vec<String> {
        self.errors
            .iter()
            .flat_map(|e| e.clone().into_iter().map(|m| m.to_string()))
            .collect()
    }

    /// All recorded errors as `compile_error!` invocations.
    pub fn into_compile_errors(self) -> TokenStream {
        self.errors
            .into_iter()
            .map(|e| e.to_compile_error())
            .collect()
    }
}
