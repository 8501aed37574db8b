//! The `Task` ttrpc service: containers and their processes, over [`crate::container`].
//!
//! The agent keeps a table of containers by id; each holds its [`Container`], the mounts
//! that make its rootfs on the agent's side (at `<run root>/<id>/rootfs`), and its
//! processes by exec id (`""` is the init process), each with its stdio [`Streams`].
//!
//! * `CreateContainer` mounts the request's rootfs mounts in order (loading the kernel
//!   module group of each filesystem type first, and `overlay`'s unless `rootfs_owned`),
//!   then creates the container held before `execve`.
//! * `Wait` answers once the process has exited **and** every output the request asked
//!   for has been delivered: its stream carried the last byte and was shut down by the
//!   agent. An output asked for and never attached is never delivered, so `Wait` keeps
//!   waiting (until the process is deleted).
//! * `Kill` signals the process; with `all`, every process of the container (init) or
//!   the exec process's process group (an exec process leads its own session and group).
//! * `Delete` of a container: refused while running unless `force`; kills every process,
//!   waits (at most [`OUTPUT_WAIT`]) for the outputs to be delivered, unmounts the rootfs
//!   (a mount still busy after a few seconds is detached lazily) and removes its
//!   directories. `Delete` of an exec process: refused while it runs unless `force` (which
//!   kills its process group), then it is forgotten.
//!
//! Errors are ttrpc statuses: `NOT_FOUND` (unknown container or process), `ALREADY_EXISTS`,
//! `FAILED_PRECONDITION` (wrong state), `INVALID_ARGUMENT` (bad request or spec),
//! `UNIMPLEMENTED` (a terminal: "unsupported: terminal allocation"), `INTERNAL` otherwise;
//! the message carries the whole error chain.

pub mod mounts;
pub mod stdio;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use spinbox_protocol::agent::{self as proto};
use spinbox_protocol::agent_ttrpc::Task;
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::Code;

use crate::container::{
    Container, ContainerError, ContainerSpec, ContainerState, DeleteError, ExitStatus, Process,
    ProcessSpec, Rlimit, RlimitResource, SpecError,
};
use mounts::RootfsMounts;
pub use stdio::{serve_stdio, Streams};

/// Where the agent makes its containers' directories.
pub const RUN_ROOT: &str = "/run/spinbox/containers";

/// How long `Delete` waits for killed processes' output to be delivered.
pub const OUTPUT_WAIT: Duration = Duration::from_secs(10);

/// A ttrpc error status.
fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn not_found_container(id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("no container {id:?}"))
}

/// The status of a container runtime error.
fn container_status(what: &str, e: &ContainerError) -> ttrpc::Error {
    let code = match e {
        ContainerError::Spec(SpecError::Unsupported(_)) => Code::UNIMPLEMENTED,
        ContainerError::Spec(_) => Code::INVALID_ARGUMENT,
        ContainerError::Exists(_) => Code::ALREADY_EXISTS,
        ContainerError::NotCreated(_) | ContainerError::NotRunning(_) => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    };
    status(code, format!("{what}: {}", crate::error_chain(e)))
}

/// The protocol's exit status.
fn exit_status(s: ExitStatus) -> proto::ExitStatus {
    proto::ExitStatus {
        exit_code: s.shell_code(),
        signal: match s {
            ExitStatus::Signaled(sig) => sig,
            ExitStatus::Exited(_) => 0,
        },
        ..Default::default()
    }
}

