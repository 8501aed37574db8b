//! The `Task` service end to end on the host (the tests run as root): a ttrpc server on a
//! unix socket, stdio attached through [`serve_stdio`] over in-memory pipes, a busybox
//! rootfs mounted with fstype `bind`. The rootfs bind mounts land in the host's mount
//! table (under each test's temporary directory), which is what the leak checks read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use spinbox_protocol::agent::{
    CreateContainerRequest, DeleteRequest, ExecProcessRequest, KillRequest, Mount, Process,
    StartRequest, StateRequest, Stdio, WaitRequest,
};
use spinbox_protocol::agent_ttrpc::{create_task, TaskClient};
use spinbox_protocol::{stdio_header, StdioStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use ttrpc::Code;

use super::*;
use crate::container::busybox_rootfs;

/// Bound on every wait, so a broken service fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_mins(1);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_elapsed| panic!("{what} took longer than {LIMIT:?}"))
}

struct Fixture {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    tasks: Arc<Tasks>,
    client: TaskClient,
    _server: ttrpc::asynchronous::Server,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = dir.path().join("busybox");
    std::fs::create_dir(&rootfs).expect("mkdir rootfs");
    if let Err(e) = busybox_rootfs::build(&rootfs) {
        panic!("{}", crate::error_chain(&e));
    }
    let tasks = Tasks::new(Config {
        run_root: dir.path().join("run"),
        modules: None,
    });
    let address = format!("unix://{}", dir.path().join("ttrpc.sock").display());
    let mut server = ttrpc::asynchronous::Server::new()
        .bind(&address)
        .expect("bind the ttrpc socket")
        .register_service(create_task(Arc::new(TaskService(tasks.clone()))));
    server.start().await.expect("start the ttrpc server");
    let client = ttrpc::asynchronous::Client::connect(&address)
        .await
        .expect("connect");
    Fixture {
        dir,
        rootfs,
        tasks,
        client: TaskClient::new(client),
        _server: server,
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

fn process(script: &str) -> Process {
    Process {
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    }
}

fn stdio([stdin, stdout, stderr]: [bool; 3]) -> Stdio {
    Stdio {
        stdin,
        stdout,
        stderr,
        ..Default::default()
    }
}

/// `[stdin, stdout, stderr]` requested.
const OUT_ERR: [bool; 3] = [false, true, true];
const OUT: [bool; 3] = [false, true, false];
const ALL: [bool; 3] = [true, true, true];

/// The status of a failed call: its code and message.
fn failure<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code.enum_value_or_default(), s.message),
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// Whether `path` is a mount point in this process's mount table; panics when the table
/// cannot be read (a leak check must not pass by not looking).
fn mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let path = path.to_str().expect("utf-8 path");
    assert!(table.lines().count() > 0, "empty mountinfo");
    table.lines().any(|l| l.split(' ').nth(4) == Some(path))
}

