//! Secret-scanning partners (GitHub's format; GitLab's and others' alike):
//! a reporter posts the tokens it found, signed with ECDSA P-256 / SHA-256
//! over the raw body; the signature names its public key by identifier
//! (`<Name>-Public-Key-Identifier`, `<Name>-Public-Key-Signature`), and the
//! reporter publishes its keys as JSON at a URL:
//! `{"public_keys": [{"key_identifier", "key" (PEM), "is_current"}]}`.
//!
//! Keys are cached for an hour and fetched again at once for an identifier
//! not seen (a rotation at the reporter), one fetch at a time; while the URL
//! fails, the last good set is used.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

use crate::error::Error;

/// GitHub's published keys.
pub const GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";
/// How long fetched keys are trusted before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(3_600);
/// An unknown identifier fetches the keys again at most this often, so
/// reports naming made-up identifiers cannot turn into a flood of fetches.
const MIN_REFETCH: Duration = Duration::from_secs(1);
/// A fetch of the keys gives up after this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A configured reporter: `--leak-reporter NAME[=KEYS_URL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReporterConfig {
    pub name: String,
    pub keys_url: String,
}

impl ReporterConfig {
    /// `github`, `github=URL`, `gitlab=URL`, `acme=URL`: a name of lower-case
    /// letters, digits and `-` (1-32), and the URL of its keys (GitHub's by
    /// default for `github`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, url) = match text.split_once('=') {
            Some((n, u)) => (n, Some(u)),
            None => (text, None),
        };
        let name_ok = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok || name == "report" {
            return Err(format!("reporter name {name:?}: 1-32 of a-z, 0-9, -"));
        }
        let keys_url = match (name, url) {
            (_, Some(u)) if u.starts_with("https://") || u.starts_with("http://") => u.to_string(),
            (_, Some(u)) => return Err(format!("reporter {name}: {u:?} is not an http(s) URL")),
            ("github", None) => GITHUB_KEYS_URL.to_string(),
            (_, None) => {
                return Err(format!(
                    "reporter {name}: give the URL of its keys, {name}=URL"
                ))
            }
        };
        Ok(Self {
            name: name.to_string(),
            keys_url,
        })
    }

    /// The header naming the key, e.g. `github-public-key-identifier`.
    pub fn identifier_header(&self) -> String {
        format!("{}-public-key-identifier", self.name)
    }

    pub fn signature_header(&self) -> String {
        format!("{}-public-key-signature", self.name)
    }
}

#[derive(Deserialize)]
struct KeysDocument {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, VerifyingKey>,
    fetched: Option<Instant>,
    /// Fetches tried so far: a request that waited for another's fetch
    /// uses it instead of fetching again.
    attempts: u64,
}

/// One reporter's signature check.
pub struct Reporter {
    pub config: ReporterConfig,
    http: reqwest::Client,
    cache: tokio::sync::RwLock<Cache>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl Reporter {
    pub fn new(config: ReporterConfig, http: reqwest::Client) -> Self {
        Self {
            config,
            http,
            cache: tokio::sync::RwLock::default(),
            fetching: tokio::sync::Mutex::default(),
        }
    }

    /// Checks `signature` (base64 DER) over `body` with the key named
    /// `identifier`; 401 when anything is missing or wrong.
    pub async fn verify(
        &self,
        identifier: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), Error> {
        let refused = |why: &str| Error::Unauthorized(format!("leak report refused: {why}"));
        let (Some(identifier), Some(signature)) = (identifier, signature) else {
            return Err(refused("the signature headers are missing"));
        };
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| refused("the signature is not base64"))?;
        let signature =
            Signature::from_der(&der).map_err(|_| refused("the signature is not DER ECDSA"))?;
        let key = self
            .key(identifier)
            .await
            .ok_or_else(|| refused("the key identifier is unknown"))?;
        key.verify(body, &signature)
            .map_err(|_| refused("the signature does not match the body"))
    }

    async fn key(&self, identifier: &str) -> Option<VerifyingKey> {
        let seen = {
            let cache = self.cache.read().await;
            let fresh = cache.fetched.is_some_and(|t| t.elapsed() < KEYS_TTL);
            if fresh {
                if let Some(k) = cache.keys.get(identifier) {
                    return Some(*k);
                }
            }
            cache.attempts
        };
        let _one = self.fetching.lock().await;
        {
            // Another request fetched while this one waited, or one did a
            // moment ago: its answer stands.
            let cache = self.cache.read().await;
            let recent = cache.fetched.is_some_and(|t| t.elapsed() < MIN_REFETCH);
            if cache.attempts != seen || recent {
                return cache.keys.get(identifier).copied();
            }
        }
        let fetched = self.fetch().await;
        let mut cache = self.cache.write().await;
        cache.attempts += 1;
        match fetched {
            Ok(keys) => {
                cache.keys = keys;
                cache.fetched = Some(Instant::now());
                cache.keys.get(identifier).copied()
            }
            Err(e) => {
                tracing::warn!(reporter = %self.config.name, error = %e,
                    "the reporter's keys could not be fetched; the last ones are used");
                cache.keys.get(identifier).copied()
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, VerifyingKey>, String> {
        let document: KeysDocument = self
            .http
            .get(&self.config.keys_url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for k in document.public_keys {
            match VerifyingKey::from_public_key_pem(&k.key) {
                Ok(key) => {
                    keys.insert(k.key_identifier, key);
                }
                Err(e) => tracing::warn!(reporter = %self.config.name,
                    identifier = %k.key_identifier, error = %e, "a published key is not P-256 PEM"),
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporters_are_configured_by_name_and_url() {
        assert_eq!(
            ReporterConfig::parse("github").expect("github").keys_url,
            GITHUB_KEYS_URL
        );
        let gitlab = ReporterConfig::parse("gitlab=https://gitlab.example/keys").expect("gitlab");
        assert_eq!(gitlab.identifier_header(), "gitlab-public-key-identifier");
        assert!(ReporterConfig::parse("gitlab").is_err(), "a URL is needed");
        assert!(ReporterConfig::parse("Git Hub=https://x").is_err());
        assert!(ReporterConfig::parse("x=ftp://x").is_err());
    }
}
