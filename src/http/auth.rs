//! Management credentials: JWTs carrying the actor and the tenant. HS256 tokens
//! are signed with the server secret (claims `sub` and `tenant`); RS256/ES256
//! tokens of an identity provider are verified with its configured public keys
//! (claim names, issuer and audience configurable). The `Management` extractor is
//! the only place a handler's caller is authenticated.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::IdpConfig;
use crate::error::Error;

/// Clock skew tolerated on `exp` (and `nbf` of identity-provider tokens).
const LEEWAY_SECS: u64 = 5;

/// Claims of a management token (for identity-provider tokens: `sub` is the
/// configured actor claim, `tenant` the configured tenant claim).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Checks management tokens: the header's `alg` chooses the key (HS256: server
/// secret; RS256/ES256: the identity provider's keys); any other is refused.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    idp: Option<IdpVerifier>,
}

/// Public keys and checks of identity-provider tokens.
struct IdpVerifier {
    rsa: Vec<DecodingKey>,
    ec: Vec<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    tenant_claim: String,
    actor_claim: String,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.idp {
            None => f.write_str("TokenVerifier(HS256 ***)"),
            Some(idp) => write!(
                f,
                "TokenVerifier(HS256 ***, {} RSA and {} EC public keys, issuer {:?}, audience {:?}, claims {}/{})",
                idp.rsa.len(),
                idp.ec.len(),
                idp.issuer,
                idp.audience,
                idp.tenant_claim,
                idp.actor_claim
            ),
        }
    }
}

impl TokenVerifier {
    /// HS256 tokens of the server secret only.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
            idp: None,
        }
    }

    /// HS256 tokens of the server secret and, when `idp` is given, RS256/ES256
    /// tokens of the identity provider. Reads the public keys now: a missing,
    /// unreadable or invalid PEM file is an `Error::Config`.
    pub fn with_idp(secret: &[u8], idp: Option<&IdpConfig>) -> Result<Self, Error> {
        let mut verifier = Self::hs256(secret);
        if let Some(config) = idp {
            verifier.idp = Some(IdpVerifier::load(config)?);
        }
        Ok(verifier)
    }

    /// Checks a bearer token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        let header = decode_header(token).map_err(|_| {
            Error::Unauthorized(
                "token is malformed or its algorithm is not accepted (HS256, RS256, ES256)".into(),
            )
        })?;
        let claims = match header.alg {
            Algorithm::HS256 => self.verify_hs256(token),
            alg @ (Algorithm::RS256 | Algorithm::ES256) => match &self.idp {
                Some(idp) => idp.verify(token, alg),
                None => Err(Error::Unauthorized(format!(
                    "token algorithm {alg:?} is not accepted: no identity-provider keys are configured"
                ))),
            },
            alg => Err(Error::Unauthorized(format!(
                "token algorithm {alg:?} is not accepted (HS256, RS256, ES256)"
            ))),
        }?;
        // A token "issued" in the future is forged or from a badly skewed clock.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        if claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECS) {
            return Err(Error::Unauthorized("token is issued in the future".into()));
        }
        identity_claim("sub", &claims.sub)?;
        identity_claim("tenant", &claims.tenant)?;
        Ok(claims)
    }

    fn verify_hs256(&self, token: &str) -> Result<Claims, Error> {
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            Error::Unauthorized(
                match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::InvalidSignature => "token signature is invalid",
                    ErrorKind::InvalidAlgorithm => "token algorithm is not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                    _ => "token is malformed or lacks the claims sub, tenant and exp",
                }
                .to_string(),
            )
        })?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() || claims.tenant.trim().is_empty() {
            return Err(Error::Unauthorized(
                "token claims sub and tenant must not be empty".into(),
            ));
        }
        Ok(claims)
    }
}

/// The longest actor or tenant a token may name, in characters.
pub const MAX_IDENTITY_CHARS: usize = 256;

