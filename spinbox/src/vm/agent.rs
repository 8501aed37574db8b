//! The host's client of the guest agent's `System` service (`spinbox-protocol`): every
//! RPC is bounded by a timeout; dialling verifies the connection with a `Ping`; dialling
//! with retry backs off exponentially and retries only transient failures.

use std::time::{Duration, Instant};

use spinbox_protocol::agent::{
    InfoRequest, OnlineCpusRequest, PingRequest, PrepareShutdownRequest, ShutdownRequest,
    UsageRequest, UsageResponse,
};
use spinbox_protocol::agent_ttrpc::{ResourcesClient, SystemClient};

use super::vsock::{self, AgentAddress, ConnectError};

/// Default bound on one RPC.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of an agent RPC.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The RPC failed (transport closed, server error status, …).
    #[error("agent RPC {method} failed")]
    Failed {
        /// The method.
        method: &'static str,
        /// The ttrpc error.
        #[source]
        source: ttrpc::Error,
    },
    /// No reply within the timeout.
    #[error("agent RPC {method} got no reply within {after:?}")]
    Timeout {
        /// The method.
        method: &'static str,
        /// The bound.
        after: Duration,
    },
}

impl RpcError {
    /// Whether the connection was closed or broke under the call (a fresh connection may
    /// succeed); a server status or a timeout is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            RpcError::Failed { source, .. } => matches!(
                source,
                ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed | ttrpc::Error::Socket(_)
            ),
            RpcError::Timeout { .. } => false,
        }
    }
}

/// Errors of dialling an agent.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The connection could not be made.
    #[error("cannot reach the agent")]
    Connect(#[source] ConnectError),
    /// Connected, but the verifying `Ping` failed.
    #[error("the agent did not answer the first ping")]
    Ping(#[source] RpcError),
    /// Retries exhausted: the total wait was spent on transient failures.
    #[error("gave up on {address} after {attempts} attempts in {elapsed:?}")]
    GaveUp {
        /// The address.
        address: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        #[source]
        last: Box<DialError>,
    },
}

impl DialError {
    /// Whether another attempt may succeed (see [`ConnectError::is_transient`] and
    /// [`RpcError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            DialError::Connect(e) => e.is_transient(),
            DialError::Ping(e) => e.is_transient(),
            DialError::GaveUp { .. } => false,
        }
    }
}

/// Backoff for [`dial_with_retry`]: `initial`, doubling up to `max_delay`, until `total`
/// has been spent (the last pause is cut to fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First pause (default 20 ms).
    pub initial: Duration,
    /// Largest pause (default 500 ms).
    pub max_delay: Duration,
    /// Bound on the whole dial, attempts and pauses (default 10 s).
    pub total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(20),
            max_delay: Duration::from_millis(500),
            total: Duration::from_secs(10),
        }
    }
}

/// What `Info` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInfo {
    /// The guest kernel's release (`uname -r`).
    pub kernel_release: String,
    /// The guest kernel's version string (`uname -v`).
    pub kernel_version: String,
    /// Time since the guest booted.
    pub uptime: Duration,
    /// The agent's version.
    pub agent_version: String,
    /// When the agent reached each step of its start.
    pub boot: GuestBootTimeline,
}

/// When the guest agent reached each step of its start, in guest uptime (the guest
/// kernel's clock starts just after the kernel is entered). `None` where the agent did not
/// say (an older agent, or a step it skipped).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GuestBootTimeline {
    /// The agent (`/init`) started.
    pub init_started: Option<Duration>,
    /// Filesystems mounted and kernel modules loaded.
    pub modules_loaded: Option<Duration>,
    /// The agent's RPC server listens (its readiness notice follows).
    pub serving: Option<Duration>,
}

/// A positive number of seconds as a duration; `None` for 0 (protobuf's "unset") or junk.
fn secs(s: f64) -> Option<Duration> {
    (s > 0.0)
        .then(|| Duration::try_from_secs_f64(s).ok())
        .flatten()
}

