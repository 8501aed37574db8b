//! Behaviour of spinbox's generated `ShimState` machine: every scenario of the Go package it
//! descends from, plus the generated introspection.

use lifecycle_core::{LifecycleState, StateMachine, Transition, TransitionError};
use spinbox::state::{AtomicShimState, ShimSnapshot, ShimState, ShimStateMachine};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

static GLOBAL: AtomicShimState = AtomicShimState::new();
static GLOBAL_SHIM: ShimStateMachine = ShimStateMachine::new();

fn in_state(state: ShimState) -> AtomicShimState {
    let machine = AtomicShimState::new();
    let _ = machine.force(state);
    machine
}

#[test]
fn machine_is_one_byte_and_lives_in_a_static() {
    assert_eq!(std::mem::size_of::<AtomicShimState>(), 1);
    assert_eq!(GLOBAL.state(), ShimState::Idle);
    assert_eq!(GLOBAL_SHIM.state(), ShimState::Idle);
}

#[test]
fn starts_idle() {
    let sm = ShimStateMachine::new();
    assert_eq!(sm.state(), ShimState::Idle);
    assert!(sm.is_idle());
    assert!(!sm.is_intentional_shutdown());
    assert_eq!(ShimState::INITIAL, ShimState::Idle);
    assert_eq!(AtomicShimState::default().state(), ShimState::Idle);
}

#[test]
fn happy_path_returns_the_state_left() {
    let sm = AtomicShimState::new();
    assert_eq!(sm.try_start_creating(), Ok(ShimState::Idle));
    assert_eq!(sm.state(), ShimState::Creating);
    assert_eq!(sm.try_mark_created(), Ok(ShimState::Creating));
    assert_eq!(sm.state(), ShimState::Created);
    assert_eq!(sm.try_start(), Ok(ShimState::Created));
    assert_eq!(sm.state(), ShimState::Running);
    assert_eq!(sm.try_start_deleting(), Ok(ShimState::Running));
    assert_eq!(sm.state(), ShimState::Deleting);
    assert_eq!(sm.try_shut_down(), Ok(ShimState::Deleting));
    assert_eq!(sm.state(), ShimState::ShuttingDown);
}

#[test]
fn create_then_start_goes_created_then_running() {
    let sm = ShimStateMachine::new();
    sm.try_start_creating().unwrap();
    assert_eq!(sm.try_mark_created(), Ok(ShimState::Creating));
    assert!(sm.is_created());
    assert!(!sm.is_running());
    assert_eq!(sm.try_start(), Ok(ShimState::Created));
    assert!(sm.is_running());
}

#[test]
fn cannot_start_twice() {
    let sm = in_state(ShimState::Created);
    assert_eq!(sm.try_start(), Ok(ShimState::Created));
    let err = sm.try_start().unwrap_err();
    assert_eq!(err.observed(), ShimState::Running);
    assert_eq!(err.allowed_sources(), &[ShimState::Created]);
    assert_eq!(err.target(), ShimState::Running);
    assert_eq!(sm.state(), ShimState::Running);
}

#[test]
fn start_only_from_created() {
    for &state in ShimState::ALL {
        let sm = in_state(state);
        let result = sm.try_start();
        if state == ShimState::Created {
            assert_eq!(result, Ok(state));
        } else {
            assert_eq!(result.unwrap_err().observed(), state);
            assert_eq!(sm.state(), state);
        }
    }
}

#[test]
fn delete_from_created_without_a_start() {
    let sm = in_state(ShimState::Created);
    assert_eq!(sm.try_start_deleting(), Ok(ShimState::Created));
    assert!(sm.is_deleting());
    assert_eq!(sm.try_shut_down(), Ok(ShimState::Deleting));
    let err = in_state(ShimState::Idle).try_start_deleting().unwrap_err();
    assert_eq!(
        err.allowed_sources(),
        &[ShimState::Created, ShimState::Running]
    );
}

