//! `keyledger-bench leaks`: how long a node takes to answer a secret-scanning
//! partner's report (`POST /v1/leaks/{reporter}`, GitHub's format) of many
//! tokens. This process is the partner: it makes a P-256 key, publishes it
//! at a URL of its own (the node is started with `--leak-reporter
//! NAME=that URL` and fetches it on the first report), and signs each report
//! as GitHub does (base64 DER ECDSA P-256 / SHA-256 over the raw body).
//!
//! A report mixes keys of the node with well-formed strings that are not
//! (generated keys with a valid check, so each is hashed and looked up like
//! a real one), shuffled. Every answer is checked token by token: a wrong
//! label is an error, not a figure.
//!
//! Each round reports the same tokens at a URL of its own, so every round is
//! a new report to the node (one `KeyLeakReported` per key and round; the
//! first round also deactivates the keys) rather than a retry it has already
//! acted on. The answer comes before those actions; by default the next
//! round waits until the audit log shows them done (the time that took is a
//! figure of its own), so each answer is timed on a node at rest. Reports
//! answered `true_positive` that never reach the audit log are counted, and
//! fail the run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use keyledger::Error;
use keyledger_client::{AuditFilter, Client, Order, PartnerAnswer, PartnerReport, Secret};
use keyledger_domain::{Environment, KeyHash, KeyPrefix, RawKey};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The `type` of every reported token.
const TOKEN_TYPE: &str = "keyledger_api_key";
/// The audit log is taken as done once it has been quiet this long (with
/// every report recorded): a key's policy action follows its report.
const QUIET: Duration = Duration::from_millis(200);
/// Reports not in the audit log after it has been quiet this long are
/// taken as lost.
const GIVE_UP: Duration = Duration::from_secs(5);
/// How often the audit log is read while waiting.
const POLL: Duration = Duration::from_millis(10);

/// A secret-scanning partner: its name (the reporter's name at the node, and
/// of its headers), the identifier of its key, and the key.
pub struct Partner {
    name: String,
    identifier: String,
    key: SigningKey,
}

impl Partner {
    /// A partner with a fresh key.
    pub fn generate(name: &str) -> Self {
        let mut rng = rand::rng();
        // Nearly every 32 bytes are a valid scalar; the loop is for the rest.
        let key = loop {
            let bytes: [u8; 32] = rng.random();
            if let Ok(k) = SigningKey::from_bytes(&bytes.into()) {
                break k;
            }
        };
        let id: u64 = rng.random();
        Self {
            name: name.to_string(),
            identifier: format!("bench-{id:016x}"),
            key,
        }
    }

    /// The published keys, as the node fetches them.
    pub fn keys_document(&self) -> Result<Value, Error> {
        let pem = self
            .key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::internal_from("encoding the public key", e))?;
        Ok(json!({"public_keys": [{
            "key_identifier": self.identifier,
            "key": pem,
            "is_current": true,
        }]}))
    }

    /// Serves the keys document at `/keys` on `listen`; returns its URL.
    pub async fn publish(&self, listen: SocketAddr) -> Result<String, Error> {
        let document = self.keys_document()?;
        let app = axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let document = document.clone();
                async move { axum::Json(document) }
            }),
        );
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::internal_from(format!("binding {listen}"), e))?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::internal_from("the keys server's address", e))?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(format!("http://{address}/keys"))
    }

    /// The signature header's value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let signature: Signature = self.key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }
}

/// What the node must answer for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// One of its keys: `true_positive` with the token itself.
    Ours(String),
    /// Not one of its keys: `false_positive` with the token's SHA-256.
    NotOurs(String),
}

/// The tokens of a report, in order, with the answer due for each.
pub struct Report {
    tokens: Vec<String>,
    expected: Vec<Expected>,
}

impl Report {
    /// `ours` (keys of the node) and `others` generated keys that are not,
    /// shuffled together.
    pub fn mixed(ours: &[String], others: usize) -> Self {
        let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
        let prefix = KeyPrefix::default();
        let mut tokens: Vec<(String, Expected)> = ours
            .iter()
            .map(|k| (k.clone(), Expected::Ours(k.clone())))
            .collect();
        for _ in 0..others {
            let k = RawKey::generate(&prefix, Environment::Live, &mut rng).into_exposed();
            let hash = KeyHash::of(&k).to_hex();
            tokens.push((k, Expected::NotOurs(hash)));
        }
        tokens.shuffle(&mut rng);
        let (tokens, expected) = tokens.into_iter().unzip();
        Self { tokens, expected }
    }

