//! Shared fixtures for the cross-crate suites.
//!
//! [`firecracker`] declares a second lifecycle, different from spinbox's, with the same macro,
//! to show the framework serves other runtimes: it has a multi-source transition and a `*`
//! transition, and no `#[repr]` (so the default `u8`).
//!
//! The README is included below so that its Rust examples run as doctests.
#![doc = include_str!("../../README.md")]

pub mod assets;
pub mod bench;
pub mod firecracker;
