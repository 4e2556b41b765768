//! The cache outbox: each write's transaction appends what the caches must
//! learn, numbered in commit order; any replica reads the rows after the
//! point Redis has reached and delivers them (see `crate::delivery`).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
};

use super::{Store, classify, entities::cache_outbox};
use crate::{
    domain::{Change, Committed, NameKey},
    error::Error,
};

/// How long outbox rows are kept. A Redis that comes back further behind
/// than this (an old snapshot) cannot be caught up row by row; its cached
/// users are flushed and its board rebuilt instead.
pub const OUTBOX_RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Appends one change inside `txn`; returns its outbox number.
pub(super) async fn append_one(
    txn: &DatabaseTransaction,
    change: &Change,
    now: DateTime<Utc>,
) -> Result<u64, Error> {
    let seqs = append(txn, std::slice::from_ref(change), now).await?;
    seqs.first()
        .copied()
        .ok_or_else(|| Error::internal("the outbox numbered nothing"))
}

/// Appends `changes` inside `txn` (two statements, however many); returns
/// their outbox numbers, in order.
pub(super) async fn append(
    txn: &DatabaseTransaction,
    changes: &[Change],
    now: DateTime<Utc>,
) -> Result<Vec<u64>, Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let count = i64::try_from(changes.len()).map_err(Error::internal)?;
    let backend = txn.get_database_backend();
    // Read to the end (query_all), never stopped after the first row: see
    // write.rs. On Postgres the row lock taken here is held until commit,
    // which is what orders the numbers as the transactions commit.
    let rows = txn
        .query_all_raw(Statement::from_string(
            backend,
            format!(
                "UPDATE cache_outbox_sequence SET last_value = last_value + {count} \
                 WHERE id = 1 RETURNING last_value"
            ),
        ))
        .await
        .map_err(classify)?;
    let last: i64 = rows
        .first()
        .ok_or_else(|| Error::internal("cache_outbox_sequence has no row"))?
        .try_get("", "last_value")
        .map_err(classify)?;
    let first = last - count + 1;
    let models = changes
        .iter()
        .zip(first..)
        .map(|(change, seq)| cache_outbox::ActiveModel {
            seq: Set(seq),
            kind: Set(change.kind()),
            name_key: Set(change.key().as_str().to_owned()),
            user_id: Set(change.deleted_id()),
            create_time: Set(now),
        });
    cache_outbox::Entity::insert_many(models)
        .exec_without_returning(txn)
        .await
        .map_err(classify)?;
    (first..=last)
        .map(|seq| u64::try_from(seq).map_err(Error::internal))
        .collect()
}

impl Store {
    /// The outbox number of the last committed change (0 before any).
    #[tracing::instrument(skip_all, level = "debug")]
    pub async fn outbox_head(&self) -> Result<u64, Error> {
        let backend = self.reader.get_database_backend();
        let row = self
            .reader
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT last_value FROM cache_outbox_sequence WHERE id = 1",
            ))
            .await
            .map_err(classify)?
            .ok_or_else(|| Error::internal("cache_outbox_sequence has no row"))?;
        let last: i64 = row.try_get("", "last_value").map_err(classify)?;
        u64::try_from(last).map_err(Error::internal)
    }

    /// Up to `limit` changes numbered after `after`, in order. `None` when
    /// the one numbered `after + 1` is no longer kept (pruned): the caller
    /// cannot catch up row by row.
    #[tracing::instrument(skip_all, level = "debug")]
    pub async fn outbox_after(
        &self,
        after: u64,
        limit: u64,
    ) -> Result<Option<Vec<Committed>>, Error> {
        let after = i64::try_from(after).map_err(Error::internal)?;
        let rows = cache_outbox::Entity::find()
            .filter(cache_outbox::Column::Seq.gt(after))
            .order_by_asc(cache_outbox::Column::Seq)
            .limit(limit)
            .all(&self.reader)
            .await
            .map_err(classify)?;
        if rows.first().is_some_and(|row| row.seq != after + 1) {
            return Ok(None);
        }
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            let seq = u64::try_from(row.seq).map_err(Error::internal)?;
            let key = NameKey::from_stored(row.name_key);
            match Change::from_row(row.kind, key, row.user_id) {
                Some(change) => changes.push(Committed { seq, change }),
                None => tracing::warn!(seq, kind = row.kind, "unknown cache outbox row skipped"),
            }
        }
        Ok(Some(changes))
    }

    /// On Postgres, a listener woken at every commit that adds outbox rows
    /// (the migration's trigger NOTIFYs `roster_cache_outbox`); `None`
    /// elsewhere.
    pub async fn outbox_listener(
        &self,
    ) -> Option<Result<sea_orm::sqlx::postgres::PgListener, Error>> {
        if self.reader.get_database_backend() != sea_orm::DbBackend::Postgres {
            return None;
        }
        let pool = self.reader.get_postgres_connection_pool();
        Some(
            async {
                let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen("roster_cache_outbox").await?;
                Ok(listener)
            }
            .await
            .map_err(|error: sea_orm::sqlx::Error| {
                classify(sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(
                    error.into(),
                )))
            }),
        )
    }

    /// Deletes outbox rows that committed before `before`; returns how many.
    #[tracing::instrument(skip_all)]
    pub async fn prune_outbox(&self, before: DateTime<Utc>) -> Result<u64, Error> {
        self.prune::<cache_outbox::Entity>(cache_outbox::Column::CreateTime, before)
            .await
    }

    /// Deletes user RPC idempotency records created before `before`.
    #[tracing::instrument(skip_all)]
    pub async fn prune_user_requests(&self, before: DateTime<Utc>) -> Result<u64, Error> {
        use super::entities::user_requests;
        self.prune::<user_requests::Entity>(user_requests::Column::CreateTime, before)
            .await
    }

    /// Deletes the rows of `E` whose `created` column is before `before`,
    /// in one write transaction; returns how many.
    pub(super) async fn prune<E: EntityTrait>(
        &self,
        created: E::Column,
        before: DateTime<Utc>,
    ) -> Result<u64, Error> {
        self.observed(async {
            let txn = self.health.begin(&self.writer).await.map_err(classify)?;
            let result = E::delete_many()
                .filter(created.lt(before))
                .exec(&txn)
                .await
                .map_err(classify)?;
            txn.commit().await.map_err(classify)?;
            Ok(result.rows_affected)
        })
        .await
    }
}
