//! Containers in a real VM (SPEC §9): a process from the provisioned busybox rootfs runs in
//! the guest through the shim — stdio over vsock streams, exit statuses, exec, signals,
//! delete while running, isolation — and after each test nothing is left on the host: no
//! process, fd, file under the state root or mount.
//!
//! QEMU under TCG; the tests of this binary run one at a time (`serial`).

#[path = "shim_common/mod.rs"]
mod shim_common;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use shim_common::{serial, Collect, TestVm, HANG_GUARD};
use spinbox::cleanup::CleanupPhase;
use spinbox::shim::{CreateError, ShimEvent};
use spinbox::state::ShimState;
use spinbox::task::stdio::ProcessIo;
use spinbox::task::{ContainerSpec, ExitStatus, ProcessSpec};
use tokio::io::AsyncWrite;

/// A hashing sink: 100 MiB are checked without being kept.
#[derive(Clone, Default)]
struct Hash(Arc<Mutex<(Sha256, u64)>>);

impl AsyncWrite for Hash {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut h = self.0.lock().unwrap();
        h.0.update(buf);
        h.1 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn rootfs() -> PathBuf {
    tests::assets::assets()
        .rootfs
        .expect("the provisioner builds the busybox rootfs: run scripts/provision")
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec::new(["/bin/sh", "-c", script])
}

/// The mount points of this process's mount namespace. Fails closed.
fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("cannot read /proc/self/mountinfo: the mount check cannot run")
        .lines()
        .map(|l| {
            l.split(' ')
                .nth(4)
                .expect("a mountinfo line has a mount point")
                .to_owned()
        })
        .collect()
}

struct Outputs {
    stdout: Collect,
    stderr: Collect,
}

fn io_with(stdin: Option<Vec<u8>>) -> (ProcessIo, Outputs) {
    let (stdout, stderr) = (Collect::default(), Collect::default());
    let io = ProcessIo {
        stdin: stdin.map(|b| Box::new(std::io::Cursor::new(b)) as _),
        stdout: Some(Box::new(stdout.clone())),
        stderr: Some(Box::new(stderr.clone())),
    };
    (io, Outputs { stdout, stderr })
}

/// Creates and starts a container running `process` in a fresh VM.
async fn started(vm: &TestVm, process: ProcessSpec, io: ProcessIo) {
    let spec = ContainerSpec::new("c1", rootfs(), process);
    let created = vm
        .shim
        .create_container(spec, io)
        .await
        .expect("create_container");
    TestVm::assert_alive(created.vm_pid.expect("QEMU pid"));
    assert_eq!(vm.shim.state().state, ShimState::Created);
    vm.shim.start().await.expect("start");
    assert_eq!(vm.shim.state().state, ShimState::Running);
}

/// Deletes the shim's VM and checks the teardown and that nothing is left.
async fn delete_and_check(vm: &TestVm, mounts_before: &[String]) {
    let report = vm.shim.delete().await.expect("delete");
    assert!(!report.has_errors(), "{report}");
    vm.assert_nothing_left().await;
    assert_eq!(host_mounts(), mounts_before, "a mount was left on the host");
}

fn run(test: impl AsyncFnOnce(&TestVm)) {
    serial(|| async {
        tokio::time::timeout(HANG_GUARD, async {
            let mounts = host_mounts();
            assert!(
                !mounts.is_empty(),
                "no mounts listed: the mount check would prove nothing"
            );
            let vm = TestVm::new("ctr");
            test(&vm).await;
            delete_and_check(&vm, &mounts).await;
        })
        .await
        .expect("the test finishes");
    });
}

#[test]
fn echo_and_exit_code() {
    run(async |vm| {
        let (io, out) = io_with(None);
        started(vm, sh("echo hello; echo oops >&2; exit 7"), io).await;
        assert_eq!(vm.shim.wait().await.unwrap(), ExitStatus::Exited(7));
        // Wait answered after the output arrived: nothing is missing.
        assert_eq!(out.stdout.text(), "hello\n");
        assert_eq!(out.stderr.text(), "oops\n");
    });
}

#[test]
fn a_signal_exit_is_reported_as_such() {
    run(async |vm| {
        let (io, _out) = io_with(None);
        started(vm, ProcessSpec::new(["sleep", "1000"]), io).await;
        vm.shim.kill("", 9, false).await.unwrap();
        let status = vm.shim.wait().await.unwrap();
        assert_eq!(status, ExitStatus::Signaled(9));
        assert_eq!(status.code(), 137);
    });
}

