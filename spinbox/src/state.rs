//! The shim's lifecycle: [`ShimState`], declared with `#[state_machine]`, and
//! [`ShimStateMachine`], the generated atomic machine plus the intentional-shutdown flag.
//!
//! ```text
//! Idle ──start_creating──▶ Creating ──mark_created──▶ Created ──start──▶ Running
//!   ▲                         │                          │                    │
//!   └──mark_creation_failed───┘                          └──start_deleting────┴──▶ Deleting
//!
//!                        (any non-terminal) ──shut_down──▶ ShuttingDown
//! ```
//!
//! These are the Go upstream's six states (SPEC §9): `Created` is a VM that is up with its
//! container created but not started; `start` makes it `Running`.

use core::sync::atomic::{AtomicBool, Ordering};
use lifecycle_core::observe::{NoObserver, TransitionObserver};
use lifecycle_core::state_machine;

/// Where the shim is in its life. One byte; see [`AtomicShimState`] for the atomic machine.
#[state_machine(transitions(
    /// A create request claims the idle shim.
    start_creating: Idle => Creating,
    /// The VM booted and its agent answered: created, not started.
    mark_created: Creating => Created,
    /// Creation failed and its partial cleanup ran: the shim may be created again.
    mark_creation_failed: Creating => Idle,
    /// A start request moves the created shim to running.
    start: Created => Running,
    /// A delete request claims the created or running shim.
    start_deleting: Created | Running => Deleting,
    /// Shutdown from anywhere (delete finished, shutdown request, VM died).
    shut_down: * => ShuttingDown,
))]
#[repr(u8)]
pub enum ShimState {
    /// Nothing created yet, or a failed creation was cleaned up.
    #[initial]
    Idle = 0,
    /// A VM is being created.
    Creating = 1,
    /// The VM is up and its agent answers; the container is created but not started.
    Created = 2,
    /// The VM is up and the container was started.
    Running = 3,
    /// The VM is being deleted.
    Deleting = 4,
    /// The shim is going away; nothing leaves this state.
    #[terminal]
    ShuttingDown = 5,
}

/// A consistent-enough view of the shim: its state and whether shutdown was asked for.
///
/// The two fields are read one after the other, not as one atomic unit; each is a value the
/// machine really held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShimSnapshot {
    /// The lifecycle state.
    pub state: ShimState,
    /// Whether the shutdown in progress (if any) was requested rather than caused by a crash.
    pub intentional_shutdown: bool,
}

/// The shim's state machine: [`AtomicShimState`] plus the intentional-shutdown flag.
///
/// Everything goes through `&self`, so one value can be shared by every task of the shim.
/// `O` observes every successful transition (the shim facade sends them to its event
/// stream); the default observes nothing, at no cost.
#[derive(Debug)]
pub struct ShimStateMachine<O = NoObserver> {
    state: AtomicShimState<O>,
    intentional_shutdown: AtomicBool,
}

impl ShimStateMachine {
    /// A machine in [`ShimState::Idle`], flag unset.
    #[cfg(not(loom))]
    #[must_use]
    pub const fn new() -> Self {
        Self {
            state: AtomicShimState::new(),
            intentional_shutdown: AtomicBool::new(false),
        }
    }

    /// A machine in [`ShimState::Idle`], flag unset (not `const` under loom, whose atomics
    /// have no `const` constructors).
    #[cfg(loom)]
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: AtomicShimState::new(),
            intentional_shutdown: AtomicBool::new(false),
        }
    }
}

impl Default for ShimStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl<O: TransitionObserver<ShimState>> ShimStateMachine<O> {
    /// A machine in [`ShimState::Idle`], flag unset, whose transitions `observer` sees.
    pub fn with_observer(observer: O) -> Self {
        Self {
            state: AtomicShimState::with_observer(observer),
            intentional_shutdown: AtomicBool::new(false),
        }
    }

    /// The atomic state machine, for its `try_*` transitions and predicates.
    pub fn machine(&self) -> &AtomicShimState<O> {
        &self.state
    }

    /// The current state.
    pub fn state(&self) -> ShimState {
        self.state.state()
    }

    /// Whether shutdown was requested (rather than caused by the VM dying).
    pub fn is_intentional_shutdown(&self) -> bool {
        // Acquire pairs with the Release in `set_intentional_shutdown`, so whoever sees the
        // flag also sees what the requester wrote before setting it.
        self.intentional_shutdown.load(Ordering::Acquire)
    }

    /// Marks (or clears) the shutdown in progress as intentional.
    pub fn set_intentional_shutdown(&self, intentional: bool) {
        self.intentional_shutdown
            .store(intentional, Ordering::Release);
    }

    /// The state and the flag.
    pub fn snapshot(&self) -> ShimSnapshot {
        ShimSnapshot {
            state: self.state(),
            intentional_shutdown: self.is_intentional_shutdown(),
        }
    }
}

impl<O> core::ops::Deref for ShimStateMachine<O> {
    type Target = AtomicShimState<O>;

    fn deref(&self) -> &AtomicShimState<O> {
        &self.state
    }
}
