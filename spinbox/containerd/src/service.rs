//! The Task service containerd calls on the shim's socket, mapped onto one spinbox
//! [`Shim`]: one task, one VM.
//!
//! | Task call | spinbox |
//! |---|---|
//! | `Create` | [`Shim::create_container`]: the VM boots and the container is created in the guest (`Created`) |
//! | `Start` (task) | [`Shim::start`] (`Running`); `TaskStart` |
//! | `Exec` + `Start` (exec) | recorded, then [`Shim::exec`]; `TaskExecAdded`, `TaskExecStarted` |
//! | `Wait`, `State`, `Pids` | the shim's records of each process |
//! | `Kill` | [`Shim::kill`] |
//! | `CloseIO` | ends the process's stdin after what its FIFO holds |
//! | `Delete` (exec) | forgets an exited exec |
//! | `Delete` (task) | [`Shim::delete`]: the seven cleanup phases; `TaskDelete` |
//! | `Shutdown` | refuses new calls, lets those in flight finish, shuts the shim down, exits |
//! | `Pause`, `Resume`, `Checkpoint`, `Update`, `ResizePty`, `Stats` | `UNIMPLEMENTED`, saying so |
//!
//! `TaskExit` is published when a process's exit status is known, which [`Shim::wait`]
//! returns only after its output reached the FIFOs. When the VM dies under a running task,
//! the task exits with 128 + the signal that killed the VMM (255 when it exited on its own).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::ExitSignal;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use spinbox::hotplug::ResizeError;
use spinbox::shim::Shim;
use spinbox::task::{ContainerSpec, HostMount, ProcessSpec};
use spinbox::vm::qemu::QemuBackend;
use spinbox::vm::VmId;
use tokio::sync::{watch, RwLock};

use crate::config::{self, chain};
use crate::io::StdinCloser;
use crate::options;
use crate::record::Record;

/// The exit status of a process whose VM died under it, when the VMM exited on its own.
pub const VM_LOST_STATUS: u32 = 255;

fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn unimplemented(what: &str) -> ttrpc::Error {
    status(
        Code::UNIMPLEMENTED,
        format!("{what} is not supported by spinbox"),
    )
}

/// The time now, as containerd's events carry it.
pub(crate) fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    t.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    t
}

/// Admission of calls. Every call but `Wait` and `Shutdown` holds it shared while it runs;
/// [`Gate::close`] takes it exclusively, so it waits for the calls in flight, and marks it
/// closed, so later calls (also those queued behind it) are refused.
#[derive(Debug, Default)]
struct Gate(RwLock<bool>);

impl Gate {
    async fn enter(&self) -> ttrpc::Result<tokio::sync::RwLockReadGuard<'_, bool>> {
        let guard = self.0.read().await;
        if *guard {
            return Err(status(Code::UNAVAILABLE, "the shim is shutting down"));
        }
        Ok(guard)
    }

    async fn close(&self) {
        *self.0.write().await = true;
    }
}

/// One process of the task (the init process has the exec id "").
struct Process {
    exec_id: String,
    /// The spec of an exec, until it starts.
    spec: Mutex<Option<ProcessSpec>>,
    stdio: [String; 3],
    /// The guest pid, once started (the init process: once created).
    pid: Mutex<u32>,
    started: Mutex<bool>,
    /// `(exit status, when)` once it exited.
    exited: watch::Sender<Option<(u32, Timestamp)>>,
    stdin: Mutex<Option<StdinCloser>>,
}

impl Process {
    fn new(exec_id: &str, spec: Option<ProcessSpec>, stdio: [String; 3]) -> Arc<Self> {
        Arc::new(Self {
            exec_id: exec_id.to_owned(),
            spec: Mutex::new(spec),
            stdio,
            pid: Mutex::new(0),
            started: Mutex::new(false),
            exited: watch::Sender::new(None),
            stdin: Mutex::new(None),
        })
    }

    fn pid(&self) -> u32 {
        *lock(&self.pid)
    }

    fn exit(&self) -> Option<(u32, Timestamp)> {
        self.exited.borrow().clone()
    }

