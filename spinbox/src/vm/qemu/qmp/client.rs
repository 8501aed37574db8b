//! The async QMP client: handshake, id-routed replies, timeouts and an event stream.
//!
//! One reader task owns the read half: it decodes each line, hands replies to the
//! waiting caller through a map of id → oneshot, and broadcasts events. Commands are
//! written under a lock and awaited with a per-call timeout. A line longer than
//! [`MAX_LINE_LEN`] or one that is not a QMP message ends the connection with an error
//! for every pending command, so a broken server can neither exhaust memory nor leave a
//! caller waiting for a reply that will never be routed.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use super::wire::{decode_line, DecodeError, QmpEvent, QmpMessage};

/// Longest line accepted from the server (1 MiB).
pub const MAX_LINE_LEN: usize = 1 << 20;

/// Timeout for commands sent without an explicit one, and for the handshake.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Events buffered per subscriber before the slowest one starts losing the oldest.
const EVENT_BUFFER: usize = 64;

/// QMP client errors.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting to the QMP socket failed.
    #[error("cannot connect to QMP socket {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the greeting or writing a command failed.
    #[error("QMP I/O failed")]
    Io(#[source] io::Error),
    /// The server's first message was not a greeting, or the connection closed before one.
    #[error("QMP handshake failed: {0}")]
    Handshake(String),
    /// A line could not be decoded during the handshake.
    #[error("malformed QMP message")]
    Decode(#[source] DecodeError),
    /// The server sent a line longer than `MAX_LINE_LEN` (1 MiB).
    #[error("QMP line longer than {MAX_LINE_LEN} bytes")]
    LineTooLong,
    /// No reply arrived in time.
    #[error("QMP command `{command}` got no reply within {after:?}")]
    Timeout {
        /// The command.
        command: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// QEMU answered with an error.
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The connection ended before the reply.
    #[error("QMP connection lost before `{command}` was answered: {reason}")]
    ConnectionLost {
        /// The command.
        command: String,
        /// What ended the connection (EOF, protocol error, client closed).
        reason: String,
    },
    /// The reply did not have the expected shape.
    #[error("unexpected reply to QMP command `{command}`")]
    BadReply {
        /// The command.
        command: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// The answer to `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RunStatus {
    /// QEMU's run state: `running`, `paused`, `prelaunch`, `shutdown`, …
    pub status: String,
    /// Whether vCPUs are running.
    pub running: bool,
}

enum Reply {
    Ok(Value),
    Err { class: String, desc: String },
    Lost(String),
}

struct Waiter {
    tx: oneshot::Sender<Reply>,
    /// `quit`: the server closing the connection is the expected answer.
    eof_is_success: bool,
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    /// Set once the connection is gone; later commands fail at once with this reason.
    closed: Option<String>,
}

struct Shared {
    pending: Mutex<Pending>,
    events: broadcast::Sender<QmpEvent>,
    /// Set once the reader has stopped: every event it read was broadcast before this.
    ended: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The map stays consistent even if a holder panicked: every critical section is a
        // single insert/remove.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self, reason: &str) {
        let mut p = self.lock();
        if p.closed.is_none() {
            p.closed = Some(reason.to_owned());
        }
        for (_, w) in p.waiters.drain() {
            let reply = if w.eof_is_success && reason == EOF_REASON {
                Reply::Ok(json!({}))
            } else {
                Reply::Lost(reason.to_owned())
            };
            let _ = w.tx.send(reply);
        }
    }
}

const EOF_REASON: &str = "server closed the connection";

type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;

struct Inner {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<Option<BoxWriter>>,
    reader: JoinHandle<()>,
    next_id: AtomicU64,
    default_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A connected, negotiated QMP client. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct QmpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("default_timeout", &self.inner.default_timeout)
            .finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects to a QMP server socket and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Connect {
                path: path.to_owned(),
                source: io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Self::handshake(stream, timeout).await
    }

    /// Negotiates over an already connected stream (e.g. one QEMU connected to).
    pub async fn handshake(stream: UnixStream, timeout: Duration) -> Result<Self, QmpError> {
        let (r, w) = stream.into_split();
        Self::from_io(r, w, timeout).await
    }

    /// Negotiates over any byte stream pair (a socket's halves, QEMU's stdio).
    ///
    /// Reads the greeting, starts the reader task, sends `qmp_capabilities`. `timeout`
    /// bounds the handshake and becomes the default command timeout.
    pub async fn from_io<R, W>(reader: R, writer: W, timeout: Duration) -> Result<Self, QmpError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        let first = tokio::time::timeout(timeout, read_line_bounded(&mut reader, &mut line))
            .await
            .map_err(|_| QmpError::Handshake(format!("no greeting within {timeout:?}")))?
            .map_err(QmpError::Io)?;
        match first {
            LineRead::Line => {}
            LineRead::Eof => {
                return Err(QmpError::Handshake(
                    "connection closed before the greeting".into(),
                ))
            }
            LineRead::TooLong => return Err(QmpError::LineTooLong),
        }
        match decode_line(&line).map_err(QmpError::Decode)? {
            QmpMessage::Greeting(g) => tracing::debug!(greeting = %g, "QMP greeting"),
            other => {
                return Err(QmpError::Handshake(format!(
                    "expected a greeting, got {other:?}"
                )))
            }
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            events,
            ended: tokio::sync::watch::Sender::new(false),
        });
        let reader = tokio::spawn(read_loop(reader, Arc::clone(&shared)));
        let client = Self {
            inner: Arc::new(Inner {
                shared,
                writer: tokio::sync::Mutex::new(Some(Box::new(writer))),
                reader,
                next_id: AtomicU64::new(1),
                default_timeout: timeout,
            }),
        };
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Subscribes to events received from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Waits until the connection has ended (QEMU closed it, or [`Self::close`]). Every
    /// event read from it was broadcast before this returns, so a subscriber that drains
    /// its receiver afterwards has seen them all.
    pub async fn ended(&self) {
        let mut rx = self.inner.shared.ended.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Runs a command with the default timeout and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.inner.default_timeout)
            .await
    }

    /// Runs a command, waiting at most `timeout` for the write and the reply together.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.inner.shared.lock();
            if let Some(reason) = &p.closed {
                return Err(QmpError::ConnectionLost {
                    command: command.to_owned(),
                    reason: reason.clone(),
                });
            }
            p.waiters.insert(
                id,
                Waiter {
                    tx,
                    eof_is_success: command == "quit",
                },
            );
        }
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        let exchange = async {
            self.write(&bytes).await?;
            rx.await.map_err(|_| QmpError::ConnectionLost {
                command: command.to_owned(),
                reason: "client closed".into(),
            })
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.inner.shared.lock().waiters.remove(&id);
                return Err(e);
            }
            Err(_) => {
                self.inner.shared.lock().waiters.remove(&id);
                return Err(QmpError::Timeout {
                    command: command.to_owned(),
                    after: timeout,
                });
            }
        };
        match reply {
            Reply::Ok(v) => Ok(v),
            Reply::Err { class, desc } => Err(QmpError::Command {
                command: command.to_owned(),
                class,
                desc,
            }),
            Reply::Lost(reason) => Err(QmpError::ConnectionLost {
                command: command.to_owned(),
                reason,
            }),
        }
    }

    async fn write(&self, bytes: &[u8]) -> Result<(), QmpError> {
        let mut w = self.inner.writer.lock().await;
        let Some(w) = w.as_mut() else {
            return Err(QmpError::Io(io::ErrorKind::NotConnected.into()));
        };
        w.write_all(bytes).await.map_err(QmpError::Io)?;
        w.flush().await.map_err(QmpError::Io)
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<RunStatus, QmpError> {
        let v = self.execute("query-status", None).await?;
        serde_json::from_value(v).map_err(|source| QmpError::BadReply {
            command: "query-status".into(),
            source,
        })
    }

    /// `stop`: pauses the vCPUs (a `STOP` event follows).
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: resumes the vCPUs (a `RESUME` event follows).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// `system_powerdown`: presses the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `send-key` ctrl-alt-delete (a Linux guest reboots; with `-no-reboot` QEMU exits).
    pub async fn send_ctrl_alt_delete(&self) -> Result<(), QmpError> {
        let keys: Vec<Value> = ["ctrl", "alt", "delete"]
            .iter()
            .map(|k| json!({"type": "qcode", "data": k}))
            .collect();
        self.execute("send-key", Some(json!({ "keys": keys })))
            .await
            .map(drop)
    }

    /// `quit` with the given timeout: QEMU exits; the connection closing counts as success.
    pub async fn quit(&self, timeout: Duration) -> Result<(), QmpError> {
        self.execute_with_timeout("quit", None, timeout)
            .await
            .map(drop)
    }

    /// Closes the connection: pending commands fail, the reader task stops.
    pub async fn close(&self) {
        self.inner.shared.close("client closed");
        self.inner.reader.abort();
        self.inner.shared.ended.send_replace(true);
        if let Some(mut w) = self.inner.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
    }
}

enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Reads one `\n`-terminated line into `buf` (cleared first, newline and `\r` stripped),
/// never holding more than [`MAX_LINE_LEN`] bytes. A final line without newline counts.
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<LineRead> {
    buf.clear();
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (chunk, used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(pos) => (&avail[..pos], pos + 1, true),
            None => (avail, avail.len(), false),
        };
        if buf.len() + chunk.len() > MAX_LINE_LEN {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(chunk);
        r.consume(used);
        if done {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(LineRead::Line);
        }
    }
}

async fn read_loop<R: AsyncBufRead + Unpin>(mut reader: R, shared: Arc<Shared>) {
    let mut line = Vec::new();
    let reason = loop {
        match read_line_bounded(&mut reader, &mut line).await {
            Ok(LineRead::Line) => {}
            Ok(LineRead::Eof) => break EOF_REASON.to_owned(),
            Ok(LineRead::TooLong) => {
                break format!("protocol error: line longer than {MAX_LINE_LEN} bytes")
            }
            Err(e) => break format!("read failed: {e}"),
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match decode_line(&line) {
            Ok(QmpMessage::Event(ev)) => {
                tracing::debug!(event = ?ev.kind, "QMP event");
                // No subscriber is fine: events are optional to consume.
                let _ = shared.events.send(ev);
            }
            Ok(QmpMessage::Return { id, value }) => route(&shared, id.as_ref(), Reply::Ok(value)),
            Ok(QmpMessage::Error { id, class, desc }) => {
                route(&shared, id.as_ref(), Reply::Err { class, desc });
            }
            Ok(QmpMessage::Greeting(_)) => {
                tracing::warn!("QMP server sent a second greeting; ignored");
            }
            Err(e) => break format!("protocol error: {e}"),
        }
    };
    tracing::debug!(%reason, "QMP connection ended");
    shared.close(&reason);
    shared.ended.send_replace(true);
}

fn route(shared: &Shared, id: Option<&Value>, reply: Reply) {
    let Some(id) = id.and_then(Value::as_u64) else {
        tracing::warn!(?id, "QMP reply without a usable id; ignored");
        return;
    };
    let waiter = shared.lock().waiters.remove(&id);
    if let Some(w) = waiter {
        let _ = w.tx.send(reply);
    } else {
        // The caller timed out and left; its late reply has nobody to go to.
        tracing::debug!(id, "QMP reply for a command nobody waits for");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    const GREETING: &[u8] = b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";

    /// A fake server: greets, answers `qmp_capabilities`, then runs `script` on each
    /// later command line (returning the bytes to send back).
    async fn fake_server<F>(script: F) -> (QmpClient, JoinHandle<()>)
    where
        F: Fn(u64, &str) -> Vec<u8> + Send + 'static,
    {
        let (client_end, server_end) = UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let (rd, mut wr) = server_end.into_split();
            let mut rd = BufReader::new(rd);
            wr.write_all(GREETING).await.unwrap();
            let mut line = String::new();
            while rd.read_line(&mut line).await.unwrap_or(0) > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                let id = v["id"].as_u64().unwrap();
                let cmd = v["execute"].as_str().unwrap().to_owned();
                let out = if cmd == "qmp_capabilities" {
                    format!("{{\"return\": {{}}, \"id\": {id}}}\n").into_bytes()
                } else {
                    script(id, &cmd)
                };
                if wr.write_all(&out).await.is_err() {
                    break;
                }
                if cmd == "quit" {
                    break;
                }
                line.clear();
            }
        });
        let client = QmpClient::handshake(client_end, Duration::from_secs(5))
            .await
            .unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn routes_replies_and_events_out_of_order_and_ignores_unknown_fields() {
        let (c, _s) = fake_server(|id, cmd| match cmd {
            "query-status" => format!(
                "{{\"event\": \"STOP\", \"extra\": 1}}\n{{\"return\": {{\"status\": \"paused\", \"running\": false, \"singlestep\": false, \"new\": [1]}}, \"id\": 999}}\n{{\"return\": {{\"status\": \"running\", \"running\": true}}, \"id\": {id}, \"x\": null}}\n"
            )
            .into_bytes(),
            _ => format!("{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"no {cmd}\"}}, \"id\": {id}}}\n").into_bytes(),
        })
        .await;
        let mut ev = c.events();
        let st = c.query_status().await.unwrap();
        assert_eq!(
            st,
            RunStatus {
                status: "running".into(),
                running: true
            }
        );
        assert_eq!(
            ev.recv().await.unwrap().kind,
            crate::vm::qemu::qmp::QmpEventKind::Stop
        );
        let err = c.execute("bogus", None).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn eof_after_quit_is_success_and_later_commands_fail_fast() {
        let (c, _s) = fake_server(|_, _| Vec::new()).await;
        c.quit(Duration::from_secs(5)).await.unwrap();
        let err = c.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::ConnectionLost { .. }), "{err}");
    }

    #[tokio::test]
    async fn eof_before_reply_is_connection_lost() {
        let (c, s) = fake_server(|_, _| b"{\"return\": {}".to_vec()).await;
        // The partial line is followed by EOF once the server task is dropped.
        let call = tokio::spawn({
            let c = c.clone();
            async move { c.query_status().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.abort();
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, QmpError::ConnectionLost { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error_not_a_panic() {
        for garbage in [
            &b"not json\n"[..],
            b"[1,2,3]\n",
            b"{\"event\": 7}\n",
            b"{\"foo\": 1}\n",
        ] {
            let g = garbage.to_vec();
            let (c, _s) = fake_server(move |_, _| g.clone()).await;
            let err = c.query_status().await.unwrap_err();
            assert!(
                matches!(err, QmpError::ConnectionLost { ref reason, .. } if reason.contains("protocol error")),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn huge_line_is_an_error_not_oom() {
        let (c, _s) = fake_server(|_, _| {
            let mut v = b"{\"return\": \"".to_vec();
            v.resize(MAX_LINE_LEN + 100, b'a');
            v
        })
        .await;
        let err = c.query_status().await.unwrap_err();
        assert!(
            matches!(err, QmpError::ConnectionLost { ref reason, .. } if reason.contains("longer than")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_the_late_reply_is_dropped() {
        let (c, _s) = fake_server(|_, _| Vec::new()).await;
        let err = c
            .execute_with_timeout("query-status", None, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(c.inner.shared.lock().waiters.is_empty());
    }

    #[tokio::test]
    async fn handshake_rejects_non_greetings() {
        for first in [&b"{\"return\": {}}\n"[..], b"garbage\n", b""] {
            let (a, mut b) = UnixStream::pair().unwrap();
            b.write_all(first).await.unwrap();
            drop(b);
            assert!(QmpClient::handshake(a, Duration::from_secs(5))
                .await
                .is_err());
        }
    }

    #[tokio::test]
    async fn close_fails_pending_commands() {
        let (c, _s) = fake_server(|_, _| Vec::new()).await;
        let call = tokio::spawn({
            let c = c.clone();
            async move { c.query_status().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.close().await;
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, QmpError::ConnectionLost { .. }), "{err}");
    }
}
