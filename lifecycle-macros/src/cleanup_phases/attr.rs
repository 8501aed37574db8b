//! `#[cleanup_phases(...)]` options and the per-field `#[phase(...)]` attribute:
//!
//! ```text
//! args   := option (',' option)* ','?
//! option := 'phase' '=' Ident | 'orchestrator' '=' Ident | 'crate' '=' (Path | "string")
//! field  := '#[phase(' 'timeout' '=' "<integer><unit>" ')]'   unit: ms | s | m
//! ```

use crate::ctxt::Ctxt;
use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Ident, LitStr, Path};

/// The struct-level options.
#[derive(Default)]
pub struct PhasesArgs {
    pub phase: Option<Ident>,
    pub orchestrator: Option<Ident>,
    pub krate: Option<Path>,
}

fn once<T>(cx: &mut Ctxt, slot: &mut Option<(T, Span)>, meta: &ParseNestedMeta, value: T) {
    let span = meta
        .path
        .get_ident()
        .map_or_else(Span::call_site, Ident::span);
    if let Some((_, first)) = slot {
        let mut error = syn::Error::new(
            span,
            format!(
                "duplicate option `{}`",
                quote::ToTokens::to_token_stream(&meta.path)
            ),
        );
        error.combine(syn::Error::new(*first, "first given here"));
        cx.syn_error(error);
    } else {
        *slot = Some((value, span));
    }
}

/// Parses the struct-level options, recording errors in `cx`.
pub fn parse_args(cx: &mut Ctxt, args: proc_macro2::TokenStream) -> PhasesArgs {
    let mut phase = None;
    let mut orchestrator = None;
    let mut krate = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("phase") {
            let value: Ident = meta.value()?.parse()?;
            once(cx, &mut phase, &meta, value);
        } else if meta.path.is_ident("orchestrator") {
            let value: Ident = meta.value()?.parse()?;
            once(cx, &mut orchestrator, &meta, value);
        } else if meta.path.is_ident("crate") {
            let input = meta.value()?;
            let value: Path = if input.peek(LitStr) {
                input.parse::<LitStr>()?.parse()?
            } else {
                Path::parse_mod_style(input)?
            };
            once(cx, &mut krate, &meta, value);
        } else {
            return Err(meta.error(format!(
                "unknown option `{}`; expected `phase = Name`, `orchestrator = Name` or `crate = path`",
                quote::ToTokens::to_token_stream(&meta.path)
            )));
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        cx.syn_error(e);
    }
    PhasesArgs {
        phase: phase.map(|(v, _)| v),
        orchestrator: orchestrator.map(|(v, _)| v),
        krate: krate.map(|(v, _)| v),
    }
}

/// Parses `"500ms"`, `"5s"`, `"2m"` into (seconds, nanoseconds).
fn parse_duration(text: &str) -> Result<(u64, u32), String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit = unit.trim();
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("bad timeout `{text}`: expected an integer and a unit, like \"500ms\", \"5s\" or \"2m\""))?;
    let (secs, nanos) = match unit {
        "ms" => (
            value / 1000,
            u32::try_from(value % 1000).unwrap_or(0) * 1_000_000,
        ),
        "s" => (value, 0),
        "m" => (
            value
                .checked_mul(60)
                .ok_or_else(|| format!("bad timeout `{text}`: too large"))?,
            0,
        ),
        "" => return Err(format!("bad timeout `{text}`: missing unit (ms, s or m)")),
        other => {
            return Err(format!(
                "bad timeout `{text}`: unknown unit `{other}`; use ms, s or m"
            ))
        }
    };
    if secs == 0 && nanos == 0 {
        return Err(format!(
            "bad timeout `{text}`: a timeout must be greater than zero"
        ));
    }
    Ok((secs, nanos))
}

/// Whether an attribute is the `#[phase(...)]` helper (removed from the output).
pub fn is_phase_helper(attr: &Attribute) -> bool {
    attr.path().is_ident("phase")
}

/// Reads a field's `#[phase(...)]` attributes: its timeout, if any.
pub fn parse_field_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> Option<(u64, u32)> {
    let mut timeout: Option<((u64, u32), Span)> = None;
    for attr in attrs.iter().filter(|a| is_phase_helper(a)) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("timeout") {
                let lit: LitStr = meta.value()?.parse()?;
                match parse_duration(&lit.value()) {
                    Ok(value) => once(cx, &mut timeout, &meta, value),
                    Err(message) => cx.error_spanned_by(&lit, message),
                }
                Ok(())
            } else {
                Err(meta.error(format!(
                    "unknown phase option `{}`; expected `timeout = \"5s\"`",
                    quote::ToTokens::to_token_stream(&meta.path)
                )))
            }
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    timeout.map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok((0, 500_000_000)));
        assert_eq!(parse_duration("1500ms"), Ok((1, 500_000_000)));
        assert_eq!(parse_duration("5s"), Ok((5, 0)));
        assert_eq!(parse_duration("2m"), Ok((120, 0)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("five seconds").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }
}
