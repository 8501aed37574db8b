//! `check_kvm()`: is `/dev/kvm` present, accessible and speaking the stable KVM API?
//!
//! This only proves the *device* works. Whether QEMU can actually run a guest with it
//! (nested or software hypervisors often cannot) is decided by the QEMU backend's
//! accelerator probe ([`super::qemu::probe_accelerator`]).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The only KVM API version Linux has ever shipped since 2.6.22; anything else is not KVM.
pub const KVM_API_VERSION: i32 = 12;

/// Default location of the KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";

mod ioctl {
    // KVM_GET_API_VERSION is `_IO(KVMIO, 0x00)` with KVMIO = 0xAE and returns the version.
    // Not `ioctl_none!`: that calls the variadic ioctl(2) with no third argument, so the
    // kernel sees whatever is left in the argument register, and KVM answers EINVAL to
    // any non-zero argument. `ioctl_write_int_bad!` lets us pass an explicit 0.
    nix::ioctl_write_int_bad!(kvm_get_api_version, nix::request_code_none!(0xAE, 0x00));
}

/// Why KVM cannot be used on this host.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The device node does not exist: the kernel lacks KVM or its module is not loaded.
    #[error(
        "{} does not exist: load the kvm_intel or kvm_amd module, or enable \
         virtualisation (VT-x/AMD-V) in the firmware or the parent hypervisor",
        path.display()
    )]
    Missing {
        /// The device path that was opened.
        path: PathBuf,
    },
    /// The device exists but this user may not open it read-write.
    #[error(
        "permission denied opening {}: add the user to the `kvm` group \
         (`sudo usermod -aG kvm $USER`, then log in again) or run as root",
        path.display()
    )]
    PermissionDenied {
        /// The device path that was opened.
        path: PathBuf,
    },
    /// Opening the device failed for another reason.
    #[error("cannot open {}", path.display())]
    Open {
        /// The device path that was opened.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The `KVM_GET_API_VERSION` ioctl failed: the node is not a KVM device.
    #[error("{} did not answer KVM_GET_API_VERSION; it is not a KVM device", path.display())]
    NotKvm {
        /// The device path that was opened.
        path: PathBuf,
        /// The ioctl's error.
        #[source]
        source: nix::Error,
    },
    /// The device answered with an API version other than [`KVM_API_VERSION`].
    #[error(
        "{} reports KVM API version {found}, expected {KVM_API_VERSION}: \
         the kernel's KVM is unsupported",
        path.display()
    )]
    WrongVersion {
        /// The device path that was opened.
        path: PathBuf,
        /// The version the device reported.
        found: i32,
    },
}

/// Checks that `/dev/kvm` can be opened and reports API version 12.
///
/// Returns the API version on success.
pub fn check_kvm() -> Result<i32, KvmError> {
    check_kvm_at(Path::new(KVM_DEVICE))
}

/// [`check_kvm`] against another device path (for tests and unusual hosts).
pub fn check_kvm_at(path: &Path) -> Result<i32, KvmError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => KvmError::Missing {
                path: path.to_owned(),
            },
            io::ErrorKind::PermissionDenied => KvmError::PermissionDenied {
                path: path.to_owned(),
            },
            _ => KvmError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
    // SAFETY: the fd is valid and open for the whole call (`file` outlives it), and
    // KVM_GET_API_VERSION takes an integer argument that must be 0, is passed no pointer
    // and writes no memory; on a non-KVM file the kernel answers ENOTTY.
    let version = unsafe { ioctl::kvm_get_api_version(file.as_raw_fd(), 0) }.map_err(|source| {
        KvmError::NotKvm {
            path: path.to_owned(),
            source,
        }
    })?;
    if version == KVM_API_VERSION {
        Ok(version)
    } else {
        Err(KvmError::WrongVersion {
            path: path.to_owned(),
            found: version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_reported_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_kvm_at(&dir.path().join("kvm")).unwrap_err();
        assert!(matches!(err, KvmError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("kvm_intel"));
    }

    #[test]
    fn a_non_kvm_device_is_not_kvm() {
        let err = check_kvm_at(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, KvmError::NotKvm { .. }), "{err:?}");
    }

    #[test]
    fn real_device_answers_twelve_when_usable() {
        // Hosts without a usable /dev/kvm must produce a typed error, never a panic; where
        // the device opens, the version must come back (not EINVAL from a stray argument).
        match check_kvm() {
            Ok(v) => assert_eq!(v, KVM_API_VERSION),
            Err(e @ KvmError::NotKvm { .. }) if Path::new(KVM_DEVICE).exists() => {
                panic!("{KVM_DEVICE} exists but the ioctl failed: {e:?}")
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
