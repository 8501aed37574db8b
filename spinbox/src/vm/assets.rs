//! The VM assets a real guest boots from: QEMU, the Debian kernel (bzImage and the
//! extracted ELF `vmlinux`), the agent initramfs and `vhost-device-vsock`.
//!
//! They are provisioned by `scripts/provision` (the `spinbox-assets` tool) into an assets
//! directory holding a [`manifest.json`](MANIFEST_FILE) that names them. The manifest's
//! format belongs to its producer and lives in the `spinbox_manifest` crate; this module
//! re-exports it. [`Assets::load`] reads a directory the caller names; the library reads no
//! environment variable and knows no build path. Programs find the directory at their edge,
//! e.g. from `spinbox_manifest::ASSETS_ENV` or with `spinbox_manifest::dir_beside_exe`.

pub use spinbox_manifest::{Assets, AssetsError, MANIFEST_FILE};
