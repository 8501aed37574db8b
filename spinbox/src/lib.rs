//! # spinbox
//!
//! The VM shim lifecycle built on `lifecycle-core`.

pub mod state;
pub mod vm;
