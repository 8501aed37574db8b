//! The CLI under signals and faults (issue 12, SPEC §6.5–6.7), each on a real VM under TCG:
//! Ctrl-C during boot, SIGTERM/SIGHUP like Ctrl-C, a second signal forcing the kill path,
//! `kill -9` of the CLI taking QEMU and the vsock daemon with it (and the next run cleaning
//! the dead shim's files), `--keep` noticing a crash, a relative state root, and refusals
//! before anything starts. Every check that something is gone first saw it alive.

#[path = "cli_common/mod.rs"]
mod cli_common;

use cli_common::{read_until, rest};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BOUND: Duration = Duration::from_mins(2);

fn start(args: &[&str], root: &Path) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spinbox"))
        .args(args)
        .env("SPINBOX_STATE_ROOT", root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spinbox runs");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(i32::try_from(child.id()).unwrap()), sig).unwrap();
}

/// The QEMU pid the CLI printed (`… QEMU pid N`).
fn qemu_pid(output: &str) -> u32 {
    output
        .lines()
        .find_map(|l| l.split("QEMU pid ").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no QEMU pid in:\n{output}"))
}

/// Whether `pid` runs and is not a zombie. Fails closed: anything but "no such process"
/// when reading its status fails the test.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("cannot read /proc/{pid}/status: {e}"),
    }
}

/// Pids of processes whose command line mentions `needle` (the test's private state root).
/// Fails closed: `/proc` must be listable.
fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .expect("cannot list /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything directly under `root`, sorted. Fails closed on an unlistable root.
fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = match std::fs::read_dir(root) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot list {}: {e}", root.display()),
    };
    found.sort();
    found
}

#[test]
fn ctrl_c_during_boot_tears_down_and_reports() {
    let root = tempfile::tempdir().unwrap();
    let (mut child, mut stdout) = start(&["run", "--id", "sig-boot"], root.path());
    let seen = read_until(&mut stdout, "state  idle → creating");
    // QEMU runs (its processes mention the private root) while the guest boots.
    wait_until("QEMU to start", || {
        !processes_mentioning(root.path()).is_empty()
    });
    let started = Instant::now();
    signal(&child, Signal::SIGINT);
    let (code, out, err) = rest(&mut child, &mut stdout);
    eprintln!("Ctrl-C during boot: exit after {:?}", started.elapsed());
    assert_eq!(code, 1, "{seen}{out}{err}");
    assert!(err.contains("interrupted during boot (SIGINT)"), "{err}");
    assert!(out.contains("SIGINT: shutting down"), "{out}");
    assert!(out.contains("phase  vm_shutdown done"), "{out}");
    assert!(out.contains("7 phases, 0 failed"), "{out}");
    assert!(processes_mentioning(root.path()).is_empty());
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

#[test]
fn sigterm_and_sighup_take_the_shutdown_path() {
    for (sig, name) in [(Signal::SIGTERM, "SIGTERM"), (Signal::SIGHUP, "SIGHUP")] {
        let root = tempfile::tempdir().unwrap();
        let (mut child, mut stdout) = start(&["run", "--keep", "--id", "sig-term"], root.path());
        let seen = read_until(&mut stdout, "VM running; Ctrl-C to delete it");
        let qemu = qemu_pid(&seen);
        assert!(alive(qemu));
        signal(&child, sig);
        let (code, out, err) = rest(&mut child, &mut stdout);
        assert_eq!(code, 0, "{name}: {out}{err}");
        assert!(out.contains(&format!("{name}: shutting down")), "{out}");
        assert!(out.contains("7 phases, 0 failed"), "{out}");
        assert!(!alive(qemu), "{name}: QEMU survived");
        assert!(
            leftovers(root.path()).is_empty(),
            "{:?}",
            leftovers(root.path())
        );
    }
}

#[test]
fn a_second_signal_forces_the_kill_path_and_still_reports() {
    let root = tempfile::tempdir().unwrap();
    // A guest that ignores shutdown would make the graceful steps wait out their bounds;
    // freezing QEMU does the same for every step but SIGKILL.
    let (mut child, mut stdout) = start(&["run", "--keep", "--id", "sig-twice"], root.path());
    let seen = read_until(&mut stdout, "VM running; Ctrl-C to delete it");
    let qemu = qemu_pid(&seen);
    kill(Pid::from_raw(i32::try_from(qemu).unwrap()), Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    signal(&child, Signal::SIGINT);
    read_until(&mut stdout, "phase  vm_shutdown …");
    signal(&child, Signal::SIGINT);
    let (code, out, err) = rest(&mut child, &mut stdout);
    let took = started.elapsed();
    eprintln!("second Ctrl-C: teardown of a frozen QEMU took {took:?}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("SIGINT during the teardown: killing the VM"),
        "{out}"
    );
    assert!(out.contains("7 phases"), "{out}");
    assert!(out.contains("VM exit: signal: 9"), "{out}");
    // The default escalation would spend 10 s + 5 s + 3 s + 3 s before SIGKILL.
    assert!(
        took < Duration::from_secs(10),
        "the kill path was not forced: {took:?}"
    );
    assert!(!alive(qemu));
}

#[test]
fn kill_9_of_the_cli_takes_qemu_and_the_daemon_with_it() {
    let root = tempfile::tempdir().unwrap();
    let (mut child, mut stdout) = start(&["run", "--keep", "--id", "sig-kill"], root.path());
    let seen = read_until(&mut stdout, "VM running; Ctrl-C to delete it");
    let qemu = qemu_pid(&seen);
    let helpers = processes_mentioning(root.path());
    assert!(helpers.contains(&qemu), "{helpers:?}");
    assert!(
        helpers.len() >= 2,
        "QEMU and vhost-device-vsock: {helpers:?}"
    );
    signal(&child, Signal::SIGKILL);
    let _ = child.wait();
    wait_until("QEMU and the daemon to die with their parent", || {
        helpers.iter().all(|p| !alive(*p))
    });
    // The dead shim's files remain, its lock free: the next run with the same id
    // recognises them as stale, removes them and boots.
    assert!(root.path().join("sig-kill").exists());
    let (mut child, mut stdout) = start(&["run", "--id", "sig-kill"], root.path());
    let (code, out, err) = rest(&mut child, &mut stdout);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("7 phases, 0 failed"), "{out}");
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

#[test]
fn keep_notices_a_crash_and_exits_non_zero() {
    let root = tempfile::tempdir().unwrap();
    let (mut child, mut stdout) = start(&["run", "--keep", "--id", "sig-crash"], root.path());
    let seen = read_until(&mut stdout, "VM running; Ctrl-C to delete it");
    let qemu = qemu_pid(&seen);
    assert!(alive(qemu));
    kill(Pid::from_raw(i32::try_from(qemu).unwrap()), Signal::SIGKILL).unwrap();
    let (code, out, err) = rest(&mut child, &mut stdout);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("vm     exited: signal: 9"), "{out}");
    assert!(
        err.contains("the VM exited unexpectedly: signal: 9"),
        "{err}"
    );
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

#[test]
fn a_second_run_with_a_live_id_is_refused_and_touches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (mut first, mut stdout) = start(&["run", "--keep", "--id", "sig-twin"], root.path());
    let seen = read_until(&mut stdout, "VM running; Ctrl-C to delete it");
    let qemu = qemu_pid(&seen);
    let before = leftovers(root.path());
    let console = root.path().join("sig-twin").join("console.log");
    assert!(console.exists());
    let (mut second, mut second_out) = start(&["run", "--id", "sig-twin"], root.path());
    let (code, out, err) = rest(&mut second, &mut second_out);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("already exists"), "{err}");
    assert!(alive(qemu));
    assert_eq!(leftovers(root.path()), before);
    assert!(console.exists(), "the live VM's console log was removed");
    signal(&first, Signal::SIGINT);
    let (code, out, err) = rest(&mut first, &mut stdout);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_relative_state_root_works_and_leaves_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spinbox"))
        .args(["run", "--id", "sig-rel"])
        .env("SPINBOX_STATE_ROOT", "rel/root")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("7 phases, 0 failed"), "{text}");
    assert!(leftovers(&cwd.path().join("rel/root")).is_empty());
}

