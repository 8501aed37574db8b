//! `spinbox`: run a real VM through the shim's whole lifecycle, or check what the host lacks.
//!
//! ```text
//! spinbox run [--kernel PATH] [--initrd PATH] [--accel auto|kvm|tcg] [--cpus N]
//!             [--memory MIB] [--config FILE] [--keep] [--console]
//! spinbox check
//! ```

use clap::{Parser, Subcommand, ValueEnum};
use spinbox::cleanup::CleanupPhase;
use spinbox::shim::{Shim, ShimConfig, ShimEvent};
use spinbox::vm::assets::{assets_dir, Assets};
use spinbox::vm::config::VmId;
use spinbox::vm::host_probe::{probe_accelerator, AccelChoice, Accelerator};
use spinbox::vm::kvm::check_kvm;
use spinbox::vm::manager::KernelImage;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
    Run(RunArgs),
    /// Tell what the host lacks (KVM, QEMU, kernel, initramfs, vsock) and how to get it.
    Check,
}

#[derive(Clone, Copy, ValueEnum)]
enum Accel {
    /// Probe: KVM where it really works, else TCG (`SPINBOX_ACCEL` overrides).
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
    /// JSON file of timeouts and settings (see `ShimConfig::from_file`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Keep the VM running until Ctrl-C, then delete it.
    #[arg(long)]
    keep: bool,
    /// Show the guest's serial console.
    #[arg(long)]
    console: bool,
    /// The VM's ID.
    #[arg(long, default_value = "spinbox-demo")]
    id: String,
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
            Command::Run(args) => run(args).await,
            Command::Check => check().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("spinbox: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Seconds since the start, for the timeline.
fn stamp(start: Instant) -> String {
    format!("[{:>7.3}s]", start.elapsed().as_secs_f64())
}

fn config_for(args: &RunArgs) -> Result<ShimConfig, String> {
    let mut config = match &args.config {
        Some(path) => ShimConfig::from_file(path).map_err(|e| error_chain(&e))?,
        None => ShimConfig::default(),
    };
    let mut assets = Assets::locate().map_err(|e| {
        format!(
            "VM assets not found in {} ({}); provision them with `scripts/provision`",
            assets_dir().display(),
            error_chain(&e)
        )
    })?;
    if let Some(kernel) = &args.kernel {
        if !kernel.is_file() {
            return Err(format!("kernel {} does not exist", kernel.display()));
        }
        // An ELF image boots through PVH as vmlinux; anything else is taken as a bzImage.
        let is_elf = std::fs::read(kernel).is_ok_and(|bytes| bytes.starts_with(b"\x7fELF"));
        if is_elf {
            assets.vmlinux.clone_from(kernel);
            config.kernel = KernelImage::Vmlinux;
        } else {
            assets.bzimage.clone_from(kernel);
            config.kernel = KernelImage::BzImage;
        }
    }
    if let Some(initrd) = &args.initrd {
        if !initrd.is_file() {
            return Err(format!("initrd {} does not exist", initrd.display()));
        }
        assets.initramfs.clone_from(initrd);
    }
    config.assets = Some(assets);
    config.accel = match args.accel {
        Accel::Auto => AccelChoice::Auto,
        Accel::Kvm => AccelChoice::Fixed(Accelerator::Kvm),
        Accel::Tcg => AccelChoice::Fixed(Accelerator::Tcg),
    };
    if let Some(cpus) = args.cpus {
        if cpus == 0 {
            return Err("--cpus must be at least 1".to_owned());
        }
        config.cpus = cpus;
    }
    if let Some(memory) = args.memory {
        if memory < 64 {
            return Err("--memory must be at least 64 (MiB)".to_owned());
        }
        config.memory_mib = memory;
    }
    Ok(config)
}

/// `error: cause: cause` on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " | ")
}

/// Prints events as they arrive; ends with the stream.
async fn show_events(
    mut events: tokio::sync::mpsc::UnboundedReceiver<ShimEvent>,
    start: Instant,
    console: bool,
) {
    while let Some(event) = events.recv().await {
        let line = match event {
            ShimEvent::State { from, to } => format!("state  {from} → {to}"),
            ShimEvent::Booted(t) => format!(
                "booted: agent ready {:.2?} after QEMU start, first ping {:.0?} later",
                t.ready, t.ready_to_first_ping
            ),
            ShimEvent::PhaseStarted(phase) => format!("phase  {phase} …"),
            ShimEvent::PhaseFinished {
                phase,
                error,
                duration,
            } => match error {
                None => format!("phase  {phase} done in {duration:.1?}"),
                Some(e) => format!("phase  {phase} FAILED after {duration:.1?}: {e}"),
            },
            ShimEvent::VmExited(cause) => format!("vm     exited: {cause}"),
            ShimEvent::Console(text) if console => format!("guest  {text}"),
            ShimEvent::Console(_) => continue,
        };
        clear_spinner();
        println!("{} {line}", stamp(start));
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
        .map_err(|e: spinbox::vm::config::ConfigError| error_chain(&e))?;
    let config = config_for(&args)?;
    let start = Instant::now();
    let shim = Shim::new(id, config);
    let printer = tokio::spawn(show_events(
        shim.events().ok_or("event stream already taken")?,
        start,
        args.console,
    ));
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);

    let created = tokio::select! {
        r = shim.create() => r,
        () = spin("booting the VM", start) => unreachable!("the spinner never ends"),
        _ = &mut interrupted => {
            clear_spinner();
            println!("{} interrupted: shutting down", stamp(start));
            let report = shim.shutdown().await;
            let _ = printer.await;
            println!("\n{report}");
            return Err("interrupted during boot".to_owned());
        }
    };
    clear_spinner();
    let outcome = match created {
        Ok(created) => {
            println!(
                "{} agent: kernel {} ({}), uptime {:.2?}, agent {}; QEMU pid {}",
                stamp(start),
                created.info.kernel_release,
                created.info.kernel_version,
                created.info.uptime,
                created.info.agent_version,
                created.qemu_pid
            );
            let mut reason = None;
            if args.keep {
                println!("{} VM running; Ctrl-C to delete it", stamp(start));
                let _ = (&mut interrupted).await;
                reason = Some("interrupted");
            }
            if reason.is_some() {
                println!("{} shutting down", stamp(start));
                Ok(shim.shutdown().await)
            } else {
                shim.delete()
                    .await
                    .map_err(|e| format!("delete refused: {e}"))
            }
        }
        Err(e) => {
            let reason = format!("create failed: {}", error_chain(&e));
            let report = shim.shutdown().await;
            let _ = printer.await;
            println!("\n{report}");
            return Err(reason);
        }
    };
    let report = outcome?;
    let _ = printer.await;
    println!("\n{report}");
    if let Some(cause) = shim.exit_cause() {
        println!("VM exit: {cause}");
    }
    println!("total {:.2?}", start.elapsed());
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

async fn check() -> Result<(), String> {
    let mut missing = 0;
    let mut line = |ok: bool, what: String, fix: &str| {
        if ok {
            println!("ok       {what}");
        } else {
            missing += 1;
            println!("MISSING  {what}\n         fix: {fix}");
        }
    };
    let qemu = which("qemu-system-x86_64");
    match &qemu {
        Some(path) => {
            let version = std::process::Command::new(path)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.lines().next().map(str::to_owned))
                .unwrap_or_else(|| "unknown version".to_owned());
            line(true, format!("QEMU: {} ({version})", path.display()), "");
        }
        None => line(
            false,
            "QEMU: qemu-system-x86_64 not on PATH".to_owned(),
            "apt-get install qemu-system-x86",
        ),
    }
    match check_kvm() {
        Ok(version) => {
            let usable = match &qemu {
                Some(path) => {
                    let probe = probe_accelerator(path).await;
                    format!("probe picks {:?}: {}", probe.accelerator, probe.reason)
                }
                None => "cannot probe without QEMU".to_owned(),
            };
            println!("ok       KVM: /dev/kvm answers API version {version}; {usable}");
        }
        Err(e) => println!(
            "note     KVM unusable ({}); VMs run under TCG (software emulation), slower but complete",
            error_chain(&e)
        ),
    }
    match Assets::locate() {
        Ok(assets) => {
            line(
                true,
                format!(
                    "kernel: {} {} ({})",
                    assets.kernel_package,
                    assets.kernel_package_version,
                    assets.vmlinux.display()
                ),
                "",
            );
            line(
                true,
                format!("initramfs: {}", assets.initramfs.display()),
                "",
            );
            line(
                true,
                format!(
                    "vhost-device-vsock: {}",
                    assets.vhost_device_vsock.display()
                ),
                "",
            );
        }
        Err(e) => line(
            false,
            format!(
                "kernel, initramfs, vhost-device-vsock in {} ({})",
                assets_dir().display(),
                error_chain(&e)
            ),
            "scripts/provision",
        ),
    }
    if std::path::Path::new("/dev/vhost-vsock").exists() {
        println!("ok       /dev/vhost-vsock present (AF_VSOCK transport possible)");
    } else {
        println!("note     no /dev/vhost-vsock: the agent is reached through vhost-device-vsock (hybrid vsock)");
    }
    if missing == 0 {
        println!("\nready: `spinbox run` can boot a VM here");
        Ok(())
    } else {
        Err(format!(
            "{missing} requirement(s) missing; see the fixes above"
        ))
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
}