#[test]
fn a_hundred_mib_of_stdout_arrive_whole() {
    const SIZE: u64 = 100 << 20;
    run(async |vm| {
        let hash = Hash::default();
        let io = ProcessIo {
            stdout: Some(Box::new(hash.clone())),
            ..ProcessIo::null()
        };
        started(vm, sh(&format!("yes abcdefgh | head -c {SIZE}")), io).await;
        assert_eq!(vm.shim.wait().await.unwrap(), ExitStatus::Exited(0));
        let mut expected = Sha256::new();
        let line = b"abcdefgh\n";
        let mut left = usize::try_from(SIZE).unwrap();
        while left > 0 {
            let n = left.min(line.len());
            expected.update(&line[..n]);
            left -= n;
        }
        let (got, len) = {
            let h = hash.0.lock().unwrap();
            (h.0.clone().finalize(), h.1)
        };
        assert_eq!(len, SIZE, "bytes received");
        assert_eq!(got, expected.finalize(), "checksum of what arrived");
    });
}

#[test]
fn stdin_round_trips_through_cat_and_its_end_closes_it() {
    run(async |vm| {
        let input: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let (io, out) = io_with(Some(input.clone()));
        started(vm, ProcessSpec::new(["cat"]), io).await;
        // cat exits only when stdin reaches end-of-file in the guest.
        assert_eq!(vm.shim.wait().await.unwrap(), ExitStatus::Exited(0));
        assert!(
            out.stdout.bytes() == input,
            "cat echoed {} of {} bytes",
            out.stdout.bytes().len(),
            input.len()
        );
    });
}

#[test]
fn env_cwd_user_hostname_and_rlimits_are_applied() {
    run(async |vm| {
        let (io, out) = io_with(None);
        let mut process = sh("echo \"$GREETING\"; pwd; id -u; id -g; hostname; ulimit -n");
        process.env.push("GREETING=hi there".into());
        process.rlimits.push(spinbox::task::Rlimit {
            resource: "RLIMIT_NOFILE".into(),
            soft: 64,
            hard: 128,
        });
        process.cwd = "/tmp".into();
        process.uid = 1000;
        process.gid = 1000;
        started(vm, process, io).await;
        assert_eq!(vm.shim.wait().await.unwrap(), ExitStatus::Exited(0));
        assert_eq!(out.stdout.text(), "hi there\n/tmp\n1000\n1000\nc1\n64\n");
    });
}

#[test]
fn exec_runs_beside_the_first_process() {
    run(async |vm| {
        let (io, _out) = io_with(None);
        started(vm, ProcessSpec::new(["sleep", "1000"]), io).await;
        let (exec_io, exec_out) = io_with(None);
        vm.shim
            .exec(
                "e1",
                &sh("echo from-exec; ps -o comm | grep -c sleep; exit 3"),
                exec_io,
            )
            .await
            .unwrap();
        assert_eq!(
            vm.shim.wait_exec("e1").await.unwrap(),
            ExitStatus::Exited(3)
        );
        // It ran in the container: it sees the first process.
        assert_eq!(exec_out.stdout.text(), "from-exec\n1\n");
        assert!(matches!(
            vm.shim.exec("e1", &sh("true"), ProcessIo::null()).await,
            Err(spinbox::shim::ContainerError::ExecExists(_))
        ));
        vm.shim.kill("", 9, false).await.unwrap();
        assert_eq!(vm.shim.wait().await.unwrap(), ExitStatus::Signaled(9));
    });
}

