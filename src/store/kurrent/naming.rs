//! Stream names: one stream per aggregate instance, `{namespace}-{type}-{id}`
//! (`keyledger-ApiKey-key_0190…`, `keyledger-ApiKeyUsage-key_0190…`).
//!
//! The namespace keeps several keyledger deployments (or test runs) apart on one
//! server, and is the prefix the `$all` reads and the subscription filter on. It
//! may not contain `-`, so no namespace is a prefix of another's streams, and the
//! aggregate type (a constant without `-`) ends at the next `-`. Persisted:
//! changing the namespace or the layout orphans the stored streams.

use crate::error::Error;

/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "keyledger";

/// Longest namespace accepted (stream names stay short and readable).
const MAX_NAMESPACE_LEN: usize = 64;

/// Builds and parses the stream names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// `{namespace}-`: the prefix of every stream of this deployment.
    prefix: String,
}

impl Naming {
    /// A namespace of ASCII letters, digits and `_` (1 to 64 characters).
    pub fn new(namespace: &str) -> Result<Self, Error> {
        let valid = !namespace.is_empty()
            && namespace.len() <= MAX_NAMESPACE_LEN
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(Error::Config(format!(
                "KurrentDB namespace {namespace:?}: use 1 to {MAX_NAMESPACE_LEN} ASCII letters, digits or _"
            )));
        }
        Ok(Self {
            prefix: format!("{namespace}-"),
        })
    }

    /// Prefix of every stream of this namespace (what `$all` is filtered on).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Prefix of the streams of one aggregate type.
    pub fn type_prefix(&self, aggregate_type: &str) -> String {
        format!("{}{aggregate_type}-", self.prefix)
    }

    /// The stream of one aggregate instance.
    pub fn stream(&self, aggregate_type: &str, aggregate_id: &str) -> String {
        format!("{}{aggregate_type}-{aggregate_id}", self.prefix)
    }

    /// Aggregate type and id of one of our streams; `None` for any other stream.
    pub fn parse<'a>(&self, stream: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = stream.strip_prefix(self.prefix.as_str())?;
        let (aggregate_type, aggregate_id) = rest.split_once('-')?;
        if aggregate_type.is_empty() || aggregate_id.is_empty() {
            return None;
        }
        Some((aggregate_type, aggregate_id))
    }
}

impl Default for Naming {
    fn default() -> Self {
        Self {
            prefix: format!("{DEFAULT_NAMESPACE}-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_namespace_type_and_id() {
        let n = Naming::default();
        assert_eq!(n.stream("ApiKey", "key_01"), "keyledger-ApiKey-key_01");
        assert_eq!(
            n.stream("ApiKeyUsage", "key_01"),
            "keyledger-ApiKeyUsage-key_01"
        );
        assert_eq!(n.prefix(), "keyledger-");
        assert_eq!(n.type_prefix("ApiKey"), "keyledger-ApiKey-");
    }

    #[test]
    fn a_stream_name_parses_back_to_type_and_id() {
        let n = Naming::new("t_42").expect("namespace");
        for (ty, id) in [
            ("ApiKey", "key_0190abcdef"),
            ("ApiKeyUsage", "key_0190abcdef"),
            ("ApiKey", "id-with-dashes"),
        ] {
            assert_eq!(n.parse(&n.stream(ty, id)), Some((ty, id)));
        }
    }

    #[test]
    fn streams_of_other_namespaces_and_system_streams_do_not_parse() {
        let n = Naming::new("kl").expect("namespace");
        let other = Naming::new("kl2").expect("namespace");
        assert_eq!(n.parse(&other.stream("ApiKey", "key_1")), None);
        assert_eq!(n.parse("$stats-127.0.0.1:2113"), None);
        assert_eq!(n.parse("kl-ApiKey"), None);
        assert_eq!(n.parse("kl-ApiKey-"), None);
        assert_eq!(n.parse("kl--key_1"), None);
        assert_eq!(n.parse("kl-ApiKey-key_1"), Some(("ApiKey", "key_1")));
    }

    #[test]
    fn the_type_prefix_of_one_type_does_not_match_another() {
        let n = Naming::default();
        let usage = n.stream("ApiKeyUsage", "key_1");
        assert!(!usage.starts_with(&n.type_prefix("ApiKey")));
        assert!(usage.starts_with(&n.type_prefix("ApiKeyUsage")));
    }

    #[test]
    fn namespaces_with_dashes_or_odd_characters_are_refused() {
        for bad in ["", "a-b", "a b", "ü", "x".repeat(65).as_str()] {
            assert!(matches!(Naming::new(bad), Err(Error::Config(_))), "{bad:?}");
        }
        assert!(Naming::new("keyledger_test_0190").is_ok());
    }
}
