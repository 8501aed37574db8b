//! The container runtime against real namespaces on the host (the tests run as root).
//!
//! Every mount is made inside a container's own mount namespace; each test checks the
//! host's mount table where it matters. The tests run concurrently (each has its own
//! rootfs and state root; the reaper is shared, as in the agent).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::*;

/// Bound on every wait, so a broken runtime fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_mins(1);

struct Fixture {
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
    state: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).expect("mkdir rootfs");
    if let Err(e) = busybox_rootfs::build(&rootfs) {
        panic!("{}", crate::error_chain(&e));
    }
    let state = dir.path().join("state");
    Fixture {
        _dir: dir,
        rootfs,
        state,
    }
}

impl Fixture {
    fn spec(&self, id: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            rootfs: self.rootfs.clone(),
            rootfs_owned: false,
            hostname: None,
            process: ProcessSpec::new(["sh", "-c", script]),
        }
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_elapsed| panic!("{what} took longer than {LIMIT:?}"))
}

async fn read_all(mut pipe: OutputPipe) -> Vec<u8> {
    let mut out = Vec::new();
    pipe.read_to_end(&mut out).await.expect("read output");
    out
}

/// A container created from `script` and started.
async fn started(f: &Fixture, id: &str, script: &str) -> (Container, ProcessStdio) {
    let (mut c, stdio) = within("create", Container::create(&f.spec(id, script), &f.state))
        .await
        .expect("create");
    within("start", c.start()).await.expect("start");
    (c, stdio)
}

/// The first line of an output, and the reader for the rest.
async fn first_line(out: OutputPipe) -> (BufReader<OutputPipe>, String) {
    let mut out = BufReader::new(out);
    let mut line = String::new();
    within("a line", out.read_line(&mut line))
        .await
        .expect("read a line");
    (out, line)
}

/// Output and status of a run to completion, stdin closed at once.
struct Run {
    stdout: String,
    stderr: String,
    status: ExitStatus,
}

async fn run(spec: &ContainerSpec, state: &Path) -> Run {
    let (mut c, stdio) = within("create", Container::create(spec, state))
        .await
        .expect("create");
    within("start", c.start()).await.expect("start");
    let run = collect(c.init().clone(), stdio).await;
    within("delete", c.delete(false)).await.expect("delete");
    run
}

async fn collect(process: Process, stdio: ProcessStdio) -> Run {
    drop(stdio.stdin);
    let (stdout, stderr, status) = within("the process", async {
        tokio::join!(
            read_all(stdio.stdout),
            read_all(stdio.stderr),
            process.wait_reported()
        )
    })
    .await;
    Run {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        status: status.expect("status"),
    }
}

fn host_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").expect("read the host's mountinfo")
}

/// Fails the test if the host's mount table mentions `path`.
fn assert_not_mounted_on_host(path: &Path) {
    let path = path.to_str().expect("utf-8 path");
    let mounts = host_mounts();
    assert!(
        !mounts.lines().any(|l| l.contains(path)),
        "{path} is mounted on the host:\n{mounts}"
    );
}

#[tokio::test]
async fn echo_and_exit_code() {
    let f = fixture();
    let r = run(
        &f.spec("echo", "echo hello; echo oops >&2; exit 7"),
        &f.state,
    )
    .await;
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.stderr, "oops\n");
    assert_eq!(r.status, ExitStatus::Exited(7));
    assert!(!f.state.join("echo").exists(), "state dir left behind");
}

#[tokio::test]
async fn init_ignores_unhandled_sigterm_like_any_pid_1() {
    let f = fixture();
    let r = run(
        &f.spec("pid1term", "kill -TERM $$; echo survived"),
        &f.state,
    )
    .await;
    assert_eq!(
        (r.stdout.as_str(), r.status),
        ("survived\n", ExitStatus::Exited(0))
    );
}

#[tokio::test]
async fn signal_exits_are_reported_with_the_signal() {
    let f = fixture();
    let (mut c, stdio) = started(&f, "sig", "read x").await;
    let (exec, exec_stdio) = c
        .exec(&ProcessSpec::new(["sh", "-c", "kill -TERM $$"]))
        .await
        .expect("exec");
    assert_eq!(
        collect(exec, exec_stdio).await.status,
        ExitStatus::Signaled(15)
    );
    c.kill(Signal::SIGKILL, false).expect("kill");
    let r = collect(c.init().clone(), stdio).await;
    assert_eq!(r.status, ExitStatus::Signaled(9));
    assert_eq!(c.state(), ContainerState::Stopped(ExitStatus::Signaled(9)));
    c.delete(false).await.expect("delete a stopped container");
}

