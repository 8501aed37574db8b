//! Host probes: which accelerator QEMU can really use here, and whether the binary
//! supports `-sandbox`. Results are cached per binary for the life of the process.
//!
//! # Choosing the accelerator
//!
//! `/dev/kvm` existing, or even answering `KVM_GET_API_VERSION`, does not mean QEMU can
//! run a guest with it: nested or paravirtual hypervisors can refuse the MSRs `-cpu host`
//! sets (QEMU aborts at start) or fail later. The probe therefore:
//!
//! 1. runs [`check_kvm`](crate::vm::kvm::check_kvm) (cheap; failure → TCG);
//! 2. starts `qemu -machine microvm -accel kvm -cpu host -S` with QMP on stdio and asks
//!    `query-status`. `-S` creates and initialises the vCPUs (this is where MSRs are set
//!    and where broken nested KVM aborts) without running guest code. An answer → KVM.
//!
//! Limits, stated plainly: the probe cannot see failures that only appear while guest
//! code runs (emulation failures, hangs at 100 % CPU in early boot). On such hosts set
//! pass [`AccelChoice::Fixed`] (the CLI's `SPINBOX_ACCEL=tcg`). `-machine none` is useless as a
//! probe: it creates no vCPU, so it succeeds wherever `/dev/kvm` opens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::process::Command;

use super::qmp::QmpClient;

/// How long the KVM probe may take before KVM is declared unusable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accelerator {
    /// Hardware virtualisation, with `-cpu host`.
    Kvm,
    /// QEMU's software emulator, with `-cpu max`.
    Tcg,
}

impl Accelerator {
    /// The `-accel` name.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }

    /// The `-cpu` model used with it.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accelerator::Kvm => "host",
            Accelerator::Tcg => "max",
        }
    }
}

/// An accelerator name other than `kvm` or `tcg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown accelerator {0:?}: expected `kvm` or `tcg`")]
pub struct UnknownAccelerator(pub String);

impl FromStr for Accelerator {
    type Err = UnknownAccelerator;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accelerator::Kvm),
            "tcg" => Ok(Accelerator::Tcg),
            _ => Err(UnknownAccelerator(s.to_owned())),
        }
    }
}

/// How the accelerator is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// The cached result of the KVM probe.
    #[default]
    Auto,
    /// This one, no probe.
    Fixed(Accelerator),
}

/// Why a probe concluded what it did (for logs and `spinbox check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The accelerator chosen.
    pub accelerator: Accelerator,
    /// Why, in words.
    pub reason: String,
}

fn accel_cache() -> &'static Mutex<HashMap<PathBuf, ProbeResult>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, ProbeResult>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn sandbox_cache() -> &'static Mutex<HashMap<PathBuf, bool>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, bool>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// Resolves `choice` for `binary`: the fixed one, or the (cached) probe's.
pub async fn resolve_accelerator(binary: &Path, choice: AccelChoice) -> Accelerator {
    match choice {
        AccelChoice::Fixed(a) => a,
        AccelChoice::Auto => probe_accelerator(binary).await.accelerator,
    }
}

/// The KVM probe, cached per binary. Never fails: anything wrong means TCG.
pub async fn probe_accelerator(binary: &Path) -> ProbeResult {
    let cached = accel_cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(binary)
        .cloned();
    if let Some(r) = cached {
        return r;
    }
    let (result, cacheable) = run_kvm_probe(binary).await;
    tracing::info!(
        binary = %binary.display(),
        accelerator = result.accelerator.qemu_name(),
        reason = %result.reason,
        "accelerator probed"
    );
    if cacheable {
        accel_cache()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(binary.to_owned(), result.clone());
    }
    result
}

/// Returns the result and whether it describes the host (a missing binary does not).
async fn run_kvm_probe(binary: &Path) -> (ProbeResult, bool) {
    let tcg = |reason: String| ProbeResult {
        accelerator: Accelerator::Tcg,
        reason,
    };
    if let Err(e) = crate::vm::kvm::check_kvm() {
        return (tcg(format!("KVM device unusable: {e}")), true);
    }
    let mut child = match Command::new(binary)
        .args([
            "-machine",
            "microvm",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "32",
            "-S",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (tcg(format!("cannot run {}: {e}", binary.display())), false),
    };
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return (tcg("probe stdio not captured".into()), false);
    };
    let answered = async {
        let qmp = QmpClient::from_io(stdout, stdin, PROBE_TIMEOUT).await?;
        let status = qmp.query_status().await?;
        let _ = qmp.quit(PROBE_TIMEOUT).await;
        Ok::<_, super::qmp::QmpError>(status)
    };
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, answered).await;
    // Whatever happened, the probe QEMU must not outlive this function.
    if let Ok(None) = child.try_wait() {
        let _ = child.start_kill();
    }
    let _ = child.wait().await;
    match outcome {
        Ok(Ok(status)) => (
            ProbeResult {
                accelerator: Accelerator::Kvm,
                reason: format!(
                    "QEMU initialised a KVM vCPU with -cpu host (status {})",
                    status.status
                ),
            },
            true,
        ),
        Ok(Err(e)) => (tcg(format!("QEMU could not start with KVM: {e}")), true),
        Err(_) => (
            tcg(format!("KVM probe gave no answer within {PROBE_TIMEOUT:?}")),
            true,
        ),
    }
}

/// Whether `binary` supports `-sandbox` (built with seccomp), from its `-help` text.
///
/// Cached per binary; a binary that cannot be run is reported as unsupported and not
/// cached (the spawn that follows reports the real error).
pub async fn sandbox_supported(binary: &Path) -> bool {
    if let Some(&s) = sandbox_cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(binary)
    {
        return s;
    }
    let out = Command::new(binary)
        .arg("-help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let Ok(Ok(out)) = tokio::time::timeout(PROBE_TIMEOUT, out).await else {
        return false;
    };
    let supported = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("-sandbox "));
    sandbox_cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(binary.to_owned(), supported);
    supported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerator_names() {
        assert_eq!("KVM".parse::<Accelerator>().unwrap(), Accelerator::Kvm);
        assert_eq!(" tcg ".parse::<Accelerator>().unwrap(), Accelerator::Tcg);
        assert!("hvf".parse::<Accelerator>().is_err());
        assert_eq!(Accelerator::Kvm.cpu_model(), "host");
        assert_eq!(Accelerator::Tcg.cpu_model(), "max");
    }

    #[tokio::test]
    async fn fixed_choice_skips_the_probe_and_missing_binaries_fall_back() {
        let missing = Path::new("/nonexistent/qemu");
        assert_eq!(
            resolve_accelerator(missing, AccelChoice::Fixed(Accelerator::Kvm)).await,
            Accelerator::Kvm
        );
        assert!(!sandbox_supported(missing).await);
        let r = probe_accelerator(missing).await;
        assert_eq!(r.accelerator, Accelerator::Tcg);
    }
}
