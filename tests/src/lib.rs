//! Shared fixtures for the cross-crate suites.
