//! The management caller: a request's bearer token, verified (`auth.rs`),
//! and who it names, as the `Management` extractor.

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::request::Parts;
use keyledger_domain::ParsedKey;

use crate::error::Error;
use crate::http::extract::{ClientAddr, RequestId};
use crate::http::state::AppState;
use crate::service::Actor;

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
        // The socket address, or the client a trusted proxy names.
        let ClientAddr(client) = ClientAddr::from_request_parts(parts, state).await?;
        let client_addr = client.map(|ip| ip.to_string());
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect());
        Ok(Management(Actor {
            tenant: claims.tenant.into(),
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