#[tokio::test]
async fn hundred_mib_of_stdout_arrive_whole() {
    let f = fixture();
    let spec = f.spec("big", "dd if=/dev/zero bs=1048576 count=100 2>/dev/null");
    let (mut c, stdio) = Container::create(&spec, &f.state).await.expect("create");
    c.start().await.expect("start");
    drop(stdio.stdin);
    let mut stdout = stdio.stdout;
    let init = c.init().clone();
    let (hash, len) = within("100 MiB", async {
        let mut hasher = Sha256::new();
        let mut len = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stdout.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n;
        }
        (hasher.finalize(), len)
    })
    .await;
    drop(stdio.stderr);
    assert_eq!(len, 100 << 20);
    assert_eq!(
        format!("{hash:x}"),
        "20492a4d0d84f8beb1767f6616229f85d44c2827b64bdbfb260ee12fa1109e0e"
    );
    assert_eq!(
        within("status", init.wait_reported())
            .await
            .expect("status"),
        ExitStatus::Exited(0)
    );
    c.delete(false).await.expect("delete");
}

#[tokio::test]
async fn exit_is_reported_only_after_output_is_drained() {
    let f = fixture();
    let (c, stdio) = started(&f, "drain", "echo hi; exit 3").await;
    let init = c.init().clone();
    assert_eq!(
        within("exit", init.wait()).await.expect("exit"),
        ExitStatus::Exited(3)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), init.wait_reported())
            .await
            .is_err(),
        "the exit was reported while its output was still unread"
    );
    let r = collect(init, stdio).await;
    assert_eq!(
        (r.stdout.as_str(), r.status),
        ("hi\n", ExitStatus::Exited(3))
    );
    c.delete(false).await.expect("delete");
}

#[tokio::test]
async fn stdin_round_trip_through_cat() {
    let f = fixture();
    let mut spec = f.spec("cat", "");
    spec.process.args = vec!["cat".into()];
    let (mut c, stdio) = Container::create(&spec, &f.state).await.expect("create");
    c.start().await.expect("start");
    let input: Vec<u8> = (0..200_000u32).flat_map(u32::to_le_bytes).collect();
    let ProcessStdio {
        mut stdin,
        stdout,
        stderr,
    } = stdio;
    let writer = async move {
        stdin.write_all(&input).await.expect("write stdin");
        drop(stdin);
        input
    };
    let (input, output, errors) = within("cat", async {
        tokio::join!(writer, read_all(stdout), read_all(stderr))
    })
    .await;
    assert!(
        input == output,
        "cat returned {} bytes for {}",
        output.len(),
        input.len()
    );
    assert_eq!(errors, b"");
    assert_eq!(
        within("exit", c.wait()).await.expect("exit"),
        ExitStatus::Exited(0)
    );
    c.delete(false).await.expect("delete");
}

#[tokio::test]
async fn env_cwd_credentials_and_rlimits_are_applied() {
    let f = fixture();
    let mut spec = f.spec("creds", "id -u; id -g; id -G; pwd; echo $FOO; ulimit -n");
    spec.process.env.push("FOO=bar baz".into());
    spec.process.cwd = "/tmp".into();
    (spec.process.uid, spec.process.gid) = (1000, 1000);
    spec.process.additional_gids = vec![10, 20];
    spec.process.rlimits = vec![Rlimit {
        resource: RlimitResource::NoFile,
        soft: 123,
        hard: 456,
    }];
    let r = run(&spec, &f.state).await;
    assert_eq!(
        r.stdout, "1000\n1000\n1000 10 20\n/tmp\nbar baz\n123\n",
        "stderr: {}",
        r.stderr
    );
    assert_eq!(r.status, ExitStatus::Exited(0));
}

#[tokio::test]
async fn signals_start_at_their_defaults() {
    let f = fixture();
    // The test harness (like the agent) ignores SIGPIPE; the container must not. (No
    // shell: busybox sh ignores SIGQUIT in its children.)
    let mut spec = f.spec("sigs", "");
    spec.process.args = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]
        .map(String::from)
        .to_vec();
    let r = run(&spec, &f.state).await;
    assert_eq!(
        r.stdout,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
}

