//! vCPU and memory hotplug in a real VM (SPEC §12), under TCG: a container sees a hot-added
//! vCPU (`nproc`) and hot-added memory (`MemTotal`); the memory goes away again, the vCPU
//! removal is refused by name (QEMU under TCG crashes on a vCPU hot-add after an unplug),
//! the shim refuses sizes outside the VM's room, and a delete while a resize is in flight waits for it in
//! `hotplug_stop` before the VM shuts down, leaving nothing behind.

#[path = "shim_common/mod.rs"]
mod shim_common;

use std::time::{Duration, Instant};

use shim_common::{config, serial, Collect, TestVm, HANG_GUARD};
use spinbox::cleanup::CleanupPhase;
use spinbox::hotplug::ResizeError;
use spinbox::shim::{ShimConfig, ShimEvent};
use spinbox::task::stdio::ProcessIo;
use spinbox::task::{ContainerSpec, ExitStatus, ProcessSpec};
use spinbox::vm::hotplug::HotplugError;

/// A VM with room for one more vCPU and 256 MiB more memory, controllers off (the tests
/// drive the sizes explicitly).
fn vm(id: &str) -> TestVm {
    let root = tempfile::tempdir().expect("tempdir");
    let mut config: ShimConfig = config(root.path());
    config.max_cpus = Some(2);
    config.max_memory_mib = Some(512);
    config.memory_slots = 2;
    config.hotplug.auto = false;
    TestVm::with(root, config, id, tests::assets::assets())
}

async fn started(vm: &TestVm) {
    let rootfs = tests::assets::assets()
        .rootfs
        .expect("the provisioner builds the busybox rootfs: run scripts/provision");
    let spec = ContainerSpec::new("c1", rootfs, ProcessSpec::new(["sleep", "1000"]));
    let created = vm
        .shim
        .create_container(spec, ProcessIo::null())
        .await
        .expect("create_container");
    TestVm::assert_alive(created.vm_pid.expect("QEMU pid"));
    vm.shim.start().await.expect("start");
}

/// Runs `script` in the container and returns its stdout.
async fn in_container(vm: &TestVm, id: &str, script: &str) -> String {
    let out = Collect::default();
    let io = ProcessIo {
        stdin: None,
        stdout: Some(Box::new(out.clone())),
        stderr: None,
    };
    vm.shim
        .exec(id, &ProcessSpec::new(["/bin/sh", "-c", script]), io)
        .await
        .expect("exec");
    assert_eq!(vm.shim.wait_exec(id).await.unwrap(), ExitStatus::Exited(0));
    out.text().trim().to_owned()
}

fn mem_total_kib(line: &str) -> u64 {
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not a MemTotal line: {line:?}"))
}

async fn delete_and_check(vm: &TestVm) {
    let report = vm.shim.delete().await.expect("delete");
    assert!(!report.has_errors(), "{report}");
    vm.assert_nothing_left().await;
}

#[test]
fn a_hot_added_vcpu_and_memory_are_seen_by_the_container_and_the_memory_removed_again() {
    serial(|| async {
        tokio::time::timeout(HANG_GUARD, async {
            let vm = vm("hp-add");
            started(&vm).await;
            let before = vm.shim.resources().await.unwrap();
            assert_eq!((before.cpus, before.memory_mib), (1, 256));
            assert_eq!(in_container(&vm, "n1", "nproc").await, "1");
            let mem0 = mem_total_kib(&in_container(&vm, "m1", "grep MemTotal /proc/meminfo").await);

            let grown = vm.shim.resize(Some(2), Some(512)).await.expect("grow");
            assert_eq!((grown.cpus, grown.memory_mib), (2, 512));
            assert_eq!(in_container(&vm, "n2", "nproc").await, "2");
            let mem1 = mem_total_kib(&in_container(&vm, "m2", "grep MemTotal /proc/meminfo").await);
            assert_eq!(mem1 - mem0, 256 * 1024, "MemTotal grew by the DIMM");

            // Under TCG QEMU cannot take a vCPU back safely (it crashes on the next vCPU
            // hot-add): refused by name, and the vCPU stays.
            let e = vm.shim.resize(Some(1), None).await.unwrap_err();
            assert!(
                matches!(&e, ResizeError::Hotplug(HotplugError::NotRemovable { detail, .. }) if detail.contains("TCG")),
                "{e:?}"
            );
            assert_eq!(in_container(&vm, "n3", "nproc").await, "2");
            let shrunk = vm.shim.resize(None, Some(256)).await.expect("shrink");
            assert_eq!((shrunk.cpus, shrunk.memory_mib), (2, 256));
            let mem2 = mem_total_kib(&in_container(&vm, "m3", "grep MemTotal /proc/meminfo").await);
            assert_eq!(mem2, mem0, "MemTotal is back");

            // Outside the room: a clear error, nothing changes.
            for (cpus, mem) in [(Some(3), None), (Some(0), None), (None, Some(640)), (None, Some(128))] {
                let e = vm.shim.resize(cpus, mem).await.unwrap_err();
                assert!(matches!(e, ResizeError::OutOfRange { .. }), "{e:?}");
            }
            assert_eq!(in_container(&vm, "n4", "nproc").await, "2");
            delete_and_check(&vm).await;
        })
        .await
        .expect("the test finishes");
    });
}

#[test]
fn delete_during_a_resize_waits_for_it_in_hotplug_stop() {
    serial(|| async {
        tokio::time::timeout(HANG_GUARD, async {
            let vm = vm("hp-race");
            let mut events = vm.shim.events().expect("events");
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                while let Some(e) = events.recv().await {
                    all.push(e);
                }
                all
            });
            started(&vm).await;
            let agent = vm.shim.agent().await.expect("agent");
            let shim = vm.shim.clone();
            // vCPU then memory: once the guest sees the vCPU, the resize is in flight.
            let resize = tokio::spawn(async move { shim.resize(Some(2), Some(512)).await });
            let deadline = Instant::now() + Duration::from_mins(1);
            while agent.usage().await.expect("usage").present_cpus < 2 {
                assert!(Instant::now() < deadline, "the vCPU never appeared");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            drop(agent);
            let report = vm.shim.delete().await.expect("delete");
            assert!(!report.has_errors(), "{report}");
            // The delete began once the resize had plugged its vCPU, usually while its memory
            // was still being added (the fake-backend test `delete_waits_in_hotplug_stop_for_
            // a_resize_in_flight` makes that certain). Either way the resize completed: the
            // resizer reads the sizes it returns under the lock `hotplug_stop` takes, so no
            // QMP command of it raced the VM's shutdown, and nothing is left.
            let resized = resize
                .await
                .unwrap()
                .expect("the resize in flight completed");
            assert_eq!((resized.cpus, resized.memory_mib), (2, 512));
            let all = reader.await.unwrap();
            let at = |phase: CleanupPhase, started: bool| {
                all.iter()
                    .position(|e| match e {
                        ShimEvent::PhaseStarted { phase: p, .. } => started && *p == phase,
                        ShimEvent::PhaseFinished { phase: p, .. } => !started && *p == phase,
                        _ => false,
                    })
                    .unwrap_or_else(|| panic!("no {phase:?} event"))
            };
            assert!(at(CleanupPhase::HotplugStop, false) < at(CleanupPhase::VmShutdown, true));
            let after = vm.shim.resize(Some(1), None).await.unwrap_err();
            assert!(matches!(after, ResizeError::NotRunning(_)), "{after:?}");
            vm.assert_nothing_left().await;
        })
        .await
        .expect("the test finishes");
    });
}
