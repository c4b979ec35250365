//! [`Client`]: one method per route of keyledger's HTTP API.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use percent_encoding::percent_decode_str;
use reqwest::{Method, RequestBuilder, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::audit::{AuditEvent, AuditFilter, AuditPage, Page};
use crate::error::{DecodeError, Error};
use crate::health::{Health, Readiness};
use crate::import::ImportResponse;
use crate::keys::{
    CreateKey, CreditsChange, KeyCreated, KeyList, KeyView, ListKeys, Owner, OwnerLimits,
    RateLimit, RotateKey, UpdateKey,
};
use crate::leaks::{LeakReceipt, LeakReport, PartnerAnswer, PartnerReport};
use crate::policy::Policy;
use crate::secret::Secret;
use crate::usage::{KeyUsage, TenantUsage, UsageQuery};
use crate::verify::{Authorized, RateLimitHeaders, Verification, VerifyRequest};
use crate::webhooks::{
    CreateWebhook, DeliveryFilter, DeliveryList, UpdateWebhook, Webhook, WebhookWithSecret,
};

/// Largest answer read by default: far more than any page of the API.
const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A client of one keyledger deployment. Cheap to clone (clones share one
/// connection pool).
///
/// Management calls send the token given with [`Client::with_token`] (a JWT,
/// e.g. from `keyledger token`); verification, health and leak reports need
/// none and are sent without it.
///
/// ```no_run
/// use keyledger_client::{Client, CreateKey, VerifyRequest};
///
/// # async fn run() -> Result<(), keyledger_client::Error> {
/// let client = Client::new("http://127.0.0.1:8080")?.with_token("eyJhbGciOi...");
/// let created = client
///     .create_key(&CreateKey {
///         permissions: Some(vec!["invoices:read".into()]),
///         ..CreateKey::new("billing")
///     })
///     .await?;
/// let verdict = client
///     .verify(&VerifyRequest::new(created.key.clone()).permissions(["invoices:read"]))
///     .await?;
/// assert!(verdict.valid);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<Secret>,
    max_response_bytes: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Client`] beyond its base URL.
///
/// ```
/// use std::time::Duration;
/// use keyledger_client::Client;
///
/// let client = Client::builder("https://keys.example.com/")
///     .timeout(Duration::from_secs(5))
///     .user_agent("billing-service/1.0")
///     .build()?;
/// # Ok::<(), keyledger_client::Error>(())
/// ```
#[derive(Debug)]
pub struct ClientBuilder {
    base_url: String,
    token: Option<Secret>,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    user_agent: String,
    http: Option<reqwest::Client>,
    max_response_bytes: usize,
}

impl ClientBuilder {
    /// The management token sent with management calls.
    pub fn token(mut self, token: impl Into<Secret>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Longest a whole call may take (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Longest a connection may take to open (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `User-Agent` header (default `keyledger-client/<version>`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// A `reqwest::Client` of the caller's making, used as it is: the
    /// timeouts and user agent of this builder are then not applied.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Largest answer body read (default 64 MiB); a larger one is a
    /// [`Error::Decode`].
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// The client. Fails on a base URL that is not `http://` or `https://`.
    pub fn build(self) -> Result<Client, Error> {
        let base = Url::parse(self.base_url.trim())
            .map_err(|e| Error::Config(format!("base URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Config(
                "base URL: must be http:// or https://".into(),
            ));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(Error::Config(
                "base URL: must have no query or fragment".into(),
            ));
        }
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .user_agent(self.user_agent)
                .connect_timeout(self.connect_timeout)
                .timeout(self.timeout.unwrap_or(Duration::from_secs(30)))
                // A redirect would carry the token elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| Error::Config(format!("HTTP client: {e}")))?,
        };
        Ok(Client {
            http,
            base,
            token: self.token,
            max_response_bytes: self.max_response_bytes,
        })
    }
}

/// An answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Decode(DecodeError {
                status: self.status,
                reason: format!("not the answer expected: {e}"),
                too_large: false,
            })
        })
    }

    /// The answer, or the error an error status stands for.
    fn ok(self) -> Result<Self, Error> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(Error::from_answer(self.status, &self.headers, &self.body))
        }
    }
}

/// Whether a call sends the management token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Credential {
    Token,
    None,
}

impl Client {
    /// A client of the deployment at `base_url` (e.g. `http://127.0.0.1:8080`;
    /// a path is kept: `https://example.com/keyledger/`), with the default
    /// settings and no token.
    pub fn new(base_url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(base_url).build()
    }

