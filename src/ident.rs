//! The rule every identifier that travels in a message header or envelope field obeys
//! (organization ids, correlation ids), and the one the built-in events' identifier
//! fields share.

/// Characters that are never allowed inside an identifier besides control characters:
/// bidirectional marks, embeddings, overrides and isolates (they make an id display as
/// another one: `"\u{202e}gro-1"` shows as `1-org`), and the Unicode line and paragraph
/// separators.
fn is_forbidden_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Checks `value` against the identifier rule: not empty, at most `max_bytes` bytes, no
/// whitespace at either end (so never whitespace-only), no control character (`\0`,
/// `\t`, `\r`, `\n`, …: Unicode category Cc) and no bidirectional-formatting or
/// line-separator character anywhere. Everything else — letters of any script, digits,
/// punctuation, inner spaces — is allowed.
pub(crate) fn check_identifier(value: &str, max_bytes: usize) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    if value.len() > max_bytes {
        return Err(if max_bytes == 255 {
            "is longer than 255 bytes"
        } else {
            "is too long"
        });
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if value.chars().any(is_forbidden_format) {
        return Err("contains a bidirectional-formatting or line-separator character");
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err("starts or ends with whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_rule() {
        for good in [
            "org-1",
            "a",
            "Örg 7",
            "組織-1",
            "org.1_x:y/z",
            &"x".repeat(255),
        ] {
            assert_eq!(check_identifier(good, 255), Ok(()), "{good:?}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("   ", "starts or ends with whitespace"),
            (" org", "starts or ends with whitespace"),
            ("org ", "starts or ends with whitespace"),
            ("\u{3000}org", "starts or ends with whitespace"),
            ("org-1\r\nX-Injected: yes", "contains a control character"),
            ("org\0nul", "contains a control character"),
            ("\0", "contains a control character"),
            ("\n", "contains a control character"),
            ("\t", "contains a control character"),
            ("org\t1", "contains a control character"),
            ("org\u{7f}", "contains a control character"),
            ("org\u{85}", "contains a control character"),
            (
                "\u{202e}gro-1",
                "contains a bidirectional-formatting or line-separator character",
            ),
            (
                "org\u{2066}1",
                "contains a bidirectional-formatting or line-separator character",
            ),
            (
                "org\u{2028}1",
                "contains a bidirectional-formatting or line-separator character",
            ),
        ] {
            assert_eq!(check_identifier(bad, 255), Err(why), "{bad:?}");
        }
        assert_eq!(
            check_identifier(&"x".repeat(256), 255),
            Err("is longer than 255 bytes")
        );
        assert_eq!(
            check_identifier(&"é".repeat(128), 255),
            Err("is longer than 255 bytes")
        );
    }
}
