//! Management credentials: HS256 JWTs signed with the server secret, carrying the
//! actor (`sub`) and the tenant. The `Management` extractor is the only place a
//! handler's caller is authenticated.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keyledger_domain::ParsedKey;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::http::extract::RequestId;
use crate::http::AppState;
use crate::service::Actor;

/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 5;

/// Claims of a management token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Checks management tokens.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier(***)")
    }
}

impl TokenVerifier {
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks a bearer token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
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

/// Mints an HS256 management token (used by `keyledger token` and tests).
pub fn mint(secret: &[u8], tenant: &str, subject: &str, ttl: Duration) -> Result<String, Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| Error::Internal(e.to_string()))?
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
    .map_err(|e| Error::Internal(format!("cannot sign token: {e}")))
}

/// An authenticated management caller.
pub struct Management(pub Actor);

impl FromRequestParts<AppState> for Management {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| Error::Unauthorized("missing Authorization: Bearer <token>".into()))?
            .to_str()
            .map_err(|_| Error::Unauthorized("Authorization header is not text".into()))?;
        let token = bearer(header)
            .ok_or_else(|| Error::Unauthorized("Authorization must be Bearer <token>".into()))?;
        if looks_like_api_key(token) {
            return Err(Error::ApiKeyNotAllowed);
        }
        let claims = state.tokens.verify(token)?;
        let RequestId(request_id) = RequestId::from_request_parts(parts, state).await?;
        let client_addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect());
        Ok(Management(Actor {
            tenant: claims.tenant,
            subject: claims.sub,
            request_id,
            client_addr,
            user_agent,
        }))
    }
}

fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// An API key (valid or with a typo) is recognisable by its `<prefix>_<env>_` shape;
/// a JWT never contains `_live_`/`_test_` before its first dot.
fn looks_like_api_key(token: &str) -> bool {
    if ParsedKey::parse(token).is_ok() {
        return true;
    }
    let head = token.split('.').next().unwrap_or(token);
    let mut parts = head.splitn(3, '_');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(p), Some("live" | "test"), Some(_)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    )
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

    #[test]
    fn api_keys_are_recognised_even_with_a_typo() {
        assert!(looks_like_api_key(
            "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr"
        ));
        assert!(looks_like_api_key("kl_live_nottherightlength"));
        assert!(!looks_like_api_key(
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig"
        ));
    }
}
