//! Expansion snapshots: each declaration (spinbox's own are read from its source files) is
//! expanded in-process, pretty-printed with
//! prettyplease and compared with the file under `src/snapshots/`. Review changes with
//! `cargo insta review` (or `INSTA_UPDATE=always` and read the diff).

use crate::declarations::{attribute_input, SESSION_STATE_SOURCE, SHIM_STATE_SOURCE};
use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    let file: syn::File = syn::parse2(tokens).expect("expansion parses as a file");
    prettyplease::unparse(&file)
}

fn state_machine(args: TokenStream, item: TokenStream) -> String {
    pretty(crate::state_machine::expand(args, item))
}

fn spinbox_state_machine(source: &str, name: &str) -> String {
    let (args, item) = attribute_input(source, name, "state_machine");
    state_machine(args, item)
}

#[test]
fn spinbox_shim_state() {
    insta::assert_snapshot!(spinbox_state_machine(SHIM_STATE_SOURCE, "ShimState"));
}

#[test]
fn spinbox_session_state() {
    insta::assert_snapshot!(spinbox_state_machine(SESSION_STATE_SOURCE, "SessionState"));
}

/// A multi-source transition and a `*` whose target is not terminal.
#[test]
fn multi_source_and_any() {
    insta::assert_snapshot!(state_machine(
        quote! {
            machine = Vm,
            transitions(
                start: NotStarted => Running,
                pause: Running => Paused,
                resume: Paused => Running,
                stop: Running | Paused => Stopped,
                fail: * => Failed,
            )
        },
        quote! {
            #[derive(Debug)]
            pub(crate) enum VmState {
                #[initial] NotStarted,
                Running,
                Paused,
                Failed,
                #[terminal] Stopped,
            }
        },
    ));
}

#[test]
fn wide_repr_and_renamed_crate() {
    insta::assert_snapshot!(state_machine(
        quote! {
            crate = ::my_runtime::lifecycle,
            transitions(
                open: Closed => Open,
                close: Open => Closed,
            )
        },
        quote! {
            #[repr(u32)]
            enum Door {
                #[initial] Closed = 70000,
                Open = 70001,
            }
        },
    ));
}

fn cleanup_phases(args: TokenStream, item: TokenStream) -> String {
    pretty(crate::cleanup_phases::expand(args, item))
}

#[test]
fn spinbox_cleanup_phases() {
    insta::assert_snapshot!(cleanup_phases(
        quote! {},
        quote! {
            pub struct CleanupPhases {
                /// Stop CPU and memory hotplug controllers.
                pub hotplug_stop: Phase,
                pub io_shutdown: Phase,
                pub conn_close: Phase,
                pub vm_shutdown: Phase,
                pub network_cleanup: Phase,
                pub mount_cleanup: Phase,
                pub event_close: Phase,
            }
        },
    ));
}

#[test]
fn renamed_types_and_timeouts() {
    insta::assert_snapshot!(cleanup_phases(
        quote! { phase = Step, orchestrator = Teardown, crate = ::rt::lifecycle },
        quote! {
            struct Sandbox {
                #[phase(timeout = "1500ms")]
                drain: Phase,
                #[phase(timeout = "2m")]
                stop_vmm: Phase,
                release: Phase,
            }
        },
    ));
}
