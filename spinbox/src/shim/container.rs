//! The shim's container (SPEC §9): created with the VM by [`Shim::create_container`],
//! started by [`Shim::start`], then waited on, signalled and joined by more processes; the
//! cleanup phases release what it holds.
//!
//! | phase | what it releases for the container |
//! |---|---|
//! | `io_shutdown` | asks the agent to delete the container (every process killed), lets each stdio forwarder deliver what the guest already sent (bounded), then closes it |
//! | `conn_close` | the `Task` client (it shares the agent connection, closed with it) |
//! | `vm_shutdown` | the guest, and with it every mount the agent made |
//! | `mount_cleanup` | the host side of the rootfs share: the image or daemon the shim made, and its work directory |

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle_core::BoxError;

use super::session::{lock, Session};
use super::Shim;
use crate::rootfs::{PreparedRootfs, RootfsError, RootfsTransport};
use crate::state::ShimState;
use crate::task::stdio::{Forwarders, ProcessIo, StdioError};
use crate::task::{ContainerSpec, ExitStatus, ProcessSpec, SpecError, TaskClient, TaskError};

/// How long `io_shutdown` lets the stdio forwarders deliver what the guest sent after the
/// container was deleted.
pub const STDIO_DRAIN: Duration = Duration::from_secs(5);

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The shim was created without a container.
    #[error("the shim has no container")]
    NoContainer,
    /// The shim is not in a state that allows the operation.
    #[error("the container is not available: the shim is {0}")]
    NotAvailable(ShimState),
    /// The process spec is invalid; nothing was sent to the guest.
    #[error("invalid process")]
    Spec(#[source] SpecError),
    /// An exec id is in use.
    #[error("exec id {0:?} is in use")]
    ExecExists(String),
    /// No such exec process.
    #[error("no exec process {0:?}")]
    NoExec(String),
    /// The agent refused or failed the call.
    #[error("the agent's Task service failed")]
    Task(#[source] TaskError),
    /// A stdio stream failed.
    #[error("stdio failed")]
    Stdio(#[source] StdioError),
}

/// The container of a session.
pub(crate) struct SessionContainer {
    pub(crate) id: String,
    /// Taken by `conn_close`.
    task: Mutex<Option<TaskClient>>,
    /// The stdio of every process ("" is the init process); `None` once `io_shutdown`
    /// closed them all, after which none is kept.
    forwarders: Mutex<Option<HashMap<String, Forwarders>>>,
}

impl std::fmt::Debug for SessionContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionContainer")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SessionContainer {
    pub(crate) fn new(id: String, task: TaskClient, init: Forwarders) -> Self {
        Self {
            id,
            task: Mutex::new(Some(task)),
            forwarders: Mutex::new(Some(HashMap::from([(String::new(), init)]))),
        }
    }

    pub(crate) fn task(&self) -> Option<TaskClient> {
        lock(&self.task).clone()
    }

    /// Drops the shim's `Task` client (`conn_close`).
    pub(crate) fn close_task(&self) {
        lock(&self.task).take();
    }

    fn forwarders(&self, exec_id: &str) -> Option<Forwarders> {
        lock(&self.forwarders).as_ref()?.get(exec_id).cloned()
    }

    /// Keeps `forwarders` for `io_shutdown`; `false` (keeping nothing) once it has run.
    fn keep(&self, exec_id: &str, forwarders: Forwarders) -> bool {
        match lock(&self.forwarders).as_mut() {
            Some(map) => {
                map.insert(exec_id.to_owned(), forwarders);
                true
            }
            None => false,
        }
    }
}

/// The rootfs work directory of a VM: beside its state directory.
pub(crate) fn rootfs_work_dir(session: &Session) -> PathBuf {
    session
        .spec
        .state_root
        .join(format!("{}.rootfs", session.spec.id))
}

impl Session {
    /// `io_shutdown`'s container part: delete the container in the guest (while the VM
    /// runs), let each forwarder deliver what was sent, close them all.
    pub(crate) async fn stop_container_io(&self) -> Result<(), BoxError> {
        let Some(container) = self.container.get() else {
            return Ok(());
        };
        let vm_alive = self
            .vm
            .get()
            .is_some_and(|vm| vm.exit_watch().borrow().is_none());
        let mut errors = Vec::new();
        if vm_alive {
            if let Some(task) = container.task() {
                // Killing everything ends the outputs: the agent closes each stream after
                // its last byte.
                if let Err(e) = task.delete(&container.id, "", true).await {
                    errors.push(format!(
                        "deleting the container in the guest: {}",
                        crate::check::error_chain(&e)
                    ));
                }
            }
        }
        let all: Vec<(String, Forwarders)> = lock(&container.forwarders)
            .take()
            .map(|map| map.into_iter().collect())
            .unwrap_or_default();
        let drain = if vm_alive && errors.is_empty() {
            STDIO_DRAIN
        } else {
            Duration::ZERO
        };
        for (exec_id, forwarders) in all {
            if !forwarders.close(drain).await && vm_alive && errors.is_empty() {
                let name = if exec_id.is_empty() { "init" } else { &exec_id };
                errors.push(format!(
                    "the output of process {name} did not end within {drain:?}; cut"
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; ").into())
        }
    }

    /// `mount_cleanup`'s container part: release the rootfs share (after QEMU exited) and
    /// remove its work directory.
    pub(crate) async fn release_rootfs(&self) -> Result<(), BoxError> {
        if let Some(rootfs) = self.rootfs.get() {
            rootfs.release().await?;
        }
        // The share is gone: nothing reads the host mounts any more.
        loop {
            let Some(target) = lock(&self.host_mounts).last().cloned() else {
                break;
            };
            crate::rootfs::unmount_host(&target)
                .map_err(|e| format!("cannot unmount {}: {e}", target.display()))?;
            lock(&self.host_mounts).pop();
        }
        let dir = rootfs_work_dir(self);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", dir.display()).into()),
        }
    }

    /// Prepares the rootfs share for `spec` before the VM starts; returns what to attach.
    pub(crate) async fn prepare_rootfs(
        &self,
        spec: &ContainerSpec,
        transport: RootfsTransport,
    ) -> Result<&PreparedRootfs, RootfsError> {
        let dir = rootfs_work_dir(self);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| RootfsError::WorkDir {
                    path: dir.clone(),
                    source,
                })?;
        }
        for m in &spec.rootfs_mounts {
            crate::rootfs::mount_host(&spec.rootfs, m).map_err(|source| {
                RootfsError::HostMount {
                    mount: format!("{} {} on {}", m.fstype, m.source, spec.rootfs.display()),
                    source,
                }
            })?;
            lock(&self.host_mounts).push(spec.rootfs.clone());
        }
        let tools = &self.shared.config.rootfs_tools;
        let prepared =
            crate::rootfs::prepare_with(tools, transport, &spec.rootfs, &dir, "rootfs").await?;
        // The first and only preparation of this session.
        let _ = self.rootfs.set(prepared);
        Ok(self.rootfs.get().expect("set above"))
    }
}

impl Shim {
    /// The container of the current session, if the shim is in one of `states`.
    fn container_in(
        &self,
        states: &[ShimState],
    ) -> Result<(Arc<Session>, TaskClient), ContainerError> {
        let state = self.inner.shared.sm.state();
        if !states.contains(&state) {
            return Err(ContainerError::NotAvailable(state));
        }
        let session = self.session().ok_or(ContainerError::NotAvailable(state))?;
        let container = session.container.get().ok_or(ContainerError::NoContainer)?;
        let task = container
            .task()
            .ok_or(ContainerError::NotAvailable(self.inner.shared.sm.state()))?;
        Ok((session, task))
    }

    /// Waits for the container's first process to exit, and for its output to be
    /// delivered to the sinks given at creation; returns its status. Waiting does not
    /// change the shim's state: delete it afterwards.
    pub async fn wait(&self) -> Result<ExitStatus, ContainerError> {
        self.wait_process("").await
    }

    /// [`Shim::wait`] for the exec process `exec_id`.
    pub async fn wait_exec(&self, exec_id: &str) -> Result<ExitStatus, ContainerError> {
        if exec_id.is_empty() {
            return Err(ContainerError::NoExec(String::new()));
        }
        self.wait_process(exec_id).await
    }

    async fn wait_process(&self, exec_id: &str) -> Result<ExitStatus, ContainerError> {
        let (session, task) = self.container_in(&[ShimState::Created, ShimState::Running])?;
        let container = session.container.get().ok_or(ContainerError::NoContainer)?;
        let forwarders = container
            .forwarders(exec_id)
            .ok_or_else(|| ContainerError::NoExec(exec_id.to_owned()))?;
        let status = task
            .wait(&container.id, exec_id)
            .await
            .map_err(ContainerError::Task)?;
        forwarders
            .outputs_done()
            .await
            .map_err(ContainerError::Stdio)?;
        Ok(status)
    }

    /// Sends `signal` to the container's first process (with `all`, to every process of
    /// the container), or to the exec process `exec_id` when it is not empty.
    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), ContainerError> {
        let (session, task) = self.container_in(&[ShimState::Created, ShimState::Running])?;
        let container = session.container.get().ok_or(ContainerError::NoContainer)?;
        task.kill(&container.id, exec_id, signal, all)
            .await
            .map_err(ContainerError::Task)
    }

    /// Runs another process in the running container, its stdio attached to `io`; returns
    /// its pid in the guest. Wait for it with [`Shim::wait_exec`].
    pub async fn exec(
        &self,
        exec_id: &str,
        process: &ProcessSpec,
        io: ProcessIo,
    ) -> Result<u32, ContainerError> {
        if !crate::task::valid_name(exec_id) {
            return Err(ContainerError::Spec(SpecError::InvalidId(
                exec_id.to_owned(),
            )));
        }
        process.validate().map_err(ContainerError::Spec)?;
        let (session, task) = self.container_in(&[ShimState::Running])?;
        let container = session.container.get().ok_or(ContainerError::NoContainer)?;
        if container.forwarders(exec_id).is_some() {
            return Err(ContainerError::ExecExists(exec_id.to_owned()));
        }
        let pid = task
            .exec(&container.id, exec_id, process, io.streams())
            .await
            .map_err(ContainerError::Task)?;
        let vm = session
            .vm
            .get()
            .ok_or(ContainerError::NotAvailable(self.inner.shared.sm.state()))?;
        let forwarders = Forwarders::attach(
            &vm.agent_address(),
            self.inner.shared.config.rpc_timeout,
            &container.id,
            exec_id,
            io,
        )
        .await
        .map_err(ContainerError::Stdio)?;
        if !container.keep(exec_id, forwarders.clone()) {
            // The teardown closed the stdio meanwhile.
            forwarders.close(Duration::ZERO).await;
            return Err(ContainerError::NotAvailable(self.inner.shared.sm.state()));
        }
        Ok(pid)
    }
}
