//! A process's stdio streams: held until the host attaches them, then copied.
//!
//! When a process is created, its [`ProcessStdio`] is split by the request's `Stdio`:
//! a stdin not asked for is closed at once (the process reads end-of-file); an output not
//! asked for is read and discarded by a task of the agent (the process never blocks on a
//! full pipe). What was asked for waits in the process's [`Streams`] until a connection
//! attaches it (once) — see [`serve_stdio`]; each attached output holds a [`Delivery`]
//! guard until its stream has carried the last byte and been shut down, so `Wait` can
//! wait for every attached output to be delivered.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use spinbox_protocol::{parse_stdio_header, StdioStream, MAX_STDIO_HEADER};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::container::{OutputPipe, Process, ProcessStdio};

use super::Tasks;

/// How long a connection may take to send its header line.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the copy buffers.
const COPY_BUF: usize = 64 * 1024;

/// Counts one attached (or attachable) output until its delivery ends, when dropped.
#[derive(Debug)]
pub struct Delivery(watch::Sender<usize>);

impl Drop for Delivery {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One stream of a process: not asked for, waiting to be attached, or attached.
#[derive(Debug)]
enum Slot<T> {
    NotRequested,
    Pending(T),
    Attached,
}

impl<T> Slot<T> {
    fn take(&mut self, name: &str) -> Result<T, String> {
        match std::mem::replace(self, Slot::Attached) {
            Slot::Pending(t) => Ok(t),
            Slot::NotRequested => {
                *self = Slot::NotRequested;
                Err(format!("{name} was not requested"))
            }
            Slot::Attached => Err(format!("{name} is already attached")),
        }
    }
}

/// What a connection took to serve.
pub enum Taken {
    /// The process's stdin, and the process (the copy ends when it exits).
    Stdin(pipe::Sender, Process),
    /// An output and its delivery guard.
    Output(OutputPipe, Delivery),
}

#[derive(Debug)]
struct Slots {
    stdin: Slot<pipe::Sender>,
    stdout: Slot<(OutputPipe, Delivery)>,
    stderr: Slot<(OutputPipe, Delivery)>,
}

/// A process's stdio as the host sees it: the streams waiting to be attached, the count
/// of outputs not yet delivered, and the copy tasks (aborted when the process is deleted).
#[derive(Debug)]
pub struct Streams {
    slots: Mutex<Slots>,
    undelivered: watch::Sender<usize>,
    tasks: Mutex<Vec<AbortHandle>>,
    process: Process,
}

impl Streams {
    /// Splits `stdio` as `wanted` (stdin, stdout, stderr) asks: what is not wanted is
    /// closed (stdin) or discarded (outputs) at once; the rest waits to be attached.
    pub fn new(stdio: ProcessStdio, wanted: [bool; 3], process: Process) -> Arc<Self> {
        let [want_in, want_out, want_err] = wanted;
        let (undelivered, _) = watch::channel(0usize);
        let mut tasks = Vec::new();
        let mut output = |pipe: OutputPipe, wanted: bool| {
            if wanted {
                undelivered.send_modify(|n| *n += 1);
                Slot::Pending((pipe, Delivery(undelivered.clone())))
            } else {
                tasks.push(tokio::spawn(discard(pipe)).abort_handle());
                Slot::NotRequested
            }
        };
        let slots = Slots {
            stdout: output(stdio.stdout, want_out),
            stderr: output(stdio.stderr, want_err),
            // Dropping the sender closes the process's stdin.
            stdin: if want_in {
                Slot::Pending(stdio.stdin)
            } else {
                Slot::NotRequested
            },
        };
        Arc::new(Self {
            slots: Mutex::new(slots),
            undelivered,
            tasks: Mutex::new(tasks),
            process,
        })
    }

    /// Takes `stream` for a connection; an error message when it was not requested or is
    /// already attached.
    pub fn take(&self, stream: StdioStream) -> Result<Taken, String> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match stream {
            StdioStream::Stdin => slots
                .stdin
                .take("stdin")
                .map(|s| Taken::Stdin(s, self.process.clone())),
            StdioStream::Stdout => slots
                .stdout
                .take("stdout")
                .map(|(p, d)| Taken::Output(p, d)),
            StdioStream::Stderr => slots
                .stderr
                .take("stderr")
                .map(|(p, d)| Taken::Output(p, d)),
        }
    }

