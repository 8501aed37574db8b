//! Identifier case conversions and the "did you mean" suggestion.

/// `ShuttingDown` → `shutting_down`, `HTTPServer` → `http_server`, `start_creating` unchanged.
pub fn to_snake_case(name: &str) -> String {
    let name = name.strip_prefix("r#").unwrap_or(name);
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                None | Some('_') => false,
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) => p.is_uppercase() && next.is_some_and(char::is_lowercase),
            };
            if boundary {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `hotplug_stop` → `HotplugStop`.
pub fn to_camel_case(name: &str) -> String {
    let name = name.strip_prefix("r#").unwrap_or(name);
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect::<String>()
            })
        })
        .collect()
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions
/// of two adjacent characters each count as one edit, so `Runnign` is one edit from `Running`
/// (plain Levenshtein counts two and can miss the suggestion for short names).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: the one before the previous one is needed for transpositions.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a plausible typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|&(d, c)| d <= (c.len().max(name.len()) / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case() {
        assert_eq!(to_snake_case("ShuttingDown"), "shutting_down");
        assert_eq!(to_snake_case("Idle"), "idle");
        assert_eq!(to_snake_case("HTTPServer"), "http_server");
        assert_eq!(to_snake_case("V2Ready"), "v2_ready");
        assert_eq!(to_snake_case("start_creating"), "start_creating");
        assert_eq!(to_snake_case("startCreating"), "start_creating");
    }

    #[test]
    fn camel_case() {
        assert_eq!(to_camel_case("hotplug_stop"), "HotplugStop");
        assert_eq!(to_camel_case("io_shutdown"), "IoShutdown");
        assert_eq!(to_camel_case("vm"), "Vm");
    }

    #[test]
    fn suggestions() {
        let states = ["Idle", "Creating", "Running"];
        assert_eq!(closest("Runing", states), Some("Running"));
        assert_eq!(closest("idle", states), Some("Idle"));
        assert_eq!(closest("Zebra", states), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn transposition_is_one_edit() {
        assert_eq!(edit_distance("Runnign", "Running"), 1);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        // Optimal string alignment: a transposed pair is not edited again.
        assert_eq!(edit_distance("ca", "abc"), 3);
        // Short names, where Levenshtein's 2 exceeds the threshold: still suggested.
        assert_eq!(closest("Pu", ["Up", "Done"]), Some("Up"));
        assert_eq!(closest("Dnoe", ["Up", "Done"]), Some("Done"));
    }
}