/// The container runtime's process spec of a request's `Process`.
fn process_spec(p: Option<&proto::Process>) -> Result<ProcessSpec, ttrpc::Error> {
    let p = p.ok_or_else(|| status(Code::INVALID_ARGUMENT, "the request has no process"))?;
    if p.terminal {
        return Err(status(
            Code::UNIMPLEMENTED,
            "unsupported: terminal allocation",
        ));
    }
    let rlimits = p
        .rlimits
        .iter()
        .map(|l| {
            let resource = match l.resource.as_str() {
                "RLIMIT_NOFILE" => RlimitResource::NoFile,
                "RLIMIT_NPROC" => RlimitResource::NProc,
                "RLIMIT_CORE" => RlimitResource::Core,
                "RLIMIT_STACK" => RlimitResource::Stack,
                "RLIMIT_FSIZE" => RlimitResource::FileSize,
                "RLIMIT_CPU" => RlimitResource::Cpu,
                other => {
                    return Err(status(
                        Code::INVALID_ARGUMENT,
                        format!("unsupported rlimit {other:?}"),
                    ))
                }
            };
            Ok(Rlimit {
                resource,
                soft: l.soft,
                hard: l.hard,
            })
        })
        .collect::<Result<_, _>>()?;
    let spec = ProcessSpec {
        args: p.args.clone(),
        env: p.env.clone(),
        cwd: if p.cwd.is_empty() {
            PathBuf::from("/")
        } else {
            PathBuf::from(&p.cwd)
        },
        uid: p.uid,
        gid: p.gid,
        additional_gids: p.additional_gids.clone(),
        rlimits,
        terminal: false,
    };
    spec.validate()
        .map_err(|e| container_status("invalid process", &ContainerError::Spec(e)))?;
    Ok(spec)
}

fn wanted(s: Option<&proto::Stdio>) -> [bool; 3] {
    s.map_or([false; 3], |s| [s.stdin, s.stdout, s.stderr])
}

/// A process of a container, as the table holds it.
#[derive(Debug)]
struct ProcessEntry {
    process: Process,
    streams: Arc<Streams>,
}

/// A container, as the table holds it.
#[derive(Debug)]
struct ContainerEntry {
    /// `<run root>/<id>`.
    dir: PathBuf,
    /// The container, until deleted; the lock orders start, exec and delete.
    container: tokio::sync::Mutex<Option<Container>>,
    /// The rootfs mounts, released by delete.
    mounts: Mutex<Option<RootfsMounts>>,
    /// The processes by exec id (`""`: init).
    processes: Mutex<HashMap<String, Arc<ProcessEntry>>>,
}

impl ContainerEntry {
    fn process(&self, exec_id: &str) -> Option<Arc<ProcessEntry>> {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(exec_id)
            .cloned()
    }
}

/// A table slot: a container being created (its id is taken) or one that exists.
#[derive(Debug)]
enum Slot {
    Creating,
    Ready(Arc<ContainerEntry>),
}

/// Configuration of the service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where containers' directories are made ([`RUN_ROOT`] in the guest).
    pub run_root: PathBuf,
    /// Where the on-demand module list and modules are (`None`: load nothing, as on a
    /// host).
    pub modules: Option<PathBuf>,
}

/// The containers of the agent; shared by the ttrpc service and the stdio listener.
#[derive(Debug)]
pub struct Tasks {
    config: Config,
    table: Mutex<HashMap<String, Slot>>,
}

/// Frees a reserved id unless disarmed (a create that failed or was dropped).
struct Reservation<'a> {
    tasks: &'a Tasks,
    id: Option<String>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.tasks.table().remove(&id);
        }
    }
}

