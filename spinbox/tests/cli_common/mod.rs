//! Reading a `spinbox` child's output, shared by the CLI tests.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout};

/// Reads lines until one contains `marker`; returns everything read.
pub fn read_until(stdout: &mut BufReader<ChildStdout>, marker: &str) -> String {
    let mut seen = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains(marker) {
            return seen;
        }
        line.clear();
    }
    panic!("never saw {marker:?}; output:\n{seen}");
}

/// Reads the rest of stdout and all of stderr, then reaps `child`: (exit code or -1, stdout,
/// stderr).
pub fn rest(child: &mut Child, stdout: &mut BufReader<ChildStdout>) -> (i32, String, String) {
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), out, err)
}