    fn status(&self) -> api::Status {
        if self.exit().is_some() {
            api::Status::STOPPED
        } else if *lock(&self.started) {
            api::Status::RUNNING
        } else {
            api::Status::CREATED
        }
    }

    fn close_stdin(&self) {
        if let Some(closer) = lock(&self.stdin).take() {
            closer.close();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The task: its shim and processes.
struct TaskEntry {
    id: String,
    bundle: String,
    shim: Shim,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    deleted: Mutex<bool>,
}

/// What the event queue carries.
enum Queued {
    Event(&'static str, Box<dyn MessageDyn>),
    /// Answered once every event queued before it was published.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Publishes events one at a time, in the order they were queued (containerd must see
/// `TaskCreate` before `TaskStart`, and a process's `TaskExit` before its `TaskDelete`).
fn event_queue(
    publisher: RemotePublisher,
    namespace: String,
) -> tokio::sync::mpsc::UnboundedSender<Queued> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            match item {
                Queued::Event(topic, event) => publish(&publisher, &namespace, topic, event).await,
                Queued::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    tx
}

/// How long `Shutdown` waits for queued events to reach containerd.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The shim's Task service.
pub struct Service {
    namespace: String,
    events: tokio::sync::mpsc::UnboundedSender<Queued>,
    exit: Arc<ExitSignal>,
    task: tokio::sync::Mutex<Option<Arc<TaskEntry>>>,
    gate: Gate,
}

impl Service {
    /// The service of the shim for `namespace`, publishing through `publisher`; `exit` ends
    /// the shim process once signalled.
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        Self {
            events: event_queue(publisher, namespace.clone()),
            namespace,
            exit,
            task: tokio::sync::Mutex::new(None),
            gate: Gate::default(),
        }
    }

    async fn enter(&self) -> ttrpc::Result<tokio::sync::RwLockReadGuard<'_, bool>> {
        self.gate.enter().await
    }

    async fn entry(&self, id: &str) -> ttrpc::Result<Arc<TaskEntry>> {
        match self.task.lock().await.as_ref() {
            Some(t) if t.id == id && !*lock(&t.deleted) => Ok(Arc::clone(t)),
            _ => Err(status(Code::NOT_FOUND, format!("task {id} not found"))),
        }
    }

    async fn process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> ttrpc::Result<(Arc<TaskEntry>, Arc<Process>)> {
        let task = self.entry(id).await?;
        let process = if exec_id.is_empty() {
            Arc::clone(&task.init)
        } else {
            lock(&task.execs).get(exec_id).cloned().ok_or_else(|| {
                status(
                    Code::NOT_FOUND,
                    format!("exec {exec_id} of task {id} not found"),
                )
            })?
        };
        Ok((task, process))
    }

    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let _ = self.events.send(Queued::Event(topic, event));
    }

    /// Waits for `process` in the background, records its exit and publishes `TaskExit`.
    fn watch_exit(&self, task: &Arc<TaskEntry>, process: &Arc<Process>) {
        let (task, process) = (Arc::clone(task), Arc::clone(process));
        let events = self.events.clone();
        tokio::spawn(async move {
            let result = if process.exec_id.is_empty() {
                task.shim.wait().await
            } else {
                task.shim.wait_exec(&process.exec_id).await
            };
            let code = match result {
                Ok(s) => u32::try_from(s.code()).unwrap_or(VM_LOST_STATUS),
                Err(e) => {
                    tracing::warn!(exec = %process.exec_id, error = %chain(&e), "waiting for the process failed");
                    vm_lost_status(&task.shim).await
                }
            };
            let at = now();
            let event = TaskExit {
                container_id: task.id.clone(),
                id: if process.exec_id.is_empty() {
                    task.id.clone()
                } else {
                    process.exec_id.clone()
                },
                pid: process.pid(),
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                ..Default::default()
            };
            // Queued before the exit is visible, so a `Delete` it allows is published after.
            let _ = events.send(Queued::Event(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(event),
            ));
            process.exited.send_replace(Some((code, at)));
            process.close_stdin();
        });
    }

    /// The container `req` asks for, and the settings its VM runs with.
    fn container_spec(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &std::path::Path,
    ) -> ttrpc::Result<(ContainerSpec, config::Settings, VmId)> {
        let text = std::fs::read_to_string(bundle.join("config.json")).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("cannot read {}/config.json: {e}", req.bundle),
            )
        })?;
        let parsed = crate::spec::parse_bundle(&text, bundle).map_err(spec_error)?;
        let config_path = options::config_path(req.options.as_ref())
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let file = config::config_file(config_path).map_err(|e| status(Code::INTERNAL, e))?;
        let settings = config::load(file, &self.namespace)
            .map_err(|e| status(Code::FAILED_PRECONDITION, e))?;
        let vm_id = VmId::new(req.id.clone()).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("task id {:?}: {}", req.id, chain(&e)),
            )
        })?;
        let (root, rootfs_mounts) = if req.rootfs.is_empty() {
            (parsed.root.clone(), Vec::new())
        } else {
            let mounts = req
                .rootfs
                .iter()
                .map(|m| HostMount {
                    fstype: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect();
            (bundle.join("rootfs"), mounts)
        };
        let mut spec = ContainerSpec::new(req.id.clone(), root, parsed.process);
        spec.hostname = parsed.hostname;
        spec.rootfs_mounts = rootfs_mounts;
        spec.netns = parsed.netns;
        spec.validate().map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("container {}: {}", req.id, chain(&e)),
            )
        })?;
        Ok((spec, settings, vm_id))
    }

    async fn create_task(
        &self,
        req: &api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let mut slot = self.task.lock().await;
        if slot.as_ref().is_some_and(|t| !*lock(&t.deleted)) {
            return Err(status(
                Code::ALREADY_EXISTS,
                "this shim already runs a task (spinbox runs one task per VM)",
            ));
        }
        if req.terminal {
            return Err(unimplemented("a terminal (`-t`)"));
        }
        if !req.checkpoint.is_empty() {
            return Err(unimplemented("restoring a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let (spec, settings, vm_id) = self.container_spec(req, &bundle)?;
        // Written before anything starts: the `delete` action finds what to clean from it.
        Record {
            state_root: settings.shim.state_root.clone(),
            vm_id: req.id.clone(),
            rootfs: spec.rootfs.clone(),
            mounted: !spec.rootfs_mounts.is_empty(),
        }
        .write(&bundle)
        .map_err(|e| status(Code::INTERNAL, e))?;
        let opened = crate::io::open(&req.stdin, &req.stdout, &req.stderr)
            .await
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let shim = Shim::new(
            vm_id,
            settings.shim,
            Arc::new(QemuBackend::new(settings.backend)),
        );
        tracing::info!(id = %req.id, file = ?settings.file, "creating the task's VM");
        let created = match shim.create_container(spec, opened.io).await {
            Ok(c) => c,
            Err(e) => {
                if let Some(closer) = opened.stdin {
                    closer.close();
                }
                let _ = shim.shutdown().await;
                crate::record::remove(&bundle);
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("create failed: {}", chain(&e)),
                ));
            }
        };
        let pid = created.container_pid.unwrap_or_default();
        let init = Process::new(
            "",
            None,
            [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
        );
        *lock(&init.pid) = pid;
        *lock(&init.stdin) = opened.stdin;
        *slot = Some(Arc::new(TaskEntry {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            shim,
            init,
            execs: Mutex::new(HashMap::new()),
            deleted: Mutex::new(false),
        }));
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: false,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_process(&self, req: &api::StartRequest) -> ttrpc::Result<api::StartResponse> {
        let (task, process) = self.process(&req.id, &req.exec_id).await?;
        if *lock(&process.started) {
            return Err(status(
                Code::FAILED_PRECONDITION,
                "the process was already started",
            ));
        }
        if req.exec_id.is_empty() {
            task.shim.start().await.map_err(|e| {
                status(
                    Code::FAILED_PRECONDITION,
                    format!("start failed: {}", chain(&e)),
                )
            })?;
            *lock(&process.started) = true;
            self.watch_exit(&task, &process);
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: task.id.clone(),
                    pid: process.pid(),
                    ..Default::default()
                }),
            );
            return Ok(api::StartResponse {
                pid: process.pid(),
                ..Default::default()
            });
        }
        let spec = lock(&process.spec)
            .take()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the exec was already started"))?;
        let [stdin, stdout, stderr] = &process.stdio;
        let opened = crate::io::open(stdin, stdout, stderr)
            .await
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let pid = match task.shim.exec(&req.exec_id, &spec, opened.io).await {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(closer) = opened.stdin {
                    closer.close();
                }
                lock(&task.execs).remove(&req.exec_id);
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("exec failed: {}", chain(&e)),
                ));
            }
        };
        *lock(&process.pid) = pid;
        *lock(&process.stdin) = opened.stdin;
        *lock(&process.started) = true;
        self.watch_exit(&task, &process);
        self.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: task.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete_process(&self, req: &api::DeleteRequest) -> ttrpc::Result<api::DeleteResponse> {
        let (task, process) = self.process(&req.id, &req.exec_id).await?;
        let running = *lock(&process.started) && process.exit().is_none();
        if running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "the process is running: kill it first (ctr task kill {})",
                    req.id
                ),
            ));
        }
        let (exit_status, exited_at) = process.exit().unwrap_or((0, now()));
        if !req.exec_id.is_empty() {
            process.close_stdin();
            lock(&task.execs).remove(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid: process.pid(),
                exit_status,
                exited_at: MessageField::some(exited_at),
                ..Default::default()
            });
        }
        // The whole task: every cleanup phase.
        for exec in lock(&task.execs).values() {
            exec.close_stdin();
        }
        process.close_stdin();
        let report = match task.shim.delete().await {
            Ok(report) => report,
            // A crash already tore the VM down: shutdown joins that teardown's report.
            Err(_) => task.shim.shutdown().await,
        };
        *lock(&task.deleted) = true;
        if report.has_errors() {
            tracing::error!(id = %task.id, "cleanup failed:\n{report}");
            return Err(status(
                Code::INTERNAL,
                format!("cleanup of task {} failed:\n{report}", task.id),
            ));
        }
        crate::record::remove(std::path::Path::new(&task.bundle));
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: task.id.clone(),
                id: task.id.clone(),
                pid: process.pid(),
                exit_status,
                exited_at: MessageField::some(exited_at.clone()),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: process.pid(),
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..Default::default()
        })
    }
}