#[test]
fn cannot_create_from_created() {
    let sm = in_state(ShimState::Created);
    let err = sm.try_start_creating().unwrap_err();
    assert_eq!(err.observed(), ShimState::Created);
    assert_eq!(
        err.to_string(),
        "transition `start_creating` to `creating` refused: machine is `created`, expected `idle`"
    );
    assert_eq!(
        sm.try_mark_created().unwrap_err().observed(),
        ShimState::Created
    );
    assert_eq!(sm.state(), ShimState::Created);
}

#[test]
fn creation_failure_returns_to_idle_and_can_retry() {
    let sm = AtomicShimState::new();
    sm.try_start_creating().unwrap();
    assert_eq!(sm.try_mark_creation_failed(), Ok(ShimState::Creating));
    assert!(sm.is_idle());
    assert_eq!(sm.try_start_creating(), Ok(ShimState::Idle));
}

#[test]
fn shut_down_from_every_non_terminal_state() {
    for &state in ShimState::ALL.iter().filter(|s| !s.is_terminal()) {
        let sm = in_state(state);
        assert_eq!(sm.try_shut_down(), Ok(state));
        assert!(sm.is_shutting_down());
    }
    let sm = in_state(ShimState::ShuttingDown);
    let err = sm.try_shut_down().unwrap_err();
    assert_eq!(err.observed(), ShimState::ShuttingDown);
}

/// Every (transition, state) pair: allowed pairs succeed, all others fail with the exact error
/// and leave the state untouched.
#[test]
fn every_transition_from_every_state() {
    let mut refused = 0;
    for (index, transition) in ShimState::TRANSITIONS.iter().enumerate() {
        for &state in ShimState::ALL {
            let sm = in_state(state);
            let result = sm.try_apply(transition);
            if transition.allows(state) {
                assert_eq!(result, Ok(state), "{} from {state}", transition.name);
                assert_eq!(sm.state(), transition.target);
            } else {
                refused += 1;
                let err: TransitionError<ShimState> = result.unwrap_err();
                assert_eq!(err.name(), transition.name);
                assert_eq!(err.transition(), &ShimState::TRANSITIONS[index]);
                assert_eq!(err.allowed_sources(), transition.sources);
                assert_eq!(err.target(), transition.target);
                assert_eq!(err.observed(), state);
                assert_eq!(sm.state(), state, "a refused transition changes nothing");
            }
        }
    }
    // 6 transitions × 6 states; the allowed pairs counted from the table, not assumed:
    // 1 + 1 + 1 + 1 + 2 + 5 (shut_down from every non-terminal state).
    let allowed: usize = ShimState::TRANSITIONS.iter().map(|t| t.sources.len()).sum();
    assert_eq!(refused, 6 * 6 - allowed);
    assert_eq!(allowed, 11);
}

