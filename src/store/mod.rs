//! The database: connection set-up (SQLite pragmas, one writer), migrations,
//! and queries that take and return domain types.

pub mod entities;
mod leaderboard;

pub use leaderboard::{Recorded, SnapshotRow};

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, RuntimeErr, SqlErr, Statement,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use uuid::Uuid;

use crate::{
    credentials::PasswordHash,
    domain::{NameKey, User, UserName},
    error::Error,
};
use entities::users;

/// How long SQLite waits for a lock before giving up with SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a pooled connection before reporting UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The database behind Roster. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    reader: DatabaseConnection,
    /// SQLite allows one writer at a time; giving writes a single connection
    /// queues them in the pool instead of failing with SQLITE_BUSY. On
    /// Postgres this is the same pool as `reader`.
    writer: DatabaseConnection,
}

impl Store {
    /// Connects, applies every pending migration, and checks the engine.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbErr> {
        let (reader, writer) = if url.starts_with("sqlite:") {
            let reader = Database::connect(sqlite_options(url, max_connections.max(1))).await?;
            let writer = Database::connect(sqlite_options(url, 1)).await?;
            (reader, writer)
        } else {
            let mut options = ConnectOptions::new(url);
            options
                .max_connections(max_connections.max(2))
                .connect_timeout(ACQUIRE_TIMEOUT)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .sqlx_logging(false);
            let pool = Database::connect(options).await?;
            (pool.clone(), pool)
        };
        let store = Self { reader, writer };
        Migrator::up(&store.writer, None).await?;
        store.log_engine().await?;
        Ok(store)
    }

    async fn log_engine(&self) -> Result<(), DbErr> {
        let backend = self.writer.get_database_backend();
        let sql = match backend {
            DbBackend::Sqlite => "SELECT sqlite_version() AS version",
            _ => "SELECT version() AS version",
        };
        let row = self
            .reader
            .query_one_raw(Statement::from_string(backend, sql))
            .await?;
        let version: String = match row {
            Some(row) => row.try_get("", "version")?,
            None => String::new(),
        };
        tracing::info!(backend = ?backend, %version, "database ready");
        Ok(())
    }

    /// Succeeds when the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.reader.ping().await?;
        if !same_pool(&self.reader, &self.writer) {
            self.writer.ping().await?;
        }
        Ok(())
    }

    /// Closes every connection.
    pub async fn close(self) {
        for pool in [self.reader, self.writer] {
            if let Err(error) = pool.close().await {
                tracing::warn!(%error, "closing the database pool failed");
            }
        }
    }

    /// Inserts a new user. Fails with `UserAlreadyExists` when the canonical
    /// name is taken: the UNIQUE index decides, never a prior read.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn insert_user(
        &self,
        name: &UserName,
        password_hash: &PasswordHash,
        now: DateTime<Utc>,
    ) -> Result<User, Error> {
        // Every backend we support keeps microseconds; trim so the value we
        // return equals the value read back later.
        let now = now.trunc_subsecs(6);
        let row = users::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set(name.display().to_owned()),
            name_key: Set(name.key().as_str().to_owned()),
            password_hash: Set(password_hash.as_phc().to_owned()),
            create_time: Set(now),
            update_time: Set(now),
        };
        let model = users::Entity::insert(row)
            .exec_with_returning(&self.writer)
            .await
            .map_err(|error| match error.sql_err() {
                Some(SqlErr::UniqueConstraintViolation(_)) => Error::UserAlreadyExists,
                _ => classify(error),
            })?;
        Ok(User {
            id: model.id,
            name: model.name,
            create_time: model.create_time,
            update_time: model.update_time,
        })
    }

    /// Reads a user's public fields by canonical name.
    #[tracing::instrument(skip_all, fields(user = %key))]
    pub async fn find_user(&self, key: &NameKey) -> Result<Option<User>, Error> {
        let row = users::Entity::find()
            .filter(users::Column::NameKey.eq(key.as_str()))
            .into_partial_model::<users::PublicUser>()
            .one(&self.reader)
            .await
            .map_err(classify)?;
        Ok(row.map(User::from))
    }
}

fn sqlite_options(url: &str, max_connections: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            opts.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: an acknowledged commit survives an OS crash or power loss.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
        });
    options
}

fn same_pool(a: &DatabaseConnection, b: &DatabaseConnection) -> bool {
    a.get_database_backend() != DbBackend::Sqlite && b.get_database_backend() != DbBackend::Sqlite
}

/// Maps a database error to UNAVAILABLE when retrying later may help
/// (unreachable, pool exhausted, locked), and to INTERNAL otherwise.
pub(crate) fn classify(error: DbErr) -> Error {
    if is_transient(&error) {
        Error::DatabaseUnavailable(error)
    } else {
        Error::internal(error)
    }
}

fn is_transient(error: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(inner)) | DbErr::Query(RuntimeErr::SqlxError(inner)) => {
            match inner.as_ref() {
                Sqlx::Io(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Tls(_) => true,
                Sqlx::Database(db) => {
                    let code = db.code().unwrap_or_default();
                    if db
                        .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                        .is_some()
                    {
                        is_transient_sqlite_code(&code)
                    } else {
                        is_transient_postgres_code(&code)
                    }
                }
                _ => false,
            }
        }
        _ => false,
    }
}

/// SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
fn is_transient_sqlite_code(code: &str) -> bool {
    code.parse::<i32>()
        .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

/// SQLSTATE classes 08 (connection), 53 (insufficient resources), 57P0x
/// (shutdown), and serialization failure or deadlock (40001, 40P01).
fn is_transient_postgres_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P0")
        || code == "40001"
        || code == "40P01"
}
