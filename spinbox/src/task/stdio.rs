//! A process's stdio between the host and the guest: one vsock stream per attached stream
//! (port [`STDIO_PORT`]), opened with a header line and copied by a task per stream.
//!
//! - **stdin**: bytes from the host's source go to the guest until the source ends; then the
//!   stream is closed, and the process reads end-of-file. A process that never reads its
//!   stdin only stalls its own copy task (the guest's pipe and the stream fill up); nothing
//!   else waits on it, and [`Forwarders::close`] ends the task.
//! - **stdout, stderr**: bytes from the guest go to the host's sink until the agent closes
//!   the stream, which it does once every writer of the process's pipe has closed it and
//!   every byte was sent. [`Forwarders::outputs_done`] resolves when both copies have reached
//!   that end-of-file and flushed their sinks: with the agent's `Wait` (which answers only
//!   after the streams were closed), an exit never overtakes its output.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spinbox_protocol::{stdio_header, StdioStream, STDIO_PORT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::vm::vsock::{connect_stream, AgentAddress, ConnectError};

/// Where a process's input comes from.
pub type Source = Box<dyn AsyncRead + Send + Unpin>;
/// Where a process's output goes.
pub type Sink = Box<dyn AsyncWrite + Send + Unpin>;

/// Longest reply line to a stdio header.
const MAX_REPLY: usize = 512;

/// What the host attaches to a process: absent streams are not attached (the agent then
/// gives the process an stdin at end-of-file and discards its output).
#[derive(Default)]
pub struct ProcessIo {
    /// Copied to the process's stdin.
    pub stdin: Option<Source>,
    /// Receives the process's stdout.
    pub stdout: Option<Sink>,
    /// Receives the process's stderr.
    pub stderr: Option<Sink>,
}

impl std::fmt::Debug for ProcessIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish()
    }
}

impl ProcessIo {
    /// Nothing attached.
    pub fn null() -> Self {
        Self::default()
    }

    /// Which of stdin, stdout, stderr are attached.
    pub fn streams(&self) -> [bool; 3] {
        [
            self.stdin.is_some(),
            self.stdout.is_some(),
            self.stderr.is_some(),
        ]
    }
}

/// A stdio stream that could not be attached or copied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StdioError {
    /// The stream could not be connected.
    #[error("cannot connect the {stream} stream")]
    Connect {
        /// Which stream.
        stream: &'static str,
        /// Why.
        #[source]
        source: Arc<ConnectError>,
    },
    /// The agent refused the stream.
    #[error("the agent refused the {stream} stream: {message}")]
    Refused {
        /// Which stream.
        stream: &'static str,
        /// The agent's reason.
        message: String,
    },
    /// Reading or writing failed.
    #[error("{stream}: {what}")]
    Io {
        /// Which stream.
        stream: &'static str,
        /// What failed.
        what: &'static str,
        /// The error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The copy was ended by [`Forwarders::close`] before its end-of-file.
    #[error("{0}: closed before end-of-file")]
    Cut(&'static str),
}

/// Opens the stream `stream` of process `exec_id` (empty: the init process) of
/// `container_id`: connects to the agent's stdio port, sends the header, reads the reply.
pub async fn attach(
    address: &AgentAddress,
    timeout: Duration,
    container_id: &str,
    exec_id: &str,
    stream: StdioStream,
) -> Result<UnixStream, StdioError> {
    let name = stream.name();
    let mut s = connect_stream(&address.with_port(STDIO_PORT), timeout)
        .await
        .map_err(|e| StdioError::Connect {
            stream: name,
            source: Arc::new(e),
        })?;
    let io_err = |what| {
        move |e: io::Error| StdioError::Io {
            stream: name,
            what,
            source: Arc::new(e),
        }
    };
    let handshake = async {
        s.write_all(stdio_header(container_id, exec_id, stream).as_bytes())
            .await
            .map_err(io_err("cannot send the header"))?;
        // Byte by byte: what follows the newline is the stream's data.
        let mut line = Vec::with_capacity(8);
        loop {
            let b = s
                .read_u8()
                .await
                .map_err(io_err("no reply to the header"))?;
            if b == b'\n' || line.len() >= MAX_REPLY {
                break;
            }
            line.push(b);
        }
        Ok::<_, StdioError>(String::from_utf8_lossy(&line).into_owned())
    };
    let reply = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| StdioError::Io {
            stream: name,
            what: "no reply to the header in time",
            source: Arc::new(io::ErrorKind::TimedOut.into()),
        })??;
    if reply == "ok" {
        Ok(s)
    } else {
        Err(StdioError::Refused {
            stream: name,
            message: reply.strip_prefix("error ").unwrap_or(&reply).to_owned(),
        })
    }
}

