//! The rule every identifier that travels in a message header or envelope field obeys
//! (organization ids, correlation ids), and the one the built-in events' identifier
//! fields share.

use std::borrow::Cow;

use unicode_general_category::{GeneralCategory, get_general_category};

/// The name of a character refused by [`check_identifier`], for its error message.
fn name(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{061C}' => "ARABIC LETTER MARK",
        '\u{180E}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        '\u{2060}' => "WORD JOINER",
        '\u{2061}' => "FUNCTION APPLICATION",
        '\u{2062}' => "INVISIBLE TIMES",
        '\u{2063}' => "INVISIBLE SEPARATOR",
        '\u{2064}' => "INVISIBLE PLUS",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE (BYTE ORDER MARK)",
        _ => return None,
    })
}

/// Why `c` is never allowed inside an identifier besides control characters, if it is
/// not: an invisible *format* character (Unicode category Cf: zero-width space, joiners,
/// word joiner, byte order mark, soft hyphen, bidirectional marks, embeddings,
/// overrides and isolates, tags, …: they make an id display as another one —
/// `"\u{202e}gro-1"` shows as `1-org`, `"org\u{200b}-1"` as `org-1`), or the Unicode
/// line and paragraph separators.
fn forbidden(c: char) -> Option<&'static str> {
    match c {
        '\u{2028}' | '\u{2029}' => Some("a line or paragraph separator"),
        '\u{061C}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' => Some("a bidirectional-formatting character"),
        _ if get_general_category(c) == GeneralCategory::Format => {
            Some("an invisible format character (Unicode category Cf)")
        }
        _ => None,
    }
}

/// Checks `value` against the identifier rule: not empty, at most `max_bytes` bytes, no
/// whitespace at either end (so never whitespace-only), no control character (`\0`,
/// `\t`, `\r`, `\n`, …: Unicode category Cc), and no invisible format character
/// (Unicode category Cf: zero-width space U+200B, joiners U+200C/U+200D, word joiner
/// U+2060, byte order mark U+FEFF, soft hyphen, bidirectional formatting, …) nor line or
/// paragraph separator anywhere; such a character is named in the error
/// (`contains U+200B ZERO WIDTH SPACE, an invisible format character …`). Everything
/// else — letters of any script, digits, punctuation, inner spaces — is allowed.
pub(crate) fn check_identifier(value: &str, max_bytes: usize) -> Result<(), Cow<'static, str>> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > max_bytes {
        return Err(if max_bytes == 255 {
            "is longer than 255 bytes"
        } else {
            "is too long"
        }
        .into());
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    // No ASCII character is a format character or a separator: most ids (and every
    // built-in event's) skip the per-character category lookup.
    let refused = (!value.is_ascii())
        .then(|| value.chars().find_map(|c| Some((c, forbidden(c)?))))
        .flatten();
    if let Some((c, what)) = refused {
        let code = format!("U+{:04X}", u32::from(c));
        return Err(match name(c) {
            Some(name) => format!("contains {code} {name}, {what}"),
            None => format!("contains {code}, {what}"),
        }
        .into());
    }
    if value.starts_with(char::is_whitespace) || value.ends_with(char::is_whitespace) {
        return Err("starts or ends with whitespace".into());
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
                "contains U+202E RIGHT-TO-LEFT OVERRIDE, a bidirectional-formatting character",
            ),
            (
                "org\u{2066}1",
                "contains U+2066 LEFT-TO-RIGHT ISOLATE, a bidirectional-formatting character",
            ),
            (
                "org\u{2028}1",
                "contains U+2028 LINE SEPARATOR, a line or paragraph separator",
            ),
            // Invisible format characters (Cf): `org\u{200b}-1` displays as `org-1`.
            (
                "org\u{200b}-1",
                "contains U+200B ZERO WIDTH SPACE, an invisible format character (Unicode category Cf)",
            ),
            (
                "\u{feff}org-1",
                "contains U+FEFF ZERO WIDTH NO-BREAK SPACE (BYTE ORDER MARK), an invisible format character (Unicode category Cf)",
            ),
            (
                "org\u{200c}1",
                "contains U+200C ZERO WIDTH NON-JOINER, an invisible format character (Unicode category Cf)",
            ),
            (
                "org\u{200d}1",
                "contains U+200D ZERO WIDTH JOINER, an invisible format character (Unicode category Cf)",
            ),
            (
                "org\u{2060}1",
                "contains U+2060 WORD JOINER, an invisible format character (Unicode category Cf)",
            ),
            (
                "org\u{ad}1",
                "contains U+00AD SOFT HYPHEN, an invisible format character (Unicode category Cf)",
            ),
            // Unnamed ones are named by code point: a tag character, an Arabic number sign.
            (
                "org\u{e0041}",
                "contains U+E0041, an invisible format character (Unicode category Cf)",
            ),
            (
                "\u{600}1",
                "contains U+0600, an invisible format character (Unicode category Cf)",
            ),
        ] {
            assert_eq!(check_identifier(bad, 255), Err(why.into()), "{bad:?}");
        }
        assert_eq!(
            check_identifier(&"x".repeat(256), 255),
            Err("is longer than 255 bytes".into())
        );
        assert_eq!(
            check_identifier(&"é".repeat(128), 255),
            Err("is longer than 255 bytes".into())
        );
    }

    /// Unicode 16.0's category Cf (`DerivedGeneralCategory.txt`), stated independently
    /// of the implementation.
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];

    #[test]
    fn every_format_character_is_refused_naming_it_and_nothing_else_is() {
        let format = |c: char| (FORMAT.iter()).any(|&(lo, hi)| (lo..=hi).contains(&u32::from(c)));
        let mut refused = 0;
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            if c.is_control() || c.is_whitespace() {
                continue;
            }
            let id = format!("a{c}b");
            match check_identifier(&id, 255) {
                Ok(()) => assert!(!format(c), "U+{:04X} accepted", u32::from(c)),
                Err(why) => {
                    assert!(format(c), "U+{:04X} refused: {why}", u32::from(c));
                    assert!(
                        why.starts_with(&format!("contains U+{:04X}", u32::from(c))),
                        "{why}"
                    );
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 170);
    }
}
