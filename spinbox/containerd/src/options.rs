//! The runtime options containerd passes with `Create`: spinbox reads the `config_path` of
//! `runtimeoptions.v1.Options`, which `ctr run --runtime-config-path FILE` and CRI's
//! `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.spinbox.options] ConfigPath`
//! send. Options of other types (such as runc's) are ignored.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::rt::WireType;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;

/// The message whose `config_path` (field 2) names the shim's config file.
pub const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// The config file the options name, if they are `runtimeoptions.v1.Options` with a
/// non-empty `config_path`.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, String> {
    let Some(any) = options else {
        return Ok(None);
    };
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name != RUNTIME_OPTIONS {
        return Ok(None);
    }
    let bad =
        |e: containerd_shim_protos::protobuf::Error| format!("invalid {RUNTIME_OPTIONS}: {e}");
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        let wire = WireType::new(tag & 7)
            .ok_or_else(|| format!("invalid {RUNTIME_OPTIONS}: wire type {}", tag & 7))?;
        if tag >> 3 == 2 && wire == WireType::LengthDelimited {
            path = Some(input.read_string().map_err(bad)?);
        } else {
            input.skip_field(wire).map_err(bad)?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: &[u8]) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value.to_vec();
        a
    }

    #[test]
    fn config_path_is_read_from_runtime_options() {
        // type_url = "x" (field 1), config_path = "/etc/s.json" (field 2).
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/s.json");
        let path = config_path(Some(&any("runtimeoptions.v1.Options", &value))).expect("valid");
        assert_eq!(path, Some(PathBuf::from("/etc/s.json")));
        let prefixed = any("type.googleapis.com/runtimeoptions.v1.Options", &value);
        assert_eq!(config_path(Some(&prefixed)).expect("valid"), path);
    }

    #[test]
    fn other_or_empty_options_name_nothing() {
        assert_eq!(config_path(None).expect("none"), None);
        let runc = any("containerd.runc.v1.Options", &[0x08, 1]);
        assert_eq!(config_path(Some(&runc)).expect("ignored"), None);
        let empty = any(RUNTIME_OPTIONS, &[0x12, 0]);
        assert_eq!(config_path(Some(&empty)).expect("empty"), None);
    }

    #[test]
    fn truncated_options_are_an_error() {
        let err = config_path(Some(&any(RUNTIME_OPTIONS, &[0x12, 9, b'/']))).expect_err("short");
        assert!(err.contains(RUNTIME_OPTIONS), "{err}");
    }
}
