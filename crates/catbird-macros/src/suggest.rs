//! "Did you mean" suggestions for misspelt option names.

/// Returns the candidate closest to `unknown` when one is close enough to be
/// what the user meant. A candidate qualifies when it is a small edit away,
/// or when it contains `unknown` (or is contained in it), as `max_retries`
/// contains `retries`.
pub(crate) fn did_you_mean<'a>(unknown: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let unknown = unknown.to_ascii_lowercase();
    let close = candidates
        .iter()
        .map(|candidate| (edit_distance(&unknown, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 1 + candidate.len() / 4)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate);
    close.or_else(|| {
        candidates.iter().copied().find(|candidate| {
            unknown.len() >= 3
                && (candidate.contains(unknown.as_str()) || unknown.contains(candidate))
        })
    })
}

/// Computes the Levenshtein distance between `a` and `b`, counted in bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[&str] = &["name", "concurrency", "max_retries", "retention", "timeout"];

    #[test]
    fn suggests_close_spellings() {
        assert_eq!(did_you_mean("nme", OPTIONS), Some("name"));
        assert_eq!(did_you_mean("concurency", OPTIONS), Some("concurrency"));
        assert_eq!(did_you_mean("Timeout", OPTIONS), Some("timeout"));
    }

    #[test]
    fn suggests_names_containing_the_given_one() {
        assert_eq!(did_you_mean("retries", OPTIONS), Some("max_retries"));
        assert_eq!(did_you_mean("retention_period", OPTIONS), Some("retention"));
    }

    #[test]
    fn stays_quiet_when_nothing_is_close() {
        assert_eq!(did_you_mean("priority", OPTIONS), None);
        assert_eq!(did_you_mean("x", OPTIONS), None);
    }

    #[test]
    fn measures_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
