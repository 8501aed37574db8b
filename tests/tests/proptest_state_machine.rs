//! Property tests: random operation sequences on the generated machines agree with a plain
//! reference model built from the generated const transition table.

use lifecycle_core::{LifecycleState, StateMachine, TransitionError};
use proptest::prelude::*;
use spinbox::state::{AtomicShimState, ShimState};
use tests::firecracker::{FirecrackerVm, VmState};

#[derive(Debug, Clone)]
enum Op {
    /// Try the transition at this index of the table.
    Transition(usize),
    /// Force the state at this index of `ALL`.
    Force(usize),
    /// Read the state and the predicates.
    Read,
}

fn ops(transitions: usize, states: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => (0..transitions).prop_map(Op::Transition),
            1 => (0..states).prop_map(Op::Force),
            2 => Just(Op::Read),
        ],
        0..64,
    )
}

/// The reference: a plain variable and the table, nothing generated but the table itself.
fn check<S, M>(machine: &M, ops: &[Op]) -> Result<(), TestCaseError>
where
    S: LifecycleState,
    M: StateMachine<State = S>,
{
    let mut model = S::INITIAL;
    prop_assert_eq!(machine.state(), model);
    for op in ops {
        match *op {
            Op::Transition(i) => {
                let t = &S::TRANSITIONS[i];
                let expected: Result<S, TransitionError<S>> = if t.sources.contains(&model) {
                    let from = model;
                    model = t.target;
                    Ok(from)
                } else {
                    Err(TransitionError::new(t, model))
                };
                let got = machine.try_apply(t);
                prop_assert_eq!(got, expected, "{} from {:?}", t.name, op);
            }
            Op::Force(i) => {
                let to = S::ALL[i];
                prop_assert_eq!(machine.force(to), model);
                model = to;
            }
            Op::Read => prop_assert_eq!(machine.state(), model),
        }
    }
    prop_assert_eq!(machine.state(), model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn shim_machine_matches_reference(ops in ops(ShimState::TRANSITIONS.len(), ShimState::ALL.len())) {
        check(&AtomicShimState::new(), &ops)?;
    }

    #[test]
    fn firecracker_machine_matches_reference(ops in ops(VmState::TRANSITIONS.len(), VmState::ALL.len())) {
        check(&FirecrackerVm::new(), &ops)?;
    }

    #[test]
    fn raw_conversion_is_total_and_exact(raw in any::<u8>()) {
        match ShimState::from_raw(raw) {
            Ok(state) => prop_assert_eq!(state.to_raw(), raw),
            Err(e) => {
                prop_assert!(ShimState::ALL.iter().all(|s| s.to_raw() != raw));
                prop_assert_eq!(e.raw, u64::from(raw));
            }
        }
    }
}

#[test]
fn predicates_agree_with_state_for_every_state() {
    for &s in ShimState::ALL {
        let m = AtomicShimState::new();
        let _ = m.force(s);
        assert_eq!(m.is_created(), s == ShimState::Created);
        assert_eq!(m.is_running(), s == ShimState::Running);
        assert_eq!(m.is_shutting_down(), s == ShimState::ShuttingDown);
    }
}

/// The shim's lifecycle written out by hand from SPEC §3/§9, independent of the generated
/// table: where `transition` leads from `from`, if it is allowed there.
fn shim_reference(from: ShimState, transition: &str) -> Option<ShimState> {
    use ShimState::{Created, Creating, Deleting, Idle, Running, ShuttingDown};
    match (transition, from) {
        ("start_creating", Idle) => Some(Creating),
        ("mark_created", Creating) => Some(Created),
        ("mark_creation_failed", Creating) => Some(Idle),
        ("start", Created) => Some(Running),
        ("start_deleting", Created | Running) => Some(Deleting),
        ("shut_down", Idle | Creating | Created | Running | Deleting) => Some(ShuttingDown),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random sequences of transitions by name: the generated machine follows the hand-written
    /// model, so a wrong table cannot agree with itself.
    #[test]
    fn shim_machine_matches_the_hand_written_lifecycle(
        picks in prop::collection::vec(0..ShimState::TRANSITIONS.len(), 0..64)
    ) {
        let machine = AtomicShimState::new();
        let mut model = ShimState::Idle;
        for i in picks {
            let t = &ShimState::TRANSITIONS[i];
            if let Some(to) = shim_reference(model, t.name) {
                prop_assert_eq!(machine.try_apply(t), Ok(model), "{} from {}", t.name, model);
                model = to;
            } else {
                let err = machine.try_apply(t).unwrap_err();
                prop_assert_eq!(err.observed(), model);
            }
            prop_assert_eq!(machine.state(), model);
        }
    }
}