impl Tasks {
    /// An empty table.
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config,
            table: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, id: &str) -> Result<Arc<ContainerEntry>, ttrpc::Error> {
        match self.table().get(id) {
            Some(Slot::Ready(e)) => Ok(e.clone()),
            Some(Slot::Creating) | None => Err(not_found_container(id)),
        }
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<ProcessEntry>, ttrpc::Error> {
        self.entry(id)?.process(exec_id).ok_or_else(|| {
            status(
                Code::NOT_FOUND,
                format!("container {id:?} has no process {exec_id:?}"),
            )
        })
    }

    /// The stdio of a process, for a stdio connection; an error message when unknown.
    pub fn streams(&self, id: &str, exec_id: &str) -> Result<Arc<Streams>, String> {
        match self.process(id, exec_id) {
            Ok(p) => Ok(p.streams.clone()),
            Err(_) if exec_id.is_empty() => Err(format!("no container {id:?}")),
            Err(_) => Err(format!("container {id:?} has no process {exec_id:?}")),
        }
    }

    async fn create(
        &self,
        req: proto::CreateContainerRequest,
    ) -> Result<proto::CreateContainerResponse, ttrpc::Error> {
        let id = req.id.clone();
        if !crate::container::valid_name(&id) {
            return Err(container_status(
                "invalid request",
                &SpecError::InvalidId(id).into(),
            ));
        }
        let process = process_spec(req.process.as_ref())?;
        if req.rootfs.is_empty() {
            return Err(status(Code::INVALID_ARGUMENT, "the request has no rootfs"));
        }
        {
            let mut table = self.table();
            if table.contains_key(&id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("container {id:?} already exists"),
                ));
            }
            table.insert(id.clone(), Slot::Creating);
        }
        let mut reservation = Reservation {
            tasks: self,
            id: Some(id.clone()),
        };
        let dir = self.config.run_root.join(&id);
        let rootfs = dir.join("rootfs");
        let created = self.create_in(&req, process, &dir, &rootfs).await;
        let (entry, pid) = match created {
            Ok(c) => c,
            Err(e) => {
                remove_dirs(&dir);
                return Err(e);
            }
        };
        reservation.id = None;
        self.table().insert(id, Slot::Ready(Arc::new(entry)));
        Ok(proto::CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    async fn create_in(
        &self,
        req: &proto::CreateContainerRequest,
        process: ProcessSpec,
        dir: &Path,
        rootfs: &Path,
    ) -> Result<(ContainerEntry, u32), ttrpc::Error> {
        let internal = |what: &str, e: &dyn std::error::Error| {
            status(Code::INTERNAL, format!("{what}: {}", crate::error_chain(e)))
        };
        std::fs::create_dir_all(rootfs)
            .map_err(|e| internal("cannot create the rootfs directory", &e))?;
        let (mounts_req, target, modules, owned) = (
            req.rootfs.clone(),
            rootfs.to_owned(),
            self.config.modules.clone(),
            req.rootfs_owned,
        );
        let mounts = tokio::task::spawn_blocking(move || {
            let mounts = RootfsMounts::mount_all(&mounts_req, &target, modules.as_deref())?;
            if !owned {
                mounts::load_group(modules.as_deref(), "overlay", "overlay")?;
            }
            Ok::<_, mounts::MountError>(mounts)
        })
        .await
        .map_err(|e| internal("the mount task failed", &e))?
        .map_err(|e| {
            let code = match e {
                mounts::MountError::Invalid { .. } => Code::INVALID_ARGUMENT,
                _ => Code::INTERNAL,
            };
            status(
                code,
                format!("cannot mount the rootfs: {}", crate::error_chain(&e)),
            )
        })?;
        let spec = ContainerSpec {
            id: req.id.clone(),
            rootfs: rootfs.to_owned(),
            rootfs_owned: req.rootfs_owned,
            hostname: (!req.hostname.is_empty()).then(|| req.hostname.clone()),
            process,
        };
        let created = Container::create(&spec, &dir.join("state")).await;
        let (container, stdio) = match created {
            Ok(c) => c,
            Err(e) => {
                if let Err(u) = release(mounts).await {
                    tracing::error!(error = %crate::error_chain(&u), "rootfs left mounted");
                }
                return Err(container_status("cannot create the container", &e));
            }
        };
        let init = container.init().clone();
        let pid = u32::try_from(init.pid().as_raw()).unwrap_or_default();
        let streams = Streams::new(stdio, wanted(req.stdio.as_ref()), init.clone());
        let entry = ContainerEntry {
            dir: dir.to_owned(),
            container: tokio::sync::Mutex::new(Some(container)),
            mounts: Mutex::new(Some(mounts)),
            processes: Mutex::new(HashMap::from([(
                String::new(),
                Arc::new(ProcessEntry {
                    process: init,
                    streams,
                }),
            )])),
        };
        Ok((entry, pid))
    }

    async fn start(&self, req: &proto::StartRequest) -> Result<(), ttrpc::Error> {
        let entry = self.entry(&req.container_id)?;
        let mut container = entry.container.lock().await;
        let container = container
            .as_mut()
            .ok_or_else(|| not_found_container(&req.container_id))?;
        container
            .start()
            .await
            .map_err(|e| container_status("cannot start the container", &e))
    }

    async fn exec(
        &self,
        req: proto::ExecProcessRequest,
    ) -> Result<proto::ExecProcessResponse, ttrpc::Error> {
        if !crate::container::valid_name(&req.exec_id) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!(
                    "exec id {:?} is not 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit",
                    req.exec_id
                ),
            ));
        }
        let spec = process_spec(req.process.as_ref())?;
        let entry = self.entry(&req.container_id)?;
        let mut container = entry.container.lock().await;
        let container = container
            .as_mut()
            .ok_or_else(|| not_found_container(&req.container_id))?;
        // Unique among live processes: an exited one of the same id is replaced.
        if entry
            .process(&req.exec_id)
            .is_some_and(|p| p.process.status().is_none())
        {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!(
                    "container {:?} already runs a process {:?}",
                    req.container_id, req.exec_id
                ),
            ));
        }
        let (process, stdio) = container
            .exec(&spec)
            .await
            .map_err(|e| container_status("cannot exec the process", &e))?;
        let pid = u32::try_from(process.pid().as_raw()).unwrap_or_default();
        let streams = Streams::new(stdio, wanted(req.stdio.as_ref()), process.clone());
        let old = entry
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(req.exec_id, Arc::new(ProcessEntry { process, streams }));
        if let Some(old) = old {
            tokio::spawn(async move { old.streams.close(Duration::ZERO).await });
        }
        Ok(proto::ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    async fn wait(&self, req: &proto::WaitRequest) -> Result<proto::ExitStatus, ttrpc::Error> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        let status = p
            .process
            .wait_reported()
            .await
            .map_err(|e| container_status("cannot wait", &e))?;
        p.streams.delivered().await;
        Ok(exit_status(status))
    }

    async fn kill(&self, req: &proto::KillRequest) -> Result<(), ttrpc::Error> {
        let signal = i32::try_from(req.signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| {
                status(
                    Code::INVALID_ARGUMENT,
                    format!("{} is not a signal", req.signal),
                )
            })?;
        if req.exec_id.is_empty() {
            let entry = self.entry(&req.container_id)?;
            let container = entry.container.lock().await;
            let container = container
                .as_ref()
                .ok_or_else(|| not_found_container(&req.container_id))?;
            container.kill(signal, req.all)
        } else {
            let p = self.process(&req.container_id, &req.exec_id)?;
            p.process.signal(signal, req.all)
        }
        .map_err(|e| container_status("cannot send the signal", &e))
    }

    async fn delete(&self, req: &proto::DeleteRequest) -> Result<Option<ExitStatus>, ttrpc::Error> {
        let entry = self.entry(&req.container_id)?;
        if !req.exec_id.is_empty() {
            return self.delete_exec(&entry, req).await;
        }
        let mut guard = entry.container.lock().await;
        let container = guard
            .take()
            .ok_or_else(|| not_found_container(&req.container_id))?;
        let init = container.init().clone();
        let id = container.id().to_owned();
        let mut failure = match container.delete(req.force).await {
            Ok(()) => None,
            Err(DeleteError::Running(c)) => {
                *guard = Some(*c);
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "container {:?} is running; delete it with force",
                        req.container_id
                    ),
                ));
            }
            Err(DeleteError::Failed(e)) => Some(container_status("cannot delete", &e)),
        };
        // From here on the container is gone for every other request.
        self.table().remove(&req.container_id);
        drop(guard);
        let processes: Vec<_> = entry
            .processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, p)| p)
            .collect();
        futures_util::future::join_all(processes.iter().map(|p| p.streams.close(OUTPUT_WAIT)))
            .await;
        let mounts = entry
            .mounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mounts) = mounts {
            if let Err(e) = release(mounts).await {
                failure.get_or_insert(status(
                    Code::INTERNAL,
                    format!("cannot unmount the rootfs: {}", crate::error_chain(&e)),
                ));
            } else {
                remove_dirs(&entry.dir);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        tracing::info!(id, "container deleted");
        Ok(init.status())
    }

    async fn delete_exec(
        &self,
        entry: &ContainerEntry,
        req: &proto::DeleteRequest,
    ) -> Result<Option<ExitStatus>, ttrpc::Error> {
        let p = self.process(&req.container_id, &req.exec_id)?;
        if p.process.status().is_none() {
            if !req.force {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("process {:?} is running; delete it with force", req.exec_id),
                ));
            }
            p.process
                .signal(Signal::SIGKILL, true)
                .map_err(|e| container_status("cannot kill the process", &e))?;
            tokio::time::timeout(OUTPUT_WAIT, p.process.wait())
                .await
                .map_err(|_| status(Code::INTERNAL, "the process survived SIGKILL"))?
                .map_err(|e| container_status("cannot wait", &e))?;
        }
        {
            let mut processes = entry
                .processes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if processes
                .get(&req.exec_id)
                .is_some_and(|q| Arc::ptr_eq(q, &p))
            {
                processes.remove(&req.exec_id);
            }
        }
        p.streams.close(OUTPUT_WAIT).await;
        Ok(p.process.status())
    }

    async fn state(&self, req: &proto::StateRequest) -> Result<proto::StateResponse, ttrpc::Error> {
        let entry = self.entry(&req.container_id)?;
        let (state, pid) = if req.exec_id.is_empty() {
            let container = entry.container.lock().await;
            let container = container
                .as_ref()
                .ok_or_else(|| not_found_container(&req.container_id))?;
            (container.state(), container.init().pid())
        } else {
            let p = self.process(&req.container_id, &req.exec_id)?;
            let state = p
                .process
                .status()
                .map_or(ContainerState::Running, ContainerState::Stopped);
            (state, p.process.pid())
        };
        let mut r = proto::StateResponse {
            pid: u32::try_from(pid.as_raw()).unwrap_or_default(),
            ..Default::default()
        };
        match state {
            ContainerState::Created => "created".clone_into(&mut r.status),
            ContainerState::Running => "running".clone_into(&mut r.status),
            ContainerState::Stopped(s) => {
                "stopped".clone_into(&mut r.status);
                r.exit = Some(exit_status(s)).into();
            }
        }
        Ok(r)
    }
}