/// The outcome of one output copy: bytes delivered, or why it stopped.
type OutputResult = Result<u64, StdioError>;

/// The copy tasks of one process's stdio. Cheap to clone; clones share the tasks.
#[derive(Clone, Debug)]
pub struct Forwarders {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// One per attached output: `None` while it copies, then its result.
    outputs: Vec<(StdioStream, watch::Receiver<Option<OutputResult>>)>,
}

/// What both outputs delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Bytes of stdout.
    pub stdout: u64,
    /// Bytes of stderr.
    pub stderr: u64,
}

impl Forwarders {
    /// Attaches every stream `io` has and starts copying. Streams are attached in the
    /// order stdout, stderr, stdin; on an error the ones already attached are closed.
    pub async fn attach(
        address: &AgentAddress,
        timeout: Duration,
        container_id: &str,
        exec_id: &str,
        io: ProcessIo,
    ) -> Result<Self, StdioError> {
        let mut tasks = Vec::new();
        let mut outputs = Vec::new();
        let result = async {
            for (stream, sink) in [
                (StdioStream::Stdout, io.stdout),
                (StdioStream::Stderr, io.stderr),
            ] {
                let Some(sink) = sink else { continue };
                let s = attach(address, timeout, container_id, exec_id, stream).await?;
                let (tx, rx) = watch::channel(None);
                tasks.push(tokio::spawn(async move {
                    let r = copy_out(stream.name(), s, sink).await;
                    tx.send_replace(Some(r));
                }));
                outputs.push((stream, rx));
            }
            if let Some(source) = io.stdin {
                let s = attach(address, timeout, container_id, exec_id, StdioStream::Stdin).await?;
                tasks.push(tokio::spawn(copy_in(source, s)));
            }
            Ok(())
        }
        .await;
        let forwarders = Self {
            inner: Arc::new(Inner {
                tasks: Mutex::new(tasks),
                outputs,
            }),
        };
        match result {
            Ok(()) => Ok(forwarders),
            Err(e) => {
                forwarders.abort_now();
                Err(e)
            }
        }
    }

    /// Nothing attached.
    pub fn none() -> Self {
        Self {
            inner: Arc::new(Inner {
                tasks: Mutex::new(Vec::new()),
                outputs: Vec::new(),
            }),
        }
    }

    /// Waits until every attached output reached end-of-file and was flushed to its sink;
    /// the first copy error otherwise.
    pub async fn outputs_done(&self) -> Result<Delivered, StdioError> {
        let mut delivered = Delivered::default();
        for (stream, rx) in &self.inner.outputs {
            let mut rx = rx.clone();
            let r = rx
                .wait_for(Option::is_some)
                .await
                .map_or(Err(StdioError::Cut(stream.name())), |r| {
                    r.clone().unwrap_or(Err(StdioError::Cut(stream.name())))
                })?;
            match stream {
                StdioStream::Stdout => delivered.stdout = r,
                _ => delivered.stderr = r,
            }
        }
        Ok(delivered)
    }

    /// Whether every copy task has finished.
    pub fn is_finished(&self) -> bool {
        lock(&self.inner.tasks).iter().all(JoinHandle::is_finished)
    }

    /// Closes the forwarders: lets the outputs finish delivering what the guest sent for
    /// up to `drain`, then ends every copy still running (stdin included), closing its
    /// stream. Returns whether the outputs reached their end-of-file.
    pub async fn close(&self, drain: Duration) -> bool {
        let drained = tokio::time::timeout(drain, self.outputs_done())
            .await
            .is_ok_and(|r| r.is_ok());
        self.abort_now();
        drained
    }