#[test]
fn invalid_transitions_report_the_observed_state() {
    let sm = in_state(ShimState::Running);
    let err = sm.try_start_creating().unwrap_err();
    assert_eq!(err.observed(), ShimState::Running);
    assert_eq!(err.allowed_sources(), &[ShimState::Idle]);
    assert_eq!(err.target(), ShimState::Creating);
    assert_eq!(
        err.to_string(),
        "transition `start_creating` to `creating` refused: machine is `running`, expected `idle`"
    );
    let sm = AtomicShimState::new();
    assert_eq!(
        sm.try_start_deleting().unwrap_err().observed(),
        ShimState::Idle
    );
    assert_eq!(
        sm.try_mark_created().unwrap_err().observed(),
        ShimState::Idle
    );
    let sm = in_state(ShimState::ShuttingDown);
    assert_eq!(
        sm.try_shut_down().unwrap_err().to_string(),
        "transition `shut_down` to `shutting_down` refused: machine is `shutting_down`, expected any non-terminal state"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(err_for_box());
    assert!(boxed.source().is_none());
}

fn err_for_box() -> TransitionError<ShimState> {
    AtomicShimState::new().try_start_deleting().unwrap_err()
}

#[test]
fn hundred_threads_race_start_creating_exactly_one_wins() {
    for _ in 0..20 {
        let sm = Arc::new(ShimStateMachine::new());
        let barrier = Arc::new(Barrier::new(100));
        let wins = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let (sm, barrier, wins) = (sm.clone(), barrier.clone(), wins.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match sm.try_start_creating() {
                        Ok(from) => {
                            assert_eq!(from, ShimState::Idle);
                            wins.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => assert_eq!(e.observed(), ShimState::Creating),
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(wins.load(Ordering::Relaxed), 1);
        assert_eq!(sm.state(), ShimState::Creating);
    }
}

#[test]
fn force_returns_the_previous_state() {
    let sm = AtomicShimState::new();
    assert_eq!(sm.force(ShimState::Running), ShimState::Idle);
    assert_eq!(sm.force(ShimState::ShuttingDown), ShimState::Running);
    // Force ignores the table, even out of a terminal state.
    assert_eq!(sm.force(ShimState::Idle), ShimState::ShuttingDown);
    assert!(sm.is_idle());
    assert_eq!(
        StateMachine::force(&sm, ShimState::Deleting),
        ShimState::Idle
    );
}

#[test]
fn intentional_shutdown_flag_and_snapshot() {
    let sm = ShimStateMachine::new();
    assert_eq!(
        sm.snapshot(),
        ShimSnapshot {
            state: ShimState::Idle,
            intentional_shutdown: false
        }
    );
    sm.set_intentional_shutdown(true);
    assert!(sm.is_intentional_shutdown());
    sm.try_start_creating().unwrap();
    sm.try_shut_down().unwrap();
    assert_eq!(
        sm.snapshot(),
        ShimSnapshot {
            state: ShimState::ShuttingDown,
            intentional_shutdown: true
        }
    );
    sm.set_intentional_shutdown(false);
    assert!(!sm.snapshot().intentional_shutdown);
    assert!(std::ptr::eq(sm.machine(), std::ptr::from_ref(&*sm)));
}

#[test]
fn exactly_one_predicate_holds() {
    for &state in ShimState::ALL {
        let sm = in_state(state);
        let holds = [
            sm.is_idle(),
            sm.is_creating(),
            sm.is_created(),
            sm.is_running(),
            sm.is_deleting(),
            sm.is_shutting_down(),
        ];
        assert_eq!(holds.iter().filter(|&&b| b).count(), 1, "{state}");
        assert!(holds[ShimState::ALL.iter().position(|&s| s == state).unwrap()]);
    }
}

#[test]
fn names_and_raw_values() {
    let names: Vec<String> = ShimState::ALL.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "idle",
            "creating",
            "created",
            "running",
            "deleting",
            "shutting_down"
        ]
    );
    assert_eq!(ShimState::ShuttingDown.name(), "shutting_down");
    assert_eq!(
        format!("{:>8}|", ShimState::Idle),
        "    idle|",
        "Display pads"
    );
    for (raw, &state) in (0u8..).zip(ShimState::ALL) {
        assert_eq!(state.to_raw(), raw);
        assert_eq!(u8::from(state), raw);
        assert_eq!(ShimState::from_raw(raw), Ok(state));
        assert_eq!(ShimState::try_from(raw), Ok(state));
    }
    assert_eq!(ShimState::Created.to_raw(), 2);
    assert_eq!(ShimState::ShuttingDown.to_raw(), 5);
    let err = ShimState::try_from(6).unwrap_err();
    assert_eq!(err.raw, 6);
    assert_eq!(err.state_type, "ShimState");
    assert_eq!(err.to_string(), "6 is not a valid ShimState value");
    assert!(ShimState::from_raw(255).is_err());
    assert!(ShimState::ShuttingDown.is_terminal());
    assert!(!ShimState::Deleting.is_terminal());
}

#[test]
#[allow(clippy::items_after_statements)] // the const block below shows const-context use
fn can_transition_agrees_with_the_table() {
    for &from in ShimState::ALL {
        for &to in ShimState::ALL {
            let declared = ShimState::TRANSITIONS
                .iter()
                .any(|t| t.target == to && t.allows(from));
            assert_eq!(
                ShimState::can_transition(from, to),
                declared,
                "{from} -> {to}"
            );
        }
    }
    // `can_transition` is usable in const context.
    const CAN: [bool; 2] = [
        ShimState::can_transition(ShimState::Idle, ShimState::Creating),
        ShimState::can_transition(ShimState::Idle, ShimState::Running),
    ];
    assert_eq!(CAN, [true, false]);
}

#[test]
fn transition_table_and_diagram() {
    let names: Vec<&str> = ShimState::TRANSITIONS.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "start_creating",
            "mark_created",
            "mark_creation_failed",
            "start",
            "start_deleting",
            "shut_down"
        ]
    );
    let shut_down = &ShimState::TRANSITIONS[5];
    assert!(shut_down.from_any);
    assert_eq!(
        shut_down.sources,
        &[
            ShimState::Idle,
            ShimState::Creating,
            ShimState::Created,
            ShimState::Running,
            ShimState::Deleting
        ]
    );
    assert!(ShimState::MERMAID.contains("    Creating --> Created: mark_created\n"));
    assert!(ShimState::MERMAID.contains("    Created --> Running: start\n"));
    assert!(ShimState::MERMAID.contains("    Created --> Deleting: start_deleting\n"));
    assert!(ShimState::MERMAID.starts_with("stateDiagram-v2\n    [*] --> Idle\n"));
    assert!(ShimState::MERMAID.contains("    Creating --> Idle: mark_creation_failed\n"));
    assert!(ShimState::MERMAID.contains("    Deleting --> ShuttingDown: shut_down\n"));
    assert!(ShimState::MERMAID.ends_with("    ShuttingDown --> [*]\n"));
    assert_eq!(<ShimState as LifecycleState>::MERMAID, ShimState::MERMAID);
    assert_eq!(<ShimState as LifecycleState>::TYPE_NAME, "ShimState");
}

