//! Key-range helpers shared by every backend.

/// The smallest key greater than every key that starts with `prefix`, or `None` when no
/// such key exists (the prefix is empty or all `0xff`), i.e. the scan has no upper bound.
///
/// `[1, 2]` → `[1, 3]`; `[1, 0xff]` → `[2]`; `[0xff, 0xff]` → `None`.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return Some(end);
        }
        end.pop();
    }
    None
}

/// True when `key` lies in `[start, end)`, where an empty `end` means "no upper bound".
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

/// True when the range `[start, end)` is certainly empty (`end` non-empty and `end <= start`).
pub fn range_is_empty(start: &[u8], end: &[u8]) -> bool {
    !end.is_empty() && end <= start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_table() {
        assert_eq!(prefix_successor(b""), None);
        assert_eq!(prefix_successor(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff; 16]), None);
        assert_eq!(prefix_successor(&[0]), Some(vec![1]));
    }

    #[test]
    fn range_membership() {
        assert!(in_range(b"b", b"a", b"c"));
        assert!(!in_range(b"c", b"a", b"c"));
        assert!(in_range(b"zzz", b"a", b""));
        assert!(!in_range(b"", b"a", b""));
        assert!(range_is_empty(b"b", b"a"));
        assert!(range_is_empty(b"a", b"a"));
        assert!(!range_is_empty(b"a", b""));
    }
}
