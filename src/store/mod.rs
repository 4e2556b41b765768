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
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, RuntimeErr, SqlErr, Statement,
    sea_query::{Expr, Query},
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
    /// On SQLite, RecordGame goes through a group-commit task that commits
    /// concurrent games together (one fsync for many); `None` on Postgres,
    /// where row locks let games commit concurrently.
    games: Option<leaderboard::GameQueue>,
}

impl Store {
    /// Connects, applies every pending migration, and checks the engine.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbErr> {
        let sqlite = url.starts_with("sqlite:");
        let (reader, writer) = if sqlite {
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
        let games = sqlite.then(|| leaderboard::GameQueue::start(writer.clone()));
        let store = Self {
            reader,
            writer,
            games,
        };
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
        // On SQLite the writer is a pool of its own; elsewhere it is `reader`.
        if self.writer.get_database_backend() == DbBackend::Sqlite {
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

    /// Reads a user and their password hash, for a password check only.
    #[tracing::instrument(skip_all, fields(user = %key))]
    pub async fn find_credentials(
        &self,
        key: &NameKey,
    ) -> Result<Option<(User, PasswordHash)>, Error> {
        let row = users::Entity::find()
            .filter(users::Column::NameKey.eq(key.as_str()))
            .one(&self.reader)
            .await
            .map_err(classify)?;
        Ok(row.map(|row| {
            let hash = PasswordHash::from_stored(row.password_hash);
            let user = User {
                id: row.id,
                name: row.name,
                create_time: row.create_time,
                update_time: row.update_time,
            };
            (user, hash)
        }))
    }

    /// Replaces `user`'s password hash if it is still `old` (a concurrent
    /// change wins otherwise). With `touch`, update_time advances. Returns the
    /// updated user, or `None` when the hash had changed underneath.
    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    pub async fn replace_password_hash(
        &self,
        user: &User,
        old: &PasswordHash,
        new: &PasswordHash,
        touch: bool,
    ) -> Result<Option<User>, Error> {
        let mut updated = user.clone();
        if touch {
            // Strictly later than before, even within one microsecond.
            let now = Utc::now().trunc_subsecs(6);
            updated.update_time = now.max(user.update_time + chrono::Duration::microseconds(1));
        }
        let result = users::Entity::update_many()
            .col_expr(users::Column::PasswordHash, Expr::value(new.as_phc()))
            .col_expr(users::Column::UpdateTime, Expr::value(updated.update_time))
            .filter(users::Column::Id.eq(user.id))
            .filter(users::Column::PasswordHash.eq(old.as_phc()))
            .exec(&self.writer)
            .await
            .map_err(classify)?;
        Ok((result.rows_affected == 1).then_some(updated))
    }

    /// Deletes the user and, through ON DELETE CASCADE foreign keys,
    /// everything that belongs to them, in one statement (one transaction).
    /// Returns the deleted user's id; `None` when there was no such user.
    #[tracing::instrument(skip_all, fields(user = %key))]
    pub async fn delete_user(&self, key: &NameKey) -> Result<Option<Uuid>, Error> {
        // RETURNING only the id: the row's password hash never leaves the database.
        let statement = Query::delete()
            .from_table(users::Entity)
            .and_where(users::Column::NameKey.eq(key.as_str()))
            .returning_col(users::Column::Id)
            .to_owned();
        let row = self.writer.query_one(&statement).await.map_err(classify)?;
        row.map(|row| row.try_get::<Uuid>("", "id"))
            .transpose()
            .map_err(classify)
    }

    /// Up to `limit` users with canonical names after `after`, in canonical
    /// name order (keyset pagination: stable while others come and go).
    #[tracing::instrument(skip_all)]
    pub async fn list_users(
        &self,
        after: Option<&NameKey>,
        limit: u64,
    ) -> Result<Vec<(NameKey, User)>, Error> {
        let mut query = users::Entity::find().order_by_asc(users::Column::NameKey);
        if let Some(after) = after {
            query = query.filter(users::Column::NameKey.gt(after.as_str()));
        }
        let rows = query
            .limit(limit)
            .into_partial_model::<users::PublicUser>()
            .all(&self.reader)
            .await
            .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|row| (NameKey::from_stored(row.name_key.clone()), User::from(row)))
            .collect())
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

/// Maps a database error to UNAVAILABLE when retrying later may help
/// (unreachable, pool exhausted, locked), and to INTERNAL otherwise.
pub(crate) fn classify(error: DbErr) -> Error {
    // Every foreign key points at users: the user was deleted under us.
    if matches!(
        error.sql_err(),
        Some(SqlErr::ForeignKeyConstraintViolation(_))
    ) {
        return Error::UserNotFound;
    }
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
