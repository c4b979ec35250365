//! The API key format: generation, parsing, checksum and hashing.
//!
//! The format `<prefix>_<env>_<body><check>` is a public contract: secret scanners
//! match it and every stored hash was computed over it, so everything that knows its
//! shape lives here and is pinned by `domain/vectors/key-format.json` (a copy of the
//! reference vectors, checked against `../shared/vectors/key-format.json` when present).
//!
//! Parsing sits on the verification hot path. It rejects typos and garbage by
//! structure and by the CRC-32 check digits before any store is touched, it does not
//! allocate, and its errors carry static reasons only, never the presented string.
//!
//! Only the SHA-256 of a key ([`KeyHash`]) is ever stored. [`RawKey`] exists so that
//! the one moment a secret is in memory shows in the types and cannot leak through
//! `Debug`, `Display` or serialization.

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, Rng};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::error::DomainError;

/// The key prefix used when none is configured.
///
/// Persisted contract: changing it orphans stored keys (their owners still hold keys
/// with the old prefix, and scanners stop recognising new ones).
pub const DEFAULT_KEY_PREFIX: &str = "kl";

/// Number of base62 characters of CSPRNG output in a key (about 238 bits).
pub const BODY_LEN: usize = 40;

/// Number of base62 check characters (CRC-32 of everything before them).
pub const CHECK_LEN: usize = 6;

/// Number of body characters shown in a key's display prefix.
pub const DISPLAY_BODY_LEN: usize = 8;

/// Longest allowed prefix, from `[a-z][a-z0-9]{0,15}`.
const MAX_PREFIX_LEN: usize = 16;

/// Length of `_<env>_`: both environments are four characters long.
const MIDDLE_LEN: usize = 1 + 4 + 1;

/// Length of `<body><check>`.
const TAIL_LEN: usize = BODY_LEN + CHECK_LEN;

const MIN_KEY_LEN: usize = 1 + MIDDLE_LEN + TAIL_LEN;
const MAX_KEY_LEN: usize = MAX_PREFIX_LEN + MIDDLE_LEN + TAIL_LEN;

/// Base62 digits in value order, for the body and the check.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Which world a key belongs to; a test key never verifies as a live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Production traffic.
    Live,
    /// Development and testing.
    Test,
}

impl Environment {
    /// The environment as it appears in keys and in the API: `live` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        match bytes {
            b"live" => Some(Environment::Live),
            b"test" => Some(Environment::Test),
            _ => None,
        }
    }
}

impl FromStr for Environment {
    type Err = DomainError;

