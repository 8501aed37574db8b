//! The host's client of the agent's `Task` service.

use std::time::Duration;

use spinbox_protocol::agent::{
    CreateContainerRequest, DeleteRequest, ExecProcessRequest, KillRequest, Mount, StartRequest,
    StateRequest, Stdio, WaitRequest,
};
use spinbox_protocol::agent_ttrpc;

use super::GuestMount;
use super::{ContainerSpec, ExitStatus, ProcessSpec};

/// A failed `Task` call.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The agent refused or failed the call (its status message says why).
    #[error("{method} failed: {message}")]
    Status {
        /// The method.
        method: &'static str,
        /// The status code's name (`NOT_FOUND`, `FAILED_PRECONDITION`, ...).
        code: String,
        /// The agent's message.
        message: String,
    },
    /// The connection failed under the call.
    #[error("{method} failed")]
    Transport {
        /// The method.
        method: &'static str,
        /// The ttrpc error.
        #[source]
        source: ttrpc::Error,
    },
    /// No reply in time.
    #[error("{method} got no reply within {after:?}")]
    Timeout {
        /// The method.
        method: &'static str,
        /// The bound.
        after: Duration,
    },
    /// The reply lacked a field it must carry.
    #[error("{method}: malformed reply ({what} missing)")]
    Malformed {
        /// The method.
        method: &'static str,
        /// The missing part.
        what: &'static str,
    },
}

impl TaskError {
    /// The agent's status code name, when the agent answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What state the agent reports for a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessState {
    /// `created`, `running` or `stopped`.
    pub status: String,
    /// The pid in the guest (as the agent sees it).
    pub pid: u32,
    /// How it ended, when stopped.
    pub exit: Option<ExitStatus>,
}

/// A client of the agent's `Task` service, sharing its connection with the `System`
/// client it came from ([`crate::vm::agent::AgentClient::task`]). Every call but
/// [`TaskClient::wait`] is bounded by the client's timeout.
#[derive(Clone)]
pub struct TaskClient {
    client: agent_ttrpc::TaskClient,
    timeout: Duration,
}

impl std::fmt::Debug for TaskClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn classify(method: &'static str, e: ttrpc::Error) -> TaskError {
    match e {
        ttrpc::Error::RpcStatus(s) => TaskError::Status {
            method,
            code: format!("{:?}", s.code()),
            message: s.message,
        },
        source => TaskError::Transport { method, source },
    }
}

/// Whether the requested streams are attached.
fn stdio(stdin: bool, stdout: bool, stderr: bool) -> Stdio {
    let mut s = Stdio::new();
    s.stdin = stdin;
    s.stdout = stdout;
    s.stderr = stderr;
    s
}

impl TaskClient {
    /// A client over `client`'s connection.
    pub(crate) fn new(client: ttrpc::asynchronous::Client, timeout: Duration) -> Self {
        Self {
            client: agent_ttrpc::TaskClient::new(client),
            timeout,
        }
    }

    async fn bounded<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = ttrpc::Result<T>>,
    ) -> Result<T, TaskError> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(TaskError::Timeout {
                method,
                after: self.timeout,
            }),
            Ok(r) => r.map_err(|e| classify(method, e)),
        }
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_duration(self.timeout)
    }

    /// `CreateContainer`: the agent mounts `rootfs` and creates the container, its first
    /// process held before `execve`. `streams` says which of stdin, stdout and stderr the
    /// host attaches. Returns the process's pid in the guest.
    pub async fn create_container(
        &self,
        spec: &ContainerSpec,
        rootfs: &[GuestMount],
        streams: [bool; 3],
    ) -> Result<u32, TaskError> {
        let mut req = CreateContainerRequest::new();
        req.id.clone_from(&spec.id);
        req.rootfs = rootfs
            .iter()
            .map(|m| {
                let mut mount = Mount::new();
                mount.fstype.clone_from(&m.fstype);
                mount.source.clone_from(&m.source);
                mount.options.clone_from(&m.options);
                mount
            })
            .collect();
        req.rootfs_owned = spec.rootfs_owned;
        req.hostname = spec.hostname.clone().unwrap_or_default();
        req.process = Some(spec.process.to_proto()).into();
        req.stdio = Some(stdio(streams[0], streams[1], streams[2])).into();
        let r = self
            .bounded(
                "CreateContainer",
                self.client.create_container(self.ctx(), &req),
            )
            .await?;
        Ok(r.pid)
    }

    /// `Start`: the container's first process runs.
    pub async fn start(&self, container_id: &str) -> Result<(), TaskError> {
        let mut req = StartRequest::new();
        req.container_id = container_id.to_owned();
        self.bounded("Start", self.client.start(self.ctx(), &req))
            .await
            .map(drop)
    }

    /// `ExecProcess`: another process in the running container. Returns its guest pid.
    pub async fn exec(
        &self,
        container_id: &str,
        exec_id: &str,
        process: &ProcessSpec,
        streams: [bool; 3],
    ) -> Result<u32, TaskError> {
        let mut req = ExecProcessRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.process = Some(process.to_proto()).into();
        req.stdio = Some(stdio(streams[0], streams[1], streams[2])).into();
        let r = self
            .bounded("ExecProcess", self.client.exec_process(self.ctx(), &req))
            .await?;
        Ok(r.pid)
    }

    /// `Wait`: the process's exit, reported once its attached outputs were delivered.
    /// Not bounded by the timeout (a process may run for ever); drop the future to stop
    /// waiting.
    pub async fn wait(&self, container_id: &str, exec_id: &str) -> Result<ExitStatus, TaskError> {
        let mut req = WaitRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        let r = self
            .client
            .wait(ttrpc::context::Context::default(), &req)
            .await
            .map_err(|e| classify("Wait", e))?;
        r.status
            .as_ref()
            .map(ExitStatus::from_proto)
            .ok_or(TaskError::Malformed {
                method: "Wait",
                what: "status",
            })
    }

    /// `Kill`: `signal` to the process, or with `all` to every process of the container.
    pub async fn kill(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), TaskError> {
        let mut req = KillRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.signal = signal;
        req.all = all;
        self.bounded("Kill", self.client.kill(self.ctx(), &req))
            .await
            .map(drop)
    }

    /// `Delete`: the container (`exec_id` empty; `force` kills what runs) or an exited
    /// exec process. Returns the exit status if the process had ended.
    pub async fn delete(
        &self,
        container_id: &str,
        exec_id: &str,
        force: bool,
    ) -> Result<Option<ExitStatus>, TaskError> {
        let mut req = DeleteRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.force = force;
        let r = self
            .bounded("Delete", self.client.delete(self.ctx(), &req))
            .await?;
        Ok(r.status.as_ref().map(ExitStatus::from_proto))
    }

    /// `State` of a process.
    pub async fn state(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<ProcessState, TaskError> {
        let mut req = StateRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        let r = self
            .bounded("State", self.client.state(self.ctx(), &req))
            .await?;
        Ok(ProcessState {
            exit: r.exit.as_ref().map(ExitStatus::from_proto),
            status: r.status,
            pid: r.pid,
        })
    }
}
