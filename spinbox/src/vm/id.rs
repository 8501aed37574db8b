//! [`VmId`]: a VM's identifier, valid under containerd's identifier rules.

use std::fmt;
use std::str::FromStr;

/// Longest VM ID accepted, as in containerd's identifier rules.
pub const MAX_ID_LEN: usize = 76;

/// A VM ID broke containerd's identifier rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid VM id {id:?}: {why} (allowed: letters, digits and `_ . -` between them, \
     starting with a letter or digit, at most {MAX_ID_LEN} characters)"
)]
pub struct IdError {
    /// The rejected ID (as given, cut at 100 characters).
    pub id: String,
    /// Which rule it breaks.
    pub why: &'static str,
}

/// A VM identifier, valid under containerd's identifier rules: `[A-Za-z0-9]+` groups
/// joined by single `.`, `_` or `-`, at most 76 characters. It never contains a path
/// separator or `..`, so it is safe as a directory name and as a QEMU value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmId(String);

impl VmId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        let bad = |why| IdError {
            id: id.chars().take(100).collect(),
            why,
        };
        if id.is_empty() {
            return Err(bad("empty"));
        }
        if id.len() > MAX_ID_LEN {
            return Err(bad("too long"));
        }
        let mut prev_sep = true; // the first character must not be a separator
        for c in id.chars() {
            if c.is_ascii_alphanumeric() {
                prev_sep = false;
            } else if matches!(c, '.' | '_' | '-') {
                if prev_sep {
                    return Err(bad("a separator must sit between letters or digits"));
                }
                prev_sep = true;
            } else {
                return Err(bad("contains a character outside [A-Za-z0-9._-]"));
            }
        }
        if prev_sep {
            return Err(bad("ends with a separator"));
        }
        Ok(Self(id))
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for VmId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_ids_are_refused_by_vm_id() {
        let long = "a".repeat(MAX_ID_LEN + 1);
        for id in [
            "", "../x", "a/b", "..", ".a", "a.", "a..b", "a,b", "a=b", "a\nb", "a b", "-a", "é",
            &long,
        ] {
            assert!(VmId::new(id).is_err(), "{id:?} accepted");
        }
        for id in ["a", "A1", "a.b-c_d", &"b".repeat(MAX_ID_LEN)] {
            assert!(VmId::new(id).is_ok(), "{id:?} refused");
        }
    }
}
