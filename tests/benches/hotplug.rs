//! Hotplug benchmark (SPEC §12, issue 16) on real VMs under the host's accelerator (TCG
//! here). `cargo bench -p tests --bench hotplug -- [--runs N]` (default 5; needs
//! `scripts/provision`). Under `cargo test --all-targets` it runs once (a smoke run).
//!
//! A VM boots with room for one more vCPU and 256 MiB more memory. Each run, through the
//! shim's own [`Resizer`] (what `Shim::resize` and the controllers use):
//!
//! * **vCPU hot-add**: QMP `device_add` of the vCPU → the agent onlined it and reports
//!   2 vCPUs online (not removed: QEMU under TCG crashes on a vCPU hot-add after an unplug,
//!   so each run boots a fresh VM);
//! * **memory hot-add**: QMP `object-add` + `device_add` of a 256 MiB DIMM → the guest's
//!   `MemTotal` grew by 256 MiB (the kernel onlines it itself); then it is removed again.
//!
//! The baseline is what a runtime without hotplug does to give a VM a vCPU and more memory:
//! stop it and boot a new one with the new size, until its agent answers (graceful stop via
//! the agent's `Shutdown`, then QEMU exec → agent ready → first RPC). Every figure is
//! printed with its ratio to that restart, measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use spinbox::hotplug::Resizer;
use spinbox::shim::ShimConfig;
use spinbox::vm::agent::{dial_with_retry, shutdown_hook, AgentClient, RetryPolicy};
use spinbox::vm::qemu::{probe_accelerator, QemuBackend, QemuBackendConfig, QemuVm};
use spinbox::vm::stop::EscalationPolicy;
use spinbox::vm::{StopRequest, Vm};

const RPC: Duration = Duration::from_secs(30);

fn config(root: &std::path::Path, cpus: u16, memory_mib: u32, grow: bool) -> ShimConfig {
    ShimConfig {
        state_root: root.to_owned(),
        cpus,
        memory_mib,
        max_cpus: grow.then_some(cpus + 1),
        max_memory_mib: grow.then_some(memory_mib + 256),
        memory_slots: 2,
        ..ShimConfig::default()
    }
}

async fn boot(qemu: &QemuBackend, spec: &spinbox::vm::VmSpec) -> (Arc<QemuVm>, AgentClient) {
    let vm = qemu.start_qemu(spec).await.expect("start");
    vm.wait_ready().await.expect("boot");
    let client = dial_with_retry(&vm.agent_address(), RPC, RetryPolicy::default())
        .await
        .expect("dial");
    client.ping().await.expect("first RPC");
    (vm, client)
}

async fn stop(vm: &QemuVm, client: &AgentClient) {
    let outcome = vm
        .stop(StopRequest {
            policy: EscalationPolicy::default(),
            graceful: Some(shutdown_hook(vm.agent_address(), RPC, Some(client.clone()))),
        })
        .await
        .expect("stop");
    assert!(outcome.exit.status.success() || outcome.exit.status.code().is_none());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = tests::bench::runs_from_args(5);
    let assets = tests::assets::assets();
    let accel = probe_accelerator(&assets.qemu).await;
    println!("accelerator: {:?} ({})", accel.accelerator, accel.reason);
    println!("runs: {runs}\n");
    let root = tempfile::tempdir().expect("tempdir");
    let qemu = QemuBackend::new(QemuBackendConfig::new(assets));

    let (mut cpu_add, mut mem_add, mut mem_remove, mut restart) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // A fresh VM each run: under TCG a hot-added vCPU cannot be taken back.
        let small = config(root.path(), 1, 256, true);
        let (vm, client) = boot(&qemu, &small.spec(format!("hp{run}").parse().unwrap())).await;
        let resizer = Resizer::new(
            Arc::clone(&vm) as Arc<dyn Vm>,
            client.clone(),
            Duration::from_secs(30),
        );
        let t = Instant::now();
        assert_eq!(resizer.set_cpus(2).await.expect("add a vCPU"), 2);
        cpu_add.push(t.elapsed());
        assert_eq!(client.usage().await.expect("usage").online_cpus, 2);

        let t = Instant::now();
        assert_eq!(resizer.set_memory(512).await.expect("add memory"), 512);
        mem_add.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(resizer.set_memory(256).await.expect("remove memory"), 256);
        mem_remove.push(t.elapsed());
        resizer.close().await;
        drop(resizer);

        // The baseline: stop the VM and boot one with 2 vCPUs and 512 MiB.
        let big = config(root.path(), 2, 512, false);
        let t = Instant::now();
        stop(&vm, &client).await;
        drop(client);
        let (new, new_client) =
            boot(&qemu, &big.spec(format!("hp-new{run}").parse().unwrap())).await;
        restart.push(t.elapsed());
        assert_eq!(new_client.usage().await.expect("usage").online_cpus, 2);
        stop(&new, &new_client).await;
    }

    let (base, base_min, base_max) = tests::bench::stats(&restart);
    println!(
        "| operation ({:?}) | median | min–max | ratio to restart |",
        accel.accelerator
    );
    println!("|---|---:|---:|---:|");
    for (name, samples) in [
        ("vCPU hot-add (device_add → onlined in the guest)", &cpu_add),
        (
            "memory hot-add, 256 MiB (device_add → MemTotal grew)",
            &mem_add,
        ),
        (
            "memory removal, 256 MiB (device_del → ejected)",
            &mem_remove,
        ),
    ] {
        let (m, lo, hi) = tests::bench::stats(samples);
        println!(
            "| {name} | {m:.1} ms | {lo:.1}–{hi:.1} ms | {:.3} |",
            m / base
        );
    }
    println!(
        "| baseline: restart with the new size (stop → boot → first RPC) | {base:.1} ms | {base_min:.1}–{base_max:.1} ms | 1.000 |"
    );
}
