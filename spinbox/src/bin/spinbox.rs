//! `spinbox`: run a real VM through the shim's whole lifecycle, or check what the host lacks.
//!
//! ```text
//! spinbox run [--kernel PATH] [--initrd PATH] [--accel auto|kvm|tcg] [--cpus N]
//!             [--memory MIB] [--max-cpus N] [--max-memory MIB] [--config FILE]
//!             [--net CONFLIST]
//!             [--keep] [--console]
//!             [--rootfs DIR] [--env K=V]... [--cwd DIR] [--user UID[:GID]]
//!             [--rootfs-transport 9p|erofs|virtiofs] [--verbose] [-- CMD ARGS...]
//! spinbox check
//! ```
//!
//! With a command, `run` runs it in a container in the VM (from `--rootfs`, default the
//! provisioned busybox rootfs): its stdout and stderr stream live to ours, our stdin is
//! forwarded when it is not a terminal, and `spinbox` exits with the command's exit code
//! (128 + the signal when a signal killed it), or 125 when spinbox itself failed. The state
//! and phase timeline then goes to stderr, with `--verbose` only. Without a command, `run`
//! boots the VM, shows each state and phase on stdout, and deletes it.

use clap::{Parser, Subcommand, ValueEnum};
use lifecycle_core::PhaseOutcome;
use spinbox::check::{check_containerd, check_host, error_chain, Level, CONTAINERD_SHIM_CONFIG};
use spinbox::cleanup::CleanupPhase;
use spinbox::shim::{EventReceiver, Shim, ShimConfig, ShimEvent};
use spinbox::vm::assets::Assets;
use spinbox::vm::qemu::{AccelChoice, Accelerator, KernelImage, QemuBackend, QemuBackendConfig};
use spinbox::vm::{state_root_from, VmId};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Environment variable forcing the accelerator: `kvm` or `tcg` (read here, at the edge).
const ACCEL_ENV: &str = "SPINBOX_ACCEL";
use spinbox_manifest::ASSETS_ENV;

