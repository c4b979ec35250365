//! PostgreSQL through postgres-es: many nodes over one database. Appends commit
//! without waiting for each other and get their global position afterwards from
//! the sequencer (migrations/postgres/0006), which the writer runs right after
//! its commit and every tailer runs when it polls. Each node's tailer is woken
//! by LISTEN/NOTIFY (`listen`) and also polls, so a lost notification only delays.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventRepository, PersistedEventStore, SerializedEvent,
};
use cqrs_es::{AggregateError, EventStore as _};
use keyledger_domain::webhook::Webhook;
use keyledger_domain::{ApiKey, ApiKeyEvent, DomainError, KeyId, KeyUsage, OwnerLimits, RawEvent};
use keyledger_sql::{InlineProjection, SqlPool};
use postgres_es::PostgresEventRepository;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::backend::EventMetadata;
use crate::store::backend::{Appended, Backend, FeedListener, NewEvent, Stream};
use crate::store::claims::{ClaimTable, SqlClaims};
use crate::store::errors::persistence_error;
use crate::store::feed::{store_error, SqlEvents};
use crate::store::inline::Inline;
use crate::store::numbered_append::Statement;
use crate::store::readable::Readable;
use crate::store::windows::{SqlWindows, WindowTable};

/// Migrations of the PostgreSQL store, embedded in the binary. Run them with
/// [`migrate`], never directly: it repairs what older releases recorded first.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Migrations whose file was edited after a release had applied it, each with
/// the SHA-384 of the edited bytes (what sqlx records in
/// `_sqlx_migrations.checksum`). The files hold their released text again.
///
/// 0009 (`0009_notify_position.sql`) was released by e302a9a and its comment
/// reworded by 840c0b9; sqlx checksums the whole file, so after that edit a
/// database migrated by e302a9a's text refused to start ("migration 9 was
/// previously applied but has been modified"). The released text is back, so
/// those databases start again; databases created from 840c0b9 on recorded the
/// edited text's checksum, which [`repair_checksums`] rewrites to the released
/// one. Only the comment differed: the function both texts create is the same.
/// A binary of 840c0b9 up to this fix refuses a database repaired this way (its
/// file is the edited one): roll back past this fix only after setting the
/// checksum back. `migrations/checksums` (tests/stores/upgrade.rs) now fails
/// the tests when any released migration file changes.
const EDITED_AFTER_RELEASE: &[(i64, &str)] = &[(
    9,
    "71e06f1ad778b162d44aff5aff054bad67caddc091778d0b61678d81b9731fe0\
     12b18160a25a54bb4aad0ee1bf8257af",
)];

/// keyledger's advisory lock id for "migrating" (7305425 is appending).
const MIGRATE_LOCK: i64 = 7_305_426;

/// Applies the migrations: every PostgreSQL database keyledger opens (event
/// store, or KurrentDB's projections) is migrated here and nowhere else. The
/// repairs before and after the migrator run under a lock of their own, on the
/// migrator's connection, so nodes starting together take turns.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    let mut conn = pool.acquire().await.map_err(store_error)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    let migrated = migrate_locked(&mut conn).await;
    // A connection that failed ends its session, which lets go of the lock.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATE_LOCK)
        .execute(&mut *conn)
        .await;
    migrated
}

