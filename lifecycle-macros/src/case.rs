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

/// Levenshtein distance, for suggesting the closest declared name.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
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
}
