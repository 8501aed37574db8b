//! # spinbox
//!
//! The VM shim lifecycle built on `lifecycle-core`.

pub mod cleanup;
pub mod state;
pub mod vm;
