//! A process's stdio pipes, and knowing when its output has been drained.
//!
//! Each process gets three pipes. The child's ends become its fds 0, 1 and 2; the parent's
//! ends are handed to the caller as a [`ProcessStdio`]. Output is "drained" once each
//! [`OutputPipe`] has read end-of-file (every writer, including the process's own children,
//! has closed it) or has been dropped (the caller abandoned it). The exit status and the
//! drain are separate events: [`super::Process::wait_reported`] waits for both, so an exit
//! reported through it never overtakes the output.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::fcntl::OFlag;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::watch;

/// The parent's ends of a process's stdio.
#[derive(Debug)]
pub struct ProcessStdio {
    /// The process's standard input; drop it to send end-of-file.
    pub stdin: pipe::Sender,
    /// The process's standard output.
    pub stdout: OutputPipe,
    /// The process's standard error.
    pub stderr: OutputPipe,
}

/// An output pipe that counts itself drained at end-of-file or when dropped.
#[derive(Debug)]
pub struct OutputPipe {
    rx: pipe::Receiver,
    open: Option<OpenGuard>,
}

/// Decrements the count of undrained outputs once.
#[derive(Debug)]
struct OpenGuard(watch::Sender<usize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open = open.saturating_sub(1));
    }
}

impl AsyncRead for OutputPipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let poll = Pin::new(&mut self.rx).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            if asked && buf.filled().len() == before {
                self.open = None;
            }
        }
        poll
    }
}

/// The child's ends, moved onto fds 0–2 in the child.
pub(crate) struct ChildStdio {
    /// Read end of stdin.
    pub stdin: OwnedFd,
    /// Write end of stdout.
    pub stdout: OwnedFd,
    /// Write end of stderr.
    pub stderr: OwnedFd,
}

/// The parent's ends as plain fds (they become tokio types inside a runtime).
pub(crate) struct ParentFds {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Creates the three pipes; returns the child's ends and the parent's.
pub(crate) fn pipes() -> io::Result<(ChildStdio, ParentFds)> {
    let (stdin_r, stdin_w) = cloexec_pipe()?;
    let (stdout_r, stdout_w) = cloexec_pipe()?;
    let (stderr_r, stderr_w) = cloexec_pipe()?;
    let child = ChildStdio {
        stdin: stdin_r,
        stdout: stdout_w,
        stderr: stderr_w,
    };
    let parent = ParentFds {
        stdin: stdin_w,
        stdout: stdout_r,
        stderr: stderr_r,
    };
    Ok((child, parent))
}

impl ParentFds {
    /// The tokio ends (inside a runtime), and the count of undrained outputs: 2, reaching
    /// 0 when both outputs are drained.
    pub(crate) fn into_stdio(self) -> io::Result<(ProcessStdio, watch::Receiver<usize>)> {
        let (open_tx, open_rx) = watch::channel(2usize);
        let output = |fd| -> io::Result<OutputPipe> {
            Ok(OutputPipe {
                rx: pipe::Receiver::from_owned_fd(fd)?,
                open: Some(OpenGuard(open_tx.clone())),
            })
        };
        let stdio = ProcessStdio {
            stdin: pipe::Sender::from_owned_fd(self.stdin)?,
            stdout: output(self.stdout)?,
            stderr: output(self.stderr)?,
        };
        Ok((stdio, open_rx))
    }
}

/// A pipe whose both ends are close-on-exec (the child's ends lose the flag when moved
/// onto fds 0–2).
pub(crate) fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}
