//! What a task holds on the host, recorded in its bundle (`spinbox.json`) before its VM
//! starts, so the `delete` action can release it after the shim died: the VM's processes
//! (found by their state directory in their command line), the state and rootfs work
//! directories, and the rootfs mounts.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The record's file name in the bundle.
pub const RECORD_FILE: &str = "spinbox.json";

/// A task's host resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The state root the VM's directory is in.
    pub state_root: PathBuf,
    /// The VM's id (its state directory's name).
    pub vm_id: String,
    /// The container's rootfs on the host.
    pub rootfs: PathBuf,
    /// Whether the shim mounts containerd's rootfs mounts on `rootfs`.
    pub mounted: bool,
}

impl Record {
    /// Writes the record into `bundle`.
    pub fn write(&self, bundle: &Path) -> Result<(), String> {
        let path = bundle.join(RECORD_FILE);
        let text = serde_json::to_string(self).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The record in `bundle`, if there is one.
    pub fn read(bundle: &Path) -> Result<Option<Self>, String> {
        let path = bundle.join(RECORD_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("invalid {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.state_root.join(&self.vm_id)
    }

    fn vsock_dir(&self) -> PathBuf {
        self.state_root.join(".vsock").join(&self.vm_id)
    }

    fn rootfs_work_dir(&self) -> PathBuf {
        self.state_root.join(format!("{}.rootfs", self.vm_id))
    }
}

/// Removes the record from `bundle` (the task was cleaned up).
pub fn remove(bundle: &Path) {
    let _ = std::fs::remove_file(bundle.join(RECORD_FILE));
}

/// The pids of the processes whose command line names a path under one of `dirs`.
pub fn processes_under(dirs: &[PathBuf]) -> Result<Vec<i32>, String> {
    let needles: Vec<Vec<u8>> = dirs
        .iter()
        .map(|d| {
            let mut n = d.as_os_str().as_bytes().to_vec();
            n.push(b'/');
            n
        })
        .collect();
    let me = std::process::id();
    let mut found = Vec::new();
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list /proc: {e}"))?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if u32::try_from(pid) == Ok(me) {
            continue;
        }
        // A process that exited meanwhile has no command line: not a match.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if needles
            .iter()
            .any(|n| cmdline.windows(n.len()).any(|w| w == n.as_slice()))
        {
            found.push(pid);
        }
    }
    Ok(found)
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waits for its parent (containerd, the subreaper) to reap it.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn mounted_on(target: &Path) -> Result<bool, String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let t = target.as_os_str().as_bytes();
    Ok(info
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m.as_bytes() == t)))
}

/// Releases everything `record` names: kills the VM's processes (SIGKILL; the VM is beyond
/// saving once its shim is gone) and waits for them to go, removes the state and rootfs
/// work directories, and unmounts the rootfs. Idempotent.
pub fn clean_up(record: &Record) -> Result<(), String> {
    let dirs = [
        record.state_dir(),
        record.vsock_dir(),
        record.rootfs_work_dir(),
    ];
    let pids = processes_under(&dirs)?;
    for &pid in &pids {
        tracing::warn!(pid, "killing a process of a VM whose shim is gone");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|&p| gone(p)) {
        if Instant::now() > deadline {
            return Err(format!("processes {pids:?} did not exit after SIGKILL"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for dir in &dirs {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", dir.display())),
        }
    }
    // The shared `.vsock` directory goes with its last VM, as the backend's teardown does.
    let _ = std::fs::remove_dir(record.state_root.join(".vsock"));
    if record.mounted {
        while mounted_on(&record.rootfs)? {
            spinbox::rootfs::unmount_host(&record.rootfs)
                .map_err(|e| format!("cannot unmount {}: {e}", record.rootfs.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_record_round_trips_and_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Record::read(dir.path()).expect("none"), None);
        let r = Record {
            state_root: "/run/x".into(),
            vm_id: "c1".into(),
            rootfs: "/b/rootfs".into(),
            mounted: true,
        };
        r.write(dir.path()).expect("write");
        assert_eq!(Record::read(dir.path()).expect("read"), Some(r));
        remove(dir.path());
        assert_eq!(Record::read(dir.path()).expect("gone"), None);
        std::fs::write(dir.path().join(RECORD_FILE), "{").expect("write");
        assert!(Record::read(dir.path()).is_err());
    }

    #[test]
    fn clean_up_kills_the_vms_processes_removes_its_dirs_and_unmounts() {
        let root = tempfile::tempdir().expect("tempdir");
        let record = Record {
            state_root: root.path().to_owned(),
            vm_id: "task".into(),
            rootfs: root.path().join("rootfs"),
            mounted: true,
        };
        let state_dir = record.state_dir();
        std::fs::create_dir_all(&state_dir).expect("mkdir");
        std::fs::create_dir_all(record.rootfs_work_dir()).expect("mkdir");
        std::fs::create_dir_all(record.vsock_dir()).expect("mkdir");
        std::fs::create_dir_all(&record.rootfs).expect("mkdir");
        // A stand-in for QEMU: its command line names a file in the state directory.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 600; :",
                &format!("{}/qmp.sock", state_dir.display()),
            ])
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid");
        // Until it has exec'd, the child's command line is this test's.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = processes_under(std::slice::from_ref(&state_dir)).expect("list");
            if seen == [pid] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the stand-in is never seen: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let src = root.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        let bind = spinbox::task::HostMount {
            fstype: "bind".into(),
            source: src.display().to_string(),
            options: vec!["rbind".into()],
        };
        mount_for_test(&record.rootfs, &bind);
        assert!(mounted_on(&record.rootfs).expect("mountinfo"));

        let reaper = std::thread::spawn(move || child.wait().expect("wait"));
        clean_up(&record).expect("clean up");
        let status = reaper.join().expect("reaper");
        assert_eq!(status.signal(), Some(9));
        assert!(processes_under(std::slice::from_ref(&state_dir))
            .expect("list")
            .is_empty());
        assert!(!state_dir.exists() && !record.rootfs_work_dir().exists());
        assert!(!record.vsock_dir().exists());
        assert!(!mounted_on(&record.rootfs).expect("mountinfo"));
        clean_up(&record).expect("a second clean-up finds nothing to do");
    }

    fn mount_for_test(target: &Path, m: &spinbox::task::HostMount) {
        let status = std::process::Command::new("mount")
            .args(["--rbind", &m.source])
            .arg(target)
            .status()
            .expect("mount");
        assert!(status.success());
    }
}