#[derive(Parser)]
#[command(
    name = "spinbox",
    version,
    about = "The spinbox VM shim lifecycle, on a real VM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM, show each state and cleanup phase as it happens, then delete it.
    Run(Box<RunArgs>),
    /// Tell what the host lacks (KVM, QEMU, kernel, initramfs, vsock) and how to get it.
    Check {
        /// Also check what `ctr run --runtime io.containerd.spinbox.v1` needs: containerd,
        /// the shim binary where containerd finds it, and the assets the shim's config file
        /// (`$SPINBOX_SHIM_CONFIG`, else /etc/spinbox/containerd-shim.json) names.
        #[arg(long)]
        containerd: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Accel {
    /// `SPINBOX_ACCEL` (kvm or tcg) if set, else probe: KVM where it really works, else TCG.
    Auto,
    /// Hardware virtualization (`-cpu host`).
    Kvm,
    /// Software emulation (`-cpu max`).
    Tcg,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel to boot (an uncompressed vmlinux or a bzImage); default: the provisioned one.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs with the agent as /init; default: the provisioned one.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    accel: Accel,
    /// vCPUs.
    #[arg(long)]
    cpus: Option<u16>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory: Option<u32>,
    /// Most vCPUs the VM may grow to by hotplug (the CPU controller adds them when the
    /// guest is busy); default: `--cpus`, no growth.
    #[arg(long)]
    max_cpus: Option<u16>,
    /// Most memory in MiB the VM may grow to by hotplug (in 128 MiB steps above
    /// `--memory`); default: `--memory`, no growth.
    #[arg(long)]
    max_memory: Option<u32>,
    /// JSON file of timeouts and settings (see `ShimConfig::from_file`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Connect the VM to the network this CNI configuration list (`.conflist`) describes:
    /// the plugins run in a network namespace spinbox makes, and the guest takes the
    /// address they assign. Overrides the config file's `network.conflist`.
    #[arg(long, value_name = "CONFLIST")]
    net: Option<PathBuf>,
    /// Keep the VM running until Ctrl-C, then delete it.
    #[arg(long)]
    keep: bool,
    /// Show the guest's serial console.
    #[arg(long)]
    console: bool,
    /// The VM's ID.
    #[arg(long, default_value = "spinbox-demo")]
    id: String,
    /// The container's rootfs directory (with a command); default: the provisioned
    /// busybox rootfs. It is not modified: the container writes into an overlay.
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// How the rootfs reaches the guest; default: the one BENCHMARKS.md chose.
    #[arg(long)]
    rootfs_transport: Option<spinbox::rootfs::RootfsTransport>,
    /// An environment variable for the command, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The command's working directory in the container.
    #[arg(long, default_value = "/")]
    cwd: PathBuf,
    /// The user (and group) the command runs as: `UID` or `UID:GID`.
    #[arg(long, default_value = "0")]
    user: String,
    /// With a command: print the state and phase timeline on stderr.
    #[arg(long, short)]
    verbose: bool,
    /// The command to run in the VM, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPINBOX_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spinbox: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) if !args.command.is_empty() => Err(Ok(run_command(*args).await)),
            Command::Run(args) => run(*args).await.map_err(Err),
            Command::Check { containerd } => check(containerd).await.map_err(Err),
        }
    });
    // A blocked read of our stdin must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Err(Ok(code)) => code,
        Ok(()) => ExitCode::SUCCESS,
        Err(Err(reason)) => {
            eprintln!("spinbox: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Seconds since the start, for the timeline.
fn stamp(start: Instant) -> String {
    format!("[{:>7.3}s]", start.elapsed().as_secs_f64())
}

/// The assets directory: `$SPINBOX_ASSETS`, else `assets` in the cargo target directory
/// this binary sits in (`target/release/spinbox` → `target/assets`).
fn assets_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this program: {e}"))?;
    spinbox_manifest::dir_beside_exe(&exe).ok_or_else(|| {
        format!(
            "{} is not in a cargo target directory: set {ASSETS_ENV} to the provisioned assets",
            exe.display()
        )
    })
}

/// The shim's and the backend's settings from the flags, the config file and the
/// environment (read here, once).
fn config_for(args: &RunArgs) -> Result<(ShimConfig, QemuBackendConfig), String> {
    let base = ShimConfig {
        state_root: state_root_from(
            std::env::var_os("SPINBOX_STATE_ROOT"),
            std::env::var_os("XDG_RUNTIME_DIR"),
        ),
        ..ShimConfig::default()
    };
    let mut config = match &args.config {
        Some(path) => ShimConfig::from_file_over(path, base).map_err(|e| error_chain(&e))?,
        None => base,
    };
    if let Some(cpus) = args.cpus {
        config.cpus = cpus;
    }
    if let Some(memory) = args.memory {
        config.memory_mib = memory;
    }
    if let Some(max) = args.max_cpus {
        config.max_cpus = Some(max);
    }
    if let Some(max) = args.max_memory {
        config.max_memory_mib = Some(max);
    }
    if let Some(conflist) = &args.net {
        let conflist = std::path::absolute(conflist)
            .map_err(|e| format!("--net {}: {e}", conflist.display()))?;
        if !conflist.is_file() {
            return Err(format!(
                "--net {}: no such CNI configuration list",
                conflist.display()
            ));
        }
        match &mut config.network {
            Some(n) => n.conflist = conflist,
            None => config.network = Some(spinbox::net::NetworkConfig::new(conflist)),
        }
    }
    if config.state_root.is_relative() {
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot read the current directory: {e}"))?;
        config.state_root = cwd.join(&config.state_root);
    }
    config.validate().map_err(|e| error_chain(&e))?;
    let dir = assets_dir()?;
    let mut assets = Assets::load(&dir).map_err(|e| {
        format!(
            "VM assets not found in {} ({}); provision them with `scripts/provision`",
            dir.display(),
            error_chain(&e)
        )
    })?;
    let mut kernel_image = KernelImage::Vmlinux;
    if let Some(kernel) = &args.kernel {
        if kernel.is_dir() {
            return Err(format!(
                "kernel {} is a directory, not a kernel image",
                kernel.display()
            ));
        }
        if !kernel.is_file() {
            return Err(format!("kernel {} does not exist", kernel.display()));
        }
        // An ELF image boots through PVH as vmlinux; anything else is taken as a bzImage.
        let is_elf = std::fs::read(kernel).is_ok_and(|bytes| bytes.starts_with(b"\x7fELF"));
        if is_elf {
            assets.vmlinux.clone_from(kernel);
        } else {
            assets.bzimage.clone_from(kernel);
            kernel_image = KernelImage::BzImage;
        }
    }
    if let Some(initrd) = &args.initrd {
        if initrd.is_dir() {
            return Err(format!("initrd {} is a directory", initrd.display()));
        }
        if !initrd.is_file() {
            return Err(format!("initrd {} does not exist", initrd.display()));
        }
        if initrd.as_os_str().to_string_lossy().contains(',') {
            return Err(format!(
                "initrd path {} contains a comma, which QEMU would split on",
                initrd.display()
            ));
        }
        assets.initramfs.clone_from(initrd);
    }
    let mut backend = QemuBackendConfig::new(assets);
    backend.kernel = kernel_image;
    backend.accel = match args.accel {
        Accel::Auto => match std::env::var(ACCEL_ENV) {
            Ok(v) if !v.is_empty() => AccelChoice::Fixed(
                v.parse::<Accelerator>()
                    .map_err(|e| format!("{ACCEL_ENV}: {e}"))?,
            ),
            _ => AccelChoice::Auto,
        },
        Accel::Kvm => AccelChoice::Fixed(Accelerator::Kvm),
        Accel::Tcg => AccelChoice::Fixed(Accelerator::Tcg),
    };
    Ok((config, backend))
}

/// Prints events as they arrive; ends with the stream. Fires `crashed` when the VM exits
/// on its own.
async fn show_events(
    mut events: EventReceiver,
    start: Instant,
    console: bool,
    mut crashed: Option<tokio::sync::oneshot::Sender<()>>,
    sink: Timeline,
) {
    // A phase still running after this long gets a "still waiting" line, then again every
    // period, so a long forced shutdown never looks like a hang.
    const PATIENCE: Duration = Duration::from_secs(5);
    let emit = |line: String| match sink {
        Timeline::Stdout => {
            clear_spinner();
            println!("{} {line}", stamp(start));
        }
        Timeline::Stderr => eprintln!("{} {line}", stamp(start)),
        Timeline::Quiet => {}
    };
    // The phase running now, when it started, and when to say so next.
    let mut current: Option<(CleanupPhase, Instant, tokio::time::Instant)> = None;
    loop {
        let note_at = current.map(|(_, _, at)| at);
        let event = tokio::select! {
            e = events.recv() => match e {
                Some(e) => e,
                None => break,
            },
            () = async {
                match note_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((phase, since, at)) = current.as_mut() {
                    emit(format!(
                        "phase  {phase} still running after {:.0?} (bounded by the shutdown timeouts)",
                        since.elapsed()
                    ));
                    *at += PATIENCE;
                }
                continue;
            }
        };
        match &event {
            ShimEvent::PhaseStarted { phase, .. } => {
                current = Some((
                    *phase,
                    Instant::now(),
                    tokio::time::Instant::now() + PATIENCE,
                ));
            }
            ShimEvent::PhaseFinished { .. } => current = None,
            _ => {}
        }
        let line = match event {
            ShimEvent::State { from, to } => format!("state  {from} → {to}"),
            ShimEvent::Booted(t) => format!(
                "booted: agent ready {:.2?} after the VM started, first call {:.0?} later",
                t.ready, t.ready_to_first_rpc
            ),
            ShimEvent::PhaseStarted { phase, .. } => format!("phase  {phase} …"),
            ShimEvent::PhaseFinished {
                phase,
                outcome,
                duration,
                ..
            } => match outcome {
                PhaseOutcome::Ok => format!("phase  {phase} done in {duration:.1?}"),
                other => format!("phase  {phase} {other} after {duration:.1?}"),
            },
            ShimEvent::VmExited(cause) => {
                if let Some(tx) = crashed.take() {
                    let _ = tx.send(());
                }
                format!("vm     exited: {cause}")
            }
            ShimEvent::Console(text) if console => format!("guest  {text}"),
            ShimEvent::Console(_) => continue,
            ShimEvent::Dropped(n) => format!("events {n} dropped (the printer fell behind)"),
        };
        emit(line);
    }
}

/// Where the state and phase timeline goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timeline {
    /// Stdout (no command: the timeline is the output).
    Stdout,
    /// Stderr (a command's stdout is its own).
    Stderr,
    /// Nowhere.
    Quiet,
}

