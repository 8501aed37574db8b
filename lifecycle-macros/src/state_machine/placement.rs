//! Derives written above `#[state_machine]`.
//!
//! rustc expands a `#[derive]` written above an attribute macro first, on the item as written,
//! and hands the attribute macro the item without it: the derive is invisible in the macro's
//! input, yet its impls exist. Deriving `Clone`, `Copy`, … again would then conflict with
//! them (a pile of E0119 and "use of moved value" errors). So the macro reads the derives
//! written above its attribute from the source file, and leaves those traits to them.
//!
//! Only plain `#[derive(...)]` attributes directly above the attribute are seen (doc comments
//! and other attributes in between are fine); one inside `#[cfg_attr(...)]` is not. When the
//! compiler cannot name the source file (an item built by another macro), nothing is seen:
//! write derives below `#[state_machine]`, where the macro reads them from its input.

use syn::parse::Parser as _;
use syn::Attribute;

/// The trait names (last path segment) derived above the attribute being expanded.
pub fn derived_above() -> Vec<String> {
    if !proc_macro::is_available() {
        return Vec::new();
    }
    let call = proc_macro::Span::call_site();
    let Some(text) = call
        .local_file()
        .and_then(|path| std::fs::read_to_string(path).ok())
    else {
        return Vec::new();
    };
    derives_before(&text, call.line(), call.column())
}

/// The derives in the attributes that end right before `line`:`column` (both 1-based) of
/// `text`, skipping blank lines and comments.
fn derives_before(text: &str, line: usize, column: usize) -> Vec<String> {
    let mut lines: Vec<&str> = text.lines().take(line.saturating_sub(1)).collect();
    if let Some(current) = text.lines().nth(line.saturating_sub(1)) {
        let end = current
            .char_indices()
            .nth(column.saturating_sub(1))
            .map_or(current.len(), |(i, _)| i);
        lines.push(&current[..end]);
    }
    // Walk up over attribute lines (a multi-line attribute ends with `]` and starts at `#[`),
    // comments and blank lines; stop at anything else (the end of the previous item).
    let mut attrs = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    for line in lines.iter().rev().map(|l| l.trim()) {
        if !block.is_empty() {
            block.push(line);
            if line.starts_with("#[") {
                attrs.push(block.iter().rev().copied().collect::<Vec<_>>().join("\n"));
                block.clear();
            }
        } else if line.is_empty() || line.starts_with("//") {
        } else if line.ends_with(']') {
            block.push(line);
            if line.starts_with("#[") {
                attrs.push(line.to_owned());
                block.clear();
            }
        } else {
            break;
        }
    }
    let mut derives = Vec::new();
    for text in attrs {
        let Ok(parsed) = Attribute::parse_outer.parse_str(&text) else {
            continue;
        };
        for attr in parsed.iter().filter(|a| a.path().is_ident("derive")) {
            let _ = attr.parse_nested_meta(|meta| {
                if let Some(last) = meta.path.segments.last() {
                    derives.push(last.ident.to_string());
                }
                Ok(())
            });
        }
    }
    derives
}

#[cfg(test)]
mod tests {
    use super::derives_before;

    #[test]
    fn reads_derives_above_the_attribute() {
        let text = "struct Before;\n\
                    /// Docs.\n\
                    #[derive(Debug, core::hash::Hash)]\n\
                    #[derive(\n    Clone,\n    Copy,\n)]\n\
                    // a comment\n\
                    #[state_machine(transitions(go: A => B))]\n\
                    enum S { A, B }\n";
        assert_eq!(
            derives_before(text, 9, 1),
            ["Clone", "Copy", "Debug", "Hash"]
        );
    }

    #[test]
    fn same_line_and_stops_at_the_previous_item() {
        let text =
            "#[derive(Hash)]\nstruct Before;\n#[derive(Debug)] #[state_machine] enum S { A }\n";
        assert_eq!(derives_before(text, 3, 18), ["Debug"]);
        assert!(derives_before("fn f() {}\n#[state_machine] enum S { A }", 2, 1).is_empty());
    }
}
