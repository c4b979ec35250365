//! Extractors that turn bad input into the contract's errors: JSON bodies (400 for
//! broken JSON, 422 naming the field for unknown fields and wrong types, 413 for
//! oversize bodies), query strings, and the request id.

use std::future::Future;
use std::net::IpAddr;
use std::task::Poll;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::error::Error;
use crate::http::state::AppState;

/// A JSON body, parsed strictly.
pub struct ApiJson<T>(pub T);

/// A JSON body that may be absent (an empty body reads as `T::default()`).
pub struct OptionalJson<T>(pub T);

/// Reads a whole body, refusing one over the configured limit with 413. The
/// limit is applied here rather than by axum's `DefaultBodyLimit` layer, which
/// puts an extension into every request (the extension map's first growth,
/// per request, on the verification path); every body is read through here.
async fn body_bytes(req: Request, state: &AppState) -> Result<Bytes, Error> {
    body_up_to(req, state, state.max_body_bytes).await
}

/// As `body_bytes`, with a limit of the route's own (a scanner's report of
/// a thousand tokens is larger than any management request).
pub async fn body_up_to(req: Request, state: &AppState, limit: usize) -> Result<Bytes, Error> {
    let limited = Limited::new(req.into_body(), limit);
    let mut read = std::pin::pin!(limited.collect());
    // Nearly every body has arrived with its headers: those are taken without
    // arming a timer (a timer costs a lock on the runtime's timer wheel).
    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    let read = match first {
        Poll::Ready(read) => read,
        // A client that trickles its body (slowloris) must not hold a task forever.
        Poll::Pending => tokio::time::timeout(state.body_read_timeout, read)
            .await
            .map_err(|_| Error::RequestTimeout)?,
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Error::PayloadTooLarge { limit }),
        Err(_) => Err(Error::MalformedRequest(
            "the request body could not be read".into(),
        )),
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let JsonBytes(value, _) = JsonBytes::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let OptionalJsonBytes(value, _) = OptionalJsonBytes::from_request(req, state).await?;
        Ok(OptionalJson(value))
    }
}

/// A JSON body that may be absent, with its raw bytes (for request fingerprints).
pub struct OptionalJsonBytes<T>(pub T, pub Bytes);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJsonBytes<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBytes(T::default(), bytes));
        }
        parse_json(&bytes).map(|v| OptionalJsonBytes(v, bytes))
    }
}

/// A required JSON body with its raw bytes (for request fingerprints).
pub struct JsonBytes<T>(pub T, pub Bytes);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBytes<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::MalformedRequest(
                "the request body is empty; a JSON object is required".into(),
            ));
        }
        parse_json(&bytes).map(|v| JsonBytes(v, bytes))
    }
}

/// The `Idempotency-Key` header, when sent (1-255 visible ASCII characters).
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyKey(None));
        };
        let text = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                Error::validation("Idempotency-Key", "must be 1-255 visible ASCII characters")
            })?;
        Ok(IdempotencyKey(Some(text.to_string())))
    }
}

/// Parses JSON, telling syntax errors (400) from data errors (422 with the field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    // Well-formed bodies take the plain parser; only a rejected one is parsed
    // again with path tracking, which costs on every field, to name the field.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Data => {
                let message = redact(&inner.to_string());
                let field = if path == "." {
                    named_field(&message).unwrap_or_else(|| "body".into())
                } else {
                    redact_path(&path)
                };
                Error::validation(field, message)
            }
            Category::Syntax | Category::Eof | Category::Io => {
                Error::MalformedRequest(format!("invalid JSON: {}", redact(&inner.to_string())))
            }
        }
    })?;
    de.end()
        .map_err(|_| Error::MalformedRequest("invalid JSON: trailing characters".into()))?;
    Ok(value)
}

/// The field serde names in an unknown-field or missing-field message.
fn named_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next().map(str::to_owned)
}

/// Most characters of a client's own text an error message may repeat.
const MAX_ECHO: usize = 24;

/// Longest error message built from a parser's message: whatever the input,
/// the answer stays short (found by fuzzing: quote characters inside a field
/// name used to make the quoting below pair up wrongly and echo the input).
const MAX_MESSAGE: usize = 200;