/// Unmounts on a blocking thread.
async fn release(mounts: RootfsMounts) -> Result<(), mounts::MountError> {
    match tokio::task::spawn_blocking(move || mounts.release()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the unmount task failed");
            Ok(())
        }
    }
}

/// Removes a container's (unmounted) directories: `rootfs`, the state root, the directory.
fn remove_dirs(dir: &Path) {
    for d in [dir.join("rootfs"), dir.join("state"), dir.to_owned()] {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = ?d, error = %e, "cannot remove a container directory"),
        }
    }
}

/// The ttrpc `Task` service over a [`Tasks`] table.
#[derive(Debug, Clone)]
pub struct TaskService(pub Arc<Tasks>);

#[async_trait::async_trait]
impl Task for TaskService {
    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: proto::CreateContainerRequest,
    ) -> ttrpc::Result<proto::CreateContainerResponse> {
        self.0.create(req).await
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: proto::StartRequest,
    ) -> ttrpc::Result<proto::StartResponse> {
        self.0.start(&req).await?;
        Ok(proto::StartResponse::new())
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: proto::ExecProcessRequest,
    ) -> ttrpc::Result<proto::ExecProcessResponse> {
        self.0.exec(req).await
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: proto::WaitRequest,
    ) -> ttrpc::Result<proto::WaitResponse> {
        let status = self.0.wait(&req).await?;
        Ok(proto::WaitResponse {
            status: Some(status).into(),
            ..Default::default()
        })
    }

    async fn kill(
        &self,
        _ctx: &TtrpcContext,
        req: proto::KillRequest,
    ) -> ttrpc::Result<proto::KillResponse> {
        self.0.kill(&req).await?;
        Ok(proto::KillResponse::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: proto::DeleteRequest,
    ) -> ttrpc::Result<proto::DeleteResponse> {
        let status = self.0.delete(&req).await?;
        Ok(proto::DeleteResponse {
            status: status.map(exit_status).into(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: proto::StateRequest,
    ) -> ttrpc::Result<proto::StateResponse> {
        self.0.state(&req).await
    }
}

/// Accepts stdio connections on vsock `port` forever, serving each on a task of its own.
pub fn listen_stdio(tasks: Arc<Tasks>, port: u32) -> std::io::Result<()> {
    use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_stdio(tasks.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stdio accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}
