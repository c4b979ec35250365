//! Key ids held in 16 bytes.

use std::fmt;

/// A key id as the index holds it: ids of the issued shape (`key_` + 32
/// lowercase hex digits of a UUIDv7) packed into 16 bytes, anything else (ids
/// written by hand or by other tools) kept as text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyId {
    Packed([u8; 16]),
    Text(Box<str>),
}

impl KeyId {
    const PREFIX: &'static str = "key_";

    pub fn new(id: &str) -> Self {
        id.strip_prefix(Self::PREFIX)
            .filter(|hex| {
                hex.len() == 32
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .and_then(|hex| u128::from_str_radix(hex, 16).ok())
            .map_or_else(
                || KeyId::Text(id.into()),
                |n| KeyId::Packed(n.to_be_bytes()),
            )
    }

    /// The id as text, written into `buf` when packed: no allocation, for
    /// the verification answer (every request prints one).
    pub fn as_str<'a>(&'a self, buf: &'a mut KeyIdText) -> &'a str {
        match self {
            KeyId::Packed(bytes) => packed_text(bytes, buf),
            KeyId::Text(s) => s,
        }
    }
}

/// A packed id's text (`key_` + 32 hex digits), written into `buf`.
pub(super) fn packed_text<'a>(bytes: &[u8; 16], buf: &'a mut KeyIdText) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.0[..KeyId::PREFIX.len()].copy_from_slice(KeyId::PREFIX.as_bytes());
    let digits = &mut buf.0[KeyId::PREFIX.len()..];
    for (pair, byte) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    // Only ASCII was written.
    std::str::from_utf8(&buf.0).unwrap_or_default()
}

/// Room for a packed id's text (`key_` + 32 hex digits).
pub struct KeyIdText([u8; 36]);

impl Default for KeyIdText {
    fn default() -> Self {
        Self([0; 36])
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyId::Packed(b) => write!(f, "{}{:032x}", Self::PREFIX, u128::from_be_bytes(*b)),
            KeyId::Text(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_pack_and_print_back_unchanged() {
        let id = "key_019a4f3c2b7e7c1d8e9f0a1b2c3d4e5f";
        let packed = KeyId::new(id);
        assert_eq!(packed.as_str(&mut KeyIdText::default()), id);
        let text = KeyId::new("legacy-id");
        assert_eq!(text.as_str(&mut KeyIdText::default()), "legacy-id");
        assert!(matches!(packed, KeyId::Packed(_)));
        assert_eq!(packed.to_string(), id);
        let zeros = "key_00000000000000000000000000000000";
        assert_eq!(KeyId::new(zeros).to_string(), zeros);
    }

    #[test]
    fn other_ids_stay_text() {
        for id in [
            "key_held",
            "key_019A4F3C2B7E7C1D8E9F0A1B2C3D4E5F",
            "key_019a4f3c2b7e7c1d8e9f0a1b2c3d4e5",
            "key_+19a4f3c2b7e7c1d8e9f0a1b2c3d4e5f",
            "other_019a4f3c2b7e7c1d8e9f0a1b2c3d4e5f",
            "",
        ] {
            let k = KeyId::new(id);
            assert!(matches!(k, KeyId::Text(_)), "{id}");
            assert_eq!(k.to_string(), id);
        }
    }
}