/// A serde message with the client's text cut out: quoted segments longer than
/// [`MAX_ECHO`] become `<redacted>`, the field name of an unknown-field message
/// is judged whole (it may itself contain quote characters), and the result is
/// at most [`MAX_MESSAGE`] characters.
pub fn redact(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // serde's own suffix follows the client's field name; the name is
        // everything before the last occurrence of it.
        let end = ["`, expected", "`, there are no fields"]
            .iter()
            .filter_map(|suffix| rest.rfind(suffix))
            .max();
        if let Some(end) = end {
            let name = &rest[..end];
            let shown = if name.chars().count() > MAX_ECHO || name.contains(['`', '"']) {
                "<redacted>"
            } else {
                name
            };
            return bounded(format!(
                "unknown field `{shown}{}",
                redact_quotes(&rest[end..])
            ));
        }
    }
    bounded(redact_quotes(message))
}

/// Replaces each quoted segment longer than [`MAX_ECHO`] with `<redacted>`.
fn redact_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['`', '"']) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        match after.find(quote) {
            Some(end) => {
                let inner = &after[..end];
                if inner.chars().count() > MAX_ECHO {
                    out.push_str("<redacted>");
                } else {
                    out.push_str(inner);
                }
                out.push(quote);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("<redacted>");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn bounded(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE {
        return message;
    }
    let mut cut: String = message.chars().take(MAX_MESSAGE).collect();
    cut.push_str("...");
    cut
}

/// A field path as serde_path_to_error prints it, with long segments redacted: an
/// unknown field's path is the client's key, which may be a raw key.
fn redact_path(path: &str) -> String {
    let joined = path
        .split('.')
        .map(|segment| {
            if segment.chars().count() > MAX_ECHO {
                "<redacted>"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join(".");
    bounded(joined)
}

/// A query string, parsed; bad values are 422 naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let query = parts.uri.query().unwrap_or_default();
        query_controls(query)?;
        let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                Error::validation(redact_path(&path), redact(&e.into_inner().to_string()))
            })
    }
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}

/// The `{id}` of a key route (a key id or a display prefix). One holding a
/// control character names no key (ids and prefixes are ASCII letters,
/// digits and `_`): it is answered 404 before any store sees it, where NUL
/// would be an error of PostgreSQL's rather than an answer.
pub struct KeyPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Path(id) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| Error::KeyNotFound)?;
        if id.chars().any(char::is_control) {
            return Err(Error::KeyNotFound);
        }
        Ok(KeyPath(id))
    }
}

/// The `{owner}` of an owner route: 1-128 characters, no control character
/// (422 naming `owner` otherwise, before any store sees it).
pub struct OwnerPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for OwnerPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Path(owner) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| Error::validation("owner", "must be 1-128 characters of UTF-8"))?;
        keyledger_domain::limits::owner(&owner)?;
        Ok(OwnerPath(owner))
    }
}

/// Refuses control characters in a query's names and values (percent-encoded
/// NUL, CR, escapes): filters are compared with stored text, and PostgreSQL
/// cannot even take NUL as a parameter.
fn query_controls(query: &str) -> Result<(), Error> {
    for (name, value) in form_urlencoded_parse(query) {
        if name.chars().chain(value.chars()).any(char::is_control) {
            return Err(Error::validation(
                redact_path(&name),
                "must not contain control characters",
            ));
        }
    }
    Ok(())
}

/// The request id: from `X-Request-Id` when the client sent one, else generated
/// by the request-id layer.
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 200)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        Ok(RequestId(id))
    }
}

/// The client's address, when the server knows it: the connecting (socket)
/// address, or, when that is a trusted proxy (`--trusted-proxies`), the
/// address its forwarding headers name (see [`client_addr`]). The guess
/// limiter counts by it and the audit trail records it.
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| client_addr(c.0.ip(), &parts.headers, &state.trusted_proxies)),
        ))
    }
}

