//! The one place the framework takes its synchronization primitives from.
//!
//! Every atomic and lock used by generated state machines and by the cleanup engine comes
//! through this module, so that building with `RUSTFLAGS="--cfg loom"` swaps them all for
//! [loom]'s model-checked versions at once (the same seam as `tokio/src/loom`).
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
#[cfg(not(loom))]
pub use std::sync::{Mutex, MutexGuard};

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
#[cfg(loom)]
pub use loom::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the data if a previous holder panicked.
///
/// The framework only keeps plain bookkeeping behind its locks (wakers, recorded outcomes),
/// which stays consistent even when a holder unwinds, so poisoning carries no information.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // loom's `lock` returns std's `LockResult` too, so one body serves both.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