/// Resolves on the first SIGINT, SIGTERM or SIGHUP.
async fn interrupted() -> &'static str {
    Interrupts::new().next().await
}

/// Listeners of SIGINT, SIGTERM and SIGHUP. Each keeps a signal delivered after it was made
/// until [`Interrupts::next`] takes it, so one made before a teardown starts loses none.
struct Interrupts {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Interrupts {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        async fn wait(s: Option<&mut tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = wait(self.int.as_mut()) => "SIGINT",
            () = wait(self.term.as_mut()) => "SIGTERM",
            () = wait(self.hup.as_mut()) => "SIGHUP",
        }
    }
}

fn clear_spinner() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

/// A spinner on stderr while `what` is pending (only on a terminal).
async fn spin(what: &str, start: Instant) {
    if !std::io::stderr().is_terminal() {
        return std::future::pending().await;
    }
    let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for i in 0.. {
        tick.tick().await;
        eprint!("\r{} {} {what}", stamp(start), frames[i % frames.len()]);
        let _ = std::io::stderr().flush();
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let id: VmId = args
        .id
        .parse()
        .map_err(|e: spinbox::vm::IdError| error_chain(&e))?;
    let (config, backend) = config_for(&args)?;
    let start = Instant::now();
    let shim = Shim::new(id, config, Arc::new(QemuBackend::new(backend)));
    let (crashed_tx, crashed) = tokio::sync::oneshot::channel();
    let printer = tokio::spawn(show_events(
        shim.events().ok_or("event stream already taken")?,
        start,
        args.console,
        Some(crashed_tx),
        Timeline::Stdout,
    ));
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let created = tokio::select! {
        r = shim.create() => r,
        () = spin("booting the VM", start) => unreachable!("the spinner never ends"),
        signal = &mut interrupt => {
            clear_spinner();
            println!("{} {signal}: shutting down", stamp(start));
            let report = shutdown(&shim, start).await;
            let _ = printer.await;
            println!("\n{report}");
            return Err(format!("interrupted during boot ({signal})"));
        }
    };
    clear_spinner();
    let outcome = match created {
        Ok(created) => {
            let pid = created
                .vm_pid
                .map_or_else(|| "-".to_owned(), |p| p.to_string());
            println!(
                "{} agent: kernel {} ({}), uptime {:.2?}, agent {}; QEMU pid {pid}",
                stamp(start),
                created.info.kernel_release,
                created.info.kernel_version,
                created.info.uptime,
                created.info.agent_version,
            );
            if let Some(net) = shim.network() {
                println!("{} network: {}", stamp(start), describe_network(&net));
            }
            if let Err(e) = shim.start().await {
                // The VM exited (or a shutdown came in) between create and start.
                let report = shutdown(&shim, start).await;
                let _ = printer.await;
                println!("\n{report}");
                if let Some(cause) = shim.exit_cause() {
                    println!("VM exit: {cause}");
                }
                return Err(format!("start refused: {e}"));
            }
            let mut crashed_while_kept = false;
            if args.keep {
                println!("{} VM running; Ctrl-C to delete it", stamp(start));
                tokio::select! {
                    signal = &mut interrupt => println!("{} {signal}: shutting down", stamp(start)),
                    _ = crashed => crashed_while_kept = true,
                }
                let report = shutdown(&shim, start).await;
                if crashed_while_kept {
                    let _ = printer.await;
                    println!("\n{report}");
                    let cause = shim
                        .exit_cause()
                        .map_or_else(|| "unknown cause".to_owned(), |c| c.to_string());
                    println!("VM exit: {cause}");
                    return Err(format!("the VM exited unexpectedly: {cause}"));
                }
                Ok(report)
            } else {
                watching_signals(&shim, start, shim.delete())
                    .await
                    .map_err(|e| format!("delete refused: {e}"))
            }
        }
        Err(e) => {
            // The failed creation already tore down what it started (its phases were
            // printed above). Dropping the shim ends the event stream; nothing is left to
            // clean.
            let reason = format!("create failed: {}", error_chain(&e));
            drop(shim);
            let _ = printer.await;
            return Err(reason);
        }
    };
    let report = outcome?;
    let _ = printer.await;
    print_ending(&report, &shim, start);
    if report.has_errors() {
        let failed: Vec<&str> = report
            .failed_phases()
            .iter()
            .map(|p| CleanupPhase::name(*p))
            .collect();
        return Err(format!("cleanup failed in {}", failed.join(", ")));
    }
    Ok(())
}

/// The report, the VM's exit cause and the total time, on stdout.
fn print_ending(report: &spinbox::shim::ShimReport, shim: &Shim, start: Instant) {
    println!("\n{report}");
    if let Some(cause) = shim.exit_cause() {
        println!("VM exit: {cause}");
    }
    println!("total {:.2?}", start.elapsed());
}

/// `shim.shutdown()`, with [`watching_signals`].
async fn shutdown(shim: &Shim, start: Instant) -> spinbox::shim::ShimReport {
    watching_signals(shim, start, shim.shutdown()).await
}

/// Runs a teardown; every SIGINT, SIGTERM or SIGHUP meanwhile kills the VM at once (the
/// teardown then finds it gone and finishes), and the report still comes. Signals are
/// never left unanswered while the CLI tears down.
async fn watching_signals<T>(
    shim: &Shim,
    start: Instant,
    work: impl std::future::Future<Output = T>,
) -> T {
    watching_signals_to(shim, start, work, false).await
}

/// [`watching_signals`], saying so on stderr when `to_stderr` (a command's stdout is its
/// own, and may be a closed pipe).
async fn watching_signals_to<T>(
    shim: &Shim,
    start: Instant,
    work: impl std::future::Future<Output = T>,
    to_stderr: bool,
) -> T {
    // Listening before `work` is first polled (nothing of it has run yet): a signal sent
    // once the teardown began is never lost.
    let mut interrupts = Interrupts::new();
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            signal = interrupts.next() => {
                let line = format!("{} {signal}: killing the VM", stamp(start));
                if to_stderr {
                    eprintln!("{line}");
                } else {
                    println!("{} {signal} during the teardown: killing the VM", stamp(start));
                }
                shim.kill_vm().await;
            }
        }
    }
}