/// Whether a process exists and is not a zombie; panics when /proc is not there.
fn alive(pid: u32) -> bool {
    assert!(Path::new("/proc/self/stat").exists(), "no /proc");
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Waits (bounded) until `pid` is gone.
async fn gone(pid: u32) {
    within("the process to go", async {
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

impl Fixture {
    fn rootfs_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("run").join(id).join("rootfs")
    }

    fn create_request(&self, id: &str, script: &str, wanted: [bool; 3]) -> CreateContainerRequest {
        CreateContainerRequest {
            id: id.into(),
            rootfs: vec![Mount {
                fstype: "bind".into(),
                source: self.rootfs.to_str().expect("utf-8 path").into(),
                options: vec!["ro".into()],
                ..Default::default()
            }],
            process: Some(process(script)).into(),
            stdio: Some(stdio(wanted)).into(),
            ..Default::default()
        }
    }

    async fn create(&self, id: &str, script: &str, wanted: [bool; 3]) -> u32 {
        let req = self.create_request(id, script, wanted);
        within("create", self.client.create_container(ctx(), &req))
            .await
            .expect("create")
            .pid
    }

    async fn start(&self, id: &str) -> ttrpc::Result<()> {
        let req = StartRequest {
            container_id: id.into(),
            ..Default::default()
        };
        within("start", self.client.start(ctx(), &req))
            .await
            .map(drop)
    }

    async fn exec(&self, id: &str, exec: &str, script: &str, wanted: [bool; 3]) -> u32 {
        let req = ExecProcessRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            process: Some(process(script)).into(),
            stdio: Some(stdio(wanted)).into(),
            ..Default::default()
        };
        within("exec", self.client.exec_process(ctx(), &req))
            .await
            .expect("exec")
            .pid
    }

    /// Wait without a bound (callers bound it).
    async fn wait_unbounded(&self, id: &str, exec: &str) -> ttrpc::Result<(i32, i32)> {
        wait_on(&self.client, id, exec).await
    }

    async fn wait(&self, id: &str, exec: &str) -> (i32, i32) {
        within("wait", self.wait_unbounded(id, exec))
            .await
            .expect("wait")
    }

    async fn kill(&self, id: &str, exec: &str, signal: u32, all: bool) -> ttrpc::Result<()> {
        let req = KillRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            signal,
            all,
            ..Default::default()
        };
        within("kill", self.client.kill(ctx(), &req))
            .await
            .map(drop)
    }

    async fn state(&self, id: &str, exec: &str) -> ttrpc::Result<(String, u32, i32)> {
        let req = StateRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        let r = within("state", self.client.state(ctx(), &req)).await?;
        Ok((r.status, r.pid, r.exit.exit_code))
    }

    async fn delete(&self, id: &str, exec: &str, force: bool) -> ttrpc::Result<Option<i32>> {
        let req = DeleteRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            force,
            ..Default::default()
        };
        let r = within("delete", self.client.delete(ctx(), &req)).await?;
        Ok(r.status.into_option().map(|s| s.exit_code))
    }

    /// Opens a stdio connection (an in-memory pipe served by [`serve_stdio`]) and sends the
    /// header: the stream after `ok`, or the reply line.
    async fn attach(
        &self,
        id: &str,
        exec: &str,
        which: StdioStream,
    ) -> Result<DuplexStream, String> {
        self.attach_raw(stdio_header(id, exec, which).as_bytes())
            .await
    }

    async fn attach_raw(&self, header: &[u8]) -> Result<DuplexStream, String> {
        let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve_stdio(self.tasks.clone(), theirs));
        ours.write_all(header).await.expect("write the header");
        let mut reply = Vec::new();
        within("the reply", async {
            loop {
                let b = ours.read_u8().await.expect("read the reply");
                reply.push(b);
                if b == b'\n' {
                    break;
                }
            }
        })
        .await;
        let reply = String::from_utf8(reply).expect("utf-8 reply");
        if reply == "ok\n" {
            Ok(ours)
        } else {
            // The agent closes the stream after an error.
            let mut rest = Vec::new();
            within("the close", ours.read_to_end(&mut rest))
                .await
                .expect("read to the end");
            assert!(rest.is_empty(), "bytes after an error: {rest:?}");
            Err(reply)
        }
    }
}

/// Wait on `client`: `(exit_code, signal)`.
async fn wait_on(client: &TaskClient, id: &str, exec: &str) -> ttrpc::Result<(i32, i32)> {
    let req = WaitRequest {
        container_id: id.into(),
        exec_id: exec.into(),
        ..Default::default()
    };
    let status = client.wait(ctx(), &req).await?.status;
    Ok((status.exit_code, status.signal))
}

async fn read_all(mut s: DuplexStream) -> String {
    let mut out = Vec::new();
    within("output", s.read_to_end(&mut out))
        .await
        .expect("read output");
    String::from_utf8_lossy(&out).into_owned()
}