    /// A [`ClientBuilder`] for `base_url`.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            token: None,
            timeout: None,
            connect_timeout: Duration::from_secs(10),
            user_agent: concat!("keyledger-client/", env!("CARGO_PKG_VERSION")).to_string(),
            http: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// This client with a management token.
    pub fn with_token(mut self, token: impl Into<Secret>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` under the base, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // The base was checked to be one in `build`.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str], credential: Credential) -> RequestBuilder {
        let request = self.http.request(method, self.url(segments));
        match (&self.token, credential) {
            (Some(token), Credential::Token) => request.bearer_auth(token.expose()),
            _ => request,
        }
    }

    fn management(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.request(method, segments, Credential::Token)
    }

    /// Sends `request` and reads its answer, up to the size allowed.
    async fn fetch(&self, request: RequestBuilder) -> Result<Answer, Error> {
        let mut response = request.send().await?;
        let status = response.status();
        let too_large = || {
            Error::Decode(DecodeError {
                status,
                reason: format!("an answer larger than {} bytes", self.max_response_bytes),
                too_large: true,
            })
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_response_bytes as u64)
        {
            return Err(too_large());
        }
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, Error> {
        self.fetch(request).await?.ok()?.json()
    }

    async fn call_empty(&self, request: RequestBuilder) -> Result<(), Error> {
        self.fetch(request).await?.ok().map(drop)
    }

    // -- Keys ----------------------------------------------------------------

    /// `POST /v1/keys`: a new key, with its raw value (shown this once).
    /// With [`CreateKey::idempotency_key`] set, a retry answers the same key.
    pub async fn create_key(&self, request: &CreateKey) -> Result<KeyCreated, Error> {
        let mut call = self.management(Method::POST, &["v1", "keys"]).json(request);
        if let Some(key) = &request.idempotency_key {
            call = call.header("idempotency-key", key);
        }
        self.call(call).await
    }

    /// `GET /v1/keys`: one page of the tenant's keys, newest first.
    pub async fn list_keys(&self, filter: &ListKeys) -> Result<KeyList, Error> {
        self.call(self.management(Method::GET, &["v1", "keys"]).query(filter))
            .await
    }

    /// Every key `filter` selects, following `next_cursor` to the end.
    pub async fn list_all_keys(&self, filter: &ListKeys) -> Result<Vec<KeyView>, Error> {
        let mut pages = self.key_pages(filter.clone());
        let mut keys = Vec::new();
        while let Some(page) = pages.next_page().await? {
            keys.extend(page);
        }
        Ok(keys)
    }

    /// The pages of keys `filter` selects, one call each.
    ///
    /// ```no_run
    /// # async fn run(client: keyledger_client::Client) -> Result<(), keyledger_client::Error> {
    /// use keyledger_client::ListKeys;
    ///
    /// let mut pages = client.key_pages(ListKeys { limit: Some(100), ..ListKeys::default() });
    /// while let Some(keys) = pages.next_page().await? {
    ///     for key in keys {
    ///         println!("{} {}", key.id, key.name);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn key_pages(&self, filter: ListKeys) -> KeyPages<'_> {
        KeyPages {
            client: self,
            filter,
            done: false,
        }
    }

    /// `GET /v1/keys/{id}`: `id` is a key id or a unique display prefix.
    pub async fn get_key(&self, id: &str) -> Result<KeyView, Error> {
        self.call(self.management(Method::GET, &["v1", "keys", id]))
            .await
    }

    /// `PATCH /v1/keys/{id}`.
    pub async fn update_key(&self, id: &str, update: &UpdateKey) -> Result<KeyView, Error> {
        self.call(
            self.management(Method::PATCH, &["v1", "keys", id])
                .json(update),
        )
        .await
    }

