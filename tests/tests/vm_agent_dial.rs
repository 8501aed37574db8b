//! Dialling with retry against host-side hybrid vsock endpoints (no guest involved):
//! a ttrpc server that comes up late, an endpoint that closes before `OK` (transient,
//! retried to the bound), and one that refuses `CONNECT` (final, not retried).

mod vm_common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spinbox::vm::agent::{dial_with_retry, DialError, RetryPolicy};
use spinbox::vm::vsock::{AgentAddress, ConnectError};
use spinbox_protocol::agent::{InfoRequest, InfoResponse, PingRequest, PingResponse};
use spinbox_protocol::agent_ttrpc::{create_system, System};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use ttrpc::asynchronous::TtrpcContext;
use vm_common::HANG_GUARD;

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// A host-side stand-in for the agent.
struct FakeAgent;

#[async_trait::async_trait]
impl System for FakeAgent {
    async fn ping(&self, _: &TtrpcContext, _: PingRequest) -> ttrpc::Result<PingResponse> {
        Ok(PingResponse::new())
    }
    async fn info(&self, _: &TtrpcContext, _: InfoRequest) -> ttrpc::Result<InfoResponse> {
        let mut r = InfoResponse::new();
        r.kernel_release = "fake".into();
        Ok(r)
    }
}

async fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    while let Ok(b) = s.read_u8().await {
        if b == b'\n' {
            break;
        }
        line.push(b);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// A hybrid vsock endpoint on `path` that answers `CONNECT 1024` with `OK 1024` and
/// serves the fake agent over ttrpc on the stream.
fn serve_hybrid(path: &Path) -> ttrpc::asynchronous::Server {
    let listener = UnixListener::bind(path).expect("bind");
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let item = async {
            let (mut s, _) = listener.accept().await?;
            let line = read_line(&mut s).await;
            assert_eq!(line, "CONNECT 1024");
            s.write_all(b"OK 1024\n").await?;
            Ok(s)
        }
        .await;
        Some((item, listener))
    });
    ttrpc::asynchronous::Server::new()
        .add_listener(ttrpc::asynchronous::transport::Listener::new(incoming))
        .register_service(create_system(Arc::new(FakeAgent)))
}

fn hybrid(path: &Path) -> AgentAddress {
    AgentAddress::Hybrid {
        socket: path.to_owned(),
        port: 1024,
    }
}

/// An endpoint that answers every connection by reading the CONNECT line and then
/// doing `reply` (`None`: close without a reply). Counts connections.
fn serve_raw(
    path: &Path,
    reply: Option<&'static str>,
) -> (Arc<AtomicU32>, tokio::task::JoinHandle<()>) {
    let listener = UnixListener::bind(path).expect("bind");
    let count = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&count);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let _ = read_line(&mut s).await;
            if let Some(r) = reply {
                let _ = s.write_all(r.as_bytes()).await;
            }
        }
    });
    (count, task)
}

fn socket_in(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("vm.vsock")
}

#[tokio::test]
async fn retry_reaches_a_listener_that_comes_up_late() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = socket_in(&tmp);
    let p = path.clone();
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut server = serve_hybrid(&p);
        server.start().await.expect("start");
        server
    });
    let policy = RetryPolicy {
        total: Duration::from_secs(20),
        ..RetryPolicy::default()
    };
    let client = tokio::time::timeout(
        HANG_GUARD,
        dial_with_retry(&hybrid(&path), RPC_TIMEOUT, policy),
    )
    .await
    .expect("dial hung")
    .expect("dial with retry failed although the listener came up");
    client.ping().await.expect("ping");
    assert_eq!(client.info().await.expect("info").kernel_release, "fake");
    drop(client);
    let mut server = server.await.expect("server task");
    server.shutdown().await.expect("server shutdown");
}

#[tokio::test]
async fn closed_before_ok_is_retried_until_the_bound() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = socket_in(&tmp);
    let (count, task) = serve_raw(&path, None);
    let policy = RetryPolicy {
        total: Duration::from_millis(400),
        ..RetryPolicy::default()
    };
    let err = tokio::time::timeout(
        HANG_GUARD,
        dial_with_retry(&hybrid(&path), RPC_TIMEOUT, policy),
    )
    .await
    .expect("dial hung")
    .expect_err("no OK ever comes");
    eprintln!(
        "{err}: {:?}",
        std::error::Error::source(&err).map(ToString::to_string)
    );
    let DialError::GaveUp { attempts, last, .. } = err else {
        panic!("expected GaveUp, got {err:?}");
    };
    assert!(attempts > 1);
    assert_eq!(count.load(Ordering::SeqCst), attempts);
    assert!(matches!(
        *last,
        DialError::Connect(ConnectError::HandshakeIo { .. })
    ));
    task.abort();
}

#[tokio::test]
async fn a_refused_connect_is_not_retried() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = socket_in(&tmp);
    let (count, task) = serve_raw(&path, Some("NOPE no such port\n"));
    let err = tokio::time::timeout(
        HANG_GUARD,
        dial_with_retry(&hybrid(&path), RPC_TIMEOUT, RetryPolicy::default()),
    )
    .await
    .expect("dial hung")
    .expect_err("refused");
    assert!(
        matches!(
            &err,
            DialError::Connect(ConnectError::HandshakeRefused { line, .. }) if line == "NOPE no such port"
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(count.load(Ordering::SeqCst), 1, "a final error was retried");
    task.abort();
}
