//! Fixtures for the real-VM shim suites: a private state root, configs with short bounds,
//! serialization (the leak checks look at the whole test process), and the leak check.
#![allow(dead_code)] // each suite uses a different subset

use spinbox::shim::{EventReceiver, Shim, ShimConfig, ShimEvent};
use spinbox::vm::assets::Assets;
use spinbox::vm::qemu::{AccelChoice, Accelerator, QemuBackend, QemuBackendConfig};
use spinbox::vm::VmId;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Real-VM tests in one binary run one at a time, so "no child, no extra fd" is meaningful.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `test` alone in this process, on its own runtime, built only once the lock is held
/// (so no other test's runtime comes or goes meanwhile and the fd count is exact).
pub fn serial<F, Fut>(test: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _guard = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        warm_up().await;
        test().await;
    });
}

/// Creates what tokio keeps for the whole process once a child is spawned (the SIGCHLD
/// pipe), so it is part of every baseline rather than counted as a leak.
async fn warm_up() {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let _ = tokio::process::Command::new("true").status().await;
    })
    .await;
}

/// Hang guard for a whole boot + teardown under TCG on 2 cores.
pub const HANG_GUARD: Duration = Duration::from_mins(2);

/// A test VM: its shim, its private state root and the fd count before it started.
pub struct TestVm {
    pub shim: Shim,
    pub root: tempfile::TempDir,
    fds_before: usize,
}

/// Open file descriptors of this process. Fails closed: an unreadable `/proc` fails the test.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("cannot list /proc/self/fd: the leak check cannot run")
        .count()
}

/// What each open file descriptor refers to (for failure messages).
pub fn fd_targets() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map_or_else(|_| "?".into(), |t| t.display().to_string());
            format!("{}→{target}", e.file_name().to_string_lossy())
        })
        .collect()
}

/// Pids of this process's children (all threads), from /proc. Fails closed: if a task's
/// `children` file cannot be read, the test fails rather than seeing no child.
pub fn children() -> Vec<u32> {
    let mut pids = Vec::new();
    let tasks = std::fs::read_dir("/proc/self/task")
        .expect("cannot list /proc/self/task: the leak check cannot run");
    for task in tasks {
        let task = task.expect("cannot read a /proc/self/task entry");
        match std::fs::read_to_string(task.path().join("children")) {
            Ok(text) => pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            ),
            // The thread ended between the listing and the read: it has no children now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot read {}/children: {e}", task.path().display()),
        }
    }
    pids
}

/// The QEMU backend on the provisioned assets, under TCG (nested KVM is unusable on the CI
/// machines; see notes/VM-HOST-FACTS.md).
pub fn backend(assets: Assets) -> Arc<QemuBackend> {
    let mut config = QemuBackendConfig::new(assets);
    config.accel = AccelChoice::Fixed(Accelerator::Tcg);
    config.qmp_timeout = Duration::from_secs(1);
    Arc::new(QemuBackend::new(config))
}

/// A config with short bounds, so fault paths finish quickly; the root is private.
pub fn config(root: &Path) -> ShimConfig {
    let defaults = ShimConfig::default();
    ShimConfig {
        state_root: root.to_owned(),
        start_timeout: Duration::from_mins(1),
        rpc_timeout: Duration::from_secs(2),
        dial_retry: spinbox::vm::agent::RetryPolicy {
            total: Duration::from_secs(3),
            ..defaults.dial_retry
        },
        shutdown: spinbox::vm::stop::EscalationPolicy {
            graceful: Duration::from_secs(3),
            guest_request_wait: Duration::from_millis(500),
            quit: Duration::from_millis(500),
            sigterm: Duration::from_millis(500),
            sigkill: Duration::from_secs(3),
            ..defaults.shutdown
        },
        rootfs_tools: spinbox::rootfs::Tools::from_assets(
            &tests::assets::assets(),
            std::env::var_os("PATH").as_deref(),
        ),
        ..defaults
    }
}

impl TestVm {
    /// A shim with `config` (made by [`config`] on `root`) on `assets`, fd baseline taken now.
    pub fn with(root: tempfile::TempDir, config: ShimConfig, id: &str, assets: Assets) -> Self {
        let id: VmId = id.parse().expect("valid id");
        let fds_before = open_fds();
        Self {
            shim: Shim::new(id, config, backend(assets)),
            root,
            fds_before,
        }
    }

    /// A shim with the default test config and the production agent.
    pub fn new(id: &str) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let config = config(root.path());
        Self::with(root, config, id, tests::assets::assets())
    }

    /// Asserts `pid` is alive and our child now (so a later "gone" means something).
    pub fn assert_alive(pid: u32) {
        assert!(
            children().contains(&pid),
            "pid {pid} is not a live child: the leak check would prove nothing"
        );
    }

    pub fn root(&self) -> PathBuf {
        self.root.path().to_owned()
    }

    /// Nothing is left: no child process (QEMU, vsock backend), no extra open fd, no VM
    /// directory or socket under the state root.
    pub async fn assert_nothing_left(&self) {
        // The reaper and backend tasks publish their results just before the processes are
        // gone from /proc; allow a short settle, bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let kids = children();
            let fds = open_fds();
            let leftovers = leftovers(self.root.path());
            if kids.is_empty() && fds == self.fds_before && leftovers.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left behind: children {kids:?}, fds {fds} (before {}: {:?}), files {leftovers:?}",
                self.fds_before,
                fd_targets()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Everything under the state root except the (empty) `.vsock` parent directory. Fails
/// closed: a root that exists but cannot be listed fails the test.
fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return found,
        Err(e) => panic!("cannot list {}: {e}", root.display()),
    };
    for entry in entries {
        let path = entry.expect("cannot read a state root entry").path();
        if path.file_name().is_some_and(|n| n == ".vsock") {
            let inner = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
            found.extend(inner.map(|e| e.expect("entry").path()));
        } else {
            found.push(path);
        }
    }
    found
}

/// Drains the event stream to its end (bounded), returning every event.
pub async fn drain(events: &mut EventReceiver) -> Vec<ShimEvent> {
    let mut all = Vec::new();
    tokio::time::timeout(HANG_GUARD, async {
        while let Some(e) = events.recv().await {
            all.push(e);
        }
    })
    .await
    .expect("the event stream ends");
    all
}

/// A sink collecting what it is given.
#[derive(Clone, Default)]
pub struct Collect(Arc<std::sync::Mutex<Vec<u8>>>);

impl Collect {
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

impl tokio::io::AsyncWrite for Collect {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