/// `try_apply` knows an entry by value: a copy of a table entry is that transition; an entry
/// that is not in the table, even one named like a declared transition, is refused as
/// undeclared and changes nothing.
#[test]
fn try_apply_refuses_entries_not_in_the_table() {
    static LAUNCH: Transition<ShimState> = Transition {
        name: "launch",
        sources: &[ShimState::Idle],
        target: ShimState::Running,
        from_any: false,
    };
    static FAKE_START: Transition<ShimState> = Transition {
        name: "start_creating",
        sources: &[ShimState::Idle],
        target: ShimState::Running,
        from_any: false,
    };
    let sm = AtomicShimState::new();
    for fake in [&LAUNCH, &FAKE_START] {
        let err = sm.try_apply(fake).unwrap_err();
        assert!(err.is_undeclared());
        assert_eq!(err.transition(), fake);
        assert_eq!(err.observed(), ShimState::Idle);
        assert_eq!(
            sm.state(),
            ShimState::Idle,
            "a refused entry changes nothing"
        );
    }
    assert_eq!(
        sm.try_apply(&LAUNCH).unwrap_err().to_string(),
        "transition `launch` to `running` refused: not in the machine's transition table (machine is `idle`)"
    );
    // A refusal by state is not "undeclared".
    let refused = sm.try_apply(&ShimState::TRANSITIONS[1]).unwrap_err();
    assert!(!refused.is_undeclared());
    assert!(!format!("{refused:?}").contains("undeclared"));
    assert!(format!("{:?}", sm.try_apply(&LAUNCH).unwrap_err()).contains("undeclared: true"));

    let copy: &'static Transition<ShimState> = Box::leak(Box::new(ShimState::TRANSITIONS[0]));
    assert_eq!(sm.try_apply(copy), Ok(ShimState::Idle));
    assert_eq!(sm.state(), ShimState::Creating);
}

#[test]
fn debug_shows_the_state() {
    let sm = in_state(ShimState::Running);
    assert_eq!(format!("{sm:?}"), "AtomicShimState { state: Running }");
}
