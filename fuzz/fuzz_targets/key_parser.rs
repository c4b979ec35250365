//! The API-key parser must never panic, and whatever it accepts must be a
//! well-formed key: its display prefix and hash are derived from it consistently.
#![no_main]

use keyledger_domain::ParsedKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = ParsedKey::parse(text) {
        let display = parsed.display_prefix();
        assert!(text.starts_with(&display));
        assert!(text.starts_with(parsed.prefix()));
        assert_eq!(parsed.hash(), keyledger_domain::KeyHash::of(text));
    }
});
