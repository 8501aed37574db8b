//! VM lifecycle benchmark (SPEC §5.4, issue 18) on real VMs, under the accelerator the host
//! offers. `cargo bench -p tests --bench vm_lifecycle -- [--runs N]` (default 10; needs
//! `scripts/provision`). Prints medians and spread, and every ratio against a baseline
//! measured in the same run.
//!
//! a. Boot: QEMU exec → first agent RPC answered, for the default configuration (tuned
//!    kernel command line, qboot, uncompressed initramfs) and for the one it replaced (the
//!    reference: plain command line, `SeaBIOS`, gzip'd initramfs), runs interleaved; where the
//!    time goes, from the guest's own clock (the agent reports when /init started, when its
//!    modules were loaded and when it served, in guest uptime).
//! b. Delete → every cleanup phase done and QEMU reaped, cooperating guest; against the
//!    physical floor (the agent's `Shutdown` RPC → QEMU exit, nothing else) and against the
//!    Go upstream's shutdown, ported faithfully (`PrepareShutdown`, close the connections,
//!    ctrl-alt-delete, wait for QEMU's exit *or* 500 ms, QMP `quit`, wait up to 2 s,
//!    SIGKILL) on spinbox's VM (`-no-reboot`) and on a VM booted as upstream boots it
//!    (without `-no-reboot`).
//! c. Delete with a guest that ignores every shutdown request (`spinbox.agent=stubborn`):
//!    bounded by the configured grace (graceful step + guest power request) plus 100 ms.
//! d. Footprint with 1 and 4 idle VMs: resident memory of this (shim) process per VM, of
//!    each QEMU and each vsock daemon, and how many such VMs fit in this host's memory.

use nix::sys::signal::Signal;
use spinbox::shim::{Shim, ShimConfig};
use spinbox::vm::agent::{dial_with_retry, AgentClient, RetryPolicy};
use spinbox::vm::assets::Assets;
use spinbox::vm::qemu::{
    probe_accelerator, Firmware, KernelArgs, Machine, OnReset, QemuBackend, QemuBackendConfig,
    QemuVm,
};
use spinbox::vm::stop::EscalationPolicy;
use spinbox::vm::{StopRequest, Vm};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::bench::stats;

fn row(name: &str, samples: &[Duration]) -> f64 {
    let (median, min, max) = stats(samples);
    println!(
        "| {name} | {median:.1} ms | {min:.1}–{max:.1} ms | {} |",
        samples.len()
    );
    median
}

fn config(root: &std::path::Path) -> ShimConfig {
    ShimConfig {
        state_root: root.to_owned(),
        ..ShimConfig::default()
    }
}

fn backend_with(assets: Assets, tweak: impl FnOnce(&mut QemuBackendConfig)) -> Arc<QemuBackend> {
    let mut config = QemuBackendConfig::new(assets);
    tweak(&mut config);
    Arc::new(QemuBackend::new(config))
}

const RPC: Duration = Duration::from_secs(10);

/// The host's TSC frequency in kHz, from /proc/cpuinfo's `cpu MHz` (which is the TSC's
/// on this kind of virtual host; TCG guests read the host's TSC).
fn host_tsc_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let mhz: f64 = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .expect("cpu MHz in /proc/cpuinfo");
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a few million kHz
    let khz = (mhz * 1000.0).round() as u64;
    khz
}

/// A gzip'd copy of `file` in `dir` (`gzip -9`, as the initramfs was packed before).
fn gzip_copy(file: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("reference-initramfs.cpio.gz");
    let gz = std::process::Command::new("gzip")
        .arg("-9c")
        .arg(file)
        .output()
        .expect("run gzip");
    assert!(gz.status.success(), "gzip failed: {gz:?}");
    std::fs::write(&out, gz.stdout).expect("write the gzip'd initramfs");
    out
}

/// Boots a VM on `qemu` and returns it with a connection to its agent.
async fn boot(qemu: &QemuBackend, root: &std::path::Path, id: &str) -> (Arc<QemuVm>, AgentClient) {
    let spec = config(root).spec(id.parse().unwrap());
    let vm = qemu.start_qemu(&spec).await.expect("start");
    vm.wait_ready().await.expect("boot");
    let client = dial_with_retry(&vm.agent_address(), RPC, RetryPolicy::default())
        .await
        .expect("dial");
    (vm, client)
}

