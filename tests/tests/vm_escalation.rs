//! Shutdown escalation against real QEMU (`-machine none`, TCG): each path, external
//! kill, double and concurrent shutdown, and drop without shutdown. After each, no child
//! process, socket or state directory may remain. Measured times are printed, not asserted.

mod vm_common;

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spinbox::vm::stop::GuestRequest;
use spinbox::vm::stop::{EscalationPolicy, GracefulHook, ShutdownStep};
use std::os::unix::process::ExitStatusExt;
use vm_common::{assert_vm_gone, Fixture, HANG_GUARD};

fn policy() -> EscalationPolicy {
    EscalationPolicy {
        guest_request: GuestRequest::None,
        quit: Duration::from_millis(500),
        sigterm: Duration::from_millis(500),
        ..EscalationPolicy::default()
    }
}

fn pid_of(vm: &spinbox::vm::qemu::QemuInstance) -> Pid {
    Pid::from_raw(i32::try_from(vm.pid()).expect("pid fits"))
}

#[tokio::test]
async fn quit_path() {
    let fx = Fixture::new();
    let vm = fx.start_none("esc-quit").await;
    let out = tokio::time::timeout(HANG_GUARD, vm.shutdown(&policy()))
        .await
        .expect("hung")
        .expect("shutdown");
    eprintln!(
        "escalation quit path: ended by {:?} in {:?} ({:?})",
        out.ended_by, out.elapsed, out.steps
    );
    assert_eq!(out.ended_by, ShutdownStep::QmpQuit);
    assert!(out.exit_status.success(), "{}", out.exit_status);
    assert_vm_gone(vm.pid(), vm.state_dir());
    fx.assert_root_empty();
}

#[tokio::test]
async fn sigterm_path_when_qmp_is_gone() {
    let fx = Fixture::new();
    let vm = fx.start_none("esc-term").await;
    // With QMP closed, `quit` fails at once and the escalation moves straight to SIGTERM.
    vm.qmp().close().await;
    let out = tokio::time::timeout(HANG_GUARD, vm.shutdown(&policy()))
        .await
        .expect("hung")
        .expect("shutdown");
    eprintln!(
        "escalation SIGTERM path: ended by {:?} in {:?} ({:?})",
        out.ended_by, out.elapsed, out.steps
    );
    assert_eq!(out.ended_by, ShutdownStep::SigTerm);
    assert_vm_gone(vm.pid(), vm.state_dir());
    fx.assert_root_empty();
}

#[tokio::test]
async fn sigkill_path_for_a_frozen_qemu() {
    let fx = Fixture::new();
    let vm = fx.start_none("esc-frozen").await;
    kill(pid_of(&vm), Signal::SIGSTOP).expect("SIGSTOP");
    let out = tokio::time::timeout(HANG_GUARD, vm.shutdown(&policy()))
        .await
        .expect("hung")
        .expect("shutdown");
    eprintln!(
        "escalation SIGKILL-after-frozen path: ended by {:?} in {:?} ({:?})",
        out.ended_by, out.elapsed, out.steps
    );
    assert_eq!(out.ended_by, ShutdownStep::SigKill);
    assert_eq!(out.exit_status.signal(), Some(9));
    let attempted: Vec<_> = out.steps.iter().map(|s| s.step).collect();
    assert_eq!(
        attempted,
        [
            ShutdownStep::QmpQuit,
            ShutdownStep::SigTerm,
            ShutdownStep::SigKill
        ]
    );
    assert_vm_gone(vm.pid(), vm.state_dir());
    fx.assert_root_empty();
}

#[tokio::test]
async fn killed_from_outside_is_observed_and_shutdown_completes() {
    let fx = Fixture::new();
    let vm = fx.start_none("esc-outside").await;
    let t = Instant::now();
    kill(pid_of(&vm), Signal::SIGKILL).expect("SIGKILL");
    let status = tokio::time::timeout(HANG_GUARD, vm.wait_exit())
        .await
        .expect("exit not observed");
    let observed = t.elapsed();
    assert_eq!(status.signal(), Some(9));
    let out = tokio::time::timeout(HANG_GUARD, vm.shutdown(&policy()))
        .await
        .expect("hung")
        .expect("shutdown");
    eprintln!(
        "escalation killed-from-outside: exit observed after {observed:?}; shutdown ended by {:?} in {:?}",
        out.ended_by, out.elapsed
    );
    assert_eq!(out.ended_by, ShutdownStep::AlreadyExited);
    assert!(out.steps.is_empty());
    assert_vm_gone(vm.pid(), vm.state_dir());
    fx.assert_root_empty();
}

