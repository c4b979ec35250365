//! The `import_claims` table: which tenant's import holds each foreign key's
//! hash (`POST /v1/keys/import`). An import claims a key's hash before it
//! creates the key: the first claim wins (the primary key decides between
//! nodes importing at once) and every later one reads the winner, so
//! importing a hash again gives the same key id, and a hash belongs to one
//! tenant only.

use std::collections::HashMap;

use async_trait::async_trait;
use keyledger_sql::Engine;
use sqlx::Pool;

use crate::error::Error;
use crate::store::feed::store_error;

/// The most claims one `claim_many` takes.
pub const MAX_CLAIMS: usize = 1000;

/// A claim on a foreign key's hash by a tenant's import.
#[derive(Debug, Clone, Copy)]
pub struct ImportClaim<'a> {
    /// The SHA-256 of the foreign key, 64 lowercase hex digits.
    pub key_hash: &'a str,
    pub tenant: &'a str,
    /// The id the key gets if this claim wins.
    pub key_id: &'a str,
    /// When the claim is made (epoch ms).
    pub at_ms: i64,
}

/// Who holds a hash: the claim that won (maybe the one just made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHolder {
    pub tenant: String,
    pub key_id: String,
}

#[async_trait]
pub trait ImportClaimTable: Send + Sync {
    /// Claims every hash not claimed yet, in one transaction, and answers
    /// each item's holder in input order (the claim made, or the existing
    /// one). Up to 1,000 items per call ([`MAX_CLAIMS`]; more is refused, as
    /// is a hash that is not 64 lowercase hex digits); duplicates within one
    /// call: the first wins.
    async fn claim_many(&self, claims: &[ImportClaim<'_>]) -> Result<Vec<ClaimHolder>, Error>;
}

/// The import claims in a SQL database.
pub struct SqlImportClaims<DB: sqlx::Database> {
    pool: Pool<DB>,
}

impl<DB: sqlx::Database> SqlImportClaims<DB> {
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }
}

/// Whether `hash` is a SHA-256 as the table keeps it: any other spelling of
/// the same hash (upper case) would be a second claim on it.
fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `(p, p, ..), (p, p, ..), ..`: `rows` groups of `per_row` placeholders.
fn placeholders<DB: Engine>(rows: usize, per_row: usize) -> String {
    let mut sql = String::with_capacity(rows * per_row * 6);
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 1..=per_row {
            if column > 1 {
                sql.push_str(", ");
            }
            DB::push_param(&mut sql, row * per_row + column);
        }
        sql.push(')');
    }
    sql
}