/// The actor and tenant of a token are written into every event, row and log
/// line of its requests and sent in `/v1/auth`'s headers: a control character
/// (NUL cannot be stored in PostgreSQL; CR/LF and escapes garble headers and
/// terminals) or an unbounded length is refused here, once, for every store.
fn identity_claim(name: &str, value: &str) -> Result<(), Error> {
    if value.chars().any(char::is_control) {
        return Err(Error::Unauthorized(format!(
            "token claim {name} must not contain control characters"
        )));
    }
    if value.chars().count() > MAX_IDENTITY_CHARS {
        return Err(Error::Unauthorized(format!(
            "token claim {name} must be at most {MAX_IDENTITY_CHARS} characters"
        )));
    }
    Ok(())
}

impl IdpVerifier {
    fn load(config: &IdpConfig) -> Result<Self, Error> {
        if config.public_keys.is_empty() {
            return Err(Error::Config(
                "identity-provider tokens need at least one public key (KEYLEDGER_JWT_PUBLIC_KEYS)"
                    .into(),
            ));
        }
        for (name, claim) in [
            ("tenant", &config.tenant_claim),
            ("actor", &config.actor_claim),
        ] {
            if claim.trim().is_empty() {
                return Err(Error::Config(format!(
                    "the {name} claim name of identity-provider tokens must not be empty"
                )));
            }
        }
        let mut rsa = Vec::new();
        let mut ec = Vec::new();
        for path in &config.public_keys {
            match load_public_key(path)? {
                PublicKey::Rsa(key) => rsa.push(key),
                PublicKey::Ec(key) => ec.push(key),
            }
        }
        tracing::info!(
            rsa_keys = rsa.len(),
            ec_keys = ec.len(),
            issuer = config.issuer.as_deref().unwrap_or("(any)"),
            audience = config.audience.as_deref().unwrap_or("(any)"),
            tenant_claim = %config.tenant_claim,
            actor_claim = %config.actor_claim,
            "accepting RS256/ES256 management tokens of an identity provider"
        );
        Ok(Self {
            rsa,
            ec,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            tenant_claim: config.tenant_claim.clone(),
            actor_claim: config.actor_claim.clone(),
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Tries the keys of the token's family; the first whose signature matches
    /// decides (an expired token or a wrong issuer is not retried with other keys).
    fn verify(&self, token: &str, alg: Algorithm) -> Result<Claims, Error> {
        let (keys, family) = if alg == Algorithm::ES256 {
            (&self.ec, "EC")
        } else {
            (&self.rsa, "RSA")
        };
        let validation = self.validation(alg);
        let mut outcome = Err(Error::Unauthorized(format!(
            "token algorithm {alg:?} is not accepted: no {family} public key is configured"
        )));
        for key in keys {
            match decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return self.claims(data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    outcome = Err(Error::Unauthorized(
                        "token signature is invalid (no configured identity-provider key matches)"
                            .into(),
                    ));
                }
                Err(e) => {
                    return Err(Error::Unauthorized(match e.kind() {
                        ErrorKind::ExpiredSignature => "token expired".to_string(),
                        ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".into(),
                        ErrorKind::InvalidIssuer => "token issuer (iss) is not accepted".into(),
                        ErrorKind::InvalidAudience => "token audience (aud) is not accepted".into(),
                        ErrorKind::MissingRequiredClaim(claim) => {
                            format!("token lacks the required claim {claim}")
                        }
                        _ => "token is malformed".into(),
                    }))
                }
            }
        }
        outcome
    }

    fn claims(&self, claims: Map<String, Value>) -> Result<Claims, Error> {
        let text = |name: &str| -> Result<String, Error> {
            match claims.get(name).and_then(Value::as_str).map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(Error::Unauthorized(format!(
                    "token lacks the claim {name} (a non-empty string)"
                ))),
            }
        };
        let number = |name: &str| {
            claims
                .get(name)
                .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
        };
        Ok(Claims {
            sub: text(&self.actor_claim)?,
            tenant: text(&self.tenant_claim)?,
            exp: number("exp")
                .ok_or_else(|| Error::Unauthorized("token lacks the claim exp".into()))?,
            iat: number("iat"),
        })
    }
}

enum PublicKey {
    Rsa(DecodingKey),
    Ec(DecodingKey),
}

/// Reads one PEM public key: RSA, else EC on P-256.
fn load_public_key(path: &Path) -> Result<PublicKey, Error> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read JWT public key {shown}: {e}")))?;
    if String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----") {
        return Err(Error::Config(format!(
            "JWT public key {shown} holds a private key: configure the public key only"
        )));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(PublicKey::Rsa(key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        // The verifier parses the point now: a key on another curve fails here
        // rather than on every token.
        return match jsonwebtoken::crypto::verify("AAAA", b"probe", &key, Algorithm::ES256) {
            Ok(_) => Ok(PublicKey::Ec(key)),
            Err(_) => Err(Error::Config(format!(
                "JWT public key {shown} is an EC key but not on the P-256 curve (ES256)"
            ))),
        };
    }
    Err(Error::Config(format!(
        "JWT public key {shown} is not a PEM RSA or EC P-256 public key"
    )))
}

/// Mints an HS256 management token (used by `keyledger token` and tests).
pub fn mint(secret: &[u8], tenant: &str, subject: &str, ttl: Duration) -> Result<String, Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| Error::internal_from("the clock is before 1970", e))?
        .as_secs();
    let claims = Claims {
        sub: subject.to_string(),
        tenant: tenant.to_string(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::internal_from("cannot sign token", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_with_the_same_secret() {
        let token = mint(b"secret", "acme", "alice", Duration::from_secs(60)).expect("mint");
        let claims = TokenVerifier::hs256(b"secret")
            .verify(&token)
            .expect("verify");
        assert_eq!(claims.tenant, "acme");
        assert_eq!(claims.sub, "alice");
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = mint(b"other", "acme", "alice", Duration::from_secs(60)).expect("mint");
        assert!(matches!(
            TokenVerifier::hs256(b"secret").verify(&token),
            Err(Error::Unauthorized(_))
        ));
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn config_error(idp: &IdpConfig) -> String {
        match TokenVerifier::with_idp(b"secret", Some(idp)) {
            Err(Error::Config(message)) => message,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn rsa_and_ec_public_keys_are_told_apart() {
        let verifier = TokenVerifier::with_idp(
            b"secret",
            Some(&IdpConfig::new(vec![
                fixture("idp-rsa-public.pem"),
                fixture("idp-ec-public.pem"),
                fixture("other-rsa-public.pem"),
            ])),
        )
        .expect("keys load");
        let idp = verifier.idp.as_ref().expect("idp");
        assert_eq!((idp.rsa.len(), idp.ec.len()), (2, 1));
    }

    #[test]
    fn unusable_public_keys_are_configuration_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        assert!(config_error(&IdpConfig::new(vec![missing])).contains("cannot read"));

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a key").expect("write");
        assert!(config_error(&IdpConfig::new(vec![garbage])).contains("not a PEM RSA or EC"));

        let private = fixture("idp-rsa-private.pem");
        assert!(config_error(&IdpConfig::new(vec![private])).contains("private key"));

        let p384 = dir.path().join("p384.pem");
        std::fs::write(
            &p384,
            "-----BEGIN PUBLIC KEY-----\n\
             MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEGABNPVr6FBVx+n54J5YerbHSj/EmY2LS\n\
             bGRF2urNLTo6imvbili6LR5rGARpP4k83mmLU0TkV/cYw2VZGrfrNX9/gr3/0ulI\n\
             1W8nHe1bUzyFw6PY/umhVoPnlAkSgNqK\n\
             -----END PUBLIC KEY-----\n",
        )
        .expect("write");
        assert!(config_error(&IdpConfig::new(vec![p384])).contains("not on the P-256 curve"));

        assert!(config_error(&IdpConfig::new(vec![])).contains("at least one"));
        let mut blank_claim = IdpConfig::new(vec![fixture("idp-rsa-public.pem")]);
        blank_claim.tenant_claim = " ".into();
        assert!(config_error(&blank_claim).contains("tenant claim"));
    }
}