    /// Ends every copy at once, without draining.
    pub(crate) fn abort_now(&self) {
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Guest → host until the agent closes the stream; the sink is flushed at the end.
async fn copy_out(name: &'static str, mut from: UnixStream, mut to: Sink) -> OutputResult {
    let err = |what| {
        move |e: io::Error| StdioError::Io {
            stream: name,
            what,
            source: Arc::new(e),
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(err("reading from the guest"))?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n])
            .await
            .map_err(err("writing to the sink"))?;
        total += n as u64;
    }
    to.flush().await.map_err(err("flushing the sink"))?;
    to.shutdown().await.map_err(err("closing the sink"))?;
    Ok(total)
}

/// Host → guest until the source ends; then the stream closes (the process sees EOF).
async fn copy_in(mut from: Source, mut to: UnixStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the stdin source failed; closing stdin");
                break;
            }
        };
        if let Err(e) = to.write_all(&buf[..n]).await {
            tracing::debug!(error = %e, "the guest closed stdin");
            return;
        }
    }
    // Closing the whole stream (not only our write side): the stream carries nothing back.
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A stand-in for the agent's stdio port: answers each header with `reply`, then runs
    /// `serve` on the stream.
    fn fake_agent<F, Fut>(dir: &std::path::Path, reply: &'static str, serve: F) -> AgentAddress
    where
        F: Fn(String, UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let address = AgentAddress::Unix(dir.join("agent.sock"));
        let AgentAddress::Unix(path) = address.with_port(STDIO_PORT) else {
            unreachable!()
        };
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut header = Vec::new();
                loop {
                    let b = s.read_u8().await.unwrap();
                    header.push(b);
                    if b == b'\n' {
                        break;
                    }
                }
                s.write_all(reply.as_bytes()).await.unwrap();
                tokio::spawn(serve(String::from_utf8(header).unwrap(), s));
            }
        });
        address
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outputs_are_delivered_whole_and_stdin_reaches_end_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let (echoed_tx, echoed_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let address = fake_agent(dir.path(), "ok\n", move |header, mut s| {
            let echoed_tx = echoed_tx.clone();
            async move {
                if header.ends_with(" stdin\n") {
                    // Reads to end-of-file: the host closed stdin.
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    echoed_tx.send(got).unwrap();
                } else {
                    let byte = if header.ends_with(" stdout\n") {
                        b'o'
                    } else {
                        b'e'
                    };
                    s.write_all(&vec![byte; 3 << 20]).await.unwrap();
                }
            }
        });
        let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
        let (err_w, mut err_r) = tokio::io::duplex(1 << 16);
        let io = ProcessIo {
            stdin: Some(Box::new(&b"hello"[..])),
            stdout: Some(Box::new(out_w)),
            stderr: Some(Box::new(err_w)),
        };
        let fw = Forwarders::attach(&address, Duration::from_secs(5), "c", "", io)
            .await
            .unwrap();
        let read_out = tokio::spawn(async move {
            let mut v = Vec::new();
            out_r.read_to_end(&mut v).await.unwrap();
            v
        });
        let read_err = tokio::spawn(async move {
            let mut v = Vec::new();
            err_r.read_to_end(&mut v).await.unwrap();
            v
        });
        let delivered = fw.outputs_done().await.unwrap();
        assert_eq!(
            delivered,
            Delivered {
                stdout: 3 << 20,
                stderr: 3 << 20
            }
        );
        let out = read_out.await.unwrap();
        assert!(out.len() == 3 << 20 && out.iter().all(|&b| b == b'o'));
        let err = read_err.await.unwrap();
        assert!(err.len() == 3 << 20 && err.iter().all(|&b| b == b'e'));
        let mut echoed_rx = echoed_rx;
        assert_eq!(echoed_rx.recv().await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn a_refused_stream_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let address = fake_agent(dir.path(), "error no process c/x\n", |_, _| async {});
        let err = attach(
            &address,
            Duration::from_secs(5),
            "c",
            "x",
            StdioStream::Stdout,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, StdioError::Refused { stream: "stdout", message } if message == "no process c/x"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn close_cuts_an_output_that_never_ends_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let address = fake_agent(dir.path(), "ok\n", |_, s| async move {
            // Holds the stream open for ever.
            std::future::pending::<()>().await;
            drop(s);
        });
        let io = ProcessIo {
            stdout: Some(Box::new(tokio::io::sink())),
            ..ProcessIo::null()
        };
        let fw = Forwarders::attach(&address, Duration::from_secs(5), "c", "", io)
            .await
            .unwrap();
        assert!(!fw.close(Duration::from_millis(50)).await);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !fw.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(matches!(
            fw.outputs_done().await,
            Err(StdioError::Cut("stdout"))
        ));
    }

    #[tokio::test]
    async fn no_agent_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let address = AgentAddress::Unix(dir.path().join("absent.sock"));
        let err = attach(
            &address,
            Duration::from_secs(1),
            "c",
            "",
            StdioStream::Stdin,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                StdioError::Connect {
                    stream: "stdin",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
