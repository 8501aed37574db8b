//! Network namespaces: created and bound to a file, entered on a thread, removed.