/// The guest's CPU and memory counters (`Resources.Usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestUsage {
    /// vCPUs online.
    pub online_cpus: u32,
    /// vCPUs present, online or not.
    pub present_cpus: u32,
    /// Busy time of all vCPUs since boot, in `USER_HZ` ticks.
    pub cpu_busy_ticks: u64,
    /// Time of all vCPUs in every state since boot, in `USER_HZ` ticks.
    pub cpu_total_ticks: u64,
    /// `MemTotal`, in KiB.
    pub mem_total_kib: u64,
    /// `MemAvailable`, in KiB.
    pub mem_available_kib: u64,
}

impl From<&UsageResponse> for GuestUsage {
    fn from(r: &UsageResponse) -> Self {
        Self {
            online_cpus: r.online_cpus,
            present_cpus: r.present_cpus,
            cpu_busy_ticks: r.cpu_busy_ticks,
            cpu_total_ticks: r.cpu_total_ticks,
            mem_total_kib: r.mem_total_kib,
            mem_available_kib: r.mem_available_kib,
        }
    }
}

/// A connection to the agent. Cheap to clone; clones share the connection, which closes
/// when the last clone is dropped.
#[derive(Clone)]
pub struct AgentClient {
    client: SystemClient,
    resources: ResourcesClient,
    /// The connection, for the other services on it.
    raw: ttrpc::asynchronous::Client,
    address: AgentAddress,
    timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

macro_rules! call {
    ($self:ident, $method:literal, $fn:ident, $req:expr) => {
        call!($self, client, $self.timeout, $method, $fn, $req)
    };
    ($self:ident, $service:ident, $timeout:expr, $method:literal, $fn:ident, $req:expr) => {{
        let timeout = $timeout;
        let ctx = ttrpc::context::with_duration(timeout);
        match tokio::time::timeout(timeout, $self.$service.$fn(ctx, &$req)).await {
            Err(_) => Err(RpcError::Timeout {
                method: $method,
                after: timeout,
            }),
            Ok(Err(source)) => Err(RpcError::Failed {
                method: $method,
                source,
            }),
            Ok(Ok(r)) => Ok(r),
        }
    }};
}

impl AgentClient {
    /// Connects to `address` without verifying the agent answers (see [`dial`]).
    /// `timeout` bounds the connection handshake and, later, every RPC.
    pub async fn connect(address: &AgentAddress, timeout: Duration) -> Result<Self, ConnectError> {
        let client = vsock::connect(address, timeout).await?;
        Ok(Self {
            client: SystemClient::new(client.clone()),
            resources: ResourcesClient::new(client.clone()),
            raw: client,
            address: address.clone(),
            timeout,
        })
    }

    /// The address this client is connected to.
    pub fn address(&self) -> &AgentAddress {
        &self.address
    }

    /// The per-RPC timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A client of the agent's `Task` service on this connection (closed with it).
    pub fn task(&self) -> crate::task::TaskClient {
        crate::task::TaskClient::new(self.raw.clone(), self.timeout)
    }

    /// `Ping`.
    pub async fn ping(&self) -> Result<(), RpcError> {
        call!(self, "Ping", ping, PingRequest::new()).map(drop)
    }

    /// `Info`.
    pub async fn info(&self) -> Result<AgentInfo, RpcError> {
        let r = call!(self, "Info", info, InfoRequest::new())?;
        Ok(AgentInfo {
            kernel_release: r.kernel_release,
            kernel_version: r.kernel_version,
            uptime: Duration::try_from_secs_f64(r.uptime_seconds).unwrap_or_default(),
            agent_version: r.agent_version,
            boot: r
                .boot
                .as_ref()
                .map_or_else(GuestBootTimeline::default, |b| GuestBootTimeline {
                    init_started: secs(b.init_started),
                    modules_loaded: secs(b.modules_loaded),
                    serving: secs(b.serving),
                }),
        })
    }

    /// `Resources.Usage`: the guest's CPU and memory counters.
    pub async fn usage(&self) -> Result<GuestUsage, RpcError> {
        let r = call!(
            self,
            resources,
            self.timeout,
            "Usage",
            usage,
            UsageRequest::new()
        )?;
        Ok(GuestUsage::from(&r))
    }