    /// Tokens the node must call its own.
    pub fn ours(&self) -> usize {
        self.expected
            .iter()
            .filter(|e| matches!(e, Expected::Ours(_)))
            .count()
    }

    /// Tokens in all.
    fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The body of round `round`: every token found at the round's own URL.
    pub fn body(&self, round: usize) -> Result<Vec<u8>, Error> {
        let url = format!("https://github.com/keyledger-bench/leaks/blob/round-{round}/.env");
        let list: Vec<Value> = self
            .tokens
            .iter()
            .map(|t| json!({"token": t, "type": TOKEN_TYPE, "url": url, "source": "content"}))
            .collect();
        serde_json::to_vec(&list).map_err(|e| Error::internal_from("encoding the report", e))
    }

    /// Checks an answer token by token; returns its counts of
    /// `true_positive` and `false_positive`.
    pub fn check(&self, answers: &[PartnerAnswer]) -> Result<Labels, Error> {
        let wrong = |why: String| Error::internal(format!("wrong answer: {why}"));
        if answers.len() != self.expected.len() {
            return Err(wrong(format!(
                "{} answers to {} tokens",
                answers.len(),
                self.expected.len()
            )));
        }
        let mut labels = Labels::default();
        for (i, (a, e)) in answers.iter().zip(&self.expected).enumerate() {
            if a.token_type != TOKEN_TYPE {
                return Err(wrong(format!("answer {i} has token_type {}", a.token_type)));
            }
            match (a.label.as_str(), e) {
                ("true_positive", Expected::Ours(k))
                    if a.token_raw.as_ref().map(Secret::expose) == Some(k.as_str()) =>
                {
                    labels.true_positive += 1;
                }
                ("false_positive", Expected::NotOurs(h))
                    if a.token_hash.as_deref() == Some(h.as_str()) && a.token_raw.is_none() =>
                {
                    labels.false_positive += 1;
                }
                (label, Expected::Ours(_)) => {
                    return Err(wrong(format!(
                        "answer {i} is {label:?}, for one of the node's keys"
                    )))
                }
                (label, Expected::NotOurs(_)) => {
                    return Err(wrong(format!(
                        "answer {i} is {label:?}, for a string that is not a key"
                    )))
                }
            }
        }
        Ok(labels)
    }
}

/// An answer's counts of each label.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Labels {
    pub true_positive: usize,
    pub false_positive: usize,
}

/// A run against a node.
pub struct Plan {
    /// Base URL of the node.
    pub url: String,
    /// A management token of the tenant of the reported keys (to read its
    /// audit log).
    pub token: String,
    pub rounds: usize,
    /// Do not wait for a round's actions before the next round: answers are
    /// then timed while the node records the earlier rounds.
    pub overlap: bool,
}

/// What a run saw.
pub struct Figures {
    /// Answer time of each round (request sent to answer read), in order.
    pub answers: Vec<Duration>,
    /// From each round's answer to its last action in the audit log (one
    /// entry, after the last round, with `overlap`).
    pub acted: Vec<Duration>,
    /// The counts of the last answer (every answer's were checked).
    pub labels: Labels,
    /// `KeyLeakReported` events due (one per key of the node and round).
    pub reports_due: usize,
    /// Of those, in the audit log.
    pub reports_recorded: usize,
}

fn audit_error(e: keyledger_client::Error) -> Error {
    Error::internal(format!("GET /v1/audit: {e}"))
}

/// Sends `body` as `partner`'s report; returns the answer and its time
/// (the time includes decoding the answer's JSON, as a partner would).
async fn send(
    client: &Client,
    partner: &Partner,
    body: Vec<u8>,
) -> Result<(Vec<PartnerAnswer>, Duration), Error> {
    let report = PartnerReport {
        reporter: partner.name.clone(),
        signature: partner.sign(&body),
        key_identifier: partner.identifier.clone(),
        body,
    };
    let sent = Instant::now();
    let answers = client
        .report_partner_leaks(&report)
        .await
        .map_err(|e| Error::internal(format!("the report was refused: {e}")))?;
    Ok((answers, sent.elapsed()))
}

/// Reads the node's audit log of the plan's tenant.
struct Audit {
    /// The node, with the plan's token.
    client: Client,
    /// The position read last.
    cursor: i64,
    /// `KeyLeakReported` events by this partner seen after the start.
    reports: usize,
}

impl Audit {
    /// Starts after the newest event.
    async fn from_now(plan: &Plan) -> Result<Self, Error> {
        let client = Client::new(plan.url.as_str())
            .map_err(audit_error)?
            .with_token(plan.token.as_str());
        let newest = client
            .audit(&AuditFilter {
                order: Some(Order::Desc),
                limit: Some(1),
                ..AuditFilter::default()
            })
            .await
            .map_err(audit_error)?;
        let cursor = newest.events.first().map_or(0, |e| e.position);
        Ok(Self {
            client,
            cursor,
            reports: 0,
        })
    }