    /// Records a copy task, to abort it when the process is deleted.
    pub fn track(&self, task: AbortHandle) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Waits until every requested output has been delivered (its stream shut down after
    /// the last byte, or its delivery abandoned). An output requested and never attached
    /// is never delivered: this waits for it (until the process is deleted).
    pub async fn delivered(&self) {
        let mut rx = self.undelivered.subscribe();
        // The sender lives in `self`: the channel cannot close while this waits.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Ends the streams: waits up to `bound` for the outputs to be delivered, then drops
    /// whatever was never attached and aborts every copy still running.
    pub async fn close(&self, bound: Duration) {
        if tokio::time::timeout(bound, self.delivered()).await.is_err() {
            tracing::warn!(pid = %self.process.pid(), "output not delivered in time; dropping it");
        }
        {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            slots.stdin = Slot::Attached;
            slots.stdout = Slot::Attached;
            slots.stderr = Slot::Attached;
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            task.abort();
        }
    }
}

/// Reads an output to end-of-file, discarding it.
async fn discard(mut pipe: OutputPipe) {
    let mut buf = vec![0u8; COPY_BUF];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Reads the header line: bytes up to and including `\n`, at most [`MAX_STDIO_HEADER`].
/// One byte at a time, so nothing after the newline (stdin data) is consumed.
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, String> {
    let mut line = Vec::with_capacity(MAX_STDIO_HEADER);
    let read = async {
        while line.len() < MAX_STDIO_HEADER {
            let byte = stream
                .read_u8()
                .await
                .map_err(|e| format!("cannot read the header: {e}"))?;
            line.push(byte);
            if byte == b'\n' {
                return Ok(());
            }
        }
        Err(format!("header longer than {MAX_STDIO_HEADER} bytes"))
    };
    tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .map_err(|_| format!("no header line within {HEADER_TIMEOUT:?}"))??;
    String::from_utf8(line).map_err(|_| "the header is not UTF-8".to_owned())
}

/// Serves one stdio connection: reads its header, attaches the stream it names (replying
/// `ok\n`, or `error <message>\n` and closing), then copies until the stream's end (see
/// the protocol in `agent.proto`). Generic over the transport: vsock in the agent, unix
/// sockets or in-memory pipes in tests.
pub async fn serve_stdio<S>(tasks: Arc<Tasks>, mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let attached = match read_header(&mut stream).await {
        Ok(line) => match parse_stdio_header(&line) {
            Some((container, exec, which)) => tasks
                .streams(&container, &exec)
                .and_then(|streams| Ok((streams.take(which)?, streams))),
            None => Err(format!("malformed header {:?}", line.trim_end())),
        },
        Err(e) => Err(e),
    };
    let (taken, streams) = match attached {
        Ok(t) => t,
        Err(message) => {
            tracing::debug!(%message, "stdio connection refused");
            let reply = format!("error {}\n", message.replace('\n', " "));
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    // A failed "ok" still copies: an output is then drained (discarded), so the process
    // never blocks, and its delivery ends.
    let ok = stream.write_all(b"ok\n").await.is_ok();
    let copy = tokio::spawn(async move {
        match taken {
            Taken::Stdin(pipe, process) => forward_stdin(stream, pipe, &process).await,
            Taken::Output(pipe, delivery) => forward_output(pipe, stream, ok, delivery).await,
        }
    });
    streams.track(copy.abort_handle());
    // Cancelled only by `Streams::close` (process deleted).
    let _ = copy.await;
}

/// Copies the host's bytes to the process's stdin until the host closes the stream (then
/// the pipe is closed: the process reads end-of-file), the process exits, or the pipe
/// breaks (nobody reads it any more).
async fn forward_stdin<S: AsyncRead + Unpin>(
    mut stream: S,
    mut pipe: pipe::Sender,
    process: &Process,
) {
    let copy = async {
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if pipe.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = copy => {}
        _ = process.wait() => {}
    }
    drop(pipe);
}

/// Copies an output to the host until the pipe's end-of-file (every writer closed it),
/// then flushes and shuts the stream down, and only then drops `delivery`. If the host
/// stops reading (write error), the rest is drained and discarded.
async fn forward_output<S: AsyncWrite + Unpin>(
    mut pipe: OutputPipe,
    mut stream: S,
    mut writable: bool,
    delivery: Delivery,
) {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a process output");
                break;
            }
        };
        if writable && stream.write_all(&buf[..n]).await.is_err() {
            writable = false;
        }
    }
    if writable {
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    }
    drop(stream);
    drop(delivery);
}