    /// `POST /v1/keys/{id}/deactivate`, with a reason for the audit log.
    pub async fn deactivate_key(&self, id: &str, reason: Option<&str>) -> Result<KeyView, Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
        }
        let call = self
            .management(Method::POST, &["v1", "keys", id, "deactivate"])
            .json(&Body { reason });
        self.call(call).await
    }

    /// `POST /v1/keys/{id}/reactivate`.
    pub async fn reactivate_key(&self, id: &str) -> Result<KeyView, Error> {
        let call = self
            .management(Method::POST, &["v1", "keys", id, "reactivate"])
            .json(&serde_json::json!({}));
        self.call(call).await
    }

    /// `DELETE /v1/keys/{id}`: for good; its history stays.
    pub async fn delete_key(&self, id: &str) -> Result<(), Error> {
        self.call_empty(self.management(Method::DELETE, &["v1", "keys", id]))
            .await
    }

    /// `POST /v1/keys/{id}/rotate`: the successor, with its raw value. With
    /// [`RotateKey::idempotency_key`] set, a retry answers the same successor.
    pub async fn rotate_key(&self, id: &str, request: &RotateKey) -> Result<KeyCreated, Error> {
        let mut call = self
            .management(Method::POST, &["v1", "keys", id, "rotate"])
            .json(request);
        if let Some(key) = &request.idempotency_key {
            call = call.header("idempotency-key", key);
        }
        self.call(call).await
    }

    /// `POST /v1/keys/{id}/credits`.
    pub async fn change_credits(&self, id: &str, change: &CreditsChange) -> Result<KeyView, Error> {
        let call = self
            .management(Method::POST, &["v1", "keys", id, "credits"])
            .json(change);
        self.call(call).await
    }

    /// `PUT /v1/owners/{owner}/ratelimits`: replaces the limits the owner's
    /// keys share.
    pub async fn set_owner_ratelimits(
        &self,
        owner: &str,
        ratelimits: &[RateLimit],
    ) -> Result<OwnerLimits, Error> {
        let call = self
            .management(Method::PUT, &["v1", "owners", owner, "ratelimits"])
            .json(ratelimits);
        self.call(call).await
    }

    /// `GET /v1/owners/{owner}`.
    pub async fn get_owner(&self, owner: &str) -> Result<Owner, Error> {
        self.call(self.management(Method::GET, &["v1", "owners", owner]))
            .await
    }

    // -- Verification --------------------------------------------------------

    /// `POST /v1/keys/verify` (no credential). A refused key is an `Ok` whose
    /// [`Verification::code`] says why; `Err` is for requests that failed.
    pub async fn verify(&self, request: &VerifyRequest) -> Result<Verification, Error> {
        let call = self
            .request(Method::POST, &["v1", "keys", "verify"], Credential::None)
            .json(request);
        self.call(call).await
    }

    /// `GET /v1/auth` (no credential), as a reverse proxy asks: the key's
    /// identity when it is valid and grants `required_permissions`; else an
    /// [`Error::Api`] of 401, 403 or 429 whose
    /// [`verification_code`](Error::verification_code) says why. Counts as a
    /// verification of cost 1.
    pub async fn auth(
        &self,
        key: &str,
        required_permissions: &[&str],
    ) -> Result<Authorized, Error> {
        let mut value = HeaderValue::from_str(key)
            .map_err(|_| Error::Config("the key cannot be sent in a header".into()))?;
        value.set_sensitive(true);
        let mut call = self
            .request(Method::GET, &["v1", "auth"], Credential::None)
            .header("x-api-key", value);
        if !required_permissions.is_empty() {
            call = call.header("x-required-permissions", required_permissions.join(","));
        }
        let answer = self.fetch(call).await?.ok()?;
        let text = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| percent_decode_str(v).decode_utf8_lossy().into_owned())
        };
        let number = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let missing = |header: &str| {
            Error::Decode(DecodeError {
                status: answer.status,
                reason: format!("no {header} header"),
                too_large: false,
            })
        };
        let rate_limit = match (
            number("ratelimit-limit"),
            number("ratelimit-remaining"),
            number("ratelimit-reset"),
        ) {
            (Some(limit), Some(remaining), Some(reset_seconds)) => Some(RateLimitHeaders {
                limit,
                remaining,
                reset_seconds,
            }),
            _ => None,
        };
        // Each permission is percent-encoded within the comma-separated list
        // (a permission holds no comma or `%`), so splitting after decoding
        // is the same as before.
        let permissions = text("x-key-permissions").unwrap_or_default();
        Ok(Authorized {
            key_id: text("x-key-id").ok_or_else(|| missing("X-Key-Id"))?,
            tenant: text("x-key-tenant").ok_or_else(|| missing("X-Key-Tenant"))?,
            permissions: permissions
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            rate_limit,
        })
    }

    // -- Audit and usage -----------------------------------------------------

    /// `GET /v1/audit`: one page of the tenant's events.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, Error> {
        self.call(self.management(Method::GET, &["v1", "audit"]).query(filter))
            .await
    }

    /// Every event `filter` selects, following `next_cursor` to the end.
    pub async fn audit_all(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, Error> {
        let mut filter = filter.clone();
        let mut events = Vec::new();
        loop {
            let page = self.audit(&filter).await?;
            events.extend(page.events);
            match next(&filter.cursor, page.next_cursor) {
                Some(cursor) => filter.cursor = Some(cursor),
                None => return Ok(events),
            }
        }
    }

    /// `GET /v1/keys/{id}/events`: one page of a key's history (also after
    /// its deletion).
    pub async fn key_events(&self, id: &str, page: &Page) -> Result<AuditPage, Error> {
        let call = self
            .management(Method::GET, &["v1", "keys", id, "events"])
            .query(page);
        self.call(call).await
    }

    /// A key's whole history, oldest first.
    pub async fn key_events_all(&self, id: &str) -> Result<Vec<AuditEvent>, Error> {
        let mut page = Page::default();
        let mut events = Vec::new();
        loop {
            let answer = self.key_events(id, &page).await?;
            events.extend(answer.events);
            match next(&page.cursor, answer.next_cursor) {
                Some(cursor) => page.cursor = Some(cursor),
                None => return Ok(events),
            }
        }
    }

    /// `GET /v1/keys/{id}/usage`.
    pub async fn key_usage(&self, id: &str, query: &UsageQuery) -> Result<KeyUsage, Error> {
        let call = self
            .management(Method::GET, &["v1", "keys", id, "usage"])
            .query(query);
        self.call(call).await
    }

    /// `GET /v1/usage`: the tenant's totals and its busiest keys.
    pub async fn tenant_usage(&self, query: &UsageQuery) -> Result<TenantUsage, Error> {
        self.call(self.management(Method::GET, &["v1", "usage"]).query(query))
            .await
    }

    // -- Policy, leaks, import -----------------------------------------------

    /// `GET /v1/policy`.
    pub async fn get_policy(&self) -> Result<Policy, Error> {
        self.call(self.management(Method::GET, &["v1", "policy"]))
            .await
    }

    /// `PUT /v1/policy`: replaces the whole policy; answers it as stored.
    pub async fn set_policy(&self, policy: &Policy) -> Result<Policy, Error> {
        self.call(self.management(Method::PUT, &["v1", "policy"]).json(policy))
            .await
    }

    /// `POST /v1/leaks/report` (no credential): strings that may be keys,
    /// found where `report.url` says.
    pub async fn report_leaks(&self, report: &LeakReport) -> Result<LeakReceipt, Error> {
        let call = self
            .request(Method::POST, &["v1", "leaks", "report"], Credential::None)
            .json(report);
        self.call(call).await
    }

    /// `POST /v1/leaks/{reporter}`: a secret-scanning partner's signed report.
    pub async fn report_partner_leaks(
        &self,
        report: &PartnerReport,
    ) -> Result<Vec<PartnerAnswer>, Error> {
        let call = self
            .request(
                Method::POST,
                &["v1", "leaks", &report.reporter],
                Credential::None,
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                format!("{}-public-key-identifier", report.reporter),
                &report.key_identifier,
            )
            .header(
                format!("{}-public-key-signature", report.reporter),
                &report.signature,
            )
            .body(report.body.clone());
        self.call(call).await
    }

    /// `POST /v1/keys/import`: up to 1000 keys issued elsewhere, by their
    /// SHA-256. Each item succeeds or fails alone; importing is idempotent, so
    /// a batch that got no answer may be sent again. `items` are
    /// [`ImportItem`](crate::ImportItem)s or anything that serialises to the
    /// same JSON.
    pub async fn import_keys<T: Serialize>(&self, items: &[T]) -> Result<ImportResponse, Error> {
        #[derive(Serialize)]
        struct Body<'a, T> {
            keys: &'a [T],
        }
        let call = self
            .management(Method::POST, &["v1", "keys", "import"])
            .json(&Body { keys: items });
        self.call(call).await
    }

    // -- Webhooks ------------------------------------------------------------

    /// `POST /v1/webhooks`: the endpoint and its signing secret (shown this
    /// once).
    pub async fn create_webhook(
        &self,
        request: &CreateWebhook,
    ) -> Result<WebhookWithSecret, Error> {
        self.call(
            self.management(Method::POST, &["v1", "webhooks"])
                .json(request),
        )
        .await
    }

    /// `GET /v1/webhooks`.
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, Error> {
        #[derive(serde::Deserialize)]
        struct List {
            webhooks: Vec<Webhook>,
        }
        let list: List = self
            .call(self.management(Method::GET, &["v1", "webhooks"]))
            .await?;
        Ok(list.webhooks)
    }

    /// `GET /v1/webhooks/{id}`.
    pub async fn get_webhook(&self, id: &str) -> Result<Webhook, Error> {
        self.call(self.management(Method::GET, &["v1", "webhooks", id]))
            .await
    }

    /// `PATCH /v1/webhooks/{id}`.
    pub async fn update_webhook(&self, id: &str, update: &UpdateWebhook) -> Result<Webhook, Error> {
        let call = self
            .management(Method::PATCH, &["v1", "webhooks", id])
            .json(update);
        self.call(call).await
    }

    /// `DELETE /v1/webhooks/{id}`.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), Error> {
        self.call_empty(self.management(Method::DELETE, &["v1", "webhooks", id]))
            .await
    }

    /// `POST /v1/webhooks/{id}/rotate-secret`: the new secret; the old one
    /// keeps signing beside it for 24 h.
    pub async fn rotate_webhook_secret(&self, id: &str) -> Result<WebhookWithSecret, Error> {
        let call = self
            .management(Method::POST, &["v1", "webhooks", id, "rotate-secret"])
            .json(&serde_json::json!({}));
        self.call(call).await
    }

    /// `GET /v1/webhooks/{id}/deliveries`: messages to the endpoint, newest
    /// first.
    pub async fn webhook_deliveries(
        &self,
        id: &str,
        filter: &DeliveryFilter,
    ) -> Result<DeliveryList, Error> {
        let call = self
            .management(Method::GET, &["v1", "webhooks", id, "deliveries"])
            .query(filter);
        self.call(call).await
    }

    /// `POST /v1/webhooks/{id}/deliveries/{msg_id}/retry`: tries a message
    /// now (a delivered one is sent once more).
    pub async fn retry_delivery(&self, id: &str, message_id: &str) -> Result<(), Error> {
        let call = self.management(
            Method::POST,
            &["v1", "webhooks", id, "deliveries", message_id, "retry"],
        );
        self.call_empty(call).await
    }

    // -- Service -------------------------------------------------------------

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, Error> {
        self.call(self.request(Method::GET, &["healthz"], Credential::None))
            .await
    }

    /// `GET /readyz`: `Ok` whether ready (200) or not (503 with the same
    /// body); see [`Readiness::ready`].
    pub async fn ready(&self) -> Result<Readiness, Error> {
        let answer = self
            .fetch(self.request(Method::GET, &["readyz"], Credential::None))
            .await?;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            if let Ok(readiness) = answer.json() {
                return Ok(readiness);
            }
        }
        answer.ok()?.json()
    }

    /// `GET /openapi.json`: the server's OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value, Error> {
        self.call(self.request(Method::GET, &["openapi.json"], Credential::None))
            .await
    }

    /// `GET /metrics`: the node's metrics in Prometheus's text exposition
    /// format (0.0.4), as text for a scraper or a check to read.
    pub async fn metrics(&self) -> Result<String, Error> {
        let answer = self
            .fetch(self.request(Method::GET, &["metrics"], Credential::None))
            .await?
            .ok()?;
        String::from_utf8(answer.body).map_err(|e| {
            Error::Decode(DecodeError {
                status: answer.status,
                reason: format!("metrics that are not UTF-8: {e}"),
                too_large: false,
            })
        })
    }
}

