//! Rootfs transport benchmark (SPEC §5.5, §9; issue 13): how a container's rootfs best
//! reaches the guest. `cargo bench -p tests --bench rootfs -- [--runs N]` (default 5; needs
//! `scripts/provision`, and `scripts/provision --with-virtiofsd` for the virtiofs rows).
//! Under `cargo test --all-targets` it runs once on a small tree (a smoke run).
//!
//! For each transport (9p; EROFS image on virtio-blk; virtiofs when `virtiofsd` is
//! provisioned) and each rootfs (the provisioned busybox one; a large one generated here:
//! ≥ 200 MiB in ≥ 10,000 files, a 128 MiB file among them), runs interleaved:
//!
//! * **create → running**: from the request to the container's process running: the
//!   host-side preparation (`spinbox::rootfs::prepare`, `mkfs.erofs` included), the VM's
//!   boot with the share, the agent's `CreateContainer` (mounts, overlay) and `Start`;
//!   and separately the part after the VM is up (`CreateContainer` + `Start`);
//! * **read** (large rootfs): `dd if=/big of=/dev/null bs=1M` run in the container
//!   through `ExecProcess`, timed to its `Wait` answer (first read: nothing of it cached in
//!   the guest); then `cat` of every small file (`sh -c 'cat /data/*/* > /dev/null'`),
//!   where per-file costs (lookups, opens) dominate.
//!
//! The agent is driven directly with the generated `TaskClient`, no stdio attached. Each
//! figure is printed with its ratio to 9p in the same run.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::MessageField;
use spinbox::rootfs::{prepare_with, GuestMount, RootfsTransport, Tools};
use spinbox::shim::ShimConfig;
use spinbox::vm::agent::shutdown_hook;
use spinbox::vm::qemu::{probe_accelerator, QemuBackend, QemuBackendConfig, QemuVm};
use spinbox::vm::stop::EscalationPolicy;
use spinbox::vm::{vsock, StopRequest, Vm};
use spinbox_protocol::agent::{
    CreateContainerRequest, DeleteRequest, ExecProcessRequest, Mount, Process, StartRequest, Stdio,
    WaitRequest,
};
use spinbox_protocol::agent_ttrpc::TaskClient;

const RPC: Duration = Duration::from_mins(5);

/// The size of the file read in the guest.
const BIG_MIB: usize = 128;

/// Files and bytes of the large rootfs besides the big file: 10,240 files of 8 KiB.
const MANY_DIRS: usize = 80;
const FILES_PER_DIR: usize = 128;
const SMALL_FILE: usize = 8 * 1024;

/// How the run is sized.
struct Mode {
    runs: usize,
    /// The smoke run's "large" tree is small; the figures are not reported as such.
    smoke: bool,
}

fn mode_from_args() -> Mode {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if bench { 5 } else { 1 });
    Mode {
        runs,
        smoke: !bench,
    }
}

/// Deterministic bytes (xorshift), so no layer can deduplicate or compress them away.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// A busybox base for the large rootfs: the static binary and the applets the benchmark
/// runs.
fn busybox_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir bin");
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("copy /bin/busybox (scripts/provision installs busybox-static)");
    for applet in ["sh", "sleep", "dd", "cat", "true", "ls"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).expect("symlink");
    }
}

/// The large rootfs: busybox, `dirs` × `per_dir` files of `size` bytes, and `/big`.
fn large_rootfs(dir: &Path, dirs: usize, per_dir: usize, size: usize, big_mib: usize) {
    busybox_rootfs(dir);
    let mut buf = vec![0u8; size];
    for d in 0..dirs {
        let sub = dir.join("data").join(format!("d{d:03}"));
        std::fs::create_dir_all(&sub).expect("mkdir data");
        for f in 0..per_dir {
            fill(&mut buf, (d * per_dir + f) as u64 + 1);
            std::fs::write(sub.join(format!("f{f:04}")), &buf).expect("write a small file");
        }
    }
    let mut big = std::io::BufWriter::new(std::fs::File::create(dir.join("big")).expect("big"));
    let mut mib = vec![0u8; 1 << 20];
    for i in 0..big_mib {
        fill(&mut mib, 0xb16 + i as u64);
        big.write_all(&mib).expect("write big");
    }
    big.flush().expect("flush big");
}

