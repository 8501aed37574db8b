//! Kernel modules without `modules.dep`: each `.ko` names its dependencies in the
//! `depends=` string of its `.modinfo` section. This resolves a set of wanted modules to
//! the files to ship and an order to load them in (dependencies first).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Errors resolving modules.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The module tree could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A wanted module, or one it depends on, is not in the tree (and not built in).
    #[error("module {name} (needed by {needed_by}) is not in the kernel package")]
    NotFound {
        /// The module's name.
        name: String,
        /// Who needs it.
        needed_by: String,
    },
    /// Compressed modules are not handled (Debian 12 ships them uncompressed).
    #[error("module {} is compressed; only plain .ko files are supported", path.display())]
    Compressed {
        /// The file.
        path: PathBuf,
    },
}

/// Module name as the kernel spells it (`-` and `_` are the same).
fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Every `*.ko` under `dir`, by canonical name.
pub fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>, ModuleError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| ModuleError::Read {
            path: d.clone(),
            source,
        })?;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.strip_suffix(".ko") {
                    out.insert(canonical(stem), p.clone());
                } else if let Some(stem) = name
                    .strip_suffix(".ko.xz")
                    .or_else(|| name.strip_suffix(".ko.zst"))
                {
                    out.entry(canonical(stem)).or_insert(p.clone());
                }
            }
        }
    }
    Ok(out)
}

/// The `depends=` list of a module file's modinfo (NUL-separated `key=value` strings).
pub fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"depends=";
    for (i, w) in ko.windows(KEY.len()).enumerate() {
        if w == KEY && (i == 0 || ko[i - 1] == 0) {
            let rest = &ko[i + KEY.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            return String::from_utf8_lossy(&rest[..end])
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(canonical)
                .collect();
        }
    }
    Vec::new()
}

/// Resolves `wanted` (in order) to `(name, path)` pairs, dependencies before dependents.
/// A wanted module absent from the tree is assumed built in when `optional`.
pub fn resolve(
    tree: &BTreeMap<String, PathBuf>,
    wanted: &[(&str, bool)],
) -> Result<Vec<(String, PathBuf)>, ModuleError> {
    let mut order = Vec::new();
    let mut done = HashSet::new();
    for (name, optional) in wanted {
        let name = canonical(name);
        if !tree.contains_key(&name) {
            if *optional {
                continue;
            }
            return Err(ModuleError::NotFound {
                name,
                needed_by: "the agent".into(),
            });
        }
        visit(tree, &name, "the agent", &mut done, &mut order)?;
    }
    Ok(order)
}

fn visit(
    tree: &BTreeMap<String, PathBuf>,
    name: &str,
    needed_by: &str,
    done: &mut HashSet<String>,
    order: &mut Vec<(String, PathBuf)>,
) -> Result<(), ModuleError> {
    if !done.insert(name.to_owned()) {
        return Ok(());
    }
    let path = tree.get(name).ok_or_else(|| ModuleError::NotFound {
        name: name.to_owned(),
        needed_by: needed_by.to_owned(),
    })?;
    if path.extension().is_some_and(|e| e != "ko") {
        return Err(ModuleError::Compressed { path: path.clone() });
    }
    let bytes = std::fs::read(path).map_err(|source| ModuleError::Read {
        path: path.clone(),
        source,
    })?;
    for dep in depends(&bytes) {
        visit(tree, &dep, name, done, order)?;
    }
    order.push((name.to_owned(), path.clone()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_is_read_from_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring\0name=virtio_pci\0";
        assert_eq!(depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"nothing").is_empty());
        // `xdepends=` is another key, not ours.
        assert!(depends(b"\0xdepends=a\0").is_empty());
    }

    #[test]
    fn resolves_dependencies_first_once() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, deps: &str| {
            std::fs::write(
                dir.path().join(format!("{name}.ko")),
                format!("\0depends={deps}\0"),
            )
            .unwrap();
        };
        put("virtio_ring", "");
        put("virtio", "");
        put("virtio_pci", "virtio,virtio_ring");
        put("vsock", "");
        put(
            "vmw_vsock_virtio_transport_common",
            "vsock,virtio,virtio_ring",
        );
        put(
            "vmw_vsock_virtio_transport",
            "vmw_vsock_virtio_transport_common,virtio,vsock",
        );
        let tree = index(dir.path()).unwrap();
        let order: Vec<String> = resolve(
            &tree,
            &[
                ("virtio_pci", false),
                ("vmw_vsock_virtio_transport", false),
                ("button", true),
            ],
        )
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
        assert_eq!(
            order,
            [
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        assert!(matches!(
            resolve(&tree, &[("nope", false)]),
            Err(ModuleError::NotFound { .. })
        ));
    }
}