/// The cursor to ask with next: `None` at the end, or if the server hands the
/// same cursor back (which would loop for ever).
fn next(asked: &Option<String>, answered: Option<String>) -> Option<String> {
    answered.filter(|c| Some(c) != asked.as_ref())
}

/// The pages of [`Client::key_pages`].
#[derive(Debug)]
pub struct KeyPages<'a> {
    client: &'a Client,
    filter: ListKeys,
    done: bool,
}

impl KeyPages<'_> {
    /// The next page, or `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<Vec<KeyView>>, Error> {
        if self.done {
            return Ok(None);
        }
        let page = self.client.list_keys(&self.filter).await?;
        match next(&self.filter.cursor, page.next_cursor) {
            Some(cursor) => self.filter.cursor = Some(cursor),
            None => self.done = true,
        }
        Ok(Some(page.keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_base_and_segments_are_encoded() {
        let client = Client::new("http://127.0.0.1:8080").expect("client");
        assert_eq!(
            client.url(&["v1", "keys", "key_1"]).as_str(),
            "http://127.0.0.1:8080/v1/keys/key_1"
        );
        let client = Client::new("https://example.com/keyledger/").expect("client");
        assert_eq!(
            client.url(&["v1", "owners", "a/b c%"]).as_str(),
            "https://example.com/keyledger/v1/owners/a%2Fb%20c%25"
        );
        for bad in ["ftp://example.com", "not a url", "http://x/?q=1"] {
            assert!(matches!(Client::new(bad), Err(Error::Config(_))), "{bad}");
        }
    }

    #[test]
    fn the_token_is_never_shown() {
        let client = Client::new("http://127.0.0.1:8080")
            .expect("client")
            .with_token("eyJ.secret.token");
        assert!(!format!("{client:?}").contains("secret"));
    }
}