/// Stops what a measurement left running (not timed).
async fn clean_up(vm: &QemuVm) {
    let _ = vm
        .stop(StopRequest {
            policy: EscalationPolicy::default(),
            graceful: None,
        })
        .await;
}

/// The physical floor: the agent's `Shutdown` RPC → QEMU exit, nothing else.
async fn floor_run(vm: &QemuVm, client: AgentClient) -> Duration {
    let start = Instant::now();
    client.shutdown().await.expect("Shutdown");
    // The agent powers off once the host has the reply and closes.
    drop(client);
    vm.instance().process().wait_exit().await;
    start.elapsed()
}

/// The Go upstream's shutdown (`internal/host/vm/qemu/shutdown.go` and the shim's
/// `PrepareShutdown` before it), ported step by step; returns the time until QEMU is
/// reaped. The backend then cleans the rest up (not timed: upstream's resource cleanup
/// after the process is gone is not part of this comparison either).
async fn go_upstream_run(vm: &QemuVm, client: AgentClient) -> Duration {
    let instance = vm.instance();
    let process = instance.process();
    let start = Instant::now();
    let _ = client.prepare_shutdown().await;
    // closeClientConnections
    drop(client);
    // shutdownGuest: ctrl-alt-delete, else ACPI powerdown (2 s QMP timeout)
    let qmp = instance.qmp();
    if qmp.send_ctrl_alt_delete().await.is_err() {
        let _ = qmp.system_powerdown().await;
    }
    // stopQemuProcess: QEMU's exit or 500 ms, whichever first
    if process
        .wait_exit_timeout(Duration::from_millis(500))
        .await
        .is_some()
    {
        return start.elapsed();
    }
    // quit (1 s), then wait up to 2 s, then SIGKILL and wait up to 2 s
    if qmp.quit(Duration::from_secs(1)).await.is_ok()
        && process
            .wait_exit_timeout(Duration::from_secs(2))
            .await
            .is_some()
    {
        return start.elapsed();
    }
    let _ = process.signal(Signal::SIGKILL).await;
    let _ = process.wait_exit_timeout(Duration::from_secs(2)).await;
    start.elapsed()
}

/// A `kB` field of a /proc file of `pid`, in MiB (fails loudly: a footprint figure must
/// not be invented).
fn proc_mib(pid: u32, file: &str, field: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/{file}: {e}"));
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/{file}"));
    kib / 1024.0
}

/// Resident memory, in MiB, of `pid`'s mappings of `file` (from /proc/<pid>/smaps).
fn mapped_file_rss_mib(pid: u32, file: &std::path::Path) -> f64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/smaps: {e}"));
    let file = file.to_string_lossy();
    let mut inside = false;
    let mut kib = 0.0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line.ends_with(file.as_ref());
        } else if inside {
            if let Some(v) = line.strip_prefix("Rss:") {
                kib += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .expect("Rss");
            }
        }
    }
    kib / 1024.0
}

/// Resident memory of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    proc_mib(pid, "status", "VmRSS")
}

/// This process's children, from /proc (fails loudly).
fn children() -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("list /proc/self/task") {
        let path = task.expect("task entry").path().join("children");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        out.extend(
            text.split_whitespace()
                .map(|p| p.parse::<u32>().expect("pid")),
        );
    }
    out
}

fn mem_total_mib() -> f64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    let kib: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal");
    kib / 1024.0
}

