//! `#[cleanup_phases(...)]` options and the per-field `#[phase(...)]` attribute, in the
//! shared option grammar ([`crate::options`]):
//!
//! ```text
//! args     := option (',' option)* ','?
//! option   := 'phase' '=' Ident | 'orchestrator' '=' Ident | 'crate' '=' (Path | "string")
//! field    := '#[phase(' 'timeout' '=' "<number><unit>" ')]'
//! number   := digits ('.' digits)?          unit := ms | s | m
//! ```

use crate::ctxt::Ctxt;
use crate::options::{eq_path, eq_value, Grammar};
use proc_macro2::TokenStream;
use syn::{Attribute, Ident, LitStr, Path};

/// The struct-level options, as given.
#[derive(Default)]
pub struct PhasesArgs {
    pub phase: Option<Ident>,
    pub orchestrator: Option<Ident>,
    pub krate: Option<Path>,
}

const ARGS: Grammar = Grammar {
    options: &[
        ("phase", "phase = Name"),
        ("orchestrator", "orchestrator = Name"),
        ("crate", "crate = path"),
    ],
};

const FIELD: Grammar = Grammar {
    options: &[("timeout", "timeout = \"5s\"")],
};

/// Parses the struct-level options, recording errors in `cx`; valid options are kept.
pub fn parse_args(cx: &mut Ctxt, args: TokenStream) -> PhasesArgs {
    let mut parsed = PhasesArgs::default();
    ARGS.parse(cx, args, |_, key, input| {
        if key == "phase" {
            parsed.phase = Some(eq_value(input)?);
        } else if key == "orchestrator" {
            parsed.orchestrator = Some(eq_value(input)?);
        } else {
            parsed.krate = Some(eq_path(input)?);
        }
        Ok(())
    });
    parsed
}

/// A field's timeout, as (seconds, nanoseconds) ready for `Duration::new`.
pub type Timeout = (u64, u32);

/// Parses a timeout: a decimal number (`250`, `1.5`, `0.25`) and a unit (`ms`, `s`, `m`),
/// optionally separated by spaces. Exact to the nanosecond: a value that is zero or needs
/// finer precision is refused rather than rounded, and so is one that overflows `Duration`.
fn parse_duration(text: &str) -> Result<Timeout, String> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let shape = || {
        format!(
            "bad timeout `{text}`: expected a number and a unit, like \"250ms\", \"1.5s\" or \"2m\""
        )
    };
    let trimmed = text.trim();
    if trimmed.starts_with('-') {
        return Err(format!(
            "bad timeout `{text}`: a timeout cannot be negative"
        ));
    }
    let number_len = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let well_formed =
        |digits: &str| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    if !well_formed(whole) || (number.contains('.') && !well_formed(fraction)) {
        return Err(shape());
    }
    // Trailing zeros add no precision: `2.000s` is `2s`.
    let fraction = fraction.trim_end_matches('0');
    let unit_nanos: u128 = match unit.trim_start() {
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "" => return Err(format!("bad timeout `{text}`: missing unit (ms, s or m)")),
        other => {
            return Err(format!(
                "bad timeout `{text}`: unknown unit `{other}`; use ms, s or m"
            ))
        }
    };
    let too_large = || format!("bad timeout `{text}`: too large");
    // Finer than a nanosecond in every unit: refused below, so the digits can be capped.
    if fraction.len() > 12 {
        return Err(format!(
            "bad timeout `{text}`: more precise than a nanosecond"
        ));
    }
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(0));
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| shape())?
    };
    let fraction_nanos = fraction_value * unit_nanos;
    if !fraction_nanos.is_multiple_of(scale) {
        return Err(format!(
            "bad timeout `{text}`: more precise than a nanosecond"
        ));
    }
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos / scale))
        .ok_or_else(too_large)?;
    if nanos == 0 {
        return Err(format!(
            "bad timeout `{text}`: a timeout must be greater than zero (leave it out for none)"
        ));
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| too_large())?;
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).map_err(|_| too_large())?;
    Ok((secs, subsec))
}

/// Whether an attribute is the `#[phase(...)]` helper (removed from the output).
pub fn is_phase_helper(attr: &Attribute) -> bool {
    attr.path().is_ident("phase")
}

/// Reads a field's `#[phase(...)]` attributes: its timeout, if any. Options repeated across
/// several `#[phase]` attributes are duplicates like options repeated within one.
pub fn parse_field_attrs(cx: &mut Ctxt, attrs: &[Attribute]) -> Option<Timeout> {
    let mut timeout = None;
    let mut tokens = TokenStream::new();
    for attr in attrs.iter().filter(|a| is_phase_helper(a)) {
        match attr.meta.require_list() {
            Ok(list) => {
                tokens.extend(list.tokens.clone());
                tokens.extend(quote::quote!(,));
            }
            Err(error) => cx.syn_error(error),
        }
    }
    FIELD.parse(cx, tokens, |cx, _, input| {
        let lit: LitStr = eq_value(input)?;
        match parse_duration(&lit.value()) {
            Ok(value) => timeout = Some(value),
            Err(message) => cx.error_spanned_by(&lit, message),
        }
        Ok(())
    });
    timeout
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn integers_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok((0, 500_000_000)));
        assert_eq!(parse_duration("1500ms"), Ok((1, 500_000_000)));
        assert_eq!(parse_duration("5s"), Ok((5, 0)));
        assert_eq!(parse_duration("2m"), Ok((120, 0)));
        assert_eq!(parse_duration(" 5 s "), Ok((5, 0)));
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_duration("1.5s"), Ok((1, 500_000_000)));
        assert_eq!(parse_duration("0.25s"), Ok((0, 250_000_000)));
        assert_eq!(parse_duration("0.5ms"), Ok((0, 500_000)));
        assert_eq!(parse_duration("1.25m"), Ok((75, 0)));
        assert_eq!(parse_duration("0.000000001s"), Ok((0, 1)));
        assert_eq!(parse_duration("2.000s"), Ok((2, 0)));
    }

    #[test]
    fn malformed_numbers() {
        let shape = "expected a number and a unit";
        for text in [
            "",
            "s",
            ".5s",
            "1.s",
            "1..5s",
            "1.5.2s",
            "five seconds",
            "1,5s",
        ] {
            let error = parse_duration(text).unwrap_err();
            assert!(
                error.contains(shape) || error.contains("unknown unit"),
                "{text}: {error}"
            );
        }
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5h")
            .unwrap_err()
            .contains("unknown unit `h`"));
    }

    #[test]
    fn out_of_range_values_are_refused_not_rounded() {
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("0s")
            .unwrap_err()
            .contains("greater than zero"));
        assert!(parse_duration("0.0ms")
            .unwrap_err()
            .contains("greater than zero"));
        let precise = "more precise than a nanosecond";
        assert!(parse_duration("0.0000000001s")
            .unwrap_err()
            .contains(precise));
        assert!(parse_duration("0.0000001ms").unwrap_err().contains(precise));
        assert_eq!(parse_duration("1.0000000000000s"), Ok((1, 0)));
        assert!(parse_duration("99999999999999999999s")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("18446744073709551615m")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(parse_duration("18446744073709551615s"), Ok((u64::MAX, 0)));
    }
}