/// The exit code when spinbox itself failed (as `docker run` and `podman run` use it).
const SPINBOX_FAILED: u8 = 125;

/// `run -- CMD ...`: runs the command in a container in a VM; see the module docs.
async fn run_command(args: RunArgs) -> ExitCode {
    match run_command_in(args).await {
        Ok(code) => code,
        Err(Failed { code, reason }) => {
            if !reason.is_empty() {
                eprintln!("spinbox: {reason}");
            }
            ExitCode::from(code)
        }
    }
}

/// Why `run -- CMD` ended without the command's status, and the exit code that says so.
struct Failed {
    code: u8,
    reason: String,
}

impl From<String> for Failed {
    fn from(reason: String) -> Self {
        Self {
            code: SPINBOX_FAILED,
            reason,
        }
    }
}

impl From<&str> for Failed {
    fn from(reason: &str) -> Self {
        reason.to_owned().into()
    }
}

/// Why waiting failed. Our stdout or stderr closed under us (`spinbox run … | head`)
/// ends quietly with 141, as a shell's pipeline member killed by `SIGPIPE` does.
fn wait_failure(e: &spinbox::shim::ContainerError) -> Failed {
    use spinbox::shim::ContainerError;
    use spinbox::task::stdio::StdioError;
    if let ContainerError::Stdio(StdioError::Io { source, .. }) = e {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            return Failed {
                code: 141,
                reason: String::new(),
            };
        }
    }
    error_chain(e).into()
}