    /// `Resources.OnlineCpus`: waits up to `wait` (at most
    /// [`MAX_ONLINE_CPUS_WAIT_MS`](spinbox_protocol::MAX_ONLINE_CPUS_WAIT_MS)) until `present`
    /// vCPUs are present, onlines the offline ones, and returns the counters after it.
    pub async fn online_cpus(&self, present: u16, wait: Duration) -> Result<GuestUsage, RpcError> {
        let wait = wait.min(Duration::from_millis(
            spinbox_protocol::MAX_ONLINE_CPUS_WAIT_MS.into(),
        ));
        let req = OnlineCpusRequest {
            present_at_least: present.into(),
            timeout_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            ..OnlineCpusRequest::default()
        };
        let r = call!(
            self,
            resources,
            self.timeout + wait,
            "OnlineCpus",
            online_cpus,
            req
        )?;
        Ok(GuestUsage::from(&r))
    }

    /// `PrepareShutdown`: the guest syncs its filesystems.
    pub async fn prepare_shutdown(&self) -> Result<(), RpcError> {
        call!(
            self,
            "PrepareShutdown",
            prepare_shutdown,
            PrepareShutdownRequest::new()
        )
        .map(drop)
    }

    /// `Shutdown`: the guest powers off once this reply is delivered — which it learns
    /// from the host closing the connection, so drop this client (all clones) after it.
    pub async fn shutdown(&self) -> Result<(), RpcError> {
        call!(self, "Shutdown", shutdown, ShutdownRequest::new()).map(drop)
    }
}

/// Connects to `address` and verifies the agent answers a `Ping`.
pub async fn dial(address: &AgentAddress, timeout: Duration) -> Result<AgentClient, DialError> {
    let client = AgentClient::connect(address, timeout)
        .await
        .map_err(DialError::Connect)?;
    client.ping().await.map_err(DialError::Ping)?;
    Ok(client)
}

/// [`dial`] until it succeeds, a non-transient error occurs (returned at once), or
/// `policy.total` is spent ([`DialError::GaveUp`] with the last error).
pub async fn dial_with_retry(
    address: &AgentAddress,
    timeout: Duration,
    policy: RetryPolicy,
) -> Result<AgentClient, DialError> {
    let start = Instant::now();
    let deadline = start + policy.total;
    let mut delay = policy.initial;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match dial(address, timeout).await {
            Ok(c) => {
                tracing::debug!(%address, attempts, elapsed = ?start.elapsed(), "agent dialled");
                return Ok(c);
            }
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(DialError::GaveUp {
                address: address.to_string(),
                attempts,
                elapsed: start.elapsed(),
                last: Box::new(err),
            });
        }
        tracing::trace!(%address, attempts, error = %err, ?delay, "dial failed; retrying");
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(policy.max_delay);
    }
}

/// The graceful step of a stop ([`StopRequest::graceful`](super::StopRequest)): the agent's
/// `PrepareShutdown` (sync filesystems) then `Shutdown`, on `client` or, without one, on a
/// fresh connection to `address`; the connection is closed afterwards, which tells the
/// agent its reply arrived and it may power off.
pub fn shutdown_hook(
    address: AgentAddress,
    timeout: Duration,
    client: Option<AgentClient>,
) -> super::stop::GracefulHook {
    use super::stop::GracefulError;
    use std::sync::Arc;
    Box::new(move || {
        Box::pin(async move {
            let client = match client {
                Some(c) => c,
                None => dial(&address, timeout)
                    .await
                    .map_err(|e| GracefulError::Dial(Arc::new(e)))?,
            };
            client
                .prepare_shutdown()
                .await
                .map_err(|e| GracefulError::Rpc {
                    call: "PrepareShutdown",
                    source: Arc::new(e),
                })?;
            client.shutdown().await.map_err(|e| GracefulError::Rpc {
                call: "Shutdown",
                source: Arc::new(e),
            })?;
            drop(client);
            Ok(())
        })
    })
}