#[test]
fn a_process_ignoring_sigterm_dies_of_sigkill() {
    run(async |vm| {
        let (io, out) = io_with(None);
        started(
            vm,
            sh("trap '' TERM; echo ready; while :; do sleep 1; done"),
            io,
        )
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while out.stdout.text() != "ready\n" {
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        vm.shim.kill("", 15, false).await.unwrap();
        // Still running a while later: SIGTERM was ignored.
        assert!(tokio::time::timeout(Duration::from_secs(1), vm.shim.wait())
            .await
            .is_err());
        vm.shim.kill("", 9, false).await.unwrap();
        assert_eq!(vm.shim.wait().await.unwrap(), ExitStatus::Signaled(9));
    });
}

#[test]
fn delete_while_running_delivers_the_output_so_far_and_cleans_everything() {
    serial(|| async {
        tokio::time::timeout(HANG_GUARD, async {
            let mounts = host_mounts();
            let vm = TestVm::new("ctr");
            let mut events = vm.shim.events().unwrap();
            let (io, out) = io_with(None);
            started(&vm, sh("echo before; echo err-before >&2; sleep 1000"), io).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while out.stdout.text().is_empty() || out.stderr.text().is_empty() {
                assert!(tokio::time::Instant::now() < deadline, "no output");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            delete_and_check(&vm, &mounts).await;
            assert_eq!(out.stdout.text(), "before\n");
            assert_eq!(out.stderr.text(), "err-before\n");
            // Stdio closed before the VM stopped; the share released after it.
            let events = shim_common::drain(&mut events).await;
            let phases: Vec<CleanupPhase> = events
                .iter()
                .filter_map(|e| match e {
                    ShimEvent::PhaseFinished { phase, outcome, .. } => {
                        assert!(
                            matches!(outcome, lifecycle_core::PhaseOutcome::Ok),
                            "{phase}: {outcome}"
                        );
                        Some(*phase)
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(phases, CleanupPhase::ALL.to_vec());
        })
        .await
        .expect("the test finishes");
    });
}

#[test]
fn the_container_sees_neither_the_agents_mounts_nor_its_processes_and_cannot_write_the_rootfs() {
    run(async |vm| {
        let (io, out) = io_with(None);
        started(
            vm,
            sh("touch /written-by-container && cut -d' ' -f5 /proc/self/mountinfo; echo ---; ps -o pid,comm"),
            io,
        )
        .await;
        assert_eq!(vm.shim.wait().await.unwrap(), ExitStatus::Exited(0));
        let text = out.stdout.text();
        let (mounts, ps) = text.split_once("---\n").expect("both listings");
        assert!(mounts.lines().any(|m| m == "/"), "{mounts}");
        for m in mounts.lines() {
            assert!(
                !m.starts_with("/run") && !m.starts_with("/lib/modules"),
                "the agent's mount {m} is visible:\n{mounts}"
            );
        }
        let processes: Vec<&str> = ps.lines().skip(1).collect();
        // The shell (PID 1 of the container) and ps; nothing of the agent.
        assert!(processes.len() <= 3, "{ps}");
        assert!(
            processes
                .iter()
                .any(|p| p.split_whitespace().next() == Some("1")),
            "{ps}"
        );
        assert!(!ps.contains("init") && !ps.contains("agent"), "{ps}");
        assert!(
            !rootfs().join("written-by-container").exists(),
            "the host rootfs was modified"
        );
    });
}

#[test]
fn a_rootfs_that_does_not_exist_fails_the_creation_before_anything_boots() {
    serial(|| async {
        let vm = TestVm::new("ctr");
        let spec = ContainerSpec::new("c1", "/nonexistent/rootfs", sh("true"));
        let err = vm
            .shim
            .create_container(spec, ProcessIo::null())
            .await
            .unwrap_err();
        assert!(matches!(err, CreateError::Rootfs(_)), "{err:?}");
        assert_eq!(vm.shim.state().state, ShimState::Idle);
        let relative = ContainerSpec::new("c1", "rootfs", sh("true"));
        let err = vm
            .shim
            .create_container(relative, ProcessIo::null())
            .await
            .unwrap_err();
        assert!(matches!(err, CreateError::Spec(_)), "{err:?}");
        vm.assert_nothing_left().await;
    });
}

/// Each transport built into the product runs the same container, and what it made on
/// the host (the EROFS image; nothing for 9p) exists while the container runs and is gone
/// after the delete.
#[test]
fn nine_p_and_erofs_both_carry_the_rootfs_and_release_it() {
    use spinbox::rootfs::RootfsTransport;
    for transport in [RootfsTransport::NineP, RootfsTransport::Erofs] {
        serial(|| async {
            tokio::time::timeout(HANG_GUARD, async {
                let mounts = host_mounts();
                let root = tempfile::tempdir().unwrap();
                let mut config = shim_common::config(root.path());
                config.rootfs_transport = transport;
                let vm = TestVm::with(root, config, "ctr", tests::assets::assets());
                let (io, out) = io_with(None);
                started(
                    &vm,
                    sh("head -1 /etc/passwd; echo x > /new && cat /new"),
                    io,
                )
                .await;
                let image = vm.root().join("ctr.rootfs").join("rootfs.erofs");
                assert_eq!(
                    image.is_file(),
                    transport == RootfsTransport::Erofs,
                    "{transport}: image {}",
                    image.display()
                );
                assert_eq!(vm.shim.wait().await.unwrap(), ExitStatus::Exited(0));
                assert_eq!(
                    out.stdout.text(),
                    "root:x:0:0:root:/root:/bin/sh\nx\n",
                    "{transport}"
                );
                delete_and_check(&vm, &mounts).await;
                assert!(!image.exists(), "{transport}: the image was left");
            })
            .await
            .expect("the test finishes");
        });
    }
}

/// virtiofs needs `virtiofsd`, which is not a Debian package: without it the creation
/// fails before anything starts, saying how to get it.
#[test]
fn virtiofs_without_its_daemon_is_a_clear_error_before_anything_starts() {
    serial(|| async {
        let root = tempfile::tempdir().unwrap();
        let mut config = shim_common::config(root.path());
        config.rootfs_transport = spinbox::rootfs::RootfsTransport::VirtioFs;
        config.rootfs_tools.virtiofsd = None;
        let vm = TestVm::with(root, config, "ctr", tests::assets::assets());
        let spec = ContainerSpec::new("c1", rootfs(), sh("true"));
        let err = vm
            .shim
            .create_container(spec, ProcessIo::null())
            .await
            .unwrap_err();
        let CreateError::Rootfs(source) = &err else {
            panic!("{err:?}");
        };
        assert!(source.to_string().contains("virtiofsd"), "{source}");
        assert_eq!(vm.shim.state().state, ShimState::Idle);
        vm.assert_nothing_left().await;
    });
}

/// A process that never reads its stdin, fed without end: the host's copy stalls on a
/// full stream, and nothing else does; delete still ends it all.
#[test]
fn a_process_that_never_reads_stdin_blocks_nothing() {
    run(async |vm| {
        let out = Collect::default();
        let io = ProcessIo {
            stdin: Some(Box::new(tokio::io::repeat(b'x'))),
            stdout: Some(Box::new(out.clone())),
            stderr: None,
        };
        started(vm, sh("echo started; sleep 1000"), io).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while out.text() != "started\n" {
            assert!(tokio::time::Instant::now() < deadline, "never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The shim still answers, and an exec runs beside it.
        let (exec_io, exec_out) = io_with(None);
        vm.shim
            .exec("e1", &sh("echo alive"), exec_io)
            .await
            .unwrap();
        assert_eq!(
            vm.shim.wait_exec("e1").await.unwrap(),
            ExitStatus::Exited(0)
        );
        assert_eq!(exec_out.stdout.text(), "alive\n");
    });
}

/// `start` and `delete` race from two tasks of a multi-thread runtime: whichever wins, the
/// loser gets a clear answer, and the teardown leaves nothing.
#[test]
fn start_racing_delete_leaves_nothing() {
    serial(|| async {
        tokio::time::timeout(HANG_GUARD, async {
            let mounts = host_mounts();
            let vm = TestVm::new("ctr");
            let (io, _out) = io_with(None);
            let spec = ContainerSpec::new("c1", rootfs(), sh("echo hi; sleep 1000"));
            vm.shim
                .create_container(spec, io)
                .await
                .expect("create_container");
            let (starter, deleter) = (vm.shim.clone(), vm.shim.clone());
            let start = tokio::spawn(async move { starter.start().await });
            let delete = tokio::spawn(async move { deleter.delete().await });
            let (start, delete) = (start.await.unwrap(), delete.await.unwrap());
            let report = delete.expect("delete from Created or Running is admitted");
            assert!(!report.has_errors(), "{report}");
            if let Err(e) = &start {
                assert!(
                    matches!(
                        e,
                        spinbox::shim::StartError::Deleting
                            | spinbox::shim::StartError::ShuttingDown
                            | spinbox::shim::StartError::Container(_)
                    ),
                    "{e:?}"
                );
            }
            assert_eq!(vm.shim.state().state, ShimState::ShuttingDown);
            vm.assert_nothing_left().await;
            assert_eq!(host_mounts(), mounts, "a mount was left on the host");
        })
        .await
        .expect("the test finishes");
    });
}