async fn migrate_locked(conn: &mut PgConnection) -> Result<(), Error> {
    repair_checksums(conn).await?;
    let relaxed = let_0006_fill_append_seq(conn).await?;
    let ran = MIGRATOR
        .run(&mut *conn)
        .await
        .map_err(|e| Error::internal_from("postgres migrations", e));
    if relaxed {
        // Whether or not 0006 went through: 0001's function again.
        sqlx::raw_sql(REFUSE_CHANGE_0001)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    ran
}

/// Rewrites the recorded checksum of each migration in [`EDITED_AFTER_RELEASE`]
/// from its edited text's to the embedded (released) text's, and only where it
/// is exactly the edited one: any other mismatch is still the migrator's error.
/// A fresh database (no `_sqlx_migrations` yet) has nothing to repair.
async fn repair_checksums(conn: &mut PgConnection) -> Result<(), Error> {
    if !has_migrations_table(conn).await? {
        return Ok(());
    }
    for (version, edited) in EDITED_AFTER_RELEASE {
        let released = MIGRATOR
            .iter()
            .find(|m| m.version == *version)
            .map(|m| m.checksum.to_vec())
            .ok_or_else(|| Error::internal(format!("migration {version} is not embedded")))?;
        let edited = hex::decode(edited)
            .map_err(|e| Error::internal_from(format!("checksum of migration {version}"), e))?;
        let repaired = sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
        )
        .bind(&released)
        .bind(version)
        .bind(&edited)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?
        .rows_affected();
        if repaired > 0 {
            tracing::info!(
                version,
                "migration {version} was recorded with the checksum of a text edited after \
                 its release; recorded the released text's checksum instead"
            );
        }
    }
    Ok(())
}

async fn has_migrations_table(conn: &mut PgConnection) -> Result<bool, Error> {
    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(store_error)
}

/// 0001's `events_refuse_change()`, byte for byte.
const REFUSE_CHANGE_0001: &str = "\
CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP;
END;
$$;";

/// 0001's function, also accepting the one UPDATE 0006 makes of every row
/// (`SET append_seq = global_position` on its new, empty column) and nothing
/// else: no row has that column before 0006, and none has it empty after.
const REFUSE_CHANGE_BUT_0006: &str = "\
CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND to_jsonb(OLD) ->> 'append_seq' IS NULL
       AND (to_jsonb(NEW) ->> 'append_seq')::bigint = OLD.global_position
       AND to_jsonb(NEW) - 'append_seq' = to_jsonb(OLD) - 'append_seq' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP;
END;
$$;";

/// Migration 0006 fills its new `append_seq` column with an UPDATE of every
/// event while 0001's trigger still refuses every UPDATE of `events` (0006
/// replaces that trigger only further down), so on a database of the first
/// release (0001-0005) holding any event it failed with "events are
/// append-only: UPDATE refused" and such a database could not start (0006
/// went out in 46effe8; it worked on empty databases only). 0006 is released
/// and stays as it is: when it is still to run, 0001's function lets exactly
/// that UPDATE through until the migrator is done. Returns whether it did.
async fn let_0006_fill_append_seq(conn: &mut PgConnection) -> Result<bool, Error> {
    if !has_migrations_table(conn).await? {
        return Ok(false);
    }
    let pending: bool = sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = 6) \
            AND to_regprocedure('events_refuse_change()') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(store_error)?;
    if pending {
        sqlx::raw_sql(REFUSE_CHANGE_BUT_0006)
            .execute(&mut *conn)
            .await
            .map_err(store_error)?;
    }
    Ok(pending)
}

/// Channel the events trigger notifies.
pub const NOTIFY_CHANNEL: &str = "keyledger_events";

/// How long a command waits for a connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct PostgresStore {
    pool: PgPool,
    events: PersistedEventStore<Readable<PostgresEventRepository, SqlEvents<Postgres>>, ApiKey>,
    sql: SqlEvents<Postgres>,
    /// Group commit's connection, kept from one batch to the next: sqlx pings
    /// every connection handed back to its pool (a round trip it offers no
    /// switch for), which would be one more per batch for both processes.
    writer: Mutex<Option<PoolConnection<Postgres>>>,
    /// The projection written with group commit's batches, and the
    /// statement that writes both.
    inline: Inline<Statement>,
}

