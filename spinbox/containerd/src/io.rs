//! A process's stdio as containerd names it: FIFO paths (what `ctr` and CRI pass), plain
//! files, or `file://` URIs. `binary://` log URIs are refused.
//!
//! stdin is read from its FIFO by a pump task into the process's stdin stream. The FIFO is
//! opened for reading blocking (in a blocking thread), so it only counts as open once the
//! client holds its write end, and its end-of-file then means the client closed it. `CloseIO`
//! ([`StdinCloser::close`]) ends the pump after what the FIFO already holds was forwarded, also
//! when the client never opened its end.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use spinbox::task::stdio::{ProcessIo, Sink, Source};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;

/// How long to wait for the reader of an output FIFO to appear.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// After `CloseIO`, how long the stdin pump waits for more bytes before ending.
const STDIN_LINGER: Duration = Duration::from_millis(100);

/// Ends a stdin pump (`CloseIO`).
#[derive(Debug, Clone)]
pub struct StdinCloser {
    closed: watch::Sender<bool>,
    /// The FIFO, whose blocked open `close` ends.
    fifo: Option<PathBuf>,
}

impl StdinCloser {
    /// Ends the pump once the FIFO holds nothing more; the process then reads end-of-file.
    /// A pump still waiting for the client to open the FIFO is released at once, here and
    /// not on a task: the runtime waits for its blocking threads before the shim exits.
    pub fn close(&self) {
        self.closed.send_replace(true);
        if let Some(fifo) = &self.fifo {
            poke(fifo);
        }
    }
}

/// Opens and closes a writer on `fifo` without blocking: a reader blocked in `open` (which
/// counts as a reader) returns, and then reads end-of-file. Without a reader it does
/// nothing.
fn poke(fifo: &std::path::Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(fifo);
}

/// A process's stdio, opened.
pub struct Opened {
    /// What the shim attaches to the process.
    pub io: ProcessIo,
    /// Closes stdin, when there is one.
    pub stdin: Option<StdinCloser>,
}

/// The path a stdio name designates (`None`: not attached): a FIFO or file path, or a
/// `file://` URI; it must be absolute.
fn path_of(uri: &str) -> Result<Option<PathBuf>, String> {
    if uri.is_empty() {
        return Ok(None);
    }
    let path = if let Some(path) = uri.strip_prefix("file://") {
        PathBuf::from(path)
    } else if let Some((scheme, _)) = uri.split_once("://") {
        return Err(format!(
            "stdio URI scheme `{scheme}://` is not supported by spinbox (FIFO paths, files and \
             file:// are)"
        ));
    } else {
        PathBuf::from(uri)
    };
    if !path.is_absolute() {
        return Err(format!("stdio path {} is not absolute", path.display()));
    }
    Ok(Some(path))
}