/// The exit code of a command that did not start, as a shell gives it: 127 when the
/// program was not found, 126 when it could not be run, else [`SPINBOX_FAILED`].
fn start_failure(e: &spinbox::shim::StartError) -> Failed {
    let reason = format!("start failed: {}", error_chain(e));
    let code = if reason.contains("at Exec: ENOENT") {
        127
    } else if reason.contains("at Exec: EACCES") || reason.contains("at Exec: ENOEXEC") {
        126
    } else {
        SPINBOX_FAILED
    };
    Failed { code, reason }
}

/// Parses `UID` or `UID:GID` (the group defaults to the uid).
fn parse_user(user: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--user {user:?}: expected UID or UID:GID (numbers)");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.parse().map_err(|_| bad())?,
    ))
}

/// Our stdin as a source for the command, unless it is a terminal (then the command's
/// stdin is at end-of-file: a VM cannot share our terminal yet).
fn stdin_source() -> Result<Option<spinbox::task::stdio::Source>, String> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let fd = stdin
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate stdin: {e}"))?;
    let file = std::fs::File::from(fd);
    let kind = file
        .metadata()
        .map_err(|e| format!("cannot inspect stdin: {e}"))?
        .file_type();
    if kind.is_fifo() || kind.is_socket() {
        // Non-blocking, so an idle pipe never holds a thread (or the exit).
        let rx = tokio::net::unix::pipe::Receiver::from_file_unchecked(file)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        Ok(Some(Box::new(rx)))
    } else {
        Ok(Some(Box::new(tokio::fs::File::from_std(file))))
    }
}

