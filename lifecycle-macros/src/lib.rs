//! Placeholder while the macros are written (issue 2, issue 3).
#![allow(missing_docs)]
use proc_macro::TokenStream;

#[proc_macro_attribute]
pub fn state_machine(_args: TokenStream, input: TokenStream) -> TokenStream {
    input
}

#[proc_macro_attribute]
pub fn cleanup_phases(_args: TokenStream, input: TokenStream) -> TokenStream {
    input
}
