//! How writes reach the database safely: every write is one explicit
//! transaction whose COMMIT result is checked before anything is
//! acknowledged, and no connection goes back to a pool in an unknown
//! transaction state. Also the "writes are failing" episode log.
//!
//! Why this file exists (measured on a full disk, issue 9): SQLite commits an
//! autocommit `INSERT ... RETURNING` when the statement is reset, and sqlx
//! resets it after the first row without looking at the result, so a
//! SQLITE_FULL at that commit was never seen and the write was acknowledged
//! but lost. And after a failed COMMIT sqlx's transaction bookkeeping and
//! SQLite's own state can disagree; the single writer connection then ran
//! later writes inside a transaction that never committed. Hence: no
//! autocommit writes, RETURNING only in statements read to completion, and
//! a writer connection is probed when it is released and closed (the pool
//! opens a fresh one) unless it is provably outside any transaction.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
    sqlx::{self, Connection, Executor, pool::PoolConnectionMetadata, sqlite::SqliteConnection},
};

use crate::error::{Chain, Error};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Begins a write transaction: `BEGIN IMMEDIATE` on SQLite, so the write lock
/// is taken (waiting up to the busy timeout) before anything is read; a
/// deferred transaction that reads and then writes would fail with
/// SQLITE_BUSY at once when another process holds the lock.
pub(crate) async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    if db.get_database_backend() == DbBackend::Sqlite {
        db.begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await
    } else {
        db.begin().await
    }
}

/// The writer pool's release check (sqlx `after_release`): keep the
/// connection only if it is outside any transaction, by sqlx's count and by
/// SQLite itself (`BEGIN` fails inside a transaction). Otherwise sqlx closes
/// it, which rolls back whatever SQLite still held open, and the next write
/// gets a fresh connection.
pub(crate) fn release_writer(
    conn: &mut SqliteConnection,
    _: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if conn.is_in_transaction() {
            tracing::warn!("database writer released inside a transaction; replacing it");
            return Ok(false);
        }
        if let Err(error) = conn.execute("BEGIN").await {
            tracing::warn!(%error, "database writer in an unknown state; replacing it");
            return Ok(false);
        }
        Ok(conn.execute("ROLLBACK").await.is_ok())
    })
}

/// The reader pools' release check: sqlx's own count only (readers never
/// write; a leftover read transaction would pin an old snapshot).
pub(crate) fn release_reader(
    conn: &mut SqliteConnection,
    _: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move { Ok(!conn.is_in_transaction()) })
}

/// Whether writes are failing for a storage reason (full, read-only or
/// failing disk). Logs one ERROR line when an episode starts and one INFO
/// line when it ends, instead of one line per call.
///
/// An episode ends only at a write that succeeds [`WriteHealth::QUIET`]
/// after the last failure: on a nearly full disk some writes still fit
/// (SQLite reuses free pages) and successes interleave with failures; each
/// of those is not a recovery, and logging one would flood the log with
/// ERROR/INFO pairs (found by the long fault run).
#[derive(Debug)]
pub(crate) struct WriteHealth {
    failing: AtomicBool,
    /// Milliseconds from `epoch` to the last storage failure.
    last_failure: AtomicU64,
    epoch: Instant,
    metrics: std::sync::OnceLock<crate::metrics::Metrics>,
}

impl Default for WriteHealth {
    fn default() -> Self {
        Self {
            failing: AtomicBool::new(false),
            last_failure: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics: std::sync::OnceLock::new(),
        }
    }
}

impl WriteHealth {
    /// How long writes must have gone without a storage failure before a
    /// success ends the episode.
    const QUIET: Duration = Duration::from_secs(2);

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records write metrics in `metrics` from now on.
    pub(crate) fn set_metrics(&self, metrics: crate::metrics::Metrics) {
        let _ = self.metrics.set(metrics);
    }

    /// Begins a write transaction (see [`begin_write`]), timing the wait.
    pub(crate) async fn begin(
        &self,
        db: &DatabaseConnection,
    ) -> Result<DatabaseTransaction, DbErr> {
        let began = std::time::Instant::now();
        let txn = begin_write(db).await;
        if let Some(metrics) = self.metrics.get() {
            metrics.db_write_wait.observe(began.elapsed().as_secs_f64());
        }
        txn
    }

    /// Notes how a write ended.
    pub(crate) fn observe<T>(&self, result: &Result<T, Error>) {
        if let (Err(error), Some(metrics)) = (result, self.metrics.get()) {
            let kind = match error {
                Error::StorageFull(_) => Some("full"),
                Error::StorageFailed(_) => Some("storage"),
                Error::DatabaseUnavailable(_) => Some("unavailable"),
                Error::Internal(_) => Some("other"),
                _ => None,
            };
            if let Some(kind) = kind {
                metrics
                    .db_write_errors
                    .get_or_create(&crate::metrics::Kind::new(kind))
                    .inc();
            }
        }
        match result {
            Err(error @ (Error::StorageFull(_) | Error::StorageFailed(_))) => {
                self.last_failure.store(self.now(), Ordering::Release);
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        error = %Chain(error),
                        "database writes are failing; reads continue, writes are refused \
                         until storage recovers (no restart needed)"
                    );
                }
            }
            Ok(_) => {
                let quiet = u64::try_from(Self::QUIET.as_millis()).unwrap_or(u64::MAX);
                if self.failing.load(Ordering::Acquire)
                    && self
                        .now()
                        .saturating_sub(self.last_failure.load(Ordering::Acquire))
                        >= quiet
                    && self.failing.swap(false, Ordering::AcqRel)
                {
                    tracing::info!("database writes succeed again");
                }
            }
            Err(_) => {}
        }
    }

    /// Whether a storage failure episode is under way.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Result<(), Error> {
        Err(Error::StorageFull(DbErr::Custom(
            "database or disk is full".into(),
        )))
    }

    #[test]
    fn a_success_between_failures_does_not_end_the_episode() {
        let health = WriteHealth {
            epoch: Instant::now() - Duration::from_secs(10),
            ..WriteHealth::default()
        };
        health.observe(&full());
        assert!(health.is_failing());
        // A write that still fit on a nearly full disk.
        health.observe(&Ok(()));
        assert!(health.is_failing(), "one success right after a failure");
        // A success once the quiet time has passed since the last failure.
        let quiet = u64::try_from(WriteHealth::QUIET.as_millis()).unwrap();
        health
            .last_failure
            .store(health.now() - quiet, Ordering::Release);
        health.observe(&Ok(()));
        assert!(!health.is_failing());
    }
}