async fn run_command_in(args: RunArgs) -> Result<ExitCode, Failed> {
    use spinbox::task::stdio::ProcessIo;
    use spinbox::task::{ContainerSpec, ProcessSpec};
    let id: VmId = args
        .id
        .parse()
        .map_err(|e: spinbox::vm::IdError| error_chain(&e))?;
    let (mut config, backend) = config_for(&args)?;
    if let Some(transport) = args.rootfs_transport {
        config.rootfs_transport = transport;
    }
    config.rootfs_tools =
        spinbox::rootfs::Tools::from_assets(&backend.assets, std::env::var_os("PATH").as_deref());
    let rootfs = match &args.rootfs {
        Some(dir) => {
            std::path::absolute(dir).map_err(|e| format!("--rootfs {}: {e}", dir.display()))?
        }
        None => backend.assets.rootfs.clone().ok_or(
            "no default rootfs in the provisioned assets: run scripts/provision, or pass --rootfs",
        )?,
    };
    let mut process = ProcessSpec::new(args.command.clone());
    process.env.extend(args.env.iter().cloned());
    process.cwd.clone_from(&args.cwd);
    (process.uid, process.gid) = parse_user(&args.user)?;
    let spec = ContainerSpec::new("main", rootfs, process);
    spec.validate().map_err(|e| error_chain(&e))?;
    let io = ProcessIo {
        stdin: stdin_source()?,
        stdout: Some(Box::new(tokio::io::stdout())),
        stderr: Some(Box::new(tokio::io::stderr())),
    };

    let start = Instant::now();
    let shim = Shim::new(id, config, Arc::new(QemuBackend::new(backend)));
    let timeline = if args.verbose {
        Timeline::Stderr
    } else {
        Timeline::Quiet
    };
    let printer = tokio::spawn(show_events(
        shim.events().ok_or("event stream already taken")?,
        start,
        args.console && args.verbose,
        None,
        timeline,
    ));
    let status = run_in_shim(&shim, spec, io, start, args.verbose).await;
    // Delete what was created; a failed or interrupted creation has torn itself down, and
    // shutdown then only ends the event stream.
    let report = match watching_signals_to(&shim, start, shim.delete(), true).await {
        Ok(report) => report,
        Err(_) => watching_signals_to(&shim, start, shim.shutdown(), true).await,
    };
    let _ = printer.await;
    if args.verbose {
        eprintln!("\n{report}");
    } else if report.has_errors() {
        eprintln!("spinbox: cleanup failed:\n{report}");
    }
    let status = status?;
    if args.verbose {
        eprintln!("{} command ended: {status}", stamp(start));
    }
    Ok(ExitCode::from(
        u8::try_from(status.code()).unwrap_or(u8::MAX),
    ))
}

