//! Placeholder: the cleanup engine is being written (issue 3).