fn secs_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median_ms(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// One boot's timings: host-side exec → first RPC, and the guest's own timeline.
#[derive(Default)]
struct BootSamples {
    exec_to_rpc: Vec<Duration>,
    ready_to_rpc: Vec<Duration>,
    /// exec → the guest kernel's clock starts (host time at the `Info` answer minus the
    /// guest uptime it reported).
    to_kernel: Vec<f64>,
    kernel_to_init: Vec<f64>,
    init_to_modules: Vec<f64>,
    modules_to_serving: Vec<f64>,
    serving_to_rpc: Vec<f64>,
}

impl BootSamples {
    fn push(&mut self, created: &spinbox::shim::Created) {
        let t = &created.timings;
        self.exec_to_rpc.push(t.first_rpc);
        self.ready_to_rpc.push(t.ready_to_first_rpc);
        let info = &created.info;
        let boot = info.boot;
        let uptime = secs_ms(info.uptime);
        self.to_kernel.push(secs_ms(t.first_rpc) - uptime);
        if let (Some(init), Some(modules), Some(serving)) =
            (boot.init_started, boot.modules_loaded, boot.serving)
        {
            self.kernel_to_init.push(secs_ms(init));
            self.init_to_modules.push(secs_ms(modules) - secs_ms(init));
            self.modules_to_serving
                .push(secs_ms(serving) - secs_ms(modules));
            self.serving_to_rpc.push(uptime - secs_ms(serving));
        }
    }

    fn print_breakdown(&self, name: &str) {
        let parts = [
            ("QEMU exec → guest kernel clock starts", &self.to_kernel),
            ("kernel → /init (the agent) starts", &self.kernel_to_init),
            (
                "/init → filesystems and modules ready",
                &self.init_to_modules,
            ),
            ("modules → agent serving", &self.modules_to_serving),
            ("serving → first RPC answered", &self.serving_to_rpc),
        ];
        for (what, samples) in parts {
            if !samples.is_empty() {
                println!("| {name}: {what} | {:.1} ms |", median_ms(samples));
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--bench") && std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let runs = tests::bench::runs_from_args(10);
    let root = tempfile::tempdir().expect("tempdir");
    let assets = tests::assets::assets();
    let tuned = backend_with(assets.clone(), |_| {});
    // The configuration before the boot work: plain command line, SeaBIOS, gzip'd initramfs.
    let mut reference_assets = assets.clone();
    reference_assets.initramfs = gzip_copy(&assets.initramfs, root.path());
    let plain = backend_with(reference_assets, |c| {
        c.kernel_args = KernelArgs::Plain;
        c.firmware = Firmware::Default;
    });
    let upstream_vm = backend_with(assets.clone(), |c| c.on_reset = OnReset::Reboot);
    // Opt-in, not the default: microvm (its own qboot firmware, virtio-mmio, ACPI) with the
    // guest told the TSC frequency, without which it hung in 3 of 15 TCG boots here.
    let microvm = backend_with(assets.clone(), |c| {
        c.machine = Machine::Microvm;
        c.firmware = Firmware::Default;
    });
    let mut microvm_config = config(root.path());
    microvm_config.kernel_args = vec![format!("tsc_early_khz={}", host_tsc_khz())];
    let accel = probe_accelerator(&assets.qemu).await;
    println!("accelerator: {:?} ({})", accel.accelerator, accel.reason);
    println!("runs per scenario: {runs}\n");

    // a + b: boots of each configuration, interleaved; the default's VMs are then deleted.
    let variants = [
        (&plain, config(root.path())),
        (&tuned, config(root.path())),
        (&microvm, microvm_config),
    ];
    let (mut samples, delete) = boot_runs(&variants, runs).await;
    let boot_microvm = samples.pop().expect("microvm");
    let boot_tuned = samples.pop().expect("default");
    let boot_plain = samples.pop().expect("reference");

    // b: the floor and the upstream shutdown, interleaved.
    let (floor, go_no_reboot, go_upstream_vm) =
        shutdown_runs(&tuned, &upstream_vm, root.path(), runs).await;

    // c: a guest that ignores shutdown.
    let (stubborn, grace) = stubborn_runs(root.path(), runs).await;

    println!("| measurement | median | min–max | runs |");
    println!("|---|---:|---:|---:|");
    let a_plain = row(
        "a. exec → first RPC answered, reference (plain command line, SeaBIOS, gzip'd initramfs)",
        &boot_plain.exec_to_rpc,
    );
    let a = row(
        "a. exec → first RPC answered, default (tuned command line, qboot, plain cpio)",
        &boot_tuned.exec_to_rpc,
    );
    let a_microvm = row(
        "a. exec → first RPC answered, opt-in microvm (tuned command line, tsc_early_khz)",
        &boot_microvm.exec_to_rpc,
    );
    let a_ready = row(
        "a. agent ready → first RPC answered (default)",
        &boot_tuned.ready_to_rpc,
    );
    let b = row("b. spinbox delete → all phases done, QEMU reaped", &delete);
    let b_floor = row("b. floor: agent Shutdown RPC → QEMU exit", &floor);
    let b_go = row(
        "b. Go upstream shutdown, spinbox's VM (-no-reboot) → QEMU reaped",
        &go_no_reboot,
    );
    let b_go_up = row(
        "b. Go upstream shutdown, upstream's VM (reboots) → QEMU reaped",
        &go_upstream_vm,
    );
    let c = row("c. delete, guest ignores shutdown", &stubborn);
    println!();
    println!("| where the boot's time goes (median, guest clock) | |");
    println!("|---|---:|");
    boot_plain.print_breakdown("reference");
    boot_tuned.print_breakdown("default");
    boot_microvm.print_breakdown("microvm");
    println!();
    let verdict = |ratio: f64, target: f64| if ratio <= target { "met" } else { "MISSED" };
    let boot_ratio = a / a_plain;
    println!(
        "a: default / reference boot = {boot_ratio:.3} (target ≤ 0.75: {}); agent ready → first RPC {a_ready:.1} ms",
        verdict(boot_ratio, 0.75)
    );
    let microvm_ratio = a_microvm / a_plain;
    println!(
        "a: opt-in microvm / reference boot = {microvm_ratio:.3} ({} the 0.75 target, not the default)",
        if microvm_ratio <= 0.75 { "within" } else { "outside" }
    );
    let floor_ratio = b / b_floor;
    println!(
        "b: delete / floor = {floor_ratio:.3} (target ≤ 2: {}); delete / Go upstream on spinbox's VM = {:.3}; on upstream's VM = {:.3}",
        verdict(floor_ratio, 2.0),
        b / b_go,
        b / b_go_up
    );
    let bound = grace.as_secs_f64() * 1000.0 + 100.0;
    let (_, _, c_max) = stats(&stubborn);
    println!(
        "c: configured grace {grace:?}; median {c:.1} ms, max {c_max:.1} ms; bound grace + 100 ms = {bound:.0} ms ({})",
        if c_max <= bound { "met" } else { "MISSED" }
    );

    footprint(&tuned, &assets.vmlinux, root.path(), runs).await;
}

/// d: resident memory with 1 and then 4 idle VMs up at once.
async fn footprint(
    qemu: &Arc<QemuBackend>,
    kernel_image: &std::path::Path,
    root: &std::path::Path,
    runs: usize,
) {
    let me = std::process::id();
    let guest_mib = f64::from(config(root).memory_mib);
    println!();
    println!("| VMs up | this process (shim) | per VM | QEMU RSS, each | of which guest memory (shmem) / QEMU heap and TCG code cache (anon) / files (file) | of the files: the kernel image QEMU keeps mapped | QEMU PSS, each | QEMU RSS / guest memory | vsock daemon, each |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let counts: &[usize] = if runs > 1 { &[1, 4] } else { &[1] };
    let mut per_vm_total = 0.0;
    for &n in counts {
        let base = rss_mib(me);
        let mut shims = Vec::new();
        for i in 0..n {
            let shim = Shim::new(
                format!("bench-d{n}-{i}").parse().unwrap(),
                config(root),
                qemu.clone(),
            );
            shim.create().await.expect("boot");
            shim.start().await.expect("start");
            shims.push(shim);
        }
        // Idle after boot.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let shim_mib = rss_mib(me);
        let qemu_pids: Vec<u32> = shims
            .iter()
            .map(|s| s.vm_pid().expect("QEMU pid"))
            .collect();
        let qemu_mib: Vec<f64> = qemu_pids.iter().map(|&p| rss_mib(p)).collect();
        // The other children are the vsock daemons (one per VM).
        let daemon_mib: Vec<f64> = children()
            .into_iter()
            .filter(|p| !qemu_pids.contains(p))
            .map(rss_mib)
            .collect();
        assert_eq!(daemon_mib.len(), n, "one vsock daemon per VM");
        let per_vm = (shim_mib - base) / f64::from(u32::try_from(n).expect("few VMs"));
        let q = median_ms(&qemu_mib);
        let d = median_ms(&daemon_mib);
        let part = |field: &str| {
            median_ms(
                &qemu_pids
                    .iter()
                    .map(|&p| proc_mib(p, "status", field))
                    .collect::<Vec<_>>(),
            )
        };
        let kernel = median_ms(
            &qemu_pids
                .iter()
                .map(|&p| mapped_file_rss_mib(p, kernel_image))
                .collect::<Vec<_>>(),
        );
        let pss = median_ms(
            &qemu_pids
                .iter()
                .map(|&p| proc_mib(p, "smaps_rollup", "Pss"))
                .collect::<Vec<_>>(),
        );
        println!(
            "| {n} | {shim_mib:.1} MiB | {per_vm:.1} MiB | {q:.1} MiB | {:.1} / {:.1} / {:.1} MiB | {kernel:.1} MiB | {pss:.1} MiB | {:.2} | {d:.1} MiB |",
            part("RssShmem"),
            part("RssAnon"),
            part("RssFile"),
            q / guest_mib
        );
        per_vm_total = per_vm.max(0.0) + pss + d;
        for shim in shims {
            let report = shim.delete().await.expect("delete");
            assert!(!report.has_errors(), "{report}");
        }
    }
    let total = mem_total_mib();
    println!(
        "d: QEMU / guest memory target ≤ 0.5; idle VMs that fit in {total:.0} MiB at {per_vm_total:.1} MiB each (shim share + QEMU PSS + daemon): {:.0}",
        (total / per_vm_total).floor()
    );
}

/// b: the physical floor and the upstream shutdown on both VM variants, interleaved.
async fn shutdown_runs(
    tuned: &QemuBackend,
    upstream_vm: &QemuBackend,
    root: &std::path::Path,
    runs: usize,
) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let mut floor = Vec::new();
    let mut go_no_reboot = Vec::new();
    let mut go_upstream_vm = Vec::new();
    for i in 0..runs {
        let (vm, client) = boot(tuned, root, &format!("bench-f{i}")).await;
        floor.push(floor_run(&vm, client).await);
        clean_up(&vm).await;
        let (vm, client) = boot(tuned, root, &format!("bench-g{i}")).await;
        go_no_reboot.push(go_upstream_run(&vm, client).await);
        clean_up(&vm).await;
        let (vm, client) = boot(upstream_vm, root, &format!("bench-u{i}")).await;
        go_upstream_vm.push(go_upstream_run(&vm, client).await);
        clean_up(&vm).await;
    }

    (floor, go_no_reboot, go_upstream_vm)
}

/// c: deletes of a guest that ignores every request to power off; with the grace it was
/// given.
async fn stubborn_runs(root: &std::path::Path, runs: usize) -> (Vec<Duration>, Duration) {
    let mut stubborn = Vec::new();
    let mut stubborn_config = config(root);
    stubborn_config.kernel_args = vec!["spinbox.agent=stubborn".to_owned()];
    stubborn_config.shutdown.graceful = Duration::from_secs(1);
    stubborn_config.shutdown.guest_request_wait = Duration::from_millis(500);
    let grace = stubborn_config.shutdown.graceful + stubborn_config.shutdown.guest_request_wait;
    let stubborn_backend = backend_with(tests::assets::test_assets(), |_| {});
    for i in 0..runs {
        let shim = Shim::new(
            format!("bench-c{i}").parse().unwrap(),
            stubborn_config.clone(),
            stubborn_backend.clone(),
        );
        shim.create().await.expect("boot");
        shim.start().await.expect("start");
        let start = Instant::now();
        let _ = shim.delete().await.expect("delete");
        stubborn.push(start.elapsed());
    }

    (stubborn, grace)
}

/// a: `runs` boots of each variant (a backend and the shim settings to boot it with),
/// interleaved; returns each variant's samples, and the deletes of the second variant (the
/// default configuration).
async fn boot_runs(
    variants: &[(&Arc<QemuBackend>, ShimConfig)],
    runs: usize,
) -> (Vec<BootSamples>, Vec<Duration>) {
    let mut samples: Vec<BootSamples> = variants.iter().map(|_| BootSamples::default()).collect();
    let mut delete = Vec::new();
    for i in 0..runs {
        for (v, (qemu, shim_config)) in variants.iter().enumerate() {
            let shim = Shim::new(
                format!("bench-a{v}-{i}").parse().unwrap(),
                shim_config.clone(),
                Arc::clone(qemu) as Arc<dyn spinbox::vm::VmBackend>,
            );
            let created = shim.create().await.expect("boot");
            samples[v].push(&created);
            shim.start().await.expect("start");
            let start = Instant::now();
            let report = shim.delete().await.expect("delete");
            if v == 1 {
                delete.push(start.elapsed());
            }
            assert!(!report.has_errors(), "{report}");
        }
    }
    (samples, delete)
}