    /// Reads what is new; true when anything was.
    async fn read(&mut self, reporter: &str) -> Result<bool, Error> {
        let actor = format!("keyledger:leaks:{reporter}");
        let mut any = false;
        loop {
            let filter = AuditFilter {
                limit: Some(1000),
                cursor: (self.cursor > 0).then(|| self.cursor.to_string()),
                ..AuditFilter::default()
            };
            let page = self.client.audit(&filter).await.map_err(audit_error)?;
            for e in &page.events {
                any = true;
                self.cursor = self.cursor.max(e.position);
                if e.event_type == "KeyLeakReported" && e.actor.as_deref() == Some(actor.as_str()) {
                    self.reports += 1;
                }
            }
            if page.events.is_empty() || page.next_cursor.is_none() {
                return Ok(any);
            }
        }
    }

    /// Waits until `reports` reports in all are in the log and it has been
    /// quiet for a while, or for longer with fewer (the rest lost); returns
    /// when the last event arrived. More than `reports` is an error.
    async fn settle(&mut self, reporter: &str, reports: usize) -> Result<Instant, Error> {
        let mut last = Instant::now();
        loop {
            if self.read(reporter).await? {
                last = Instant::now();
            }
            if self.reports > reports {
                return Err(Error::internal(format!(
                    "{} leak reports recorded for {reports} keys reported (not once per key and URL)",
                    self.reports
                )));
            }
            let quiet = last.elapsed();
            if (self.reports == reports && quiet >= QUIET) || quiet >= GIVE_UP {
                return Ok(last);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Reports `report` to the node `plan.rounds` times as `partner`, after one
/// report of strings that are none of its keys (so that the node fetches
/// the partner's keys before any round is timed).
pub async fn run(partner: &Partner, report: &Report, plan: &Plan) -> Result<Figures, Error> {
    let client = Client::new(plan.url.as_str())
        .map_err(|e| Error::internal(format!("the node's URL: {e}")))?;

    let warm_up = Report::mixed(&[], report.len());
    let (answer, _) = send(&client, partner, warm_up.body(0)?).await?;
    warm_up.check(&answer)?;

    let mut audit = Audit::from_now(plan).await?;
    let mut figures = Figures {
        answers: Vec::with_capacity(plan.rounds),
        acted: Vec::new(),
        labels: Labels::default(),
        reports_due: 0,
        reports_recorded: 0,
    };
    // Reports sent since the audit log was last waited for.
    let mut pending = 0;
    for round in 1..=plan.rounds {
        let (answer, took) = send(&client, partner, report.body(round)?).await?;
        let answered = Instant::now();
        figures.labels = report.check(&answer)?;
        figures.answers.push(took);
        figures.reports_due += report.ours();
        pending += report.ours();
        if !plan.overlap || round == plan.rounds {
            // Reports lost earlier are not waited for again.
            let last = audit.settle(&partner.name, audit.reports + pending).await?;
            pending = 0;
            figures.reports_recorded = audit.reports;
            figures.acted.push(last.saturating_duration_since(answered));
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;
    use p256::pkcs8::DecodePublicKey;

    fn keys(n: usize) -> Vec<String> {
        let mut rng = rand::rng();
        (0..n)
            .map(|_| {
                RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rng).into_exposed()
            })
            .collect()
    }

    /// The answer a correct node gives.
    fn parsed(bytes: &[u8]) -> Vec<PartnerAnswer> {
        serde_json::from_slice(bytes).expect("answers")
    }

    fn answer_of(report: &Report) -> Vec<Value> {
        report
            .expected
            .iter()
            .map(|e| match e {
                Expected::Ours(k) => {
                    json!({"token_raw": k, "token_type": TOKEN_TYPE, "label": "true_positive"})
                }
                Expected::NotOurs(h) => {
                    json!({"token_hash": h, "token_type": TOKEN_TYPE, "label": "false_positive"})
                }
            })
            .collect()
    }

    #[test]
    fn a_signature_checks_out_against_the_published_key_as_the_node_checks_it() {
        let partner = Partner::generate("bench");
        let document = partner.keys_document().expect("document");
        let published = &document["public_keys"][0];
        assert_eq!(published["key_identifier"], partner.identifier.as_str());
        let key = VerifyingKey::from_public_key_pem(published["key"].as_str().expect("pem"))
            .expect("P-256 PEM");
        let body = br#"[{"token":"x","type":"t"}]"#;
        let der = base64::engine::general_purpose::STANDARD
            .decode(partner.sign(body))
            .expect("base64");
        let signature = Signature::from_der(&der).expect("DER");
        key.verify(body, &signature).expect("valid");
        assert!(key.verify(b"[]", &signature).is_err(), "bound to the body");
    }

    #[test]
    fn a_report_mixes_the_keys_with_as_many_well_formed_strings_at_a_url_per_round() {
        let ours = keys(5);
        let report = Report::mixed(&ours, 7);
        assert_eq!((report.len(), report.ours()), (12, 5));
        for t in &report.tokens {
            keyledger_domain::ParsedKey::parse(t).expect("well-formed");
        }
        let body: Vec<Value> =
            serde_json::from_slice(&report.body(3).expect("body")).expect("json");
        assert_eq!(body.len(), 12);
        assert!(body[0]["url"].as_str().expect("url").contains("round-3"));
        assert_eq!(body[0]["type"], TOKEN_TYPE);
        let other: Vec<Value> =
            serde_json::from_slice(&report.body(4).expect("body")).expect("json");
        assert_ne!(body[0]["url"], other[0]["url"]);
        assert_eq!(body[0]["token"], other[0]["token"], "the same tokens");
    }

    #[test]
    fn a_right_answer_is_counted_and_any_wrong_label_is_an_error() {
        let report = Report::mixed(&keys(3), 4);
        let right = answer_of(&report);
        let bytes = serde_json::to_vec(&right).expect("json");
        assert_eq!(
            report.check(&parsed(&bytes)).expect("right"),
            Labels {
                true_positive: 3,
                false_positive: 4
            }
        );
        for i in 0..right.len() {
            let mut wrong = right.clone();
            wrong[i]["label"] = match wrong[i]["label"].as_str() {
                Some("true_positive") => "false_positive".into(),
                _ => "true_positive".into(),
            };
            let bytes = serde_json::to_vec(&wrong).expect("json");
            assert!(report.check(&parsed(&bytes)).is_err(), "answer {i} flipped");
        }
        let short = serde_json::to_vec(&right[1..]).expect("json");
        assert!(report.check(&parsed(&short)).is_err(), "one answer missing");
        let mut reordered = right.clone();
        reordered.reverse();
        let bytes = serde_json::to_vec(&reordered).expect("json");
        assert!(
            report.check(&parsed(&bytes)).is_err(),
            "answers out of order"
        );
    }

    /// The whole run against a node in this process, with seeded keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_against_a_node_checks_every_answer_and_waits_for_the_actions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = keyledger::Config::new(dir.path().join("data"));
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let store = keyledger::app::open_store(&config).await.expect("store");
        let mut out = Vec::new();
        keyledger_bench::seed::seed(&store, "bench", 10, 10, false, Some(&mut out))
            .await
            .expect("seed");
        store.close().await;
        let seeded: Vec<String> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(str::to_string)
            .collect();

        let partner = Partner::generate("bench");
        let keys_url = partner
            .publish(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("publish");
        config.leak_reporters =
            vec![
                keyledger::leaks::reporters::ReporterConfig::parse(&format!("bench={keys_url}"))
                    .expect("reporter"),
            ];
        let secret = keyledger::app::server_secret(&config).expect("secret");
        let token = keyledger::http::auth::mint(
            secret.expose(),
            "bench",
            "bench-test",
            Duration::from_secs(600),
        )
        .expect("token");
        let app = keyledger::app::Application::build(config)
            .await
            .expect("build");
        let url = format!("http://{}", app.address());
        tokio::spawn(app.run_until_stopped(std::future::pending()));

        let report = Report::mixed(&seeded[..4], 6);
        let plan = Plan {
            url,
            token,
            rounds: 3,
            overlap: false,
        };
        let figures = run(&partner, &report, &plan).await.expect("run");
        let verified = Client::new(plan.url.as_str())
            .expect("client")
            .verify(&keyledger_client::VerifyRequest::new(seeded[0].as_str()))
            .await
            .expect("verify");
        assert_eq!(
            verified.code,
            keyledger_client::VerificationCode::Disabled,
            "acted on before the run ended"
        );
        assert_eq!(figures.answers.len(), 3);
        assert_eq!(figures.acted.len(), 3);
        assert_eq!((figures.reports_due, figures.reports_recorded), (12, 12));
        assert_eq!(
            figures.labels,
            Labels {
                true_positive: 4,
                false_positive: 6
            },
            "deactivated keys are still the node's"
        );
    }
}