/// The client behind `peer`, the connecting address. Unless `peer` is in
/// `trusted`, that is `peer` itself: anyone can write forwarding headers.
/// Else the hops of `X-Forwarded-For` (or of RFC 7239 `Forwarded`) are walked
/// from the right, the nearest first, skipping trusted proxies, and the first
/// untrusted address is the client: every hop right of it was written by a
/// trusted proxy, everything left of it may be the client's own invention. A
/// chain of trusted proxies only names its leftmost hop. `peer` is kept when
/// the headers are absent, when a hop to be read is malformed or not an
/// address (`unknown`, an obfuscated `_node`), and when both headers are sent:
/// a proxy sets one, so the other may be the client's own. Allocates nothing.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let forwarded_for = headers.get_all(&X_FORWARDED_FOR);
    let forwarded = headers.get_all(header::FORWARDED);
    let found = match (
        forwarded_for.iter().next().is_some(),
        forwarded.iter().next().is_some(),
    ) {
        (true, false) => rightmost_untrusted(forwarded_for.iter(), trusted, forwarded_for_hop),
        (false, true) => rightmost_untrusted(forwarded.iter(), trusted, forwarded_element),
        _ => None,
    };
    found.unwrap_or(peer)
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    // An IPv4 peer of a dual-stack listener arrives as `::ffff:a.b.c.d`.
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// Walks the comma-separated hops of all `values` (several header lines are
/// one list, in order) from the right; `None` at the first malformed hop.
fn rightmost_untrusted<'a>(
    values: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    trusted: &[IpNet],
    hop: fn(&str) -> Option<IpAddr>,
) -> Option<IpAddr> {
    let mut leftmost = None;
    for value in values.rev() {
        for text in value.to_str().ok()?.rsplit(',') {
            let ip = hop(text)?;
            if !is_trusted(ip, trusted) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost
}

/// One hop of `X-Forwarded-For`: an address, as some proxies write it with a
/// port (`192.0.2.1:4711`, `[2001:db8::1]:4711`) or in brackets.
fn forwarded_for_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            text.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.60;proto=http;by=…`,
/// `for="[2001:db8:cafe::17]:4711"`), when it is an address.
fn forwarded_element(element: &str) -> Option<IpAddr> {
    let mut node = None;
    for pair in element.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("for") {
            if node.is_some() {
                return None;
            }
            node = Some(value.trim());
        }
    }
    let node = node?;
    let node = match node.strip_prefix('"') {
        Some(quoted) => quoted
            .strip_suffix('"')
            .filter(|inner| !inner.contains(['"', '\\']))?,
        None => node,
    };
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    // nodename [ ":" node-port ]: "[" IPv6 "]", or IPv4 (`unknown` and
    // obfuscated `_names` are not addresses).
    let (name, port) = match node.strip_prefix('[') {
        Some(rest) => {
            let (v6, rest) = rest.split_once(']')?;
            let name = IpAddr::V6(v6.parse().ok()?);
            if rest.is_empty() {
                return Some(name);
            }
            (name, rest.strip_prefix(':')?)
        }
        None => {
            let (v4, port) = node.split_once(':')?;
            (IpAddr::V4(v4.parse().ok()?), port)
        }
    };
    let valid_port = port.parse::<u16>().is_ok()
        || (port.starts_with('_')
            && port.len() > 1
            && port
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')));
    valid_port.then_some(name)
}

#[cfg(test)]
mod client_addr_tests {
    use super::*;

    const PEER: &str = "127.0.0.1";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|n| crate::config::parse_trusted_proxy(n).expect("cidr"))
            .collect()
    }

    /// The client of a request from `peer` with these header lines.
    fn client(peer: &str, trusted: &[&str], lines: &[(&'static str, &str)]) -> IpAddr {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        client_addr(ip(peer), &headers, &nets(trusted))
    }

    fn xff(trusted: &[&str], value: &str) -> IpAddr {
        client(PEER, trusted, &[("x-forwarded-for", value)])
    }

    fn forwarded(value: &str) -> IpAddr {
        client(PEER, &["127.0.0.1/32"], &[("forwarded", value)])
    }

    #[test]
    fn forwarding_headers_count_only_from_a_trusted_proxy() {
        // No proxy trusted (the default): the headers are anyone's to write.
        assert_eq!(xff(&[], "203.0.113.7"), ip(PEER));
        // The peer is not one of the trusted proxies.
        assert_eq!(xff(&["10.0.0.0/8"], "203.0.113.7"), ip(PEER));
        assert_eq!(
            client(PEER, &["10.0.0.0/8"], &[("forwarded", "for=203.0.113.7")]),
            ip(PEER)
        );
        // A trusted proxy, also as an IPv4-mapped peer of a dual-stack socket.
        assert_eq!(xff(&["127.0.0.1/32"], "203.0.113.7"), ip("203.0.113.7"));
        assert_eq!(
            client(
                "::ffff:127.0.0.1",
                &["127.0.0.1"],
                &[("x-forwarded-for", "203.0.113.7")]
            ),
            ip("203.0.113.7")
        );
        assert_eq!(
            client(
                "fd00::5",
                &["fd00::/8"],
                &[("x-forwarded-for", "2001:db8::9")]
            ),
            ip("2001:db8::9")
        );
        // Trusted, but no header: the proxy itself.
        assert_eq!(client(PEER, &["127.0.0.1/32"], &[]), ip(PEER));
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_to_the_first_untrusted_hop() {
        let t = &["127.0.0.1/32", "10.0.0.0/8"];
        // What the client wrote itself (left) is never taken over a real hop.
        assert_eq!(xff(t, "1.1.1.1, 203.0.113.7"), ip("203.0.113.7"));
        assert_eq!(xff(t, "203.0.113.7, 10.0.0.2"), ip("203.0.113.7"));
        assert_eq!(
            xff(t, "1.1.1.1,203.0.113.7,10.1.2.3, 10.0.0.2"),
            ip("203.0.113.7")
        );
        // Garbage left of the client does not matter.
        assert_eq!(xff(t, "garbage, 203.0.113.7"), ip("203.0.113.7"));
        // Several header lines are one list, in order.
        assert_eq!(
            client(
                PEER,
                t,
                &[
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "203.0.113.7, 10.0.0.2")
                ]
            ),
            ip("203.0.113.7")
        );
        // Only trusted hops: the leftmost.
        assert_eq!(xff(t, "10.0.0.5, 10.0.0.2"), ip("10.0.0.5"));
        // Addresses as proxies write them.
        assert_eq!(xff(t, " 203.0.113.7:4711 "), ip("203.0.113.7"));
        assert_eq!(xff(t, "[2001:db8::1]:4711"), ip("2001:db8::1"));
        assert_eq!(xff(t, "[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(xff(t, "2001:db8::1"), ip("2001:db8::1"));
    }

    #[test]
    fn a_malformed_header_falls_back_to_the_socket_address() {
        let t = &["127.0.0.1/32"];
        for value in [
            "",
            " ",
            "garbage",
            "203.0.113.7, garbage",
            "203.0.113.7,",
            "203.0.113.7,,127.0.0.1",
            "unknown",
            "203.0.113.7:99999",
            "fe80::1%eth0",
            "[2001:db8::1",
        ] {
            assert_eq!(xff(t, value), ip(PEER), "{value:?}");
        }
        // Not text.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.7\xff").expect("value"),
        );
        assert_eq!(client_addr(ip(PEER), &headers, &nets(t)), ip(PEER));
    }

    #[test]
    fn forwarded_is_read_as_rfc_7239_writes_it() {
        assert_eq!(
            forwarded("for=192.0.2.60;proto=http;by=203.0.113.43"),
            ip("192.0.2.60")
        );
        assert_eq!(
            forwarded("For=\"[2001:db8:cafe::17]:4711\""),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            forwarded("for=\"[2001:db8:cafe::17]\""),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(forwarded("for=\"192.0.2.43:4711\""), ip("192.0.2.43"));
        assert_eq!(forwarded("for=192.0.2.43:_abc-1"), ip("192.0.2.43"));
        assert_eq!(forwarded("proto=https; for=192.0.2.43 ;"), ip("192.0.2.43"));
        // The rightmost element is the nearest hop; trusted ones are skipped.
        assert_eq!(
            forwarded("for=192.0.2.43, for=198.51.100.17"),
            ip("198.51.100.17")
        );
        assert_eq!(forwarded("for=192.0.2.43, for=127.0.0.1"), ip("192.0.2.43"));
        assert_eq!(
            client(
                PEER,
                &["127.0.0.1/32"],
                &[
                    ("forwarded", "for=192.0.2.43"),
                    ("forwarded", "for=198.51.100.17")
                ]
            ),
            ip("198.51.100.17")
        );
        // Not an address, or not well-formed: the socket address.
        for value in [
            "for=unknown",
            "for=_hidden",
            "for=\"_gazonk\"",
            "proto=https",
            "for",
            "for=192.0.2.43;for=198.51.100.17",
            "for=\"[2001:db8::1\"",
            "for=\"[2001:db8::1]",
            "for=\"[2001:db8::1]x\"",
            "for=192.0.2.43:",
            "for=192.0.2.43:_",
            "for=192.0.2.43:http",
            "for=\"192.0.2.43,198.51.100.17\"",
            "for=192.0.2.43, garbage",
        ] {
            assert_eq!(forwarded(value), ip(PEER), "{value:?}");
        }
    }

    #[test]
    fn both_headers_at_once_are_ambiguous_and_fall_back_to_the_socket_address() {
        // A proxy sets one of them; the other may be the client's own.
        let lines = &[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=198.51.100.17"),
        ];
        assert_eq!(client(PEER, &["127.0.0.1/32"], lines), ip(PEER));
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let parse = crate::config::parse_trusted_proxy;
        assert_eq!(
            parse("127.0.0.1/32").map(|n| n.to_string()).ok().as_deref(),
            Some("127.0.0.1/32")
        );
        assert_eq!(
            parse(" 10.1.2.3/8 ").map(|n| n.to_string()).ok().as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            parse("127.0.0.1").map(|n| n.to_string()).ok().as_deref(),
            Some("127.0.0.1/32")
        );
        assert_eq!(
            parse("::1").map(|n| n.to_string()).ok().as_deref(),
            Some("::1/128")
        );
        for bad in ["", "nope", "10.0.0.0/33", "10.0.0/8", "::1/129"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        limit: Option<u32>,
    }

    #[test]
    fn broken_json_is_malformed() {
        let r = parse_json::<Body>(br#"{"name": "#);
        assert!(matches!(r, Err(Error::MalformedRequest(_))));
    }

    #[test]
    fn unknown_fields_name_the_field() {
        let r = parse_json::<Body>(br#"{"name": "a", "colour": 1}"#);
        match r {
            Err(Error::Validation { field, .. }) => assert_eq!(field, "colour"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let r = parse_json::<Body>(br#"{"name": "a", "limit": "x"}"#);
        match r {
            Err(Error::Validation { field, .. }) => assert_eq!(field, "limit"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_fields_name_the_field() {
        let r = parse_json::<Body>(br#"{"limit": 1}"#);
        match r {
            Err(Error::Validation { field, .. }) => assert_eq!(field, "name"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_raw_key_used_as_a_field_name_is_never_echoed() {
        let key = "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr";
        let body = format!(r#"{{"name": "a", "{key}": 1}}"#);
        let r = parse_json::<Body>(body.as_bytes());
        let message = format!("{:?}", r.err());
        assert!(!message.contains(key), "{message}");
    }

    #[test]
    fn quote_characters_in_a_field_name_do_not_make_the_input_echo() {
        // Reduced from a cargo fuzz finding (json_bodies): backticks inside an
        // unknown field's name paired up with serde's quoting.
        let name = format!("environment{}``-`-7``{}", ";".repeat(300), "`;".repeat(400));
        let body = format!(r#"{{"name": "a", "{name}": 1}}"#);
        match parse_json::<Body>(body.as_bytes()) {
            Err(Error::Validation { field, message }) => {
                assert!(message.len() <= 203, "{message}");
                assert!(!message.contains(";;;"), "{message}");
                assert!(field.len() <= 24, "{field}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn long_values_are_never_echoed() {
        let key = "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr";
        let body = format!(r#"{{"name": "a", "limit": "{key}"}}"#);
        let r = parse_json::<Body>(body.as_bytes());
        let message = format!("{:?}", r.err());
        assert!(!message.contains(key), "{message}");
    }
}

#[cfg(test)]
mod fuzz_smoke {
    //! The fuzz targets' properties (fuzz/), run briefly with proptest in the suite.
    use super::*;
    use crate::http::keys::{CreateKeyRequest, UpdateKeyRequest};
    use crate::http::verify::VerifyBody;
    use proptest::prelude::*;

    fn only_client_errors<T: DeserializeOwned>(data: &[u8]) -> bool {
        matches!(
            parse_json::<T>(data),
            Ok(_) | Err(Error::MalformedRequest(_)) | Err(Error::Validation { .. })
        )
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_value_or_a_client_error(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(only_client_errors::<CreateKeyRequest>(&data));
            prop_assert!(only_client_errors::<UpdateKeyRequest>(&data));
            prop_assert!(only_client_errors::<VerifyBody>(&data));
        }

        #[test]
        fn json_shaped_input_gives_a_value_or_a_client_error(
            name in ".{0,120}", env in "[a-z]{0,6}", perms in proptest::collection::vec("[a-zA-Z0-9:*_ -]{0,70}", 0..60)
        ) {
            let body = serde_json::json!({"name": name, "environment": env, "permissions": perms});
            prop_assert!(only_client_errors::<CreateKeyRequest>(body.to_string().as_bytes()));
        }

        #[test]
        fn garbage_tokens_are_unauthorized(token in ".{0,300}") {
            let verifier = crate::http::auth::TokenVerifier::hs256(b"smoke-secret");
            prop_assert!(matches!(verifier.verify(&token), Err(Error::Unauthorized(_))));
        }
    }
}