/// Total bytes and files under `dir` (regular files).
fn du(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                bytes += e.metadata().expect("metadata").len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

fn mounts(m: &[GuestMount]) -> Vec<Mount> {
    m.iter()
        .map(|g| Mount {
            fstype: g.fstype.clone(),
            source: g.source.clone(),
            options: g.options.clone(),
            ..Mount::default()
        })
        .collect()
}

fn process(args: &[&str]) -> MessageField<Process> {
    MessageField::some(Process {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        ..Process::default()
    })
}

fn no_stdio() -> MessageField<Stdio> {
    MessageField::some(Stdio::default())
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(RPC)
}

/// One measurement's figures.
#[derive(Default)]
struct Sample {
    prepare: Duration,
    total: Duration,
    after_up: Duration,
    read: Option<Duration>,
    small_files: Option<Duration>,
}

/// Prepares `rootfs` over `transport`, boots a VM with it, creates and starts a container
/// on it; then, when `read` is set, times `dd` of `/big` in it. Everything is torn down
/// (not timed).
async fn measure(
    backend: &QemuBackend,
    tools: &Tools,
    transport: RootfsTransport,
    rootfs: &Path,
    root: &Path,
    id: &str,
    read: bool,
) -> Sample {
    let work = root.join(format!("{id}-work"));
    std::fs::create_dir_all(&work).expect("work dir");
    let mut config = ShimConfig {
        state_root: root.join("run"),
        ..ShimConfig::default()
    };
    config.memory_mib = 512;
    let mut spec = config.spec(id.parse().expect("vm id"));

    let t0 = Instant::now();
    let prepared = prepare_with(tools, transport, rootfs, &work, "rootfs")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "prepare {transport}: {e} ({:?})",
                std::error::Error::source(&e)
            )
        });
    let prepare = t0.elapsed();
    spec.shares = vec![prepared.share.clone()];
    let vm: Arc<QemuVm> = backend.start_qemu(&spec).await.expect("start");
    vm.wait_ready().await.expect("boot");
    let client = vsock::connect(&vm.agent_address(), RPC)
        .await
        .expect("connect to the agent");
    let task = TaskClient::new(client);
    let up = Instant::now();
    let created = task
        .create_container(
            ctx(),
            &CreateContainerRequest {
                id: "bench".into(),
                rootfs: mounts(&prepared.mounts),
                rootfs_owned: false,
                process: process(&["/bin/sleep", "3600"]),
                stdio: no_stdio(),
                ..CreateContainerRequest::default()
            },
        )
        .await;
    if let Err(e) = created {
        let console = vm
            .console_log()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        panic!("{transport}: CreateContainer failed: {e}\nconsole:\n{console}");
    }
    task.start(
        ctx(),
        &StartRequest {
            container_id: "bench".into(),
            ..StartRequest::default()
        },
    )
    .await
    .expect("Start");
    let after_up = up.elapsed();
    let total = t0.elapsed();

    let (read, small_files) = if read {
        let big = ["/bin/dd", "if=/big", "of=/dev/null", "bs=1M"];
        let many = ["/bin/sh", "-c", "cat /data/*/* > /dev/null"];
        (
            Some(timed_exec(&task, transport, "big", &big).await),
            Some(timed_exec(&task, transport, "many", &many).await),
        )
    } else {
        (None, None)
    };
    teardown(task, &vm, &prepared).await;
    let _ = std::fs::remove_dir(&work);
    Sample {
        prepare,
        total,
        after_up,
        read,
        small_files,
    }
}

/// Times `args` run in the container as exec `exec_id`, exec → `Wait` answered; it must
/// exit 0.
async fn timed_exec(
    task: &TaskClient,
    transport: RootfsTransport,
    exec_id: &str,
    args: &[&str],
) -> Duration {
    let t = Instant::now();
    task.exec_process(
        ctx(),
        &ExecProcessRequest {
            container_id: "bench".into(),
            exec_id: exec_id.into(),
            process: process(args),
            stdio: no_stdio(),
            ..ExecProcessRequest::default()
        },
    )
    .await
    .expect("ExecProcess");
    let waited = task
        .wait(
            ctx(),
            &WaitRequest {
                container_id: "bench".into(),
                exec_id: exec_id.into(),
                ..WaitRequest::default()
            },
        )
        .await
        .expect("Wait");
    let elapsed = t.elapsed();
    let code = waited.status.exit_code;
    assert_eq!(code, 0, "{transport}: {args:?} exited {code}");
    elapsed
}

/// Deletes the container, stops the VM, releases the rootfs (not timed).
async fn teardown(task: TaskClient, vm: &QemuVm, prepared: &spinbox::rootfs::PreparedRootfs) {
    let _ = task
        .delete(
            ctx(),
            &DeleteRequest {
                container_id: "bench".into(),
                force: true,
                ..DeleteRequest::default()
            },
        )
        .await;
    drop(task);
    vm.stop(StopRequest {
        policy: EscalationPolicy::default(),
        graceful: Some(shutdown_hook(
            vm.agent_address(),
            Duration::from_secs(10),
            None,
        )),
    })
    .await
    .expect("stop");
    prepared.release().await.expect("release");
}

fn median_ms(samples: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    if n % 2 == 1 {
        ms[n / 2]
    } else {
        f64::midpoint(ms[n / 2 - 1], ms[n / 2])
    }
}