#[async_trait]
impl<DB> ImportClaimTable for SqlImportClaims<DB>
where
    DB: Engine + sqlx::database::HasStatementCache,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    (String, String, String): for<'r> sqlx::FromRow<'r, DB::Row>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    async fn claim_many(&self, claims: &[ImportClaim<'_>]) -> Result<Vec<ClaimHolder>, Error> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        if claims.len() > MAX_CLAIMS {
            return Err(Error::internal(format!(
                "{} import claims in one call, at most {MAX_CLAIMS}",
                claims.len()
            )));
        }
        if let Some(bad) = claims.iter().find(|c| !is_sha256_hex(c.key_hash)) {
            return Err(Error::internal(format!(
                "an import claim on {:?}, not a SHA-256 in lowercase hex",
                bad.key_hash
            )));
        }
        // The first claim of each hash (a later one in the call loses to it
        // as to any claim made before), in hash order: every transaction
        // takes its rows' locks in that order, so two imports of the same
        // hashes wait for each other instead of deadlocking (PostgreSQL).
        let mut first: HashMap<&str, &ImportClaim<'_>> = HashMap::with_capacity(claims.len());
        for c in claims {
            first.entry(c.key_hash).or_insert(c);
        }
        let mut unique: Vec<&ImportClaim<'_>> = first.into_values().collect();
        unique.sort_unstable_by_key(|c| c.key_hash);

        let insert = format!(
            "INSERT INTO import_claims (key_hash, tenant, key_id, claimed_at) VALUES {} \
             ON CONFLICT (key_hash) DO NOTHING",
            placeholders::<DB>(unique.len(), 4)
        );
        let mut insert = sqlx::query(&insert);
        for c in &unique {
            insert = insert
                .bind(c.key_hash)
                .bind(c.tenant)
                .bind(c.key_id)
                .bind(c.at_ms);
        }
        let select = format!(
            "SELECT key_hash, tenant, key_id FROM import_claims WHERE key_hash IN {}",
            // One list `(p, p, ..)`, not a row per hash (`(p), (p)`).
            placeholders::<DB>(1, unique.len())
        );
        let mut select = sqlx::query_as::<DB, (String, String, String)>(&select);
        for c in &unique {
            select = select.bind(c.key_hash);
        }

        // The INSERT first, so that SQLite takes the write lock before the
        // transaction reads anything; the SELECT then sees this claim or the
        // one that won (PostgreSQL's INSERT waits for a claim in flight, and
        // the SELECT reads what is committed when it starts).
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // Statements of as many parameters as items: not worth a cached plan.
        insert
            .persistent(false)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let rows = select
            .persistent(false)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;

        let holders: HashMap<String, ClaimHolder> = rows
            .into_iter()
            .map(|(key_hash, tenant, key_id)| (key_hash, ClaimHolder { tenant, key_id }))
            .collect();
        claims
            .iter()
            .map(|c| {
                holders.get(c.key_hash).cloned().ok_or_else(|| {
                    Error::internal(format!(
                        "import claim on {} made, but no row of it read back",
                        c.key_hash
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::store::postgres::PostgresStore;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Backend;

    /// The `i`th test hash (64 lowercase hex digits).
    fn hash(i: usize) -> String {
        format!("{i:064x}")
    }

    fn holder(tenant: &str, key_id: &str) -> ClaimHolder {
        ClaimHolder {
            tenant: tenant.into(),
            key_id: key_id.into(),
        }
    }

    /// A fresh database holding the table, and what to remove with it.
    struct Db {
        store: Box<dyn Backend>,
        _dir: Option<tempfile::TempDir>,
        /// The PostgreSQL database to drop: (admin url, name).
        drop: Option<(String, String)>,
    }

    impl Db {
        async fn sqlite() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SqliteStore::open(&dir.path().join("keyledger.db"))
                .await
                .expect("open sqlite");
            Self {
                store: Box::new(store),
                _dir: Some(dir),
                drop: None,
            }
        }

        /// A database of its own on the server `DATABASE_URL` (or
        /// `KEYLEDGER_TEST_DATABASE_URL`) names, or `None` after saying so;
        /// with `KEYLEDGER_REQUIRE_POSTGRES=1` a skip is a failure.
        async fn postgres() -> Option<Self> {
            use sqlx::Connection;
            let required = std::env::var("KEYLEDGER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            let Some(url) = std::env::var("KEYLEDGER_TEST_DATABASE_URL")
                .ok()
                .or_else(|| std::env::var("DATABASE_URL").ok())
                .filter(|u| u.starts_with("postgres"))
            else {
                assert!(
                    !required,
                    "KEYLEDGER_REQUIRE_POSTGRES=1 but neither KEYLEDGER_TEST_DATABASE_URL nor \
                     DATABASE_URL is set"
                );
                eprintln!(
                    "SKIPPED: PostgreSQL test skipped: set DATABASE_URL or \
                     KEYLEDGER_TEST_DATABASE_URL to run it"
                );
                return None;
            };
            let mut admin = match sqlx::PgConnection::connect(&url).await {
                Ok(c) => c,
                Err(e) => {
                    assert!(!required, "PostgreSQL required but unreachable: {e}");
                    eprintln!("SKIPPED: PostgreSQL test skipped: {url} unreachable: {e}");
                    return None;
                }
            };
            let name = format!("kl_test_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .expect("create test database");
            let _ = admin.close().await;
            let mut own = url::Url::parse(&url).expect("database url");
            own.set_path(&format!("/{name}"));
            let store = PostgresStore::open(own.as_str())
                .await
                .expect("open postgres");
            Some(Self {
                store: Box::new(store),
                _dir: None,
                drop: Some((url, name)),
            })
        }

        fn table(&self) -> Arc<dyn ImportClaimTable> {
            self.store.imports()
        }

        async fn close(mut self) {
            self.store.close().await;
            if let Some((url, name)) = self.drop.take() {
                drop_database(&url, &name).await;
            }
        }
    }

    impl Drop for Db {
        /// A test that failed leaves no database behind either (best effort,
        /// on a thread of its own: Drop cannot await).
        fn drop(&mut self) {
            let Some((url, name)) = self.drop.take() else {
                return;
            };
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(drop_database(&url, &name));
                }
            })
            .join();
        }
    }

    async fn drop_database(url: &str, name: &str) {
        use sqlx::Connection;
        if let Ok(mut admin) = sqlx::PgConnection::connect(url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await;
            let _ = admin.close().await;
        }
    }

    /// Runs `behaviour` on SQLite (`postgres` false) or on PostgreSQL
    /// (skipped loudly without a server).
    async fn on<F, Fut>(postgres: bool, behaviour: F)
    where
        F: FnOnce(Arc<dyn ImportClaimTable>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let db = if postgres {
            let Some(db) = Db::postgres().await else {
                return;
            };
            db
        } else {
            Db::sqlite().await
        };
        behaviour(db.table()).await;
        db.close().await;
    }

    /// Each behaviour, once on SQLite and once on PostgreSQL.
    macro_rules! on_both {
        ($($name:ident),* $(,)?) => {
            mod on_sqlite {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() { super::on(false, super::$name).await; })*
            }
            mod on_postgres {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() { super::on(true, super::$name).await; })*
            }
        };
    }

    on_both!(
        the_first_claim_wins,
        a_claim_by_another_tenant_reads_the_first_holder,
        the_first_of_duplicates_within_one_call_wins,
        a_thousand_claims_go_in_one_call,
        concurrent_calls_agree_on_one_holder_per_hash,
        more_than_a_thousand_or_a_hash_not_in_lowercase_hex_is_refused,
    );

    async fn the_first_claim_wins(table: Arc<dyn ImportClaimTable>) {
        let (h1, h2) = (hash(1), hash(2));
        let got = table
            .claim_many(&[
                ImportClaim {
                    key_hash: &h1,
                    tenant: "acme",
                    key_id: "key_1",
                    at_ms: 1,
                },
                ImportClaim {
                    key_hash: &h2,
                    tenant: "acme",
                    key_id: "key_2",
                    at_ms: 1,
                },
            ])
            .await
            .expect("claim");
        assert_eq!(got, [holder("acme", "key_1"), holder("acme", "key_2")]);
        // The same import again (another key id minted for it): the first
        // claim's key id, so the import gives the same key.
        let again = table
            .claim_many(&[ImportClaim {
                key_hash: &h1,
                tenant: "acme",
                key_id: "key_retry",
                at_ms: 2,
            }])
            .await
            .expect("claim again");
        assert_eq!(again, [holder("acme", "key_1")]);
        assert!(table.claim_many(&[]).await.expect("nothing").is_empty());
    }

    async fn a_claim_by_another_tenant_reads_the_first_holder(table: Arc<dyn ImportClaimTable>) {
        let (h1, h2) = (hash(1), hash(2));
        let first = table
            .claim_many(&[ImportClaim {
                key_hash: &h1,
                tenant: "acme",
                key_id: "key_acme",
                at_ms: 1,
            }])
            .await
            .expect("claim");
        assert_eq!(first, [holder("acme", "key_acme")]);
        let second = table
            .claim_many(&[
                ImportClaim {
                    key_hash: &h2,
                    tenant: "globex",
                    key_id: "key_globex_2",
                    at_ms: 2,
                },
                ImportClaim {
                    key_hash: &h1,
                    tenant: "globex",
                    key_id: "key_globex_1",
                    at_ms: 2,
                },
            ])
            .await
            .expect("claim");
        assert_eq!(
            second,
            [holder("globex", "key_globex_2"), holder("acme", "key_acme")]
        );
    }

    async fn the_first_of_duplicates_within_one_call_wins(table: Arc<dyn ImportClaimTable>) {
        let (h1, h2) = (hash(1), hash(2));
        let claim = |key_hash, tenant, key_id| ImportClaim {
            key_hash,
            tenant,
            key_id,
            at_ms: 1,
        };
        let got = table
            .claim_many(&[
                claim(&h1, "acme", "key_a"),
                claim(&h1, "acme", "key_b"),
                claim(&h2, "globex", "key_c"),
                claim(&h1, "initech", "key_d"),
                claim(&h2, "acme", "key_e"),
            ])
            .await
            .expect("claim");
        assert_eq!(
            got,
            [
                holder("acme", "key_a"),
                holder("acme", "key_a"),
                holder("globex", "key_c"),
                holder("acme", "key_a"),
                holder("globex", "key_c"),
            ]
        );
    }

    async fn a_thousand_claims_go_in_one_call(table: Arc<dyn ImportClaimTable>) {
        // Every other hash is held by another tenant already.
        let hashes: Vec<String> = (0..MAX_CLAIMS).map(hash).collect();
        let earlier_ids: Vec<String> = (0..MAX_CLAIMS).map(|i| format!("key_old_{i}")).collect();
        let earlier: Vec<ImportClaim<'_>> = (0..MAX_CLAIMS)
            .step_by(2)
            .map(|i| ImportClaim {
                key_hash: &hashes[i],
                tenant: "globex",
                key_id: &earlier_ids[i],
                at_ms: 1,
            })
            .collect();
        table.claim_many(&earlier).await.expect("earlier claims");
        let ids: Vec<String> = (0..MAX_CLAIMS).map(|i| format!("key_{i}")).collect();
        // In reverse hash order: answers follow the input's order.
        let claims: Vec<ImportClaim<'_>> = (0..MAX_CLAIMS)
            .rev()
            .map(|i| ImportClaim {
                key_hash: &hashes[i],
                tenant: "acme",
                key_id: &ids[i],
                at_ms: 2,
            })
            .collect();
        let started = Instant::now();
        let got = table.claim_many(&claims).await.expect("claim");
        eprintln!("{MAX_CLAIMS} claims in one call: {:?}", started.elapsed());
        let want: Vec<ClaimHolder> = (0..MAX_CLAIMS)
            .rev()
            .map(|i| {
                if i % 2 == 0 {
                    holder("globex", &earlier_ids[i])
                } else {
                    holder("acme", &ids[i])
                }
            })
            .collect();
        assert_eq!(got, want);
    }

    async fn concurrent_calls_agree_on_one_holder_per_hash(table: Arc<dyn ImportClaimTable>) {
        // Two nodes' imports: hashes 0..600 and 400..1000 of each round, the
        // second in reverse order; rounds repeated so the calls interleave.
        const ROUNDS: usize = 5;
        for round in 0..ROUNDS {
            let base = round * MAX_CLAIMS;
            let run = |tenant: &'static str, range: Vec<usize>| {
                let table = table.clone();
                tokio::spawn(async move {
                    let hashes: Vec<String> = range.iter().map(|i| hash(base + i)).collect();
                    let ids: Vec<String> =
                        range.iter().map(|i| format!("key_{tenant}_{i}")).collect();
                    let claims: Vec<ImportClaim<'_>> = hashes
                        .iter()
                        .zip(&ids)
                        .map(|(key_hash, key_id)| ImportClaim {
                            key_hash,
                            tenant,
                            key_id,
                            at_ms: 1,
                        })
                        .collect();
                    let got = table.claim_many(&claims).await.expect("claim");
                    range.into_iter().zip(got).collect::<HashMap<_, _>>()
                })
            };
            let a = run("acme", (0..600).collect());
            let b = run("globex", (400..1000).rev().collect());
            let (a, b) = (a.await.expect("task a"), b.await.expect("task b"));
            // What a third import reads afterwards.
            let hashes: Vec<String> = (0..1000).map(|i| hash(base + i)).collect();
            let after: Vec<ImportClaim<'_>> = hashes
                .iter()
                .map(|key_hash| ImportClaim {
                    key_hash,
                    tenant: "initech",
                    key_id: "key_late",
                    at_ms: 2,
                })
                .collect();
            let after = table.claim_many(&after).await.expect("read back");
            let mut won = (0, 0);
            for (i, stored) in after.iter().enumerate() {
                let mine = |tenant: &str| holder(tenant, &format!("key_{tenant}_{i}"));
                match (a.get(&i), b.get(&i)) {
                    (Some(x), Some(y)) => {
                        assert_eq!(x, y, "round {round}: hash {i} has two holders");
                        assert!(
                            *x == mine("acme") || *x == mine("globex"),
                            "round {round}: hash {i} held by {x:?}"
                        );
                        if *x == mine("acme") {
                            won.0 += 1;
                        } else {
                            won.1 += 1;
                        }
                        assert_eq!(stored, x, "round {round}: hash {i}");
                    }
                    (Some(x), None) => {
                        assert_eq!(*x, mine("acme"), "round {round}: hash {i}");
                        assert_eq!(stored, x, "round {round}: hash {i}");
                    }
                    (None, Some(y)) => {
                        assert_eq!(*y, mine("globex"), "round {round}: hash {i}");
                        assert_eq!(stored, y, "round {round}: hash {i}");
                    }
                    (None, None) => panic!("round {round}: hash {i} claimed by neither"),
                }
            }
            assert_eq!(won.0 + won.1, 200, "round {round}");
            eprintln!(
                "round {round}: of the shared hashes acme won {}, globex {}",
                won.0, won.1
            );
        }
    }

    async fn more_than_a_thousand_or_a_hash_not_in_lowercase_hex_is_refused(
        table: Arc<dyn ImportClaimTable>,
    ) {
        let hashes: Vec<String> = (0..=MAX_CLAIMS).map(hash).collect();
        let too_many: Vec<ImportClaim<'_>> = hashes
            .iter()
            .map(|key_hash| ImportClaim {
                key_hash,
                tenant: "acme",
                key_id: "key_1",
                at_ms: 1,
            })
            .collect();
        assert!(table.claim_many(&too_many).await.is_err());
        let upper = hash(0xabc).to_uppercase();
        for bad in [upper.as_str(), "abc", "", &hash(1)[1..]] {
            let claim = ImportClaim {
                key_hash: bad,
                tenant: "acme",
                key_id: "key_1",
                at_ms: 1,
            };
            assert!(table.claim_many(&[claim]).await.is_err(), "{bad:?}");
        }
        // Nothing of a refused call was claimed.
        let got = table
            .claim_many(&[ImportClaim {
                key_hash: &hashes[0],
                tenant: "globex",
                key_id: "key_2",
                at_ms: 2,
            }])
            .await
            .expect("claim");
        assert_eq!(got, [holder("globex", "key_2")]);
    }
}