#[tokio::test]
async fn graceful_hook_ends_the_vm() {
    let fx = Fixture::new();
    let vm = fx.start_none("esc-hook").await;
    let qmp = vm.qmp().clone();
    // Stands in for the agent's Shutdown: something inside the VM's world ends it.
    let hook: GracefulHook = Box::new(move || {
        Box::pin(async move {
            // A failed quit shows as the step not ending the VM (asserted below).
            let _ = qmp.quit(Duration::from_secs(5)).await;
            Ok(())
        })
    });
    let out = tokio::time::timeout(HANG_GUARD, vm.shutdown_with(&policy(), Some(hook)))
        .await
        .expect("hung")
        .expect("shutdown");
    eprintln!(
        "escalation graceful hook: ended by {:?} in {:?}",
        out.ended_by, out.elapsed
    );
    assert_eq!(out.ended_by, ShutdownStep::Graceful);
    assert_vm_gone(vm.pid(), vm.state_dir());
}

#[tokio::test]
async fn guest_request_step_is_bounded_when_ignored() {
    let fx = Fixture::new();
    let vm = fx.start_none("esc-ignored").await;
    // `-machine none` has no guest: the power button and ctrl-alt-delete go unanswered,
    // the step waits out its bound and `quit` ends the VM.
    let p = EscalationPolicy {
        guest_request: GuestRequest::Both,
        guest_request_wait: Duration::from_millis(300),
        ..policy()
    };
    let out = tokio::time::timeout(HANG_GUARD, vm.shutdown(&p))
        .await
        .expect("hung")
        .expect("shutdown");
    eprintln!(
        "escalation ignored guest request: {:?} in {:?} ({:?})",
        out.ended_by, out.elapsed, out.steps
    );
    assert_eq!(out.steps[0].step, ShutdownStep::GuestRequest);
    assert!(!out.steps[0].ended_vm);
    assert_eq!(out.ended_by, ShutdownStep::QmpQuit);
    assert_vm_gone(vm.pid(), vm.state_dir());
}

#[tokio::test]
async fn double_and_concurrent_shutdown_do_the_work_once() {
    let fx = Fixture::new();
    let vm = fx.start_none("esc-twice").await;
    let other = vm.clone();
    let p = policy();
    let (a, b) = tokio::time::timeout(HANG_GUARD, async {
        tokio::join!(vm.shutdown(&p), other.shutdown(&p))
    })
    .await
    .expect("hung");
    let (a, b) = (a.expect("first"), b.expect("second"));
    // The whole outcome, field by field (it carries a non-comparable error slot).
    let key = |o: &spinbox::vm::qemu::instance::ShutdownOutcome| {
        (o.ended_by, o.exit_status, o.elapsed, o.steps.clone())
    };
    assert_eq!(key(&a), key(&b), "concurrent callers see one outcome");
    assert_eq!(
        a.steps
            .iter()
            .filter(|s| s.step == ShutdownStep::QmpQuit)
            .count(),
        1
    );
    let c = vm.shutdown(&p).await.expect("third");
    assert_eq!(key(&a), key(&c), "a later call returns the same outcome");
    eprintln!(
        "escalation concurrent: ended by {:?} in {:?}",
        a.ended_by, a.elapsed
    );
    assert_vm_gone(vm.pid(), vm.state_dir());
    fx.assert_root_empty();
}

#[tokio::test]
async fn a_cancelled_shutdown_caller_does_not_abandon_the_work() {
    let fx = Fixture::new();
    let vm = fx.start_none("esc-cancel").await;
    kill(pid_of(&vm), Signal::SIGSTOP).expect("SIGSTOP");
    // Cancel the first caller mid-escalation; a second caller still gets the result.
    let first = tokio::time::timeout(Duration::from_millis(100), vm.shutdown(&policy())).await;
    assert!(
        first.is_err(),
        "the frozen VM cannot be down after 100 ms of a 1 s escalation"
    );
    let out = tokio::time::timeout(HANG_GUARD, vm.shutdown(&policy()))
        .await
        .expect("hung")
        .expect("shutdown");
    assert_eq!(out.ended_by, ShutdownStep::SigKill);
    assert_vm_gone(vm.pid(), vm.state_dir());
}

#[tokio::test]
async fn dropping_the_last_handle_kills_and_cleans_up() {
    let fx = Fixture::new();
    let vm = fx.start_none("esc-drop").await;
    let (pid, dir) = (vm.pid(), vm.state_dir().to_owned());
    let mut exit = vm.process().exit_watch();
    drop(vm);
    tokio::time::timeout(HANG_GUARD, exit.wait_for(Option::is_some))
        .await
        .expect("not killed after drop")
        .expect("reaper gone without publishing");
    assert_vm_gone(pid, &dir);
    fx.assert_root_empty();
}