/// Deletes `id` and checks that its rootfs mount, directories and `pids` were alive
/// before and are gone after.
async fn delete_and_check(f: &Fixture, id: &str, force: bool, pids: &[u32]) -> Option<i32> {
    let rootfs = f.rootfs_dir(id);
    assert!(mounted(&rootfs), "{rootfs:?} is not mounted before delete");
    let status = f.delete(id, "", force).await.expect("delete");
    assert!(
        !mounted(&rootfs),
        "{rootfs:?} is still mounted after delete"
    );
    assert!(
        !f.dir.path().join("run").join(id).exists(),
        "the container's directory is left behind"
    );
    for &pid in pids {
        gone(pid).await;
    }
    assert_eq!(
        failure(f.state(id, "").await).0,
        Code::NOT_FOUND,
        "a deleted container is not found"
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_exit_code_and_state() {
    let f = fixture().await;
    let pid = f
        .create("echo", "echo hello; echo oops >&2; exit 7", OUT_ERR)
        .await;
    assert!(alive(pid), "the created process is alive");
    assert_eq!(f.state("echo", "").await.expect("state").0, "created");
    let out = f
        .attach("echo", "", StdioStream::Stdout)
        .await
        .expect("stdout");
    let err = f
        .attach("echo", "", StdioStream::Stderr)
        .await
        .expect("stderr");
    f.start("echo").await.expect("start");
    let (out, err, status) = tokio::join!(read_all(out), read_all(err), f.wait("echo", ""));
    assert_eq!((out.as_str(), err.as_str()), ("hello\n", "oops\n"));
    assert_eq!(status, (7, 0));
    assert_eq!(
        f.state("echo", "").await.expect("state"),
        ("stopped".into(), pid, 7)
    );
    assert_eq!(delete_and_check(&f, "echo", false, &[pid]).await, Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_by_signal_is_reported_with_the_signal() {
    let f = fixture().await;
    let pid = f.create("sig", "sleep 100", [false; 3]).await;
    f.start("sig").await.expect("start");
    assert_eq!(f.state("sig", "").await.expect("state").0, "running");
    f.kill("sig", "", 9, false).await.expect("kill");
    assert_eq!(f.wait("sig", "").await, (137, 9));
    assert_eq!(delete_and_check(&f, "sig", false, &[pid]).await, Some(137));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_round_trip_through_cat_ends_at_eof() {
    let f = fixture().await;
    let pid = f.create("cat", "cat", ALL).await;
    let mut stdin = f
        .attach("cat", "", StdioStream::Stdin)
        .await
        .expect("stdin");
    let out = f
        .attach("cat", "", StdioStream::Stdout)
        .await
        .expect("stdout");
    let err = f
        .attach("cat", "", StdioStream::Stderr)
        .await
        .expect("stderr");
    f.start("cat").await.expect("start");
    stdin
        .write_all(b"hello\nworld\n")
        .await
        .expect("write stdin");
    // Closing the host's side is end-of-file for cat.
    stdin.shutdown().await.expect("close stdin");
    let (out, err, status) = tokio::join!(read_all(out), read_all(err), f.wait("cat", ""));
    assert_eq!(
        (out.as_str(), err.as_str(), status),
        ("hello\nworld\n", "", (0, 0))
    );
    delete_and_check(&f, "cat", false, &[pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_mib_arrive_whole_before_wait_answers() {
    const SIZE: usize = 16 << 20;
    let f = fixture().await;
    let pid = f
        .create(
            "big",
            &format!("yes 0123456789abcdef | head -c {SIZE}"),
            OUT,
        )
        .await;
    let mut out = f
        .attach("big", "", StdioStream::Stdout)
        .await
        .expect("stdout");
    f.start("big").await.expect("start");
    let wait_task = {
        let client = f.client.clone();
        tokio::spawn(async move { wait_on(&client, "big", "").await })
    };
    // Read 1 MiB, then stop: the rest cannot be delivered, so Wait must not answer.
    let mut hasher = Sha256::new();
    let mut first = vec![0u8; 1 << 20];
    within("1 MiB", out.read_exact(&mut first))
        .await
        .expect("read");
    hasher.update(&first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !wait_task.is_finished(),
        "Wait answered before the output was read"
    );
    let mut len = first.len();
    let mut buf = vec![0u8; 1 << 16];
    within("16 MiB", async {
        loop {
            let n = out.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n;
        }
    })
    .await;
    let expected: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(SIZE)
        .collect();
    assert_eq!(len, SIZE);
    assert_eq!(hasher.finalize(), Sha256::digest(&expected), "checksum");
    let waited = within("wait", wait_task).await.expect("wait task");
    assert_eq!(waited.expect("wait"), (0, 0));
    delete_and_check(&f, "big", false, &[pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_waits_for_a_requested_output_to_be_attached() {
    let f = fixture().await;
    let pid = f.create("late", "echo hi", OUT).await;
    f.start("late").await.expect("start");
    let early = tokio::time::timeout(Duration::from_secs(1), f.wait_unbounded("late", "")).await;
    assert!(
        early.is_err(),
        "Wait answered with stdout never attached: {early:?}"
    );
    // The process has exited meanwhile; its output still arrives.
    assert_eq!(f.state("late", "").await.expect("state").0, "stopped");
    let out = f
        .attach("late", "", StdioStream::Stdout)
        .await
        .expect("stdout");
    let (out, status) = tokio::join!(read_all(out), f.wait("late", ""));
    assert_eq!((out.as_str(), status), ("hi\n", (0, 0)));
    delete_and_check(&f, "late", false, &[pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_beside_init_and_sigkill_after_an_ignored_sigterm() {
    let f = fixture().await;
    let init = f
        .create("ex", "while true; do sleep 1; done", [false; 3])
        .await;
    f.start("ex").await.expect("start");
    f.exec("ex", "e1", "echo from exec; exit 3", OUT).await;
    let out = f
        .attach("ex", "e1", StdioStream::Stdout)
        .await
        .expect("stdout");
    let (out, status) = tokio::join!(read_all(out), f.wait("ex", "e1"));
    assert_eq!((out.as_str(), status), ("from exec\n", (3, 0)));
    assert_eq!(f.state("ex", "e1").await.expect("state").0, "stopped");
    assert_eq!(
        f.delete("ex", "e1", false).await.expect("delete exec"),
        Some(3)
    );
    assert_eq!(failure(f.state("ex", "e1").await).0, Code::NOT_FOUND);

    let stubborn = f
        .exec(
            "ex",
            "e2",
            "trap '' TERM; echo ready; while true; do sleep 1; done",
            OUT,
        )
        .await;
    let mut out = f
        .attach("ex", "e2", StdioStream::Stdout)
        .await
        .expect("stdout");
    let mut ready = [0u8; 6];
    within("ready", out.read_exact(&mut ready))
        .await
        .expect("read");
    assert_eq!(&ready, b"ready\n");
    f.kill("ex", "e2", 15, false).await.expect("SIGTERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(stubborn), "the process ignores SIGTERM");
    assert_eq!(f.state("ex", "e2").await.expect("state").0, "running");
    f.kill("ex", "e2", 9, true)
        .await
        .expect("SIGKILL to the group");
    let (_, status) = tokio::join!(read_all(out), f.wait("ex", "e2"));
    assert_eq!(status, (137, 9));
    assert_eq!(f.state("ex", "").await.expect("state").0, "running");
    delete_and_check(&f, "ex", true, &[init, stubborn]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_delete_delivers_what_was_written_and_leaves_nothing() {
    let f = fixture().await;
    let init = f
        .create(
            "del",
            "echo before; sleep 100 & echo ready >&2; while true; do sleep 1; done",
            OUT_ERR,
        )
        .await;
    let out = f
        .attach("del", "", StdioStream::Stdout)
        .await
        .expect("stdout");
    let mut err = f
        .attach("del", "", StdioStream::Stderr)
        .await
        .expect("stderr");
    f.start("del").await.expect("start");
    let exec = f.exec("del", "bg", "sleep 100", [false; 3]).await;
    // "ready" on stderr comes after "before" was written to stdout.
    let mut ready = [0u8; 6];
    within("ready", err.read_exact(&mut ready))
        .await
        .expect("read");
    assert_eq!(&ready, b"ready\n");
    let (code, message) = failure(f.delete("del", "", false).await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    assert!(
        alive(init) && alive(exec),
        "refused delete killed something"
    );
    // A Wait in progress when the container is deleted answers with the status.
    let wait_task = {
        let client = f.client.clone();
        tokio::spawn(async move { wait_on(&client, "del", "").await })
    };
    let entry = f.tasks.process("del", "").expect("the init process");
    // The table, `entry` and the Wait in progress hold it.
    within("the Wait to arrive", async {
        while Arc::strong_count(&entry) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(entry);
    let pids = [init, exec];
    let (deleted, out, err, waited) = tokio::join!(
        delete_and_check(&f, "del", true, &pids),
        read_all(out),
        read_all(err),
        async { within("wait", wait_task).await.expect("wait task") }
    );
    assert_eq!(deleted, Some(137));
    assert_eq!((out.as_str(), err.as_str()), ("before\n", ""));
    assert_eq!(waited.expect("wait").0, 137);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_their_codes() {
    let f = fixture().await;
    for (what, r) in [
        ("start", f.start("nope").await.map(|()| 0)),
        ("kill", f.kill("nope", "", 9, false).await.map(|()| 0)),
        ("state", f.state("nope", "").await.map(|_| 0)),
        ("delete", f.delete("nope", "", true).await.map(|_| 0)),
        ("wait", f.wait_unbounded("nope", "").await.map(|_| 0)),
    ] {
        let (code, message) = failure(r);
        assert_eq!(code, Code::NOT_FOUND, "{what}: {message}");
        assert!(message.contains("nope"), "{what}: {message}");
    }

    let mut req = f.create_request("tty", "true", [false; 3]);
    req.process.mut_or_insert_default().terminal = true;
    let (code, message) = failure(f.client.create_container(ctx(), &req).await);
    assert_eq!(code, Code::UNIMPLEMENTED);
    assert!(
        message.contains("unsupported: terminal allocation"),
        "{message}"
    );
    assert!(
        !f.rootfs_dir("tty").exists(),
        "a refused create left a directory"
    );

    let req = f.create_request("../x", "true", [false; 3]);
    let (code, message) = failure(f.client.create_container(ctx(), &req).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");

    let mut req = f.create_request("rl", "true", [false; 3]);
    req.process.mut_or_insert_default().rlimits = vec![spinbox_protocol::agent::Rlimit {
        resource: "RLIMIT_BOGUS".into(),
        ..Default::default()
    }];
    let (code, message) = failure(f.client.create_container(ctx(), &req).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");

    // Failures after the rootfs was mounted leave nothing mounted behind.
    let mut req = f.create_request("half", "true", [false; 3]);
    req.rootfs.push(Mount {
        fstype: "bind".into(),
        source: "relative/path".into(),
        ..Default::default()
    });
    let (code, message) = failure(f.client.create_container(ctx(), &req).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    let mut req = f.create_request("host", "true", [false; 3]);
    req.hostname = "not a hostname".into();
    let (code, message) = failure(f.client.create_container(ctx(), &req).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    assert!(message.contains("hostname"), "{message}");
    for id in ["half", "host"] {
        assert!(!mounted(&f.rootfs_dir(id)), "{id}: rootfs left mounted");
        assert!(
            !f.dir.path().join("run").join(id).exists(),
            "{id}: directory left behind"
        );
    }

    let pid = f.create("twice", "sleep 100", [false; 3]).await;
    let req = f.create_request("twice", "true", [false; 3]);
    let (code, message) = failure(f.client.create_container(ctx(), &req).await);
    assert_eq!(code, Code::ALREADY_EXISTS, "{message}");
    f.start("twice").await.expect("start");
    let (code, message) = failure(f.start("twice").await);
    assert_eq!(code, Code::FAILED_PRECONDITION, "{message}");
    let (code, message) = failure(f.wait_unbounded("twice", "nope").await);
    assert_eq!(code, Code::NOT_FOUND, "{message}");
    let (code, message) = failure(f.kill("twice", "", 1000, false).await);
    assert_eq!(code, Code::INVALID_ARGUMENT, "{message}");
    delete_and_check(&f, "twice", true, &[pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_header_errors_are_answered_and_closed() {
    let f = fixture().await;
    let pid = f.create("hdr", "cat", [true, true, false]).await;
    let refused = |r: Result<DuplexStream, String>, expected: &str| {
        let reply = r.expect_err("refused");
        assert!(
            reply.starts_with("error ") && reply.ends_with('\n') && reply.contains(expected),
            "{reply:?} should mention {expected:?}"
        );
    };
    refused(f.attach_raw(b"garbage\n").await, "malformed header");
    refused(f.attach_raw(&[b'x'; 200]).await, "longer than");
    refused(
        f.attach("nope", "", StdioStream::Stdout).await,
        "no container",
    );
    refused(
        f.attach("hdr", "e9", StdioStream::Stdout).await,
        "no process",
    );
    refused(
        f.attach("hdr", "", StdioStream::Stderr).await,
        "stderr was not requested",
    );
    let mut stdin = f
        .attach("hdr", "", StdioStream::Stdin)
        .await
        .expect("stdin");
    let out = f
        .attach("hdr", "", StdioStream::Stdout)
        .await
        .expect("stdout");
    refused(
        f.attach("hdr", "", StdioStream::Stdout).await,
        "stdout is already attached",
    );
    refused(
        f.attach("hdr", "", StdioStream::Stdin).await,
        "stdin is already attached",
    );
    f.start("hdr").await.expect("start");
    stdin.write_all(b"still works\n").await.expect("write");
    stdin.shutdown().await.expect("close");
    let (out, status) = tokio::join!(read_all(out), f.wait("hdr", ""));
    assert_eq!((out.as_str(), status), ("still works\n", (0, 0)));
    delete_and_check(&f, "hdr", false, &[pid]).await;
}
