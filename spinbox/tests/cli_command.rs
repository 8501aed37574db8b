//! `spinbox run -- CMD`: a command in a container in a real VM, its stdio and exit code
//! ours; the timeline stays off stdout.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn spinbox(args: &[&str], stdin: &[u8], state_root: &std::path::Path) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spinbox"))
        .args(args)
        .env("SPINBOX_STATE_ROOT", state_root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spinbox runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `spinbox ARGS` (stdin at end-of-file, stdout and stderr piped) and reads the
/// first line of its stdout.
fn spawn_reading_a_line(
    args: &[&str],
    state_root: &std::path::Path,
) -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    String,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spinbox"))
        .args(args)
        .env("SPINBOX_STATE_ROOT", state_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spinbox runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    (child, stdout, line)
}

/// Nothing of the run is left under the state root.
fn assert_clean(root: &std::path::Path) {
    let left: Vec<_> = std::fs::read_dir(root)
        .expect("cannot list the state root: the check cannot run")
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".vsock")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_commands_output_and_exit_code_are_ours() {
    let root = tempfile::tempdir().unwrap();
    let (code, out, err) = spinbox(
        &[
            "run",
            "--",
            "/bin/sh",
            "-c",
            "echo hello; echo to-stderr >&2; exit 7",
        ],
        b"",
        root.path(),
    );
    assert_eq!(code, 7, "{out}\n{err}");
    assert_eq!(out, "hello\n");
    assert_eq!(err, "to-stderr\n", "no timeline without --verbose");
    assert_clean(root.path());
}

#[test]
fn stdin_is_forwarded_and_flags_set_env_cwd_and_user() {
    let root = tempfile::tempdir().unwrap();
    let (code, out, err) = spinbox(
        &[
            "run",
            "--env",
            "GREETING=hi",
            "--cwd",
            "/tmp",
            "--user",
            "1000:1000",
            "--",
            "sh",
            "-c",
            "cat; echo \"$GREETING\"; pwd; id -u; id -g",
        ],
        b"from the host\n",
        root.path(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "from the host\nhi\n/tmp\n1000\n1000\n");
    assert_clean(root.path());
}

#[test]
fn verbose_puts_the_timeline_on_stderr_only() {
    let root = tempfile::tempdir().unwrap();
    let (code, out, err) = spinbox(&["run", "-v", "--", "echo", "only this"], b"", root.path());
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, "only this\n");
    for expected in [
        "state  creating → created",
        "state  created → running",
        "phase  io_shutdown done",
        "7 phases, 0 failed",
        "command ended: exit code 0",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn a_missing_program_exits_127_and_bad_flags_125() {
    let root = tempfile::tempdir().unwrap();
    let (code, out, err) = spinbox(&["run", "--", "no-such-program"], b"", root.path());
    assert_eq!(code, 127, "{out}\n{err}");
    assert!(err.contains("ENOENT"), "{err}");
    assert_clean(root.path());
    let (code, _, err) = spinbox(&["run", "--user", "root", "--", "true"], b"", root.path());
    assert_eq!(code, 125);
    assert_eq!(
        err.trim(),
        "spinbox: --user \"root\": expected UID or UID:GID (numbers)"
    );
    let (code, _, err) = spinbox(&["run", "--env", "=x", "--", "true"], b"", root.path());
    assert_eq!(code, 125);
    assert_eq!(
        err.trim(),
        "spinbox: environment entry \"=x\" is not KEY=VALUE"
    );
    let (code, _, err) = spinbox(
        &["run", "--rootfs", "/nonexistent", "--", "true"],
        b"",
        root.path(),
    );
    assert_eq!(code, 125);
    assert!(
        err.starts_with("spinbox: create failed: cannot share the container's rootfs"),
        "{err}"
    );
    assert_clean(root.path());
}

#[test]
fn sigterm_is_passed_to_the_command() {
    let root = tempfile::tempdir().unwrap();
    let (mut child, mut stdout, line) = spawn_reading_a_line(
        &[
            "run",
            "--",
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; sleep 100 & wait",
        ],
        root.path(),
    );
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(status.code(), Some(3));
    assert_clean(root.path());
}

#[test]
fn a_reader_that_goes_away_ends_the_command_like_a_pipeline() {
    let root = tempfile::tempdir().unwrap();
    let (child, stdout, line) = spawn_reading_a_line(&["run", "--", "yes"], root.path());
    assert_eq!(line, "y\n");
    // `spinbox run -- yes | head -1`: head exits.
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("spinbox:"), "spinbox complained: {err}");
    assert_clean(root.path());
}
