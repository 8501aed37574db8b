//! Where the shim finds its assets and settings.
//!
//! One JSON file, looked up in this order:
//! 1. the `config_path` of the runtime options containerd passes with `Create`
//!    (`ctr run --runtime-config-path FILE`, or CRI's `options = { ConfigPath = "FILE" }`);
//! 2. the file named by [`CONFIG_ENV`] in the environment containerd starts shims with;
//! 3. [`DEFAULT_CONFIG`]. When that file does not exist, the defaults below apply.
//!
//! Keys: `assets` (the provisioned assets directory, default [`DEFAULT_ASSETS`]) and every key
//! of spinbox's `ShimConfig` file form (`state_root`, default [`DEFAULT_STATE_ROOT`];
//! `start_timeout_ms`, `rpc_timeout_ms`, `cpus`, `memory_mib`, `max_cpus`, `max_memory_mib`,
//! `hotplug_auto`, `cpu_policy`, `memory_policy`, `rootfs_transport`, the
//! `shutdown_*_ms` escalation steps, …). Unknown keys are errors.

use std::path::{Path, PathBuf};

use spinbox::rootfs::Tools;
use spinbox::shim::ShimConfig;
use spinbox::vm::assets::Assets;
use spinbox::vm::qemu::QemuBackendConfig;

/// The config file read when neither the runtime options nor the environment name one.
pub const DEFAULT_CONFIG: &str = spinbox::check::CONTAINERD_SHIM_CONFIG;
/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "SPINBOX_SHIM_CONFIG";
/// The assets directory when the config names none.
pub const DEFAULT_ASSETS: &str = spinbox::check::CONTAINERD_SHIM_ASSETS;
/// The state root when the config names none; each containerd namespace gets a directory in
/// it.
pub const DEFAULT_STATE_ROOT: &str = "/run/spinbox/containerd";

/// The shim's settings for one task.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file they came from (`None`: the defaults).
    pub file: Option<PathBuf>,
    /// The lifecycle settings; `state_root` is already the namespace's directory.
    pub shim: ShimConfig,
    /// The QEMU backend's settings (the assets).
    pub backend: QemuBackendConfig,
}

/// Which config file applies: the runtime options' path, else [`CONFIG_ENV`], else
/// [`DEFAULT_CONFIG`] when it exists. `None`: the defaults.
pub fn config_file(from_options: Option<PathBuf>) -> Result<Option<PathBuf>, String> {
    if let Some(path) = from_options.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(Some(path));
    }
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Ok(Some(PathBuf::from(path)));
    }
    let default = Path::new(DEFAULT_CONFIG);
    match default.try_exists() {
        Ok(true) => Ok(Some(default.to_owned())),
        Ok(false) => Ok(None),
        Err(e) => Err(format!("cannot look for {DEFAULT_CONFIG}: {e}")),
    }
}

fn read(file: Option<&Path>) -> Result<(PathBuf, ShimConfig), String> {
    let base = ShimConfig {
        state_root: PathBuf::from(DEFAULT_STATE_ROOT),
        ..ShimConfig::default()
    };
    let Some(file) = file else {
        return Ok((PathBuf::from(DEFAULT_ASSETS), base));
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the shim config {}: {e}", file.display()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("invalid shim config {}: {e}", file.display()))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| format!("invalid shim config {}: not a JSON object", file.display()))?;
    let assets = match object.remove("assets") {
        None => PathBuf::from(DEFAULT_ASSETS),
        Some(serde_json::Value::String(s)) if Path::new(&s).is_absolute() => PathBuf::from(s),
        Some(other) => {
            return Err(format!(
                "invalid shim config {}: `assets` must be an absolute path, not {other}",
                file.display()
            ))
        }
    };
    let shim = ShimConfig::from_json_over(&value.to_string(), base)
        .map_err(|e| format!("shim config {}: {}", file.display(), chain(&e)))?;
    if shim.state_root.is_relative() {
        return Err(format!(
            "shim config {}: `state_root` must be an absolute path",
            file.display()
        ));
    }
    Ok((assets, shim))
}

/// Loads the settings for a task of `namespace` from `file` (see [`config_file`]).
pub fn load(file: Option<PathBuf>, namespace: &str) -> Result<Settings, String> {
    let (assets_dir, mut shim) = read(file.as_deref())?;
    shim.state_root = shim.state_root.join(namespace);
    shim.validate().map_err(|e| chain(&e))?;
    let assets = Assets::load(&assets_dir).map_err(|e| {
        format!(
            "spinbox's VM assets are not in {} ({}): provision them (scripts/provision) and \
             name the directory as `assets` in {}",
            assets_dir.display(),
            chain(&e),
            file.as_deref()
                .map_or(DEFAULT_CONFIG.into(), |f| f.display().to_string()),
        )
    })?;
    shim.rootfs_tools = Tools::from_assets(&assets, std::env::var_os("PATH").as_deref());
    Ok(Settings {
        file,
        shim,
        backend: QemuBackendConfig::new(assets),
    })
}

/// An error and its sources, one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    spinbox::check::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.json");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn a_file_sets_assets_state_root_and_timeouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            r#"{"assets": "/nowhere/assets", "state_root": "/tmp/st", "rpc_timeout_ms": 1234}"#,
        );
        let (assets, shim) = read(Some(&file)).expect("valid");
        assert_eq!(assets, Path::new("/nowhere/assets"));
        assert_eq!(shim.state_root, Path::new("/tmp/st"));
        assert_eq!(shim.rpc_timeout, std::time::Duration::from_millis(1234));
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let (assets, shim) = read(None).expect("defaults");
        assert_eq!(assets, Path::new(DEFAULT_ASSETS));
        assert_eq!(shim.state_root, Path::new(DEFAULT_STATE_ROOT));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("[1]", "not a JSON object"),
            (
                r#"{"assets": "relative"}"#,
                "`assets` must be an absolute path",
            ),
            (r#"{"state_root": "relative"}"#, "must be an absolute path"),
            (r#"{"no_such_key": 1}"#, "no_such_key"),
            ("{", "invalid shim config"),
        ];
        for (text, expected) in cases {
            let file = write(dir.path(), text);
            let err = read(Some(&file)).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = read(Some(&dir.path().join("missing.json"))).expect_err("missing");
        assert!(err.contains("cannot read the shim config"), "{err}");
    }

    #[test]
    fn missing_assets_name_the_directory_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            &format!(r#"{{"assets": "{}"}}"#, dir.path().join("none").display()),
        );
        let err = load(Some(file), "default").expect_err("no assets");
        assert!(err.contains("VM assets are not in"), "{err}");
        assert!(err.contains("scripts/provision"), "{err}");
    }
}
