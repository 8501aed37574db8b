//! The `spinbox` CLI end to end: `check`, a full `run` on a real VM, and bad input.

use std::process::Command;

fn spinbox(args: &[&str], state_root: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spinbox"))
        .args(args)
        .env("SPINBOX_STATE_ROOT", state_root)
        .output()
        .expect("spinbox runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_a_ready_host() {
    let root = tempfile::tempdir().unwrap();
    let (code, out, err) = spinbox(&["check"], root.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("ok       QEMU:"), "{out}");
    assert!(
        out.contains("ready: `spinbox run` can boot a VM here"),
        "{out}"
    );
}

/// `spinbox check --containerd` finds the shim where containerd would (its `PATH`) and the
/// assets its config names, and says what is missing otherwise.
#[test]
fn check_containerd_finds_the_shim_or_says_how_to_install_it() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in ["containerd", "containerd-shim-spinbox-v1"] {
        let p = bin.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let assets = std::env::var_os("SPINBOX_ASSETS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/assets"),
        std::path::PathBuf::from,
    );
    let config = root.path().join("shim.json");
    let text = serde_json::json!({ "assets": assets.canonicalize().unwrap() });
    std::fs::write(&config, text.to_string()).unwrap();
    let run = |path: &std::ffi::OsStr| {
        let out = Command::new(env!("CARGO_BIN_EXE_spinbox"))
            .args(["check", "--containerd"])
            .env("SPINBOX_STATE_ROOT", root.path())
            .env("SPINBOX_SHIM_CONFIG", &config)
            .env("PATH", path)
            .output()
            .expect("spinbox runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let system = std::env::var_os("PATH").unwrap();
    let with =
        std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(&system)))
            .unwrap();
    let (code, out) = run(&with);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok       containerd shim: "), "{out}");
    assert!(out.contains("ok       containerd shim assets: "), "{out}");
    assert!(out.contains("ready: containerd can run"), "{out}");
    std::fs::remove_file(bin.join("containerd-shim-spinbox-v1")).unwrap();
    let (code, out) = run(&with);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("MISSING  containerd shim: containerd-shim-spinbox-v1"),
        "{out}"
    );
    assert!(out.contains("install -m 0755"), "{out}");
}

#[test]
fn run_boots_deletes_and_reports() {
    let root = tempfile::tempdir().unwrap();
    let (code, out, err) = spinbox(&["run", "--id", "cli-e2e"], root.path());
    eprintln!("{out}\n{err}");
    assert_eq!(code, 0, "{out}\n{err}");
    for expected in [
        "state  idle → creating",
        "state  creating → created",
        "agent: kernel ",
        "state  created → running",
        "state  running → deleting",
        "phase  hotplug_stop done",
        "phase  vm_shutdown done",
        "phase  network_cleanup done",
        "state  deleting → shutting_down",
        "7 phases, 0 failed",
        "VM exit: exit status: 0 (guest-shutdown)",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_eq!(
        std::fs::read_dir(root.path())
            .unwrap()
            .filter(|e| { e.as_ref().is_ok_and(|e| e.file_name() != ".vsock") })
            .count(),
        0,
        "no state left"
    );
}

/// The CPU controller end to end (SPEC §12): a VM with room for a second vCPU, a container
/// that keeps its one vCPU busy, and a fast CPU policy from a config file; the controller
/// hot-adds the vCPU, the guest onlines it, the container sees it. The container's own loop
/// ends as soon as `nproc` says 2 (bounded at 120 s, which only a broken controller reaches).
#[test]
fn the_cpu_controller_gives_a_busy_container_a_second_vcpu() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("fast-policy.json");
    let text = serde_json::json!({
        "cpu_policy": {"interval_ms": 500, "scale_up_stability": 2, "scale_up_cooldown_ms": 500},
        // Other VMs of the suite may share the 2 cores: a slow guest is not a failure.
        "hotplug_online_timeout_ms": 60_000,
    });
    std::fs::write(&config, text.to_string()).unwrap();
    let script = "while :; do :; done & \
                  i=0; while [ $(nproc) -lt 2 ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done; \
                  nproc";
    let (code, out, err) = spinbox(
        &[
            "run",
            "--id",
            "cli-grow",
            "--max-cpus",
            "2",
            "--config",
            config.to_str().unwrap(),
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
        root.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        out.trim(),
        "2",
        "the container never saw a second vCPU:\n{err}"
    );
}

#[test]
fn bad_input_is_a_one_line_error() {
    let root = tempfile::tempdir().unwrap();
    let (code, out, err) = spinbox(&["run", "--kernel", "/nonexistent/vmlinux"], root.path());
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(
        err.trim(),
        "spinbox: kernel /nonexistent/vmlinux does not exist"
    );
    let (code, _, err) = spinbox(&["run", "--id", "../escape"], root.path());
    assert_eq!(code, 1);
    assert!(
        err.starts_with("spinbox: ") && err.trim().lines().count() == 1,
        "{err}"
    );
    let (code, _, err) = spinbox(&["run", "--cpus", "0"], root.path());
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "spinbox: invalid VM settings: vCPU count must be between 1 and 255, got 0"
    );
    let (code, out, err) = spinbox(&["run", "--memory", "999999999"], root.path());
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "spinbox: invalid VM settings: memory (MiB) must be between 128 and 1048576, got 999999999"
    );
    assert!(out.is_empty(), "refused before anything ran: {out}");
    let (code, _, err) = spinbox(&["run", "--max-cpus", "0"], root.path());
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "spinbox: invalid VM settings: maximum vCPU count must be between 1 and 255, got 0"
    );
    let (code, _, err) = spinbox(&["run", "--max-memory", "300"], root.path());
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "spinbox: invalid VM settings: the memory growth room (maximum minus boot memory) must \
         be a multiple of 128 MiB, the guest's memory block size, got 44 MiB"
    );
    let (code, _, err) = spinbox(&["run", "--kernel", "/tmp"], root.path());
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "spinbox: kernel /tmp is a directory, not a kernel image"
    );
}

#[test]
fn ctrl_c_takes_the_shutdown_path_and_still_reports() {
    use std::io::{BufRead, BufReader};
    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spinbox"))
        .args(["run", "--keep", "--id", "cli-ctrlc"])
        .env("SPINBOX_STATE_ROOT", root.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spinbox runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("VM running; Ctrl-C to delete it") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("VM running"), "never got to running:\n{seen}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen}{rest}");
    for expected in [
        "shutting down",
        "state  running → shutting_down",
        "7 phases, 0 failed",
        "VM exit: exit status: 0",
    ] {
        assert!(rest.contains(expected), "missing {expected:?} in:\n{rest}");
    }
}
