//! Fault tests on real VMs (SPEC §6.3): each ends in a defined state with a clear error, and
//! the leak check proves no child process, open fd, socket or state directory is left.

mod shim_common;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shim_common::{config, drain, serial, TestVm, HANG_GUARD};
use spinbox::cleanup::CleanupPhase;
use spinbox::shim::{CreateError, DeleteError, ShimEvent};
use spinbox::state::ShimState;
use std::os::unix::process::ExitStatusExt;
use std::time::Instant;
use tokio::time::timeout;

fn pid(vm: &TestVm) -> Pid {
    let pid = vm.shim.vm_pid().expect("a VM");
    TestVm::assert_alive(pid);
    Pid::from_raw(i32::try_from(pid).expect("pid fits"))
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
    qemu_killed_from_outside(ShimState::Running);
}

/// Between `create` and `start` the VM is just as up: its crash is handled the same way.
#[test]
fn qemu_killed_from_outside_while_created() {
    qemu_killed_from_outside(ShimState::Created);
}

/// QEMU is killed with SIGKILL while the shim is `up` (`Created` or `Running`).
fn qemu_killed_from_outside(up: ShimState) {
    serial(|| async move {
        let vm = TestVm::new(if up == ShimState::Running {
            "fault-killed"
        } else {
            "fault-killed-created"
        });
        let mut events = vm.shim.events().unwrap();
        timeout(HANG_GUARD, vm.shim.create())
            .await
            .unwrap()
            .expect("created");
        if up == ShimState::Running {
            vm.shim.start().await.expect("started");
        }
        assert_eq!(vm.shim.state().state, up);
        kill(pid(&vm), Signal::SIGKILL).expect("kill QEMU");
        // The shim notices on its own and tears down: the stream ends when it is done.
        let events = drain(&mut events).await;
        assert_eq!(vm.shim.state().state, ShimState::ShuttingDown);
        assert!(!vm.shim.state().intentional_shutdown);
        let cause = vm.shim.exit_cause().expect("cause recorded");
        assert!(!cause.intentional, "{cause}");
        assert_eq!(cause.status.signal(), Some(9), "{cause}");
        assert!(events
            .iter()
            .any(|e| matches!(e, ShimEvent::VmExited(c) if !c.intentional)));
        // The crash is not a delete: Created or Running → ShuttingDown directly.
        assert!(
            events.iter().any(|e| matches!(
                e,
                ShimEvent::State {
                    from,
                    to: ShimState::ShuttingDown
                } if *from == up
            )),
            "{events:#?}"
        );
        assert!(!events.iter().any(|e| matches!(
            e,
            ShimEvent::State {
                to: ShimState::Deleting,
                ..
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
        assert_eq!(vm.shim.state().state, ShimState::ShuttingDown);
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
        cfg.kernel_args = vec!["spinbox.agent=mute".to_owned()];
        let vm = TestVm::with(root, cfg, "fault-mute", tests::assets::test_assets());
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
        assert!(matches!(err, CreateError::Agent(_)), "{err:?}");
        assert_eq!(vm.shim.state().state, ShimState::Idle, "back to Idle");
        vm.assert_nothing_left().await;
        // The shim can still be shut down cleanly afterwards.
        assert!(!vm.shim.shutdown().await.has_errors());
    });
}

#[test]
fn missing_qemu_binary() {
    serial(|| async {
        let root = tempfile::tempdir().unwrap();
        let cfg = config(root.path());
        let mut assets = tests::assets::assets();
        assets.qemu = "/nonexistent/qemu-system-x86_64".into();
        let vm = TestVm::with(root, cfg, "fault-noqemu", assets);
        let err = vm.shim.create().await.expect_err("no QEMU");
        let text = error_chain(&err);
        assert!(text.contains("/nonexistent/qemu-system-x86_64"), "{text}");
        assert_eq!(vm.shim.state().state, ShimState::Idle);
        vm.assert_nothing_left().await;
    });
}

#[test]
fn missing_kernel() {
    serial(|| async {
        let root = tempfile::tempdir().unwrap();
        let cfg = config(root.path());
        let mut assets = tests::assets::assets();
        assets.vmlinux = "/nonexistent/vmlinux".into();
        let vm = TestVm::with(root, cfg, "fault-nokernel", assets);
        let err = vm.shim.create().await.expect_err("no kernel");
        let text = error_chain(&err);
        assert!(text.contains("/nonexistent/vmlinux"), "{text}");
        assert_eq!(vm.shim.state().state, ShimState::Idle);
        vm.assert_nothing_left().await;
    });
}

/// Waits until the creation has started QEMU, and checks it is alive.
async fn wait_for_qemu(vm: &TestVm) -> u32 {
    let pid = timeout(HANG_GUARD, async {
        loop {
            if let Some(pid) = vm.shim.vm_pid() {
                return pid;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("QEMU started");
    TestVm::assert_alive(pid);
    pid
}

/// Spawns `f` on the multi-thread runtime: racers run on separate tasks, really concurrently.
fn spawn<F, T>(f: F) -> tokio::task::JoinHandle<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(f)
}

#[test]
fn delete_racing_shutdown() {
    serial(|| async {
        let vm = TestVm::new("fault-delshut");
        let mut events = vm.shim.events().unwrap();
        timeout(HANG_GUARD, vm.shim.create())
            .await
            .unwrap()
            .expect("created");
        let (a, b) = (vm.shim.clone(), vm.shim.clone());
        let delete = spawn(async move { a.delete().await });
        let shutdown = spawn(async move { b.shutdown().await });
        let (deleted, shut) = timeout(HANG_GUARD, async {
            (delete.await.unwrap(), shutdown.await.unwrap())
        })
        .await
        .unwrap();
        assert_eq!(vm.shim.state().state, ShimState::ShuttingDown);
        assert!(vm.shim.state().intentional_shutdown);
        assert!(!shut.has_errors(), "{shut}");
        match deleted {
            Ok(report) => assert!(!report.has_errors(), "{report}"),
            // Shutdown won the state machine first: a defined refusal.
            Err(e) => assert!(matches!(e, DeleteError::ShuttingDown), "{e:?}"),
        }
        // Whoever claimed the teardown, each phase ran exactly once.
        let events = drain(&mut events).await;
        for &phase in CleanupPhase::ALL {
            let runs = events
                .iter()
                .filter(|e| matches!(e, ShimEvent::PhaseStarted { phase: p, .. } if *p == phase))
                .count();
            assert_eq!(runs, 1, "{phase} ran {runs} times");
        }
        vm.assert_nothing_left().await;
    });
}

#[test]
fn create_racing_delete() {
    serial(|| async {
        let vm = TestVm::new("fault-credel");
        let (a, b) = (vm.shim.clone(), vm.shim.clone());
        let create = spawn(async move { a.create().await });
        let delete = spawn(async move { b.delete().await });
        let (created, deleted) = timeout(HANG_GUARD, async {
            (create.await.unwrap(), delete.await.unwrap())
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
        assert_eq!(vm.shim.state().state, ShimState::Created);
        let report = timeout(HANG_GUARD, vm.shim.delete())
            .await
            .unwrap()
            .expect("now it deletes (from Created)");
        assert!(!report.has_errors(), "{report}");
        vm.assert_nothing_left().await;
    });
}

#[test]
fn two_concurrent_creates() {
    serial(|| async {
        let vm = TestVm::new("fault-twice");
        let (a, b) = (vm.shim.clone(), vm.shim.clone());
        let first = spawn(async move { a.create().await });
        let second = spawn(async move { b.create().await });
        let (a, b) = timeout(HANG_GUARD, async {
            (first.await.unwrap(), second.await.unwrap())
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
        TestVm::assert_alive(ok.vm_pid.expect("QEMU pid"));
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
        let create = spawn(async move { shim.create().await });
        // Once QEMU runs, ask for shutdown.
        wait_for_qemu(&vm).await;
        let report = timeout(HANG_GUARD, vm.shim.shutdown()).await.unwrap();
        let created = create.await.unwrap();
        assert!(
            matches!(created, Err(CreateError::ShutDownDuringCreate)),
            "{created:?}"
        );
        assert!(!report.has_errors(), "{report}");
        assert_eq!(vm.shim.state().state, ShimState::ShuttingDown);
        vm.assert_nothing_left().await;
    });
}

#[test]
fn create_dropped_during_boot_then_shutdown_leaves_nothing() {
    serial(|| async {
        let vm = TestVm::new("fault-cancel");
        let shim = vm.shim.clone();
        let create = spawn(async move { shim.create().await });
        wait_for_qemu(&vm).await;
        create.abort();
        assert!(create.await.unwrap_err().is_cancelled());
        let report = timeout(HANG_GUARD, vm.shim.shutdown())
            .await
            .expect("shutdown completes after a cancelled create");
        assert!(!report.has_errors(), "{report}");
        vm.assert_nothing_left().await;
    });
}
