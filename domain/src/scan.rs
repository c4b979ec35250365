//! Finding keys in text: what `keyledger scan` and leak reports use, and the
//! rule other scanners can take. A candidate has the key format's shape (a
//! prefix, `_live_` or `_test_`, 46 base62 characters, not inside a longer
//! word); only those whose CRC-32 check holds are keys, so the rule's rare
//! false matches never reach a report.

use std::sync::OnceLock;

use regex::bytes::Regex;

use crate::key::ParsedKey;

/// The key format as a regular expression (RE2/PCRE/Go syntax alike).
pub const KEY_REGEX: &str = r"\b[a-z][a-z0-9]{0,15}_(?:live|test)_[0-9A-Za-z]{46}\b";

fn regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| match Regex::new(KEY_REGEX) {
        Ok(re) => re,
        Err(e) => unreachable!("the key rule is a valid expression: {e}"),
    })
}

/// A key found in text: where it starts (byte offset) and the key itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    pub offset: usize,
    pub key: ParsedKey<'a>,
}

impl std::fmt::Debug for Found<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: its display prefix only.
        f.debug_struct("Found")
            .field("offset", &self.offset)
            .field("display_prefix", &self.key.display_prefix())
            .finish()
    }
}

/// Every key of the format in `text` whose checksum holds.
pub fn find_keys(text: &[u8]) -> impl Iterator<Item = Found<'_>> {
    regex().find_iter(text).filter_map(|m| {
        let key = std::str::from_utf8(m.as_bytes()).ok()?;
        Some(Found {
            offset: m.start(),
            key: ParsedKey::parse(key).ok()?,
        })
    })
}

/// A rule for other scanners: `regex` (the expression alone) or `gitleaks`
/// (a TOML rule for its configuration).
pub fn rule(kind: &str) -> Option<String> {
    match kind {
        "regex" => Some(KEY_REGEX.to_string()),
        "gitleaks" => Some(format!(
            "[[rules]]\nid = \"keyledger-api-key\"\ndescription = \"keyledger API key\"\n\
             regex = '''{KEY_REGEX}'''\nkeywords = [\"_live_\", \"_test_\"]\n\
             tags = [\"key\", \"keyledger\"]\n"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr";

    #[test]
    fn keys_are_found_in_text_and_near_misses_are_not() {
        let text = format!(
            "token = \"{VALID}\"\nother=acme_live_789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijk13jtAS;"
        );
        let found: Vec<String> = find_keys(text.as_bytes())
            .map(|f| f.key.display_prefix())
            .collect();
        assert_eq!(found, ["kl_live_AbCdEfGh", "acme_live_789ABCDE"]);
        for miss in [
            // A bad check, a changed body, an unknown environment, a prefix
            // with capitals, one character short, inside a longer word.
            "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFA",
            "kl_live_AbCdEfGhIjKlxnOpQrStUvWxYz0123456789abcd2W1EFr",
            "kl_prod_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr",
            "KL_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr",
            "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EF",
            "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFrX",
        ] {
            assert_eq!(find_keys(miss.as_bytes()).count(), 0, "{miss}");
        }
    }

    #[test]
    fn a_found_key_debugs_as_its_display_prefix_only() {
        let found = find_keys(VALID.as_bytes()).next().expect("found");
        let shown = format!("{found:?}");
        assert!(
            shown.contains("kl_live_AbCdEfGh") && !shown.contains("2W1EFr"),
            "{shown}"
        );
    }

    #[test]
    fn the_rules_carry_the_expression() {
        assert_eq!(rule("regex").as_deref(), Some(KEY_REGEX));
        assert!(rule("gitleaks").is_some_and(|r| r.contains(KEY_REGEX)));
        assert_eq!(rule("trufflehog"), None);
    }
}