#[tokio::test]
async fn hostname_is_set() {
    let f = fixture();
    let mut spec = f.spec("host", "hostname");
    spec.hostname = Some("box-1".into());
    assert_eq!(run(&spec, &f.state).await.stdout, "box-1\n");
    // Without one, the id.
    assert_eq!(
        run(&f.spec("host2", "hostname"), &f.state).await.stdout,
        "host2\n"
    );
}

#[tokio::test]
async fn own_pid_namespace_and_only_its_own_mounts() {
    let f = fixture();
    let spec = f.spec("iso", "echo $$; ps; cat /proc/self/mountinfo");
    let (mut c, stdio) = Container::create(&spec, &f.state).await.expect("create");
    c.start().await.expect("start");
    // While it runs, the host sees none of its mounts.
    assert_not_mounted_on_host(&f.state);
    let r = collect(c.init().clone(), stdio).await;
    c.delete(false).await.expect("delete");
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("1"), "{}", r.stdout);
    let ps_header = lines.next().expect("ps header");
    assert!(ps_header.contains("PID"), "{ps_header}");
    let ps: Vec<&str> = lines.by_ref().take(2).collect();
    assert!(
        ps[0].trim_start().starts_with("1 ") && ps[0].contains("sh"),
        "{ps:?}"
    );
    assert!(ps[1].contains("ps"), "{ps:?}");
    let mut points: Vec<&str> = lines
        .map(|l| l.split(' ').nth(4).expect("mount point"))
        .collect();
    points.sort_unstable();
    let mut expected = vec!["/", "/proc", "/dev", "/dev/shm", "/sys"];
    let devices: Vec<String> = DEVICES.iter().map(|d| format!("/dev/{d}")).collect();
    expected.extend(devices.iter().map(String::as_str));
    expected.sort_unstable();
    assert_eq!(points, expected, "{}", r.stdout);
    assert_eq!(r.status, ExitStatus::Exited(0));
}