/// Creates and starts the container, then waits for its command. A signal during the
/// creation ends it; during the wait, the first signal goes to every process of the
/// container and the next ones end the VM (through [`watching_signals`]).
async fn run_in_shim(
    shim: &Shim,
    spec: spinbox::task::ContainerSpec,
    io: spinbox::task::stdio::ProcessIo,
    start: Instant,
    verbose: bool,
) -> Result<spinbox::task::ExitStatus, Failed> {
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let created = async {
        shim.create_container(spec, io)
            .await
            .map_err(|e| format!("create failed: {}", error_chain(&e)))?;
        if verbose {
            if let Some(net) = shim.network() {
                eprintln!("{} network: {}", stamp(start), describe_network(&net));
            }
        }
        shim.start().await.map_err(|e| start_failure(&e))
    };
    tokio::select! {
        r = created => r?,
        signal = &mut interrupt => return Err(format!("interrupted during the creation ({signal})").into()),
    }
    tokio::select! {
        r = shim.wait() => r.map_err(|e| wait_failure(&e)),
        signal = &mut interrupt => {
            if verbose {
                eprintln!("{} {signal}: passing it to the command", stamp(start));
            }
            let number = match signal {
                "SIGINT" => 2,
                "SIGHUP" => 1,
                _ => 15,
            };
            if let Err(e) = shim.kill("", number, true).await {
                eprintln!("spinbox: cannot pass {signal} on: {}", error_chain(&e));
            }
            watching_signals_to(shim, start, shim.wait(), true)
                .await
                .map_err(|e| wait_failure(&e))
        }
    }
}

/// `10.88.0.2/16, route 0.0.0.0/0 via 10.88.0.1, dns 10.88.0.1`.
fn describe_network(net: &spinbox::net::GuestNetwork) -> String {
    let mut parts: Vec<String> = net
        .addresses
        .iter()
        .map(|(ip, prefix)| format!("{ip}/{prefix}"))
        .collect();
    for r in &net.routes {
        match r.gateway {
            Some(gw) => parts.push(format!("route {}/{} via {gw}", r.dst, r.prefix)),
            None => parts.push(format!("route {}/{}", r.dst, r.prefix)),
        }
    }
    for ns in &net.dns.nameservers {
        parts.push(format!("dns {ns}"));
    }
    parts.join(", ")
}

async fn check(containerd: bool) -> Result<(), String> {
    let path = std::env::var_os("PATH");
    let mut findings = check_host(path.as_deref(), &assets_dir()?).await;
    let shim_config = std::env::var_os("SPINBOX_SHIM_CONFIG")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(CONTAINERD_SHIM_CONFIG), PathBuf::from);
    if containerd {
        findings.extend(check_containerd(path.as_deref(), &shim_config));
    }
    let mut missing = 0;
    for f in &findings {
        match f.level {
            Level::Ok => println!("ok       {}", f.what),
            Level::Note => println!("note     {}", f.what),
            Level::Missing => {
                missing += 1;
                println!("MISSING  {}", f.what);
                if let Some(fix) = &f.fix {
                    println!("         fix: {fix}");
                }
            }
        }
    }
    if missing == 0 {
        println!("\nready: `spinbox run` can boot a VM here");
        if containerd {
            println!("ready: containerd can run io.containerd.spinbox.v1 tasks");
        }
        Ok(())
    } else {
        Err(format!(
            "{missing} requirement(s) missing; see the fixes above"
        ))
    }
}