impl PostgresStore {
    /// Connects and applies migrations (sqlx serialises concurrent migrators
    /// with an advisory lock, so several nodes may start together).
    pub async fn open(url: &str) -> Result<Self, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // sqlx pings every connection it hands out by default: a round
            // trip before every statement, which on group commit's path is
            // one more wait under the numbering lock's cadence. A connection
            // that died fails its statement instead, which answers 503 (or
            // runs the batch's creates one by one) and is not returned to
            // the pool.
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(store_error)?;
        migrate(&pool).await?;
        let sql = SqlEvents::new(pool.clone());
        // Never a snapshot store: cqrs-es 0.5 snapshots apply events twice.
        let events = PersistedEventStore::new_event_store(Readable::new(
            PostgresEventRepository::new(pool.clone()),
            sql.clone(),
        ))
        .with_upcasters(keyledger_domain::upcast::upcasters());
        Ok(Self {
            pool,
            events,
            sql,
            writer: Mutex::new(None),
            inline: Inline::new(Statement::new),
        })
    }
}

#[async_trait]
impl Backend for PostgresStore {
    async fn load(
        &self,
        key_id: &KeyId,
    ) -> Result<EventStoreAggregateContext<ApiKey>, AggregateError<DomainError>> {
        self.events.load_aggregate(key_id).await
    }

    async fn commit(
        &self,
        events: Vec<ApiKeyEvent>,
        context: EventStoreAggregateContext<ApiKey>,
        metadata: EventMetadata,
    ) -> Result<(), AggregateError<DomainError>> {
        self.events
            .commit(events, context, metadata)
            .await
            .map(|_| ())
    }

    async fn append(&self, stream: Stream, events: &[SerializedEvent]) -> Result<(), Error> {
        let repository = PostgresEventRepository::new(self.pool.clone());
        match stream {
            Stream::Key => repository.persist::<ApiKey>(events, None).await,
            Stream::Usage => repository.persist::<KeyUsage>(events, None).await,
            Stream::Owner => repository.persist::<OwnerLimits>(events, None).await,
            Stream::Webhook => repository.persist::<Webhook>(events, None).await,
            Stream::Policy => {
                repository
                    .persist::<keyledger_domain::policy::TenantPolicy>(events, None)
                    .await
            }
        }
        .map_err(persistence_error)
    }

    async fn bulk_append(&self, events: &[SerializedEvent]) -> Result<(), Error> {
        self.sql.bulk_append(events).await
    }

    /// Appends a group-commit batch on the writer's connection (see
    /// `numbered_append`). After a failure the connection goes back to the
    /// pool, which tests it, and the next batch takes a fresh one.
    async fn append_creates(&self, batch: &[&NewEvent]) -> Result<Appended, Error> {
        let statement = self.inline.prepared();
        let mut writer = self.writer.lock().await;
        let mut conn = match writer.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await.map_err(store_error)?,
        };
        let appended = statement.append(&mut conn, batch).await;
        if appended.is_ok() {
            *writer = Some(conn);
        }
        appended
    }

    fn set_inline(&self, projection: Arc<dyn InlineProjection>) {
        self.inline.set(projection);
    }

    fn inline(&self) -> Option<Arc<dyn InlineProjection>> {
        self.inline.projection()
    }

    async fn event_at(
        &self,
        stream: Stream,
        key: &KeyId,
        sequence: usize,
    ) -> Result<Option<RawEvent>, Error> {
        let sequence = crate::store::backend::sequence_i64(sequence)?;
        self.sql
            .event_at(stream.aggregate_type(), key, sequence)
            .await
    }

    async fn last_sequence(&self, stream: Stream, key: &KeyId) -> Result<usize, Error> {
        self.sql.last_sequence(stream.aggregate_type(), key).await
    }

    async fn newest_events(&self, stream: Stream, keys: &[&KeyId]) -> Result<Vec<RawEvent>, Error> {
        let ids: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        self.sql.newest(stream.aggregate_type(), &ids).await
    }

    async fn read_feed(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
        self.sql.read(after, limit).await
    }

    async fn head(&self) -> Result<i64, Error> {
        self.sql.head().await
    }

    async fn sequence_pending(&self) -> Result<(), Error> {
        sequence_pending(&self.pool).await.map(|_| ())
    }

    async fn listen(&self, listener: Arc<dyn FeedListener>, stop: CancellationToken) {
        listen(self.pool.clone(), listener, stop).await;
    }

    fn sql(&self) -> SqlPool {
        SqlPool::Postgres(self.pool.clone())
    }

    fn claims(&self) -> Arc<dyn ClaimTable> {
        Arc::new(SqlClaims::new(self.pool.clone()))
    }

    fn windows(&self) -> Arc<dyn WindowTable> {
        Arc::new(SqlWindows::new(self.pool.clone()))
    }

    fn webhooks(&self) -> Arc<dyn crate::store::webhooks::WebhookTable> {
        Arc::new(crate::store::webhooks::SqlWebhooks::new(self.pool.clone()))
    }

    fn imports(&self) -> Arc<dyn crate::store::imports::ImportClaimTable> {
        Arc::new(crate::store::imports::SqlImportClaims::new(
            self.pool.clone(),
        ))
    }

    /// Closes the pool, the writer's connection first: the pool waits for
    /// the connections it has handed out, and that one is never given back.
    async fn close(&self) {
        drop(self.writer.lock().await.take());
        self.pool.close().await;
    }
}