fn spread(samples: &[Duration]) -> String {
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ms.iter().copied().fold(0.0, f64::max);
    format!("{min:.0}–{max:.0}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--bench") && std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let mode = mode_from_args();
    let root = tempfile::tempdir().expect("tempdir");
    let assets = tests::assets::assets();
    let tools = Tools::from_assets(&assets, std::env::var_os("PATH").as_deref());
    let backend = QemuBackend::new(QemuBackendConfig::new(assets.clone()));
    let mut transports = vec![RootfsTransport::NineP, RootfsTransport::Erofs];
    let virtiofs_note = if tools.virtiofsd.is_some() {
        transports.push(RootfsTransport::VirtioFs);
        None
    } else {
        Some("virtiofs: not measured (virtiofsd not provisioned: scripts/provision --with-virtiofsd)")
    };

    // The provisioned busybox rootfs (the CLI's default).
    let small = assets
        .rootfs
        .clone()
        .expect("no busybox rootfs in the assets: run scripts/provision");
    let large = root.path().join("large");
    if mode.smoke {
        large_rootfs(&large, 2, 8, SMALL_FILE, 2);
    } else {
        large_rootfs(&large, MANY_DIRS, FILES_PER_DIR, SMALL_FILE, BIG_MIB);
    }
    let (large_bytes, large_files) = du(&large);
    let (small_bytes, small_files) = du(&small);
    let accel = probe_accelerator(&assets.qemu).await;
    println!("accelerator: {:?} ({})", accel.accelerator, accel.reason);
    println!(
        "runs per scenario: {}{}",
        mode.runs,
        if mode.smoke {
            " (smoke run: small trees)"
        } else {
            ""
        }
    );
    println!(
        "rootfs: small = busybox, {small_files} files, {} KiB; large = {large_files} files, {} MiB (a {} MiB /big among them)",
        small_bytes >> 10,
        large_bytes >> 20,
        if mode.smoke { 2 } else { BIG_MIB },
    );
    if let Some(note) = virtiofs_note {
        println!("{note}");
    }
    println!();

    // (transport, rootfs) → samples.
    let mut results: BTreeMap<(usize, &str), Vec<Sample>> = BTreeMap::new();
    for run in 0..mode.runs {
        for (ti, &t) in transports.iter().enumerate() {
            for (name, dir, read) in [("small", &small, false), ("large", &large, true)] {
                let id = format!("rfs-{}-{name}-{run}", t.name());
                let s = measure(&backend, &tools, t, dir, root.path(), &id, read).await;
                eprintln!(
                    "run {run} {t} {name}: prepare {:?}, create→running {:?}, after VM up {:?}, read {:?}, small files {:?}",
                    s.prepare, s.total, s.after_up, s.read, s.small_files
                );
                results.entry((ti, name)).or_default().push(s);
            }
        }
    }

    let (big, small_files) = if mode.smoke {
        (2, 16)
    } else {
        (BIG_MIB, MANY_DIRS * FILES_PER_DIR)
    };
    report(&transports, &results, big, small_files);
}

/// Prints the tables, every figure with its ratio to 9p (the first transport).
fn report(
    transports: &[RootfsTransport],
    results: &BTreeMap<(usize, &str), Vec<Sample>>,
    big_mib: usize,
    small_files: usize,
) {
    let pick = |ti: usize,
                name: &'static str,
                f: fn(&Sample) -> Option<Duration>|
     -> Vec<Duration> { results[&(ti, name)].iter().filter_map(f).collect() };
    println!("| transport | rootfs | host prepare | create → running (median, range) | ratio to 9p | after the VM is up | ratio to 9p |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for name in ["small", "large"] {
        let base_total = median_ms(&pick(0, name, |s| Some(s.total)));
        let base_up = median_ms(&pick(0, name, |s| Some(s.after_up)));
        for (ti, t) in transports.iter().enumerate() {
            let total = pick(ti, name, |s| Some(s.total));
            let up = pick(ti, name, |s| Some(s.after_up));
            let prep = pick(ti, name, |s| Some(s.prepare));
            println!(
                "| {t} | {name} | {:.0} ms | {:.0} ms ({}) | {:.2} | {:.0} ms ({}) | {:.2} |",
                median_ms(&prep),
                median_ms(&total),
                spread(&total),
                median_ms(&total) / base_total,
                median_ms(&up),
                spread(&up),
                median_ms(&up) / base_up,
            );
        }
    }
    println!();
    println!(
        "| transport | `dd` of the {big_mib} MiB /big (median, range) | throughput | ratio to 9p | `cat` of the {small_files} small files | ratio to 9p |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let base_read = median_ms(&pick(0, "large", |s| s.read));
    let base_many = median_ms(&pick(0, "large", |s| s.small_files));
    for (ti, t) in transports.iter().enumerate() {
        let read = pick(ti, "large", |s| s.read);
        let ms = median_ms(&read);
        let many = pick(ti, "large", |s| s.small_files);
        let many_ms = median_ms(&many);
        #[allow(clippy::cast_precision_loss)]
        let mibs = big_mib as f64 / (ms / 1000.0);
        println!(
            "| {t} | {ms:.0} ms ({}) | {mibs:.1} MiB/s | {:.2} | {many_ms:.0} ms ({}) | {:.2} |",
            spread(&read),
            ms / base_read,
            spread(&many),
            many_ms / base_many,
        );
    }
}