    /// Accepts exactly `live` or `test`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Environment::from_bytes(s.as_bytes())
            .ok_or_else(|| DomainError::validation("environment", "must be live or test"))
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated key prefix matching `[a-z][a-z0-9]{0,15}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Validates a configured prefix; fails with [`DomainError::InvalidKeyPrefix`].
    pub fn new(s: &str) -> Result<Self, DomainError> {
        if is_valid_prefix(s.as_bytes()) {
            Ok(KeyPrefix(s.to_owned()))
        } else {
            Err(DomainError::InvalidKeyPrefix)
        }
    }

    /// The prefix as written in keys.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    /// [`DEFAULT_KEY_PREFIX`].
    fn default() -> Self {
        KeyPrefix(DEFAULT_KEY_PREFIX.to_owned())
    }
}

/// The display body characters (the last [`DISPLAY_BODY_LEN`] characters of a
/// display prefix) of a presented key, found by position alone: nothing is
/// checked. They are not secret and are random in every issued key, so an index
/// can place keys by them and start fetching a key's entry before the checksum
/// and the hash are computed. `None` when `s` is too short to hold them.
pub fn display_body_of_key(s: &str) -> Option<&[u8]> {
    let bytes = s.as_bytes();
    let start = bytes.len().checked_sub(TAIL_LEN)?;
    bytes.get(start..start + DISPLAY_BODY_LEN)
}

/// The display body characters of a stored display prefix (its last
/// [`DISPLAY_BODY_LEN`] bytes, or all of it when shorter): for a key issued with
/// that prefix, the same bytes as [`display_body_of_key`] finds in the key.
pub fn display_body_of_prefix(display_prefix: &str) -> &[u8] {
    let bytes = display_prefix.as_bytes();
    &bytes[bytes.len().saturating_sub(DISPLAY_BODY_LEN)..]
}

/// A raw API key: the secret itself, handed to the client once at creation.
///
/// `Debug` prints `RawKey(***)`; there is no `Display` and no `Serialize`, so the
/// only ways to read it are [`RawKey::expose`] and [`RawKey::into_exposed`].
#[derive(Clone, PartialEq, Eq)]
pub struct RawKey(String);

impl RawKey {
    /// Generates a key of the documented format: `BODY_LEN` characters drawn
    /// uniformly from the base62 alphabet, followed by the check characters.
    pub fn generate<R: CryptoRng + Rng + ?Sized>(
        prefix: &KeyPrefix,
        env: Environment,
        rng: &mut R,
    ) -> RawKey {
        let mut key = String::with_capacity(prefix.as_str().len() + MIDDLE_LEN + TAIL_LEN);
        key.push_str(prefix.as_str());
        key.push('_');
        key.push_str(env.as_str());
        key.push('_');
        for _ in 0..BODY_LEN {
            // `random_range` samples without modulo bias.
            key.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
        }
        let check = check_digits(key.as_bytes());
        key.extend(check.iter().copied().map(char::from));
        RawKey(key)
    }

    /// The key text. Call only to hand the key to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key text, consuming the wrapper.
    pub fn into_exposed(self) -> String {
        self.0
    }

    /// The parsed view of this key.
    pub fn parsed(&self) -> ParsedKey<'_> {
        // A `RawKey` is only built by `generate`, which emits the documented format
        // with a correct check (the tests pin this), so parsing cannot fail.
        ParsedKey::parse(&self.0).expect("a generated key always parses")
    }

    /// The SHA-256 of the key, the only form that is stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawKey(***)")
    }
}

/// A borrowed view of a presented key whose format and checksum have been checked.
///
/// `Debug` shows the prefix, the environment and the display prefix, never the rest
/// of the body or the check.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    key: &'a str,
    prefix_len: usize,
    environment: Environment,
}

impl<'a> ParsedKey<'a> {
    /// Checks the format and the checksum without allocating. Errors are
    /// [`DomainError::MalformedKey`] with a static reason that never contains `s`.
    pub fn parse(s: &'a str) -> Result<ParsedKey<'a>, DomainError> {
        let bytes = s.as_bytes();
        if !bytes.is_ascii() {
            return Err(malformed("not ASCII"));
        }
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
            return Err(malformed("wrong length"));
        }
        // Every part but the prefix has a fixed width, so the parts are found from
        // the end; a separator anywhere else then fails the prefix rule.
        let prefix_len = bytes.len() - MIDDLE_LEN - TAIL_LEN;
        let (prefix, rest) = bytes.split_at(prefix_len);
        let (middle, tail) = rest.split_at(MIDDLE_LEN);
        let [b'_', env @ .., b'_'] = middle else {
            return Err(malformed("wrong separator"));
        };
        let environment = Environment::from_bytes(env).ok_or(malformed("unknown environment"))?;
        if !is_valid_prefix(prefix) {
            return Err(malformed("bad prefix"));
        }
        if !all_base62(tail) {
            return Err(malformed("non-base62 character"));
        }
        let (signed, check) = bytes.split_at(bytes.len() - CHECK_LEN);
        if check_digits(signed).as_slice() != check {
            return Err(malformed("bad checksum"));
        }
        Ok(ParsedKey {
            key: s,
            prefix_len,
            environment,
        })
    }

    /// The prefix, e.g. `kl`.
    pub fn prefix(&self) -> &'a str {
        &self.key[..self.prefix_len]
    }

    /// The environment named in the key.
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// `<prefix>_<env>_` plus the first `DISPLAY_BODY_LEN` body characters: enough
    /// to recognise a key, far too little to use it.
    pub fn display_prefix(&self) -> String {
        self.display_prefix_str().to_owned()
    }

    /// The SHA-256 of the whole key string.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.key)
    }

    fn display_prefix_str(&self) -> &'a str {
        &self.key[..self.prefix_len + MIDDLE_LEN + DISPLAY_BODY_LEN]
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("prefix", &self.prefix())
            .field("environment", &self.environment)
            .field("display_prefix", &self.display_prefix_str())
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a whole key string: how keys are stored and looked up.
///
/// Not secret (a key cannot be recovered from it), but never shown to API clients.
/// Serializes as 64 lowercase hex characters; `Debug` shows the first 8 only.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes the UTF-8 bytes of `key`.
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Wraps a hash read back from a store.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        KeyHash(b)
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            hex.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
        hex
    }

    /// Parses 64 hex characters (either case); fails with a validation error on
    /// `key_hash` that does not echo the input.
    pub fn from_hex(s: &str) -> Result<Self, DomainError> {
        let invalid = || DomainError::validation("key_hash", "must be 64 hexadecimal characters");
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *slot = pair
                .iter()
                .try_fold(0u8, |acc, &c| hex_value(c).map(|v| (acc << 4) | v))
                .ok_or_else(invalid)?;
        }
        Ok(KeyHash(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…)")
    }
}

impl Serialize for KeyHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HexVisitor;

        impl serde::de::Visitor<'_> for HexVisitor {
            type Value = KeyHash;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 hash as 64 hexadecimal characters")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyHash, E> {
                KeyHash::from_hex(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(HexVisitor)
    }
}

fn malformed(reason: &'static str) -> DomainError {
    DomainError::MalformedKey { reason }
}

fn is_valid_prefix(prefix: &[u8]) -> bool {
    match prefix.split_first() {
        Some((first, rest)) => {
            prefix.len() <= MAX_PREFIX_LEN
                && first.is_ascii_lowercase()
                && rest
                    .iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        }
        None => false,
    }
}

/// Whether every byte is `[0-9A-Za-z]`. Without branches: the characters of a
/// key are random, so a branch per character would be mispredicted about every
/// other time (it was 40 % of a verification's time, BENCHMARKS.md).
fn all_base62(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &c| {
        let digit = c.wrapping_sub(b'0') < 10;
        let letter = (c | 0x20).wrapping_sub(b'a') < 26;
        ok & (digit | letter)
    })
}

/// CRC-32 of `signed` in base62, most significant digit first, zero-padded.
/// 62^6 > 2^32, so six digits always suffice.
fn check_digits(signed: &[u8]) -> [u8; CHECK_LEN] {
    let mut n = crc32fast::hash(signed);
    let mut digits = [ALPHABET[0]; CHECK_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    digits
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// The key-format vectors, owned by this crate so that a clone builds and tests
    /// on its own (they are part of the public key format).
    const VECTORS: &str = include_str!("../vectors/key-format.json");

    #[derive(Deserialize)]
    struct Vectors {
        alphabet: String,
        valid: Vec<ValidVector>,
        invalid: Vec<InvalidVector>,
    }

    #[derive(Deserialize)]
    struct ValidVector {
        key: String,
        prefix: String,
        environment: Environment,
        display_prefix: String,
        sha256_hex: String,
        check: String,
    }

    #[derive(Deserialize)]
    struct InvalidVector {
        key: String,
        why: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(VECTORS).expect("the key format vectors are valid JSON")
    }

    /// Where the reference copy lives when the project sits beside `../shared`
    /// (relative to the workspace root, as in CI).
    fn reference_vectors_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/vectors/key-format.json")
    }

    #[test]
    fn vectors_are_the_reference_copy_when_it_is_present() {
        let path = reference_vectors_path();
        match std::fs::read_to_string(&path) {
            Ok(reference) => assert!(
                reference == VECTORS,
                "domain/vectors/key-format.json differs from {}: copy the reference vectors \
                 into the repository again (they pin the public key format)",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!(
                "SKIPPED: {} not found ({e}): domain/vectors/key-format.json is not \
                 compared with the reference copy",
                path.display()
            ),
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        }
    }

    fn generated(seed: u64, prefix: &str, env: Environment) -> RawKey {
        let prefix = KeyPrefix::new(prefix).expect("the strategy yields valid prefixes");
        RawKey::generate(&prefix, env, &mut StdRng::seed_from_u64(seed))
    }

    fn environment() -> impl Strategy<Value = Environment> {
        prop_oneof![Just(Environment::Live), Just(Environment::Test)]
    }

    fn prefix() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9]{0,15}"
    }

    /// Base62 digits, separators, punctuation, non-ASCII, and anything else.
    fn any_char() -> impl Strategy<Value = char> {
        let base62: Vec<char> = ALPHABET.iter().copied().map(char::from).collect();
        prop_oneof![
            prop::sample::select(base62),
            prop::sample::select(vec![
                '_', '-', '.', ' ', '\0', '\n', 'é', 'ß', 'Ω', '€', '\u{200b}', '🔑'
            ]),
            any::<char>(),
        ]
    }

    fn assert_malformed(result: Result<ParsedKey<'_>, DomainError>, reason: &str) {
        match result {
            Err(DomainError::MalformedKey { reason: actual }) => assert_eq!(actual, reason),
            other => panic!("expected MalformedKey({reason}), got {other:?}"),
        }
    }

    #[test]
    fn valid_vectors_parse_with_their_prefix_environment_display_prefix_hash_and_check() {
        let vectors = vectors();
        assert!(!vectors.valid.is_empty());
        for v in &vectors.valid {
            let parsed = ParsedKey::parse(&v.key)
                .unwrap_or_else(|e| panic!("valid vector {} rejected: {e}", v.key));
            assert_eq!(parsed.prefix(), v.prefix);
            assert_eq!(parsed.environment(), v.environment);
            assert_eq!(parsed.display_prefix(), v.display_prefix);
            assert_eq!(parsed.hash().to_hex(), v.sha256_hex);
            assert_eq!(KeyHash::of(&v.key).to_hex(), v.sha256_hex);
            let signed = &v.key.as_bytes()[..v.key.len() - CHECK_LEN];
            assert_eq!(check_digits(signed).as_slice(), v.check.as_bytes());
            assert!(v.key.ends_with(&v.check));
        }
    }

    #[test]
    fn invalid_vectors_are_rejected_without_echoing_the_key() {
        let vectors = vectors();
        assert!(!vectors.invalid.is_empty());
        for v in &vectors.invalid {
            match ParsedKey::parse(&v.key) {
                Err(err @ DomainError::MalformedKey { .. }) => {
                    assert!(!err.to_string().contains(&v.key), "{} echoed", v.why);
                }
                other => panic!("invalid vector ({}) gave {other:?}", v.why),
            }
        }
    }

    #[test]
    fn vector_alphabet_is_the_one_used_for_body_and_check() {
        assert_eq!(vectors().alphabet.as_bytes(), ALPHABET.as_slice());
    }

    #[test]
    fn each_rejection_names_its_reason() {
        let good = "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr";
        assert!(ParsedKey::parse(good).is_ok());
        assert_malformed(ParsedKey::parse(""), "wrong length");
        assert_malformed(ParsedKey::parse(&good[2..]), "wrong length");
        assert_malformed(
            ParsedKey::parse(&format!("abcdefghijklmnopq{}", &good[2..])),
            "wrong length",
        );
        assert_malformed(
            ParsedKey::parse("kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFé"),
            "not ASCII",
        );
        assert_malformed(
            ParsedKey::parse("kl-live-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr"),
            "wrong separator",
        );
        assert_malformed(
            ParsedKey::parse("kl_prod_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr"),
            "unknown environment",
        );
        assert_malformed(
            ParsedKey::parse("Kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr"),
            "bad prefix",
        );
        assert_malformed(
            ParsedKey::parse("a_b_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr"),
            "bad prefix",
        );
        assert_malformed(
            ParsedKey::parse("kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abc-2W1EFr"),
            "non-base62 character",
        );
        assert_malformed(
            ParsedKey::parse("kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFs"),
            "bad checksum",
        );
    }

    #[test]
    fn the_base62_check_agrees_with_the_standard_library_for_every_byte() {
        for c in 0..=255u8 {
            assert_eq!(
                all_base62(&[b'a', c, b'0']),
                c.is_ascii_alphanumeric(),
                "{c}"
            );
        }
        assert!(all_base62(b""));
    }

    #[test]
    fn display_bodies_of_short_inputs_are_absent_or_whole() {
        assert_eq!(display_body_of_key("short"), None);
        assert_eq!(display_body_of_key(""), None);
        assert_eq!(display_body_of_prefix("abc"), b"abc");
    }

    #[test]
    fn generated_key_parses_with_the_documented_length_and_display_prefix() {
        for (prefix, env) in [
            ("kl", Environment::Live),
            ("acme", Environment::Test),
            ("abcdefghijklmnop", Environment::Live),
        ] {
            let key = generated(7, prefix, env);
            assert_eq!(
                key.expose().len(),
                prefix.len() + env.as_str().len() + 2 + BODY_LEN + CHECK_LEN
            );
            let parsed = key.parsed();
            assert_eq!(parsed.prefix(), prefix);
            assert_eq!(parsed.environment(), env);
            let body = &key.expose()[prefix.len() + 6..];
            assert_eq!(
                parsed.display_prefix(),
                format!("{prefix}_{env}_{}", &body[..DISPLAY_BODY_LEN])
            );
            assert_eq!(key.hash(), parsed.hash());
            assert_eq!(key.hash(), KeyHash::of(key.expose()));
            let located = display_body_of_key(key.expose()).expect("long enough");
            assert_eq!(located, &body.as_bytes()[..DISPLAY_BODY_LEN]);
            assert_eq!(display_body_of_prefix(&parsed.display_prefix()), located);
        }
    }

    #[test]
    fn generated_bodies_use_every_base62_character() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut seen = [false; 62];
        for _ in 0..100 {
            let key = RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rng);
            for c in key.expose()[8..8 + BODY_LEN].bytes() {
                let index = ALPHABET
                    .iter()
                    .position(|&a| a == c)
                    .expect("body characters are base62");
                seen[index] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn generated_keys_differ() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rng);
        let b = RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rng);
        assert_ne!(a, b);
    }

    #[test]
    fn into_exposed_returns_the_key_text() {
        let key = generated(3, "kl", Environment::Test);
        let text = key.expose().to_owned();
        assert_eq!(key.into_exposed(), text);
    }

    #[test]
    fn raw_key_debug_does_not_print_the_key() {
        let key = generated(5, "kl", Environment::Live);
        assert_eq!(format!("{key:?}"), "RawKey(***)");
        assert!(!format!("{key:#?}").contains(key.expose()));
    }

    #[test]
    fn parsed_key_debug_shows_only_prefix_environment_and_display_prefix() {
        let key = generated(5, "kl", Environment::Live);
        let parsed = key.parsed();
        let debug = format!("{parsed:?}");
        let hidden = &key.expose()[8 + DISPLAY_BODY_LEN..];
        assert!(!debug.contains(hidden), "{debug}");
        assert!(!debug.contains(key.expose()));
        assert!(debug.contains(&parsed.display_prefix()));
        assert!(debug.contains("Live"));
    }

    #[test]
    fn environment_parses_only_live_and_test() {
        assert_eq!("live".parse::<Environment>(), Ok(Environment::Live));
        assert_eq!("test".parse::<Environment>(), Ok(Environment::Test));
        for bad in ["", "Live", "prod", "live ", "tests"] {
            assert!(matches!(
                bad.parse::<Environment>(),
                Err(DomainError::Validation {
                    field: "environment",
                    ..
                })
            ));
        }
        assert_eq!(Environment::Test.to_string(), "test");
        assert_eq!(
            serde_json::to_string(&Environment::Live).expect("serializes"),
            "\"live\""
        );
    }

    #[test]
    fn key_prefix_accepts_only_a_lowercase_letter_then_up_to_fifteen_alphanumerics() {
        for good in ["a", "kl", "acme2", "abcdefghijklmnop"] {
            assert_eq!(
                KeyPrefix::new(good).map(|p| p.as_str().to_owned()),
                Ok(good.to_owned())
            );
        }
        for bad in [
            "",
            "Kl",
            "1kl",
            "k_l",
            "kl-",
            "k l",
            "é",
            "abcdefghijklmnopq",
        ] {
            assert_eq!(
                KeyPrefix::new(bad),
                Err(DomainError::InvalidKeyPrefix),
                "{bad}"
            );
        }
    }

    #[test]
    fn default_key_prefix_is_kl() {
        assert_eq!(KeyPrefix::default().as_str(), "kl");
        assert_eq!(KeyPrefix::default().as_str(), DEFAULT_KEY_PREFIX);
    }

    #[test]
    fn key_hash_serializes_as_lowercase_hex() {
        let hash = KeyHash::from_bytes([0xab; 32]);
        let json = serde_json::to_string(&hash).expect("serializes");
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        let back: KeyHash = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, hash);
        assert!(serde_json::from_str::<KeyHash>("\"abc\"").is_err());
    }

    #[test]
    fn key_hash_from_hex_rejects_wrong_length_and_non_hex_characters() {
        let good = "ab".repeat(32);
        assert_eq!(
            KeyHash::from_hex(&good),
            Ok(KeyHash::from_bytes([0xab; 32]))
        );
        assert_eq!(
            KeyHash::from_hex(&good.to_uppercase()),
            KeyHash::from_hex(&good)
        );
        for bad in [
            String::new(),
            good[..63].to_owned(),
            format!("{good}a"),
            format!("g{}", &good[1..]),
            format!("é{}", &good[2..]),
            format!("+{}", &good[1..]),
        ] {
            assert!(
                matches!(
                    KeyHash::from_hex(&bad),
                    Err(DomainError::Validation {
                        field: "key_hash",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn key_hash_debug_shows_only_the_first_eight_hex_characters() {
        let hash = KeyHash::of("kl_live_x");
        let debug = format!("{hash:?}");
        assert_eq!(debug, format!("KeyHash({}…)", &hash.to_hex()[..8]));
    }

    proptest! {
        #[test]
        fn generated_keys_round_trip_through_parse(
            seed in any::<u64>(),
            prefix in prefix(),
            env in environment(),
        ) {
            let key = generated(seed, &prefix, env);
            let parsed = ParsedKey::parse(key.expose());
            prop_assert!(parsed.is_ok(), "{:?}", parsed);
            let parsed = parsed.expect("checked above");
            prop_assert_eq!(parsed.prefix(), prefix.as_str());
            prop_assert_eq!(parsed.environment(), env);
            prop_assert_eq!(parsed, key.parsed());
            prop_assert_eq!(parsed.hash(), key.hash());
        }

        #[test]
        fn one_character_change_is_rejected_by_the_checksum_or_the_format(
            seed in any::<u64>(),
            prefix in prefix(),
            env in environment(),
            position in any::<prop::sample::Index>(),
            replacement in any_char(),
        ) {
            let key = generated(seed, &prefix, env);
            let text = key.expose();
            let at = position.index(text.len());
            prop_assume!(char::from(text.as_bytes()[at]) != replacement);
            let mutated = format!("{}{replacement}{}", &text[..at], &text[at + 1..]);
            prop_assert!(ParsedKey::parse(&mutated).is_err());
        }

        #[test]
        fn deleting_one_character_is_rejected(
            seed in any::<u64>(),
            prefix in prefix(),
            env in environment(),
            position in any::<prop::sample::Index>(),
        ) {
            let key = generated(seed, &prefix, env);
            let text = key.expose();
            let at = position.index(text.len());
            let mutated = format!("{}{}", &text[..at], &text[at + 1..]);
            prop_assert!(ParsedKey::parse(&mutated).is_err());
        }

        #[test]
        fn inserting_one_character_is_rejected(
            seed in any::<u64>(),
            prefix in prefix(),
            env in environment(),
            position in any::<prop::sample::Index>(),
            inserted in any_char(),
        ) {
            let key = generated(seed, &prefix, env);
            let text = key.expose();
            let at = position.index(text.len() + 1);
            let mutated = format!("{}{inserted}{}", &text[..at], &text[at..]);
            prop_assert!(ParsedKey::parse(&mutated).is_err());
        }

        #[test]
        fn key_hash_hex_round_trips(bytes in any::<[u8; 32]>()) {
            let hash = KeyHash::from_bytes(bytes);
            let hex = hash.to_hex();
            prop_assert_eq!(hex.len(), 64);
            prop_assert!(hex.bytes().all(|c| HEX_DIGITS.contains(&c)));
            prop_assert_eq!(KeyHash::from_hex(&hex), Ok(hash));
            prop_assert_eq!(hash.as_bytes(), &bytes);
        }
    }
}