/// Most rows one sequencer call numbers (the LIMIT in `keyledger_sequence_events`).
const SEQUENCER_BATCH: i64 = 10_000;

/// Gives every committed event still without a position its position, in
/// append order; returns how many were numbered. Safe to call from any number
/// of nodes at once: the database runs one sequencer at a time.
pub async fn sequence_pending(pool: &PgPool) -> Result<u64, Error> {
    let mut total = 0u64;
    loop {
        let numbered: i64 = sqlx::query_scalar("SELECT keyledger_sequence_events()")
            .fetch_one(pool)
            .await
            .map_err(store_error)?;
        total += u64::try_from(numbered)
            .map_err(|e| Error::internal_from("the sequencer's count", e))?;
        if numbered < SEQUENCER_BATCH {
            return Ok(total);
        }
    }
}

/// Wakes the listener on every notification until cancelled; reconnects by itself.
async fn listen(pool: PgPool, tailer: Arc<dyn FeedListener>, stop: CancellationToken) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN; polling only until it works");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Anything committed while we were not listening is caught up now.
        tailer.wake();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = listener.try_recv() => match received {
                    // Group commit's notifications name the batch's last
                    // position (migrations/postgres/0009); others say nothing.
                    Ok(Some(n)) => match n.payload().parse::<i64>() {
                        Ok(position) => tailer.wake_through(position),
                        Err(_) => tailer.wake(),
                    },
                    // The connection dropped and will be re-established:
                    // notifications may have been missed, so catch up.
                    Ok(None) => tailer.wake(),
                    Err(e) => {
                        tracing::warn!(error = %e, "notification listener failed; reconnecting");
                        break;
                    }
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha384};

    use super::{EDITED_AFTER_RELEASE, MIGRATOR};

    /// The embedded 0009 is the text e302a9a released, and the repair names
    /// the checksum of 840c0b9's edit (kept in tests/fixtures/migrations).
    #[test]
    fn the_repair_turns_the_edited_0009_checksum_into_the_released_one() {
        let released = MIGRATOR
            .iter()
            .find(|m| m.version == 9)
            .expect("migration 9");
        assert_eq!(
            hex::encode(&*released.checksum),
            "0ce0b7bcdd81dc234214f3eedd5b20f21a6e69758094349b0bdd72945e1700d8\
             cc9764293a8c9d7a14f45b49c76243ce",
            "migrations/postgres/0009_notify_position.sql is not the text e302a9a released"
        );
        let edited =
            include_bytes!("../../tests/fixtures/migrations/postgres-0009-edited-840c0b9.sql");
        assert_eq!(
            EDITED_AFTER_RELEASE,
            &[(9, hex::encode(Sha384::digest(edited)).as_str())]
        );
    }
}