/// An output whose reader went away (a detached `ctr` exits and closes its FIFOs): from
/// then on its bytes are discarded, as containerd's own shims do, so the process and its
/// exit status are not held up by a missing reader.
struct Discarding<W> {
    inner: W,
    broken: bool,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Discarding<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.broken {
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.broken = true;
                std::task::Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.broken {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.broken {
            return std::task::Poll::Ready(Ok(()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_shutdown(cx) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

async fn open_sink(uri: &str) -> Result<Option<Sink>, String> {
    let Some(path) = path_of(uri)? else {
        return Ok(None);
    };
    let is_fifo = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_fifo());
    if !is_fifo {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        return Ok(Some(Box::new(file)));
    }
    // The client opens its read end before asking: ENXIO (no reader yet) is retried briefly.
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    loop {
        match pipe::OpenOptions::new().open_sender(&path) {
            Ok(sender) => {
                return Ok(Some(Box::new(Discarding {
                    inner: sender,
                    broken: false,
                })))
            }
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("cannot open the FIFO {}: {e}", path.display())),
        }
    }
}

fn open_stdin(uri: &str) -> Result<Option<(Source, StdinCloser)>, String> {
    let Some(path) = path_of(uri)? else {
        return Ok(None);
    };
    let meta = std::fs::metadata(&path).map_err(|e| format!("stdin {}: {e}", path.display()))?;
    let (closer, mut on_close) = watch::channel(false);
    let (reader, writer) = tokio::io::duplex(64 * 1024);
    let is_fifo = meta.file_type().is_fifo();
    let closer = StdinCloser {
        closed: closer,
        fifo: is_fifo.then(|| path.clone()),
    };
    if is_fifo {
        tokio::spawn(pump_fifo(path, writer, on_close));
    } else {
        tokio::spawn(async move {
            let mut writer = writer;
            if let Ok(mut file) = tokio::fs::File::open(&path).await {
                tokio::select! {
                    _ = tokio::io::copy(&mut file, &mut writer) => {}
                    () = closed(&mut on_close) => {}
                }
            }
            let _ = writer.shutdown().await;
        });
    }
    Ok(Some((Box::new(reader), closer)))
}

/// Resolves once `CloseIO` came (or its sender is gone).
async fn closed(on_close: &mut watch::Receiver<bool>) {
    let _ = on_close.wait_for(|c| *c).await.map(|_| ());
}

/// Copies the stdin FIFO at `path` into `writer` until end-of-file or `CloseIO`.
async fn pump_fifo(
    path: PathBuf,
    mut writer: tokio::io::DuplexStream,
    mut on_close: watch::Receiver<bool>,
) {
    let mut opening = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(path))
    };
    let file = tokio::select! {
        r = &mut opening => r,
        () = closed(&mut on_close) => {
            // Closed before the client opened its end: writers of our own end the blocked
            // open (retried, in case the blocking thread had not reached `open` yet).
            for _ in 0..400 {
                poke(&path);
                if opening.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = writer.shutdown().await;
            return;
        }
    };
    let Ok(Ok(file)) = file else {
        let _ = writer.shutdown().await;
        return;
    };
    let Ok(mut fifo) = pipe::Receiver::from_file(file) else {
        let _ = writer.shutdown().await;
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    let mut closing = false;
    loop {
        let read = if closing {
            match tokio::time::timeout(STDIN_LINGER, fifo.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = fifo.read(&mut buf) => r,
                () = closed(&mut on_close) => {
                    closing = true;
                    continue;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown().await;
}

/// Opens a process's stdio from containerd's names (empty: not attached).
pub async fn open(stdin: &str, stdout: &str, stderr: &str) -> Result<Opened, String> {
    let stdin = open_stdin(stdin)?;
    let (source, closer) = match stdin {
        Some((s, c)) => (Some(s), Some(c)),
        None => (None, None),
    };
    let opened = Opened {
        io: ProcessIo {
            stdin: source,
            stdout: open_sink(stdout).await?,
            stderr: open_sink(stderr).await?,
        },
        stdin: closer,
    };
    Ok(opened)
}

/// Makes a FIFO at `path` (tests).
#[cfg(test)]
fn make_fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_paths_files_or_nothing() {
        assert_eq!(path_of("").unwrap(), None);
        assert_eq!(path_of("/a/b").unwrap(), Some("/a/b".into()));
        assert_eq!(
            path_of("file:///var/log/x").unwrap(),
            Some("/var/log/x".into())
        );
        let err = path_of("binary:///usr/bin/logger?x=1").unwrap_err();
        assert!(err.contains("binary://"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stdin_fifo_bytes_reach_the_process_then_end_of_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("stdin");
        make_fifo(&fifo);
        let mut opened = open(fifo.to_str().unwrap(), "", "").await.expect("open");
        // The client opens its end after the shim (as ctr may), writes, closes.
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(&fifo, b"abc\n").expect("write the fifo");
            })
        };
        let mut got = Vec::new();
        let mut source = opened.io.stdin.take().expect("stdin");
        tokio::time::timeout(Duration::from_secs(10), source.read_to_end(&mut got))
            .await
            .expect("end-of-file in time")
            .expect("read");
        writer.join().expect("writer");
        assert_eq!(got, b"abc\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_io_ends_stdin_even_when_the_client_never_opened_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("stdin");
        make_fifo(&fifo);
        let mut opened = open(fifo.to_str().unwrap(), "", "").await.expect("open");
        let mut source = opened.io.stdin.take().expect("stdin");
        let mut got = Vec::new();
        let early =
            tokio::time::timeout(Duration::from_millis(300), source.read(&mut [0u8; 8])).await;
        assert!(early.is_err(), "no end-of-file before CloseIO or a writer");
        opened.stdin.expect("closer").close();
        tokio::time::timeout(Duration::from_secs(10), source.read_to_end(&mut got))
            .await
            .expect("end-of-file after CloseIO")
            .expect("read");
        assert!(got.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_goes_to_a_fifo_reader_or_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("stdout");
        make_fifo(&fifo);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).expect("read the fifo"))
        };
        let file = dir.path().join("stderr.log");
        let uri = format!("file://{}", file.display());
        let mut opened = open("", fifo.to_str().unwrap(), &uri).await.expect("open");
        assert!(opened.io.stdin.is_none() && opened.stdin.is_none());
        let mut out = opened.io.stdout.take().expect("stdout");
        out.write_all(b"to the fifo").await.expect("write");
        drop(out);
        let mut err = opened.io.stderr.take().expect("stderr");
        err.write_all(b"to the file").await.expect("write");
        err.flush().await.expect("flush");
        drop(err);
        assert_eq!(reader.join().expect("reader"), b"to the fifo");
        assert_eq!(std::fs::read(&file).expect("file"), b"to the file");
        assert!(open("", "relative/path", "").await.is_err());
        // A reader that goes away: later output is discarded, not an error.
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || drop(std::fs::File::open(fifo).expect("open the fifo")))
        };
        let mut opened = open("", fifo.to_str().unwrap(), "").await.expect("open");
        reader.join().expect("reader");
        let mut out = opened.io.stdout.take().expect("stdout");
        let chunk = vec![b'x'; 70_000];
        for _ in 0..3 {
            out.write_all(&chunk)
                .await
                .expect("discarded, not an error");
        }
        out.shutdown().await.expect("shutdown");
        assert!(open("", "binary:///bin/logger", "").await.is_err());
    }
}
