//! Types shared by every machine that `#[state_machine]` generates: the transition table
//! entries, the error of a refused transition, and the traits that let generic code (reference
//! models, property tests, tooling) work with any declared lifecycle.

use core::fmt;
use core::hash::Hash;

/// One declared transition: its name, the states it may leave, and the state it enters.
///
/// Every generated state enum exposes its whole table as [`LifecycleState::TRANSITIONS`]
/// (and as an inherent `TRANSITIONS` constant), in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition<S: 'static> {
    /// The transition's name as declared (`start_creating`); the machine method is `try_<name>`.
    pub name: &'static str,
    /// The states the transition may leave, in declaration order. For a transition declared
    /// from `*` this is every non-terminal state except the target.
    pub sources: &'static [S],
    /// The state the transition enters.
    pub target: S,
    /// Whether the transition was declared from `*`: any non-terminal state except the
    /// target (which `*` never includes).
    pub from_any: bool,
}

impl<S: PartialEq + Copy> Transition<S> {
    /// Whether `state` is one of this transition's sources.
    pub fn allows(&self, state: S) -> bool {
        self.sources.contains(&state)
    }
}

/// A transition was refused because the machine was not in one of its source states.
///
/// Carries the transition (name, allowed sources, target) and the state the machine was
/// observed in at the instant the compare-and-swap failed.
///
/// [`StateMachine::try_apply`] also refuses an entry that is not in the machine's transition
/// table; [`is_undeclared`](Self::is_undeclared) tells that case apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransitionError<S: 'static> {
    transition: &'static Transition<S>,
    observed: S,
}

impl<S: LifecycleState> TransitionError<S> {
    /// Whether the transition is not in `S`'s table ([`LifecycleState::TRANSITIONS`], compared
    /// by value), so it was refused whatever the state: only [`StateMachine::try_apply`]
    /// given a hand-built entry refuses for that reason.
    ///
    /// Computed on demand (a scan of the table), so refusals from `try_*` carry nothing
    /// more than the entry and the observed state.
    pub fn is_undeclared(&self) -> bool {
        !S::TRANSITIONS.contains(self.transition)
    }
}

impl<S: Copy> TransitionError<S> {
    /// Builds the error; generated code calls this with an entry of the const table.
    pub const fn new(transition: &'static Transition<S>, observed: S) -> Self {
        Self {
            transition,
            observed,
        }
    }

    /// The refused transition's table entry.
    pub const fn transition(&self) -> &'static Transition<S> {
        self.transition
    }

    /// The refused transition's name.
    pub const fn name(&self) -> &'static str {
        self.transition.name
    }

    /// The states the transition would have accepted.
    pub const fn allowed_sources(&self) -> &'static [S] {
        self.transition.sources
    }

    /// The state the transition would have entered.
    pub const fn target(&self) -> S {
        self.transition.target
    }

    /// The state the machine was in when the transition was refused.
    pub const fn observed(&self) -> S {
        self.observed
    }
}

impl<S: LifecycleState> fmt::Display for TransitionError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transition `{}` to `{}` refused: ",
            self.transition.name, self.transition.target
        )?;
        if self.is_undeclared() {
            return write!(
                f,
                "not in the machine's transition table (machine is `{}`)",
                self.observed
            );
        }
        write!(f, "machine is `{}`, expected ", self.observed)?;
        if self.transition.from_any {
            f.write_str("any non-terminal state")?;
            if !self.transition.target.is_terminal() {
                write!(f, " but `{}`", self.transition.target)?;
            }
            return Ok(());
        }
        for (i, source) in self.transition.sources.iter().enumerate() {
            match i {
                0 => {}
                i if i + 1 == self.transition.sources.len() => f.write_str(" or ")?,
                _ => f.write_str(", ")?,
            }
            write!(f, "`{source}`")?;
        }
        Ok(())
    }
}

impl<S: LifecycleState> fmt::Debug for TransitionError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TransitionError");
        debug
            .field("transition", &self.transition.name)
            .field("target", &format_args!("{}", self.transition.target))
            .field("observed", &format_args!("{}", self.observed));
        if self.is_undeclared() {
            debug.field("undeclared", &true);
        }
        debug.finish()
    }
}

impl<S: LifecycleState> std::error::Error for TransitionError<S> {}

/// A raw integer that is not the discriminant of any state of the named enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnknownStateError {
    /// The state enum's name (`ShimState`).
    pub state_type: &'static str,
    /// The value that matched no state.
    pub raw: u64,
}

impl fmt::Display for UnknownStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a valid {} value", self.raw, self.state_type)
    }
}

impl std::error::Error for UnknownStateError {}

/// Implemented by every enum annotated with `#[state_machine]`.
///
/// The same items exist as inherent constants and `const fn`s on the enum; the trait is for
/// code that is generic over lifecycles.
pub trait LifecycleState:
    Copy + Eq + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static
{
    /// The unsigned integer the machine stores (`u8` unless the enum has another `#[repr]`).
    type Raw: Copy + Eq + fmt::Debug;
    /// The generated atomic machine.
    type Machine: StateMachine<State = Self>;
    /// The enum's name.
    const TYPE_NAME: &'static str;
    /// Every state, in declaration order.
    const ALL: &'static [Self];
    /// The state a new machine starts in.
    const INITIAL: Self;
    /// Every declared transition, in declaration order.
    const TRANSITIONS: &'static [Transition<Self>];
    /// A Mermaid `stateDiagram-v2` of the machine, built at compile time.
    const MERMAID: &'static str;

    /// The state's `snake_case` name (`ShuttingDown` → `shutting_down`).
    fn name(self) -> &'static str;
    /// Whether no transition leaves this state.
    fn is_terminal(self) -> bool;
    /// The state's discriminant.
    fn to_raw(self) -> Self::Raw;
    /// The state whose discriminant is `raw`.
    fn from_raw(raw: Self::Raw) -> Result<Self, UnknownStateError>;
    /// Whether some declared transition leads from `from` to `to`.
    fn can_transition(from: Self, to: Self) -> bool;
}

/// Implemented by every generated atomic machine (with any observer whose type is `Send +
/// Sync`).
pub trait StateMachine: Send + Sync {
    /// The state enum.
    type State: LifecycleState;
    /// The current state (an `Acquire` load).
    fn state(&self) -> Self::State;
    /// Sets the state unconditionally and returns the previous one (the escape hatch).
    fn force(&self, to: Self::State) -> Self::State;
    /// Attempts `transition`, an entry of [`LifecycleState::TRANSITIONS`], exactly as its
    /// generated `try_<name>` method does (observer included).
    ///
    /// An entry is recognized by value: a copy of a table entry works too. An entry that is
    /// not in the table (a `Transition` built by hand) changes nothing and is refused with a
    /// [`TransitionError`] carrying it and the current state, whose
    /// [`is_undeclared`](TransitionError::is_undeclared) is true; this never panics.
    fn try_apply(
        &self,
        transition: &'static Transition<Self::State>,
    ) -> Result<Self::State, TransitionError<Self::State>>;
}
