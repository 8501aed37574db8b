//! Fault tests on real VMs (SPEC §6.3): each ends in a defined state with a clear error, and
//! the leak check proves no child process, open fd, socket or state directory is left.

mod shim_common;

use lifecycle_core::PhaseOutcome;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shim_common::{config, drain, serial, TestVm, HANG_GUARD};
use spinbox::cleanup::CleanupPhase;
use spinbox::shim::{CreateError, DeleteError, ShimEvent};
use spinbox::state::ShimState;
use spinbox::vm::manager::ManagerError;
use std::os::unix::process::ExitStatusExt;
use std::time::Instant;
use tokio::time::timeout;

fn pid(vm: &TestVm) -> Pid {
    Pid::from_raw(i32::try_from(vm.shim.qemu_pid().expect("a VM")).expect("pid fits"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[test]
fn qemu_killed_from_outside_while_running() {
    serial(|| async {
        let vm = TestVm::new("fault-killed");
        let mut events = vm.shim.events().unwrap();
        timeout(HANG_GUARD, vm.shim.create())
            .await
            .unwrap()
            .expect("created");
        kill(pid(&vm), Signal::SIGKILL).expect("kill QEMU");
        // The shim notices on its own and tears down: the stream ends when it is done.
        let events = drain(&mut events).await;
        assert_eq!(vm.shim.state().state(), ShimState::ShuttingDown);
        assert!(!vm.shim.state().is_intentional_shutdown());
        let cause = vm.shim.exit_cause().expect("cause recorded");
        assert!(!cause.intentional, "{cause}");
        assert_eq!(cause.status.signal(), Some(9), "{cause}");
        assert!(events
            .iter()
            .any(|e| matches!(e, ShimEvent::VmExited(c) if !c.intentional)));
        assert!(events.iter().any(|e| matches!(
            e,
            ShimEvent::State {
                from: ShimState::Deleting,
                to: ShimState::ShuttingDown
            }
        )));
        // A delete after the crash is refused with a clear reason.
        assert!(matches!(
            vm.shim.delete().await,
            Err(DeleteError::ShuttingDown)
        ));
        vm.assert_nothing_left().await;
    });
}

#[test]
fn qemu_frozen_during_delete() {
    serial(|| async {
        let vm = TestVm::new("fault-frozen");
        timeout(HANG_GUARD, vm.shim.create())
            .await
            .unwrap()
            .expect("created");
        kill(pid(&vm), Signal::SIGSTOP).expect("freeze QEMU");
        let started = Instant::now();
        let report = timeout(HANG_GUARD, vm.shim.delete())
            .await
            .unwrap()
            .expect("delete runs");
        eprintln!(
            "delete of a frozen QEMU took {:?}\n{report}",
            started.elapsed()
        );
        // The escalation ends a frozen QEMU with SIGKILL; every phase still ran.
        assert_eq!(vm.shim.state().state(), ShimState::ShuttingDown);
        assert_eq!(report.phases().len(), 7);
        let cause = vm.shim.exit_cause().expect("cause recorded");
        assert_eq!(cause.status.signal(), Some(9), "{cause}");
        vm.assert_nothing_left().await;
    });
}

#[test]
fn agent_that_never_answers() {
    serial(|| async {
        let root = tempfile::tempdir().unwrap();
        let mut cfg = config(root.path());
        cfg.assets = Some(tests::assets::test_assets());
        cfg.kernel_args = vec!["spinbox.agent=mute".to_owned()];
        let vm = TestVm::with(root, cfg, "fault-mute");
        let started = Instant::now();
        let err = timeout(HANG_GUARD, vm.shim.create())
            .await
            .expect("create fails in bounded time")
            .expect_err("a mute agent fails the creation");
        eprintln!(
            "mute agent: create failed after {:?}: {}",
            started.elapsed(),
            error_chain(&err)
        );
        assert!(
            matches!(err, CreateError::Boot(ManagerError::Dial(_))),
            "{err:?}"
        );
        assert_eq!(vm.shim.state().state(), ShimState::Idle, "back to Idle");
        vm.assert_nothing_left().await;
        // The shim can still be shut down cleanly afterwards.
        assert!(!vm.shim.shutdown().await.has_errors());
    });
}

#[test]
fn missing_qemu_binary() {
    serial(|| async {
        let root = tempfile::tempdir().unwrap();
        let mut cfg = config(root.path());
        let mut assets = tests::assets::assets();
        assets.qemu = "/nonexistent/qemu-system-x86_64".into();
        cfg.assets = Some(assets);
        let vm = TestVm::with(root, cfg, "fault-noqemu");
        let err = vm.shim.create().await.expect_err("no QEMU");
        let text = error_chain(&err);
        assert!(text.contains("/nonexistent/qemu-system-x86_64"), "{text}");
        assert_eq!(vm.shim.state().state(), ShimState::Idle);
        vm.assert_nothing_left().await;
    });
}

#[test]
fn missing_kernel() {
    serial(|| async {
        let root = tempfile::tempdir().unwrap();
        let mut cfg = config(root.path());
        let mut assets = tests::assets::assets();
        assets.vmlinux = "/nonexistent/vmlinux".into();
        cfg.assets = Some(assets);
        let vm = TestVm::with(root, cfg, "fault-nokernel");
        let err = vm.shim.create().await.expect_err("no kernel");
        let text = error_chain(&err);
        assert!(text.contains("/nonexistent/vmlinux"), "{text}");
        assert_eq!(vm.shim.state().state(), ShimState::Idle);
        vm.assert_nothing_left().await;
    });
}

#[test]
fn delete_racing_shutdown() {
    serial(|| async {
        let vm = TestVm::new("fault-delshut");
        timeout(HANG_GUARD, vm.shim.create())
            .await
            .unwrap()
            .expect("created");
        let (deleted, shut) = timeout(HANG_GUARD, async {
            tokio::join!(vm.shim.delete(), vm.shim.shutdown())
        })
        .await
        .unwrap();
        assert_eq!(vm.shim.state().state(), ShimState::ShuttingDown);
        assert!(!shut.has_errors(), "{shut}");
        match deleted {
            Ok(report) => {
                assert!(!report.has_errors(), "{report}");
                // One run did the phases; the other saw them done.
                for phase in CleanupPhase::ALL.iter().copied().filter(|p| {
                    *p != CleanupPhase::HotplugStop && *p != CleanupPhase::NetworkCleanup
                }) {
                    let fresh = [&report, &shut]
                        .iter()
                        .filter(|r| !matches!(r.get(phase).outcome, PhaseOutcome::AlreadyDone(_)))
                        .count();
                    assert_eq!(fresh, 1, "{phase} ran once");
                }
            }
            // Shutdown won the state machine first: a defined refusal.
            Err(e) => assert!(matches!(e, DeleteError::ShuttingDown), "{e:?}"),
        }
        vm.assert_nothing_left().await;
    });
}

#[test]
fn create_racing_delete() {
    serial(|| async {
        let vm = TestVm::new("fault-credel");
        let (created, deleted) = timeout(HANG_GUARD, async {
            tokio::join!(vm.shim.create(), vm.shim.delete())
        })
        .await
        .unwrap();
        created.expect("create wins");
        assert!(
            matches!(
                deleted,
                Err(DeleteError::NotCreated | DeleteError::CreationInProgress)
            ),
            "{deleted:?}"
        );
        assert_eq!(vm.shim.state().state(), ShimState::Running);
        let report = timeout(HANG_GUARD, vm.shim.delete())
            .await
            .unwrap()
            .expect("now it deletes");
        assert!(!report.has_errors(), "{report}");
        vm.assert_nothing_left().await;
    });
}

#[test]
fn two_concurrent_creates() {
    serial(|| async {
        let vm = TestVm::new("fault-twice");
        let (a, b) = timeout(HANG_GUARD, async {
            tokio::join!(vm.shim.create(), vm.shim.create())
        })
        .await
        .unwrap();
        let (ok, refused) = match (a, b) {
            (Ok(c), Err(e)) | (Err(e), Ok(c)) => (c, e),
            other => panic!("exactly one create must win: {other:?}"),
        };
        assert!(
            matches!(refused, CreateError::CreationInProgress),
            "{refused:?}"
        );
        assert!(ok.qemu_pid > 0);
        let report = timeout(HANG_GUARD, vm.shim.shutdown()).await.unwrap();
        assert!(!report.has_errors(), "{report}");
        vm.assert_nothing_left().await;
    });
}

#[test]
fn shutdown_during_creation_tears_the_new_vm_down() {
    serial(|| async {
        let vm = TestVm::new("fault-shutcreate");
        let shim = vm.shim.clone();
        let create = tokio::spawn(async move { shim.create().await });
        // Once the creation is under way, ask for shutdown.
        while vm.shim.state().state() == ShimState::Idle {
            tokio::task::yield_now().await;
        }
        let report = timeout(HANG_GUARD, vm.shim.shutdown()).await.unwrap();
        let created = create.await.unwrap();
        assert!(
            matches!(
                created,
                Err(CreateError::ShutDownDuringCreate | CreateError::ShuttingDown)
            ),
            "{created:?}"
        );
        assert!(!report.has_errors(), "{report}");
        assert_eq!(vm.shim.state().state(), ShimState::ShuttingDown);
        vm.assert_nothing_left().await;
    });
}
