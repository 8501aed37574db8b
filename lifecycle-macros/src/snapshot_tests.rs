//! Expansion snapshots: each declaration is expanded in-process, pretty-printed with
//! prettyplease and compared with the file under `src/snapshots/`. Review changes with
//! `cargo insta review` (or `INSTA_UPDATE=always` and read the diff).

use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    let file: syn::File = syn::parse2(tokens).expect("expansion parses as a file");
    prettyplease::unparse(&file)
}

fn state_machine(args: TokenStream, item: TokenStream) -> String {
    pretty(crate::state_machine::expand(args, item))
}

#[test]
fn spinbox_shim_state() {
    insta::assert_snapshot!(state_machine(
        quote! {
            transitions(
                start_creating: Idle => Creating,
                mark_created: Creating => Running,
                mark_creation_failed: Creating => Idle,
                start_deleting: Running => Deleting,
                shut_down: * => ShuttingDown,
            )
        },
        quote! {
            #[repr(u8)]
            pub enum ShimState {
                #[initial] Idle = 0,
                Creating = 1,
                Running = 2,
                Deleting = 3,
                #[terminal] ShuttingDown = 4,
            }
        },
    ));
}

#[test]
fn multi_source_firecracker() {
    insta::assert_snapshot!(state_machine(
        quote! {
            machine = FirecrackerVm,
            transitions(
                start: NotStarted => Running,
                pause: Running => Paused,
                resume: Paused => Running,
                stop: Running | Paused => Stopped,
            )
        },
        quote! {
            #[derive(Debug)]
            pub(crate) enum VmState {
                #[initial] NotStarted,
                Running,
                Paused,
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