#[test]
fn refusals_come_before_anything_starts() {
    let root = tempfile::tempdir().unwrap();
    let comma = root.path().join("a,b.img");
    std::fs::write(&comma, b"").unwrap();
    for (args, env, expected) in [
        (
            vec!["run", "--initrd", comma.to_str().unwrap()],
            None,
            "contains a comma",
        ),
        (
            vec!["run"],
            Some("bogus"),
            "SPINBOX_ACCEL: unknown accelerator \"bogus\"",
        ),
        (
            vec!["run", "--id", &"x".repeat(80)],
            None,
            "at most 76 characters",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spinbox"));
        cmd.args(&args)
            .env("SPINBOX_STATE_ROOT", root.path().join("run"));
        if let Some(accel) = env {
            cmd.env("SPINBOX_ACCEL", accel);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(out.stdout.is_empty(), "{args:?} started something");
        assert!(
            !root.path().join("run").exists(),
            "{args:?} created the state root"
        );
    }
}

/// `/proc/PID/status` fields.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// What every descriptor of `pid` refers to. Fails closed.
fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list /proc/{pid}/fd: {e}"))
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn children_get_no_leaked_fd_no_capabilities_and_a_seccomp_filter_at_the_minimum_memory() {
    use std::os::unix::process::CommandExt;
    let root = tempfile::tempdir().unwrap();
    // A descriptor the "parent shell" leaked: open, not close-on-exec, in the CLI.
    let marker = root.path().join("leaked-descriptor");
    std::fs::write(&marker, b"").unwrap();
    let leaked = std::fs::File::open(&marker).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spinbox"));
    cmd.args(["run", "--keep", "--memory", "128", "--id", "sig-priv"])
        .env("SPINBOX_STATE_ROOT", root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: clears FD_CLOEXEC on one descriptor in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let seen = read_until(&mut stdout, "VM running; Ctrl-C to delete it");
    let cli = child.id();
    let marker_name = marker.display().to_string();
    assert!(
        fd_targets(cli).contains(&marker_name),
        "the CLI itself should hold the leaked fd (the test would prove nothing)"
    );
    let qemu = qemu_pid(&seen);
    let daemons: Vec<u32> = processes_mentioning(root.path())
        .into_iter()
        .filter(|p| *p != qemu && *p != cli)
        .collect();
    assert_eq!(daemons.len(), 1, "one vhost-device-vsock: {daemons:?}");
    for (pid, what) in [(qemu, "QEMU"), (daemons[0], "vhost-device-vsock")] {
        assert!(alive(pid));
        let targets = fd_targets(pid);
        assert!(
            !targets.contains(&marker_name),
            "{what} inherited the leaked descriptor: {targets:?}"
        );
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{what}");
        assert_eq!(status_field(pid, "Seccomp"), "2", "{what}");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Only CAP_DAC_READ_SEARCH (bit 2) is left (see `vm::harden`).
            assert_eq!(status_field(pid, "CapEff"), "0000000000000004", "{what}");
            assert_eq!(status_field(pid, "CapBnd"), "0000000000000004", "{what}");
        }
        eprintln!(
            "{what}: CapEff {} NoNewPrivs {} Seccomp {} fds {}",
            status_field(pid, "CapEff"),
            status_field(pid, "NoNewPrivs"),
            status_field(pid, "Seccomp"),
            targets.len()
        );
    }
    // The guest booted in the documented minimum memory and shuts down cleanly.
    signal(&child, Signal::SIGINT);
    let (code, out, err) = rest(&mut child, &mut stdout);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("7 phases, 0 failed"), "{out}");
    drop(leaked);
}

#[test]
fn a_dead_vsock_daemon_ends_the_vm_and_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let (mut child, mut stdout) = start(&["run", "--keep", "--id", "sig-daemon"], root.path());
    let seen = read_until(&mut stdout, "VM running; Ctrl-C to delete it");
    let qemu = qemu_pid(&seen);
    let daemons: Vec<u32> = processes_mentioning(root.path())
        .into_iter()
        .filter(|p| *p != qemu && *p != child.id())
        .collect();
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    assert!(alive(daemons[0]));
    kill(
        Pid::from_raw(i32::try_from(daemons[0]).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    let (code, out, err) = rest(&mut child, &mut stdout);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("after vhost-device-vsock exited (signal: 9"),
        "{out}"
    );
    assert!(err.contains("the VM exited unexpectedly"), "{err}");
    assert!(!alive(qemu));
    assert!(
        leftovers(root.path()).is_empty(),
        "{:?}",
        leftovers(root.path())
    );
}

#[test]
fn a_long_shutdown_says_what_it_waits_for() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("slow.json");
    // The graceful step waits 6 s for a frozen guest; the rest is quick.
    std::fs::write(
        &config,
        r#"{"shutdown_graceful_ms": 6000, "shutdown_guest_request_ms": 100,
            "shutdown_quit_ms": 100, "shutdown_sigterm_ms": 100}"#,
    )
    .unwrap();
    let run_root = root.path().join("run");
    let (mut child, mut stdout) = start(
        &[
            "run",
            "--keep",
            "--id",
            "sig-slow",
            "--config",
            config.to_str().unwrap(),
        ],
        &run_root,
    );
    let seen = read_until(&mut stdout, "VM running; Ctrl-C to delete it");
    let qemu = qemu_pid(&seen);
    kill(Pid::from_raw(i32::try_from(qemu).unwrap()), Signal::SIGSTOP).unwrap();
    signal(&child, Signal::SIGINT);
    let (code, out, err) = rest(&mut child, &mut stdout);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("phase  vm_shutdown still running after 5s"),
        "{out}"
    );
    assert!(out.contains("7 phases, 0 failed"), "{out}");
    assert!(!alive(qemu));
    assert!(
        leftovers(&run_root).is_empty(),
        "{:?}",
        leftovers(&run_root)
    );
}

#[test]
fn a_failed_create_shows_its_teardown_once_and_no_bogus_report() {
    let root = tempfile::tempdir().unwrap();
    // Not a kernel: QEMU refuses it and exits.
    let kernel = root.path().join("not-a-kernel");
    std::fs::write(&kernel, b"garbage").unwrap();
    let run_root = root.path().join("run");
    let (mut child, mut stdout) = start(
        &[
            "run",
            "--id",
            "sig-bad",
            "--kernel",
            kernel.to_str().unwrap(),
        ],
        &run_root,
    );
    let (code, out, err) = rest(&mut child, &mut stdout);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.starts_with("spinbox: create failed:"), "{err}");
    assert!(out.contains("state  creating → idle"), "{out}");
    assert!(!out.contains("already done"), "{out}");
    assert_eq!(out.matches("phase  vm_shutdown …").count(), 1, "{out}");
    assert!(
        leftovers(&run_root).is_empty(),
        "{:?}",
        leftovers(&run_root)
    );
}