/// A spec that cannot run: a terminal is unsupported, anything else invalid.
fn spec_error(e: crate::spec::SpecError) -> ttrpc::Error {
    match e {
        crate::spec::SpecError::Terminal => unimplemented("a terminal (`process.terminal`)"),
        e => status(Code::INVALID_ARGUMENT, e.to_string()),
    }
}

/// How long containerd gets to take an event.
const PUBLISH_TIMEOUT_NS: i64 = 5_000_000_000;

async fn publish(
    publisher: &RemotePublisher,
    namespace: &str,
    topic: &'static str,
    event: Box<dyn MessageDyn>,
) {
    let ctx = ttrpc::context::with_timeout(PUBLISH_TIMEOUT_NS);
    if let Err(e) = publisher.publish(ctx, topic, namespace, event).await {
        tracing::warn!(topic, error = %e, "cannot publish an event to containerd");
    }
}

/// The status of a process whose VM died: 128 + the VMM's signal, else [`VM_LOST_STATUS`].
/// The VMM's status is its owner's (the backend reaps it), so this waits briefly for the
/// teardown to record it.
async fn vm_lost_status(shim: &Shim) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    for _ in 0..100 {
        if let Some(cause) = shim.exit_cause() {
            return match cause.status.signal() {
                Some(sig) => 128 + u32::try_from(sig).unwrap_or(0),
                None => VM_LOST_STATUS,
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    VM_LOST_STATUS
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let _in_flight = self.enter().await?;
        self.create_task(&req).await
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        let _in_flight = self.enter().await?;
        self.start_process(&req).await
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let _in_flight = self.enter().await?;
        let (task, process) = self.process(&req.id, &req.exec_id).await?;
        let [stdin, stdout, stderr] = process.stdio.clone();
        let exit = process.exit();
        Ok(api::StateResponse {
            id: if req.exec_id.is_empty() {
                task.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: task.bundle.clone(),
            pid: process.pid(),
            status: process.status().into(),
            stdin,
            stdout,
            stderr,
            terminal: false,
            exit_status: exit.as_ref().map_or(0, |e| e.0),
            exited_at: exit.map(|e| e.1).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let _in_flight = self.enter().await?;
        let task = self.entry(&req.id).await?;
        let mut pids = vec![task.init.pid()];
        pids.extend(
            lock(&task.execs)
                .values()
                .filter(|p| *lock(&p.started) && p.exit().is_none())
                .map(|p| p.pid()),
        );
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .filter(|p| *p != 0)
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        let _in_flight = self.enter().await?;
        let (task, process) = self.process(&req.id, &req.exec_id).await?;
        if process.exit().is_some() {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        task.shim
            .kill(&req.exec_id, req.signal, req.all)
            .await
            .map_err(|e| {
                status(
                    Code::FAILED_PRECONDITION,
                    format!("kill failed: {}", chain(&e)),
                )
            })?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        let _in_flight = self.enter().await?;
        let task = self.entry(&req.id).await?;
        if req.terminal {
            return Err(unimplemented("a terminal (`-t`)"));
        }
        if !spinbox::task::valid_name(&req.exec_id) {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!(
                    "exec id {:?}: 1-64 characters of [A-Za-z0-9_.-]",
                    req.exec_id
                ),
            ));
        }
        let spec = crate::spec::parse_process(&req.spec.value).map_err(spec_error)?;
        spec.validate().map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("exec {}: {}", req.exec_id, chain(&e)),
            )
        })?;
        {
            let mut execs = lock(&task.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            execs.insert(
                req.exec_id.clone(),
                Process::new(
                    &req.exec_id,
                    Some(spec),
                    [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
                ),
            );
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: task.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        let _in_flight = self.enter().await?;
        let (_, process) = self.process(&req.id, &req.exec_id).await?;
        if req.stdin {
            process.close_stdin();
        }
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        // Not gated: a wait may last as long as the task, and must not hold up Shutdown.
        let (_, process) = self.process(&req.id, &req.exec_id).await?;
        let mut exited = process.exited.subscribe();
        let exit = exited
            .wait_for(Option::is_some)
            .await
            .map_err(|_| status(Code::INTERNAL, "the process record went away"))?
            .clone()
            .unwrap_or((VM_LOST_STATUS, now()));
        Ok(api::WaitResponse {
            exit_status: exit.0,
            exited_at: MessageField::some(exit.1),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let _in_flight = self.enter().await?;
        self.delete_process(&req).await
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let _in_flight = self.enter().await?;
        let task = self.entry(&req.id).await?;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task.init.pid(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        // A task that was not deleted keeps the shim (containerd asks again after Delete).
        if let Some(task) = self.task.lock().await.as_ref() {
            if !*lock(&task.deleted) {
                return Ok(api::Empty::new());
            }
        }
        self.gate.close().await;
        if let Some(task) = self.task.lock().await.as_ref() {
            let _ = task.shim.shutdown().await;
        }
        // The events queued so far (`TaskDelete`) reach containerd before the shim exits.
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.events.send(Queued::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, flushed).await;
        }
        self.exit.signal();
        Ok(api::Empty::new())
    }

    async fn pause(
        &self,
        _ctx: &TtrpcContext,
        _req: api::PauseRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(unimplemented("pausing a task"))
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(unimplemented("resuming a task"))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(unimplemented("checkpointing a task"))
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        let _in_flight = self.enter().await?;
        let task = self.entry(&req.id).await?;
        let Some(resources) = req.resources.as_ref() else {
            return Ok(api::Empty::new());
        };
        let target = crate::update::target(&resources.type_url, &resources.value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let sizes = task
            .shim
            .resize(target.cpus, target.memory_mib)
            .await
            .map_err(|e| {
                let code = match e {
                    ResizeError::OutOfRange { .. } => Code::OUT_OF_RANGE,
                    ResizeError::NotRunning(_) | ResizeError::Closed => Code::FAILED_PRECONDITION,
                    _ => Code::INTERNAL,
                };
                status(code, format!("update failed: {}", chain(&e)))
            })?;
        tracing::info!(
            cpus = sizes.cpus,
            memory_mib = sizes.memory_mib,
            "task resized"
        );
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(unimplemented("a terminal"))
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        _req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        Err(unimplemented("task statistics"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Shutdown waits for a call in flight on another thread; a call arriving while it
    /// waits, and any later one, is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn shutdown_drains_calls_in_flight_and_refuses_new_ones() {
        for _ in 0..20 {
            let gate = Arc::new(Gate::default());
            let finished = Arc::new(AtomicBool::new(false));
            let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
            let in_flight = {
                let (gate, finished) = (Arc::clone(&gate), Arc::clone(&finished));
                tokio::spawn(async move {
                    let _guard = gate.enter().await.expect("admitted before shutdown");
                    entered_tx.send(()).expect("test alive");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    finished.store(true, Ordering::SeqCst);
                })
            };
            entered_rx.await.expect("the call entered");
            let closing = {
                let (gate, finished) = (Arc::clone(&gate), Arc::clone(&finished));
                tokio::spawn(async move {
                    gate.close().await;
                    finished.load(Ordering::SeqCst)
                })
            };
            // Let the close queue behind the call in flight, then call again.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let late = tokio::spawn({
                let gate = Arc::clone(&gate);
                async move { gate.enter().await.map(drop) }
            });
            assert!(
                closing.await.expect("close"),
                "shutdown returned before the call finished"
            );
            in_flight.await.expect("call");
            let refused = late.await.expect("late call").expect_err("refused");
            assert!(refused.to_string().contains("shutting down"), "{refused}");
            assert!(gate.enter().await.is_err(), "refused for good");
        }
    }

    /// containerd's events service, recording the topics it is sent.
    struct FakeContainerd(tokio::sync::mpsc::UnboundedSender<String>);

    #[async_trait]
    impl containerd_shim_protos::shim_async::Events for FakeContainerd {
        async fn forward(
            &self,
            _ctx: &TtrpcContext,
            req: containerd_shim_protos::api::ForwardRequest,
        ) -> ttrpc::Result<api::Empty> {
            let _ = self.0.send(req.envelope().topic().to_owned());
            Ok(api::Empty::new())
        }
    }

    /// Events reach containerd in the order they were queued, also when each is queued from
    /// a different task of a multi-thread runtime right after the previous one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn events_are_published_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let listener = ttrpc::r#async::transport::Listener::try_from(listener).expect("listener");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut server = ttrpc::r#async::Server::new()
            .add_listener(listener)
            .register_service(containerd_shim_protos::shim_async::create_events(Arc::new(
                FakeContainerd(tx),
            )));
        server.start().await.expect("server");
        let publisher = RemotePublisher::new(path.to_str().expect("utf-8"))
            .await
            .expect("connect");
        let queue = event_queue(publisher, "ns".into());
        let topics = [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_START_EVENT_TOPIC,
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC,
        ];
        let mut expected = Vec::new();
        for round in 0..20 {
            for topic in topics {
                let queue = queue.clone();
                tokio::spawn(async move {
                    let event = TaskExit {
                        container_id: format!("c{round}"),
                        ..Default::default()
                    };
                    let _ = queue.send(Queued::Event(topic, Box::new(event)));
                })
                .await
                .expect("queued");
                expected.push(topic.to_owned());
            }
        }
        let (done, flushed) = tokio::sync::oneshot::channel();
        let _ = queue.send(Queued::Flush(done));
        flushed.await.expect("flushed");
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let topic = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("every event arrives")
                .expect("server alive");
            got.push(topic);
        }
        assert_eq!(got, expected);
        server.shutdown().await.expect("shutdown");
    }

    #[test]
    fn unsupported_calls_say_so() {
        let e = unimplemented("pausing a task").to_string();
        assert!(
            e.contains("pausing a task is not supported by spinbox"),
            "{e}"
        );
        assert!(
            e.contains("UNIMPLEMENTED") || e.contains("Unimplemented"),
            "{e}"
        );
    }
}