#[tokio::test]
async fn minimal_dev_and_read_only_sys() {
    let f = fixture();
    let script =
        "echo x > /dev/null && head -c 5 /dev/zero | wc -c && head -c 5 /dev/urandom | wc -c \
        && echo y > /dev/shm/f && cat /dev/shm/f && ls /dev \
        && { touch /sys/x 2>/dev/null || echo sys-ro; }";
    let r = run(&f.spec("dev", script), &f.state).await;
    assert_eq!(
        r.stdout,
        "5\n5\ny\nfd\nfull\nnull\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\nsys-ro\n",
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn an_exec_process_group_is_killed_without_the_container() {
    let f = fixture();
    let (mut c, stdio) = started(&f, "group", "read x").await;
    let spec = ProcessSpec::new(["sh", "-c", "sleep 1000 & sleep 1000 & echo up; wait"]);
    let (exec, exec_stdio) = c.exec(&spec).await.expect("exec");
    let (_out, line) = first_line(exec_stdio.stdout).await;
    assert_eq!(line, "up\n");
    wait_for_processes(&c, 4).await;
    exec.signal(Signal::SIGKILL, true).expect("kill the group");
    assert_eq!(
        within("exec", exec.wait()).await.expect("exit"),
        ExitStatus::Signaled(9)
    );
    let left = wait_for_processes(&c, 1).await;
    assert_eq!(
        left,
        [c.init().pid()],
        "the group outlived the kill, or init died"
    );
    assert_eq!(c.state(), ContainerState::Running);
    drop(stdio);
    c.delete(true).await.expect("delete");
}

#[tokio::test]
async fn exec_runs_beside_the_first_process() {
    let f = fixture();
    let (mut c, mut stdio) = started(&f, "exec", "read x; echo init got $x").await;
    let mut spec = ProcessSpec::new(["sh", "-c", "echo $$ $(hostname) $(id -u) $(pwd)"]);
    spec.uid = 1000;
    spec.cwd = "/home/user".into();
    let (exec, exec_stdio) = c.exec(&spec).await.expect("exec");
    let r = collect(exec, exec_stdio).await;
    let mut words = r.stdout.split_whitespace();
    let pid: i32 = words.next().and_then(|p| p.parse().ok()).expect("a pid");
    assert!(pid > 1, "exec'd process has pid {pid} in the container");
    assert_eq!(
        words.collect::<Vec<_>>(),
        ["exec", "1000", "/home/user"],
        "{}",
        r.stdout
    );
    assert_eq!(r.status, ExitStatus::Exited(0));
    assert_eq!(c.state(), ContainerState::Running);
    stdio.stdin.write_all(b"go\n").await.expect("write");
    let r = collect(c.init().clone(), stdio).await;
    assert_eq!(
        (r.stdout.as_str(), r.status),
        ("init got go\n", ExitStatus::Exited(0))
    );
    assert!(matches!(
        c.exec(&spec).await,
        Err(ContainerError::NotRunning(_))
    ));
    c.delete(false).await.expect("delete");
}

/// Waits until the container has `n` processes.
async fn wait_for_processes(c: &Container, n: usize) -> Vec<Pid> {
    within("the processes", async {
        loop {
            let pids = c.processes().expect("processes");
            if pids.len() == n {
                return pids;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn kill_escalates_from_an_ignored_sigterm_to_sigkill() {
    let f = fixture();
    let (c, stdio) = started(
        &f,
        "stubborn",
        "trap '' TERM; echo ready; sleep 1000; echo unreachable",
    )
    .await;
    let (_out, line) = first_line(stdio.stdout).await;
    assert_eq!(line, "ready\n");
    // "ready" comes before the shell forks sleep.
    wait_for_processes(&c, 2).await;
    c.kill(Signal::SIGTERM, true).expect("SIGTERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.state(),
        ContainerState::Running,
        "SIGTERM was not ignored"
    );
    assert_eq!(
        c.processes().expect("processes").len(),
        2,
        "sleep died of SIGTERM"
    );
    c.kill(Signal::SIGKILL, false).expect("SIGKILL");
    assert_eq!(
        within("exit", c.wait()).await.expect("exit"),
        ExitStatus::Signaled(9)
    );
    assert_eq!(
        c.processes().expect("processes"),
        [],
        "the namespace outlived its init"
    );
    c.delete(false).await.expect("delete");
}

#[tokio::test]
async fn forced_delete_of_a_running_container_leaves_nothing() {
    let f = fixture();
    let (mut c, stdio) = started(&f, "del", "echo started; sleep 1000 & wait").await;
    let (mut out, line) = first_line(stdio.stdout).await;
    let (_exec, _exec_stdio) = c
        .exec(&ProcessSpec::new(["sleep", "1000"]))
        .await
        .expect("exec");

    let c = match c.delete(false).await {
        Err(DeleteError::Running(c)) => *c,
        other => panic!("delete without force: {other:?}"),
    };
    // "started" comes before the shell forks its sleep: wait (bounded) for all three.
    let pids = wait_for_processes(&c, 3).await;
    assert_eq!(
        pids.len(),
        3,
        "sh, its sleep and the exec'd sleep: {pids:?}"
    );
    for pid in &pids {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} not alive before delete"
        );
    }
    within("forced delete", c.delete(true))
        .await
        .expect("forced delete");

    let mut rest = String::new();
    within("output", out.read_to_string(&mut rest))
        .await
        .expect("read the rest");
    assert_eq!(line + &rest, "started\n");
    let proc_pids: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc must be readable for the leak check")
        .map(|e| {
            e.expect("/proc entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        proc_pids.contains(&std::process::id().to_string()),
        "/proc does not show this test process: the leak check cannot see"
    );
    for pid in pids {
        assert!(
            !proc_pids.contains(&pid.to_string()),
            "{pid} survived the delete"
        );
    }
    assert_not_mounted_on_host(&f.state);
    assert_not_mounted_on_host(&f.rootfs);
    assert!(!f.state.join("del").exists(), "state dir left behind");
}

#[tokio::test]
async fn writes_stay_in_the_overlay_unless_the_rootfs_is_owned() {
    let f = fixture();
    let script = "echo data > /new && rm /bin/ls && cat /new";
    let r = run(&f.spec("ovl", script), &f.state).await;
    assert_eq!(
        (r.stdout.as_str(), r.status),
        ("data\n", ExitStatus::Exited(0)),
        "{}",
        r.stderr
    );
    assert!(
        !f.rootfs.join("new").exists(),
        "the overlay wrote through to the rootfs"
    );
    assert!(
        f.rootfs.join("bin/ls").symlink_metadata().is_ok(),
        "the overlay deleted from the rootfs"
    );

    let mut owned = f.spec("own", script);
    owned.rootfs_owned = true;
    let r = run(&owned, &f.state).await;
    assert_eq!(r.status, ExitStatus::Exited(0), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(f.rootfs.join("new")).expect("written"),
        "data\n"
    );
    assert!(
        f.rootfs.join("bin/ls").symlink_metadata().is_err(),
        "owned rootfs: rm had no effect"
    );
    assert_not_mounted_on_host(&f.rootfs);
}

#[tokio::test]
async fn refusals_come_before_anything_is_created() {
    let f = fixture();
    let mut tty = f.spec("tty", "true");
    tty.process.terminal = true;
    let err = Container::create(&tty, &f.state)
        .await
        .expect_err("terminal");
    assert!(
        matches!(err, ContainerError::Spec(SpecError::Unsupported(_))),
        "{err:?}"
    );
    let mut rel = f.spec("rel", "true");
    rel.process.cwd = "tmp".into();
    let err = Container::create(&rel, &f.state)
        .await
        .expect_err("relative cwd");
    assert!(
        matches!(err, ContainerError::Spec(SpecError::RelativeCwd(_))),
        "{err:?}"
    );
    assert!(!f.state.exists(), "a refused spec created the state root");
}

#[tokio::test]
async fn setup_and_exec_failures_are_typed() {
    let f = fixture();
    let mut missing = f.spec("nox", "");
    missing.process.args = vec!["/no/such/program".into()];
    let (mut c, _stdio) = Container::create(&missing, &f.state).await.expect("create");
    let err = c.start().await.expect_err("exec of a missing program");
    assert!(
        matches!(
            err,
            ContainerError::Setup {
                stage: Stage::Exec,
                errno: nix::errno::Errno::ENOENT
            }
        ),
        "{err:?}"
    );
    c.delete(false).await.expect("delete");

    let mut nocwd = f.spec("nocwd", "true");
    nocwd.process.cwd = "/no/such/dir".into();
    let err = Container::create(&nocwd, &f.state)
        .await
        .expect_err("missing cwd");
    assert!(
        matches!(
            err,
            ContainerError::Setup {
                stage: Stage::Chdir,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!f.state.join("nocwd").exists(), "state dir left behind");

    let (c, _stdio) = Container::create(&f.spec("dup", "true"), &f.state)
        .await
        .expect("create");
    let err = Container::create(&f.spec("dup", "true"), &f.state)
        .await
        .expect_err("duplicate");
    assert!(matches!(err, ContainerError::Exists(_)), "{err:?}");
    assert_eq!(c.state(), ContainerState::Created);
    c.delete(false).await.expect("delete a created container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_containers_at_once_each_reach_end_of_file() {
    // Containers created from several threads at once, half of them held (created, never
    // started) while the others run: a held child that kept a stray copy of another
    // container's pipe would keep that container's output from ever ending.
    let f = std::sync::Arc::new(fixture());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let f = f.clone();
        tasks.spawn(async move {
            let id = format!("many{i}");
            if i % 2 == 0 {
                let held = Container::create(&f.spec(&id, "true"), &f.state)
                    .await
                    .expect("create");
                return (id, None, Some(held));
            }
            let r = run(&f.spec(&id, "echo $(hostname)"), &f.state).await;
            (id, Some(r), None)
        });
    }
    let mut held = Vec::new();
    let results = within("16 containers", tasks.join_all()).await;
    for (id, run, container) in results {
        if let Some(r) = run {
            assert_eq!(
                (r.stdout, r.status),
                (format!("{id}\n"), ExitStatus::Exited(0))
            );
        }
        held.extend(container);
    }
    assert_eq!(held.len(), 8);
    for (c, _stdio) in held {
        assert_eq!(c.state(), ContainerState::Created);
        c.delete(false).await.expect("delete a held container");
    }
}

#[tokio::test]
async fn a_create_dropped_midway_leaves_nothing() {
    let f = fixture();
    // Dropped at its first pending await (the child's report is not there yet).
    let spec = f.spec("dropped", "true");
    {
        let mut create = std::pin::pin!(Container::create(&spec, &f.state));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let polled = std::future::Future::poll(create.as_mut(), &mut cx);
        assert!(
            polled.is_pending(),
            "create finished without waiting for its child"
        );
        assert!(
            f.state.join("dropped").exists(),
            "no state dir while creating"
        );
    } // The future is dropped here.
    assert!(!f.state.join("dropped").exists(), "state dir left behind");
    // The held child sees its start pipe close (or its report pipe break) and exits.
}
