//! `containerd-shim-spinbox-v1`: the containerd runtime v2 shim of spinbox, runtime name
//! `io.containerd.spinbox.v1`. Every task runs in its own VM (SPEC §10).
//!
//! containerd starts it with the `start` action in the task's bundle: it spawns the shim
//! server (one per task: the grouping key is the task id), writes the server's socket
//! address to `address` in the bundle and prints it. The server answers the Task service
//! ([`service`]) on that socket and publishes events to containerd. After the server is
//! gone, containerd runs the `delete` action in the bundle, which releases what a dead
//! server left ([`record::clean_up`]). Settings: [`config`].
//!
//! The `containerd-shim` crate's reaper is off: QEMU and the helper daemons are reaped by
//! the spinbox code that started them, which needs their real exit status (a reaper calling
//! `waitpid(-1)` would take it first). The shim is no subreaper either: a process orphaned
//! under it goes to containerd, which reaps.

mod config;
mod io;
mod options;
mod record;
mod service;
mod spec;
mod update;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};
use containerd_shim_protos::protobuf::MessageField;

/// containerd's name for this runtime.
pub const RUNTIME: &str = "io.containerd.spinbox.v1";

/// The exit status containerd records for a task cleaned up by the `delete` action: its
/// VM was killed.
const KILLED_STATUS: u32 = 128 + 9;

struct SpinboxShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    bundle: PathBuf,
}

/// Sends the server's tracing output to the `log` FIFO containerd reads in the bundle
/// (containerd relays it to its own log), when containerd has it open.
fn init_tracing(bundle: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPINBOX_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"));
    let Ok(log) = log else {
        return;
    };
    // Non-blocking only to open without a reader; writes block like any log's.
    {
        use std::os::fd::AsRawFd;
        let fd = log.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    let log = std::sync::Mutex::new(log);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(log)
        .try_init();
}

#[async_trait]
impl containerd_shim::Shim for SpinboxShim {
    type T = service::Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Self {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim (one VM) per task: the task id is the grouping key.
        let grouping = opts.id.clone();
        let address = containerd_shim::spawn(opts, &grouping, Vec::new()).await?;
        std::fs::write(self.bundle.join("address"), &address).map_err(|e| {
            containerd_shim::Error::Other(format!("cannot write the address file: {e}"))
        })?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let other = containerd_shim::Error::Other;
        if let Some(record) = record::Record::read(&self.bundle).map_err(other)? {
            let cleaned = record::clean_up(&record);
            // After the VM's processes are gone (QEMU no longer holds the TAP); tried even
            // when that cleanup failed (a live owner's network is refused, not touched).
            let network = match spinbox::vm::VmId::new(record.vm_id.clone()) {
                Ok(id) => {
                    let dir = spinbox::net::network_dir(&record.state_root, &id);
                    spinbox::net::release_recorded(&dir)
                        .await
                        .map_err(|e| spinbox::check::error_chain(&e))
                }
                Err(e) => Err(format!("recorded VM id: {e}")),
            };
            cleaned.map_err(other)?;
            network.map_err(other)?;
            record::remove(&self.bundle);
        }
        // The dead server's socket.
        if let Ok(address) = std::fs::read_to_string(self.bundle.join("address")) {
            let path = address.trim().trim_start_matches("unix://");
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(DeleteResponse {
            pid: 0,
            exit_status: KILLED_STATUS,
            exited_at: MessageField::some(service::now()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        init_tracing(&self.bundle);
        tracing::info!(id = %self.id, namespace = %self.namespace, "spinbox shim serving");
        service::Service::new(self.namespace.clone(), publisher, Arc::clone(&self.exit))
    }
}

fn main() {
    let config = Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{RUNTIME}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(containerd_shim::run::<SpinboxShim>(RUNTIME, Some(config)));
    // The runtime's blocking threads finish what they were doing (the reply to `delete` is
    // written by one), but a stdin FIFO whose client never came could hold one in `open`
    // for ever: they get a bounded time.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
}
