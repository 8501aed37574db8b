//! The per-VM state directory: a private (0700) folder holding the VM's sockets and logs.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::config::VmId;

/// Environment variable that overrides the default state root.
pub const STATE_ROOT_ENV: &str = "SPINBOX_STATE_ROOT";

/// Errors creating or removing a state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// The root directory could not be created.
    #[error("cannot create state root {}", path.display())]
    CreateRoot {
        /// The root path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A directory for this VM ID already exists (another VM, or a leftover of a crash).
    #[error("state directory {} already exists", path.display())]
    AlreadyExists {
        /// The VM's directory.
        path: PathBuf,
    },
    /// The VM's directory could not be created.
    #[error("cannot create state directory {}", path.display())]
    Create {
        /// The VM's directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The VM's directory could not be removed.
    #[error("cannot remove state directory {}", path.display())]
    Remove {
        /// The VM's directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The default root for state directories: `$SPINBOX_STATE_ROOT`, else
/// `$XDG_RUNTIME_DIR/spinbox`, else `/run/spinbox`.
pub fn default_state_root() -> PathBuf {
    if let Some(root) = std::env::var_os(STATE_ROOT_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(root);
    }
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("spinbox");
    }
    PathBuf::from("/run/spinbox")
}

/// A VM's private directory, `<root>/<vm id>`, mode 0700.
///
/// It is removed by [`StateDir::remove`]; dropping it without removing leaves it in place
/// (the owning instance removes it during shutdown, after QEMU has been reaped).
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Creates `<root>/<id>` with mode 0700 (the root is created too, also 0700).
    ///
    /// Fails if the directory already exists, so two VMs never share sockets.
    pub fn create(root: &Path, id: &VmId) -> Result<Self, StateDirError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| StateDirError::CreateRoot {
                path: root.to_owned(),
                source,
            })?;
        // `id` is validated: no separators, no `..`, so this stays under `root`.
        let path = root.join(id.as_str());
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(Self { path }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StateDirError::AlreadyExists { path })
            }
            Err(source) => Err(StateDirError::Create { path, source }),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The QMP socket's path.
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// The serial console log's path.
    pub fn serial_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// QEMU's stderr (and stdout) log.
    pub fn stderr_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }

    /// Resolves a path that is relative to this directory; absolute paths are kept.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.join(p)
        }
    }

    /// Removes the directory and everything in it. Already gone counts as success.
    pub fn remove(&self) -> Result<(), StateDirError> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateDirError::Remove {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let id = VmId::new("vm-1").unwrap();
        let dir = StateDir::create(&root.path().join("nested"), &id).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(dir.qmp_socket().starts_with(dir.path()));
        assert!(matches!(
            StateDir::create(&root.path().join("nested"), &id),
            Err(StateDirError::AlreadyExists { .. })
        ));
        std::fs::write(dir.serial_log(), b"x").unwrap();
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        dir.remove().unwrap();
    }
}
