//! Fixtures shared by the `vm_*` suites: a `-machine none` QEMU under TCG, a private
//! state root, and checks that nothing was left behind.

#![allow(dead_code)] // each suite uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use spinbox::vm::{
    AccelChoice, Accelerator, Machine, QemuConfig, QemuInstance, StartOptions, VmId,
};

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

/// Pids of this test process's children (all threads), from /proc.
pub fn children() -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
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

/// A manager spec for a real guest booted from the provisioned assets, under TCG (nested
/// KVM is unusable on the CI machines; see notes/VM-HOST-FACTS.md), state in `fx`.
pub fn guest_spec(fx: &Fixture, id: &str) -> spinbox::vm::VmSpec {
    let mut spec = spinbox::vm::VmSpec::new(VmId::new(id).expect("valid id"));
    spec.assets = Some(tests::assets::assets());
    spec.accel = AccelChoice::Fixed(Accelerator::Tcg);
    spec.start = fx.opts();
    spec
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

/// Boots `spec` in `mgr` (hang-guarded) and prints the boot timings for the notes.
pub async fn boot(
    mgr: &spinbox::vm::manager::VmManager,
    spec: spinbox::vm::VmSpec,
) -> spinbox::vm::manager::BootTimings {
    let timings = tokio::time::timeout(BOOT_GUARD, mgr.create(spec))
        .await
        .expect("create hung")
        .expect("create failed");
    eprintln!(
        "boot: QEMU start -> ready {:?}, ready -> first Ping {:?}, QEMU start -> first Ping {:?}",
        timings.ready, timings.ready_to_first_ping, timings.first_ping
    );
    timings
}
