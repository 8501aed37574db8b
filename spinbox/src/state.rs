//! Placeholder: the shim state machine (issue 2).
