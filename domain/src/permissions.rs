//! The permissions a key grants, and the one rule for checking them.
//!
//! Permissions are opaque strings to keyledger: clients define their meaning, we only
//! bound their size and alphabet (so they are safe to store, log and put in headers)
//! and decide whether a key's set covers what a request requires. Keeping the set
//! sorted and deduplicated makes two equal sets compare and serialize equally, so an
//! update that changes nothing can be recognised as such.

use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// Most permissions one key may carry.
pub const MAX_PERMISSIONS: usize = 50;

/// Longest permission string, in characters.
pub const MAX_PERMISSION_LEN: usize = 64;

/// A validated, deduplicated, sorted set of permission strings, each 1-64 characters
/// of `[a-z0-9:._*-]`.
///
/// Serializes as a JSON array of strings. Deserializing does not validate: stored
/// events were validated when they were recorded and must replay as they were.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Permissions(Vec<String>);

impl Permissions {
    /// Validates client input, then deduplicates and sorts it.
    ///
    /// More than [`MAX_PERMISSIONS`] entries are rejected before deduplication. Errors
    /// are validation errors on `permissions` that name the offending index and never
    /// echo the entry.
    pub fn parse(mut list: Vec<String>) -> Result<Self, DomainError> {
        if list.len() > MAX_PERMISSIONS {
            return Err(DomainError::validation(
                "permissions",
                format!("at most {MAX_PERMISSIONS} permissions are allowed"),
            ));
        }
        for (index, permission) in list.iter().enumerate() {
            if let Some(problem) = problem_with(permission) {
                return Err(DomainError::validation(
                    "permissions",
                    format!("entry {index} {problem}"),
                ));
            }
        }
        list.sort_unstable();
        list.dedup();
        Ok(Permissions(list))
    }

    /// The permissions, sorted.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// True when the set grants nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every required permission is granted (so also when none is
    /// required). A granted permission ending in `*` grants every permission starting
    /// with what precedes the `*` (so `*` grants all, `keys:*` grants `keys:read`);
    /// any other granted permission grants only itself.
    pub fn grants_all<S: AsRef<str>>(&self, required: &[S]) -> bool {
        required.iter().all(|r| self.grants(r.as_ref()))
    }

    /// True when `required` is granted, by the rule of [`Permissions::grants_all`].
    pub fn grants(&self, required: &str) -> bool {
        self.0
            .iter()
            .any(|granted| match granted.strip_suffix('*') {
                Some(stem) => required.starts_with(stem),
                None => granted == required,
            })
    }
}

/// What is wrong with one entry, phrased to follow "entry N".
pub(crate) fn problem_with(permission: &str) -> Option<&'static str> {
    if permission.is_empty() {
        Some("is empty")
    } else if permission.chars().count() > MAX_PERMISSION_LEN {
        Some("is longer than 64 characters")
    } else if !permission.bytes().all(is_permission_byte) {
        Some("has a character outside [a-z0-9:._*-]")
    } else {
        None
    }
}

fn is_permission_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b':' | b'.' | b'_' | b'*' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn granted(list: &[&str]) -> Permissions {
        Permissions::parse(strings(list)).expect("test permissions are valid")
    }

    fn rejection(list: Vec<String>) -> String {
        match Permissions::parse(list) {
            Err(DomainError::Validation {
                field: "permissions",
                message,
            }) => message,
            other => panic!("expected a permissions validation error, got {other:?}"),
        }
    }

    #[test]
    fn valid_permissions_are_accepted() {
        let all_chars = "az09:._*-";
        let longest = "a".repeat(MAX_PERMISSION_LEN);
        let parsed = granted(&["keys:read", "*", all_chars, &longest]);
        assert_eq!(parsed.as_slice().len(), 4);
        assert!(Permissions::parse(Vec::new()).is_ok_and(|p| p.is_empty()));
        let fifty = (0..MAX_PERMISSIONS).map(|i| format!("p{i}")).collect();
        assert!(Permissions::parse(fifty).is_ok());
    }

    #[test]
    fn empty_permission_is_rejected_naming_its_index() {
        let message = rejection(strings(&["keys:read", ""]));
        assert!(message.contains("entry 1"), "{message}");
    }

    #[test]
    fn permission_of_sixty_five_characters_is_rejected_without_echoing_it() {
        let long = "x".repeat(MAX_PERMISSION_LEN + 1);
        let message = rejection(vec![long.clone()]);
        assert!(message.contains("entry 0"), "{message}");
        assert!(!message.contains(&long));
    }

    #[test]
    fn uppercase_space_and_other_characters_are_rejected() {
        for bad in ["Keys:read", "keys read", "keys/read", "clé", "keys\n"] {
            let message = rejection(strings(&["ok", "fine", bad]));
            assert!(message.contains("entry 2"), "{message}");
            assert!(!message.contains(bad), "{message}");
        }
    }

    #[test]
    fn fifty_one_permissions_are_rejected() {
        let list = (0..=MAX_PERMISSIONS).map(|i| format!("p{i}")).collect();
        let message = rejection(list);
        assert!(message.contains("50"), "{message}");
    }

    #[test]
    fn permissions_are_deduplicated_and_sorted() {
        let parsed = granted(&["keys:write", "audit:read", "keys:write", "*"]);
        assert_eq!(
            parsed.as_slice(),
            strings(&["*", "audit:read", "keys:write"])
        );
        assert_eq!(parsed, granted(&["audit:read", "*", "keys:write"]));
    }

    #[test]
    fn star_grants_everything() {
        let parsed = granted(&["*"]);
        assert!(parsed.grants("keys:read"));
        assert!(parsed.grants("anything.at_all"));
        assert!(parsed.grants_all(&["a", "b:c"]));
    }

    #[test]
    fn trailing_star_grants_everything_starting_with_its_stem() {
        let parsed = granted(&["keys:*"]);
        assert!(parsed.grants("keys:read"));
        assert!(parsed.grants("keys:write:all"));
        assert!(parsed.grants("keys:"));
        assert!(!parsed.grants("keys"));
        assert!(!parsed.grants("audit:read"));
    }

    #[test]
    fn permission_without_star_grants_only_itself() {
        let parsed = granted(&["keys:read", "k*s"]);
        assert!(parsed.grants("keys:read"));
        assert!(!parsed.grants("keys:read:all"));
        assert!(!parsed.grants("keys:rea"));
        assert!(!parsed.grants("keys:write"));
        assert!(!parsed.grants("keys"));
    }

    #[test]
    fn every_required_permission_must_be_granted() {
        let parsed = granted(&["keys:read", "audit:*"]);
        assert!(parsed.grants_all(&["keys:read", "audit:read"]));
        assert!(!parsed.grants_all(&["keys:read", "keys:write"]));
        assert!(!Permissions::default().grants("keys:read"));
    }

    #[test]
    fn nothing_required_is_always_granted() {
        let none: [&str; 0] = [];
        assert!(Permissions::default().grants_all(&none));
        assert!(granted(&["keys:read"]).grants_all(&Vec::<String>::new()));
    }

    #[test]
    fn permissions_serialize_as_a_json_array_and_deserialize_unvalidated() {
        let parsed = granted(&["keys:read", "audit:*"]);
        let json = serde_json::to_string(&parsed).expect("serializes");
        assert_eq!(json, r#"["audit:*","keys:read"]"#);
        let back: Permissions = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, parsed);
        let stored: Permissions = serde_json::from_str(r#"["Legacy Perm"]"#).expect("as stored");
        assert_eq!(stored.as_slice(), strings(&["Legacy Perm"]));
    }
}
