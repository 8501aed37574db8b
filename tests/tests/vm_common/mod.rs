//! Fixtures shared by the `vm_*` suites: a `-machine none` QEMU under TCG, a private
//! state root, and checks that nothing was left behind.

#![allow(dead_code)] // each suite uses a different subset

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use spinbox::vm::qemu::config::{Machine, QemuConfig};
use spinbox::vm::qemu::instance::{QemuInstance, StartOptions};
use spinbox::vm::qemu::{AccelChoice, Accelerator, QemuBackend, QemuBackendConfig, QemuVm};
use spinbox::vm::{Vm, VmId, VmSpec};

/// Hang guard for anything that should finish in milliseconds.
pub const HANG_GUARD: Duration = Duration::from_mins(1);

pub struct Fixture {
    pub tmp: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("run")
    }

    pub fn opts(&self) -> StartOptions {
        StartOptions {
            state_root: self.root(),
            ..StartOptions::default()
        }
    }

    pub async fn start_none(&self, id: &str) -> QemuInstance {
        tokio::time::timeout(
            HANG_GUARD,
            QemuInstance::start(&none_config(id), &self.opts()),
        )
        .await
        .expect("start hung")
        .expect("start failed")
    }

    /// The state root holds no VM directory.
    pub fn assert_root_empty(&self) {
        let root = self.root();
        if root.exists() {
            let left: Vec<_> = std::fs::read_dir(&root)
                .expect("read root")
                .map(|e| e.expect("entry").path())
                .collect();
            assert!(left.is_empty(), "left behind in the state root: {left:?}");
        }
    }
}

/// `-machine none`: starts in milliseconds, serves QMP fully, runs no guest.
pub fn none_config(id: &str) -> QemuConfig {
    let mut c = QemuConfig::new(VmId::new(id).expect("valid id"));
    c.machine = Machine::None;
    c.accel = AccelChoice::Fixed(Accelerator::Tcg);
    c
}

/// Pids of this test process's children (all threads), from /proc. Fails closed: an
/// unreadable listing fails the test rather than showing no child.
pub fn children() -> Vec<u32> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir("/proc/self/task")
        .expect("cannot list /proc/self/task: the leak check cannot run");
    for t in tasks {
        let t = t.expect("cannot read a /proc/self/task entry");
        match std::fs::read_to_string(t.path().join("children")) {
            Ok(s) => out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot read {}/children: {e}", t.path().display()),
        }
    }
    out
}

/// Asserts `pid` is a live child now, so that a later "gone" proves something.
pub fn assert_alive(pid: u32) {
    assert!(
        children().contains(&pid),
        "pid {pid} is not a live child: the leak check would prove nothing"
    );
}

/// QEMU `pid` is gone: not our child (not even a zombie), and no state dir or socket.
pub fn assert_vm_gone(pid: u32, state_dir: &Path) {
    assert!(
        !children().contains(&pid),
        "pid {pid} is still a child of the test process"
    );
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The pid may have been reused by an unrelated process; it must not be ours.
        let after = stat.rsplit(')').next().unwrap_or_default();
        let mut f = after.split_whitespace();
        let state = f.next().unwrap_or_default();
        let parent_pid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        assert!(
            parent_pid != std::process::id() || state != "Z",
            "pid {pid} is our zombie"
        );
        assert_ne!(
            parent_pid,
            std::process::id(),
            "pid {pid} is still our child"
        );
    }
    assert!(
        !state_dir.exists(),
        "state dir {} remains",
        state_dir.display()
    );
}

/// A QEMU backend for a real guest booted from the provisioned assets, under TCG (nested
/// KVM is unusable on the CI machines; see notes/VM-HOST-FACTS.md), and a spec with its
/// state in `fx`.
pub fn guest(fx: &Fixture, id: &str) -> (QemuBackend, VmSpec) {
    guest_with(fx, id, tests::assets::assets())
}

/// [`guest`] with the given assets (e.g. the test agent's).
pub fn guest_with(
    fx: &Fixture,
    id: &str,
    assets: spinbox::vm::assets::Assets,
) -> (QemuBackend, VmSpec) {
    let mut config = QemuBackendConfig::new(assets);
    config.accel = AccelChoice::Fixed(Accelerator::Tcg);
    let spec = VmSpec {
        id: VmId::new(id).expect("valid id"),
        cpus: 1,
        memory_mib: 256,
        max_cpus: 1,
        max_memory_mib: 256,
        memory_slots: 1,
        kernel_args: Vec::new(),
        state_root: fx.root(),
        ready_timeout: Duration::from_mins(1),
        shares: Vec::new(),
        nics: Vec::new(),
    };
    (QemuBackend::new(config), spec)
}

/// `pid` is not alive as our child (neither running nor a zombie).
pub fn assert_not_our_child(pid: u32, what: &str) {
    assert!(
        !children().contains(&pid),
        "{what} (pid {pid}) is still a child of the test process"
    );
}

/// Nothing under the state root: no VM directory, no vsock directory.
pub fn assert_root_clean(fx: &Fixture) {
    fx.assert_root_empty_except_vsock();
    let vsock = fx.root().join(".vsock");
    if vsock.exists() {
        let left: Vec<_> = std::fs::read_dir(&vsock)
            .expect("read .vsock")
            .map(|e| e.expect("entry").path())
            .collect();
        assert!(left.is_empty(), "vsock directories left behind: {left:?}");
    }
}

impl Fixture {
    /// The state root holds no VM directory (the shared `.vsock` parent may remain).
    pub fn assert_root_empty_except_vsock(&self) {
        let root = self.root();
        if root.exists() {
            let left: Vec<_> = std::fs::read_dir(&root)
                .expect("read root")
                .map(|e| e.expect("entry").path())
                .filter(|p| !p.ends_with(".vsock"))
                .collect();
            assert!(left.is_empty(), "left behind in the state root: {left:?}");
        }
    }
}

/// Hang guard for booting and tearing down a real guest under TCG.
pub const BOOT_GUARD: Duration = Duration::from_mins(3);

/// Starts `spec` on `backend` and waits for the agent's readiness (hang-guarded); prints
/// the time to readiness for the notes.
pub async fn boot(backend: &QemuBackend, spec: &VmSpec) -> Arc<QemuVm> {
    let vm = tokio::time::timeout(BOOT_GUARD, backend.start_qemu(spec))
        .await
        .expect("start hung")
        .expect("start failed");
    let ready = tokio::time::timeout(BOOT_GUARD, vm.wait_ready())
        .await
        .expect("boot hung")
        .expect("the agent did not get ready");
    eprintln!("boot: QEMU start -> agent ready {ready:?}");
    vm
}
