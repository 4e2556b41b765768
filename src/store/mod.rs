//! The database: connection set-up (SQLite pragmas, one writer), migrations,
//! and queries that take and return domain types. Every write is one
//! transaction that also records, in the cache outbox, what the caches must
//! learn (see `write.rs` for how a write is kept from being acknowledged
//! without being stored).

pub mod entities;
mod leaderboard;
mod outbox;
mod write;

pub use leaderboard::{Recorded, SnapshotRow};
pub use outbox::OUTBOX_RETENTION;

use std::{future::Future, sync::Arc, time::Duration};

use chrono::{DateTime, SubsecRound, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    RuntimeErr, SqlErr, Statement,
    sea_query::Expr,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::{
    credentials::PasswordHash,
    domain::{Change, NameKey, RequestId, User, UserMethod, UserName},
    error::Error,
    proto::{decode_user, encode_user},
};
use entities::{user_requests, users};

/// How long SQLite waits for a lock before giving up with SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The Postgres advisory lock key that serializes migrations ("roster" in
/// ASCII).
const MIGRATION_LOCK: i64 = 0x726f_7374_6572;
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
    health: Arc<write::WriteHealth>,
}

/// What a write RPC did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written<T> {
    /// The write committed; `seq` is its cache-outbox number.
    New {
        /// The result.
        value: T,
        /// The outbox number of the change.
        seq: u64,
    },
    /// The request_id was seen before: the first call's result; nothing written.
    Replayed(T),
}

impl Store {
    /// Connects and applies every pending migration (see [`Self::open`] and
    /// [`Self::migrate`]).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbErr> {
        let store = Self::open(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects and logs the engine's version; applies no migration.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, DbErr> {
        Self::open_with_password(url, None, max_connections).await
    }

    /// As [`Self::open`], signing in to Postgres with `password` (for a URL
    /// that carries none). The password goes into the connection options,
    /// never into a URL: SeaORM quotes the URL in some of its errors. TLS
    /// is the URL's: sqlx reads `sslmode` (`disable`, `prefer` (its
    /// default), `require`, `verify-ca`, `verify-full`), `sslrootcert`,
    /// `sslcert` and `sslkey` from it, and SeaORM passes the URL through.
    pub async fn open_with_password(
        url: &str,
        password: Option<&SecretString>,
        max_connections: u32,
    ) -> Result<Self, DbErr> {
        let sqlite = url.starts_with("sqlite:");
        if sqlite && password.is_some() {
            return Err(DbErr::Custom(
                "DATABASE_PASSWORD_FILE applies to Postgres only; DATABASE_URL names SQLite".into(),
            ));
        }
        if !sqlite {
            check_postgres_url(url, password.is_some())?;
        }
        let health = Arc::new(write::WriteHealth::default());
        let (reader, writer) = if sqlite {
            let reader =
                Database::connect(sqlite_options(url, max_connections.max(1), false)).await?;
            let writer = Database::connect(sqlite_options(url, 1, true)).await?;
            (reader, writer)
        } else {
            let mut options = ConnectOptions::new(url);
            options
                .max_connections(max_connections.max(2))
                .connect_timeout(ACQUIRE_TIMEOUT)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .sqlx_logging(false);
            if let Some(password) = password.cloned() {
                options.map_sqlx_postgres_opts(move |pg| pg.password(password.expose_secret()));
            }
            let pool = Database::connect(options).await?;
            (pool.clone(), pool)
        };
        let games =
            sqlite.then(|| leaderboard::GameQueue::start(writer.clone(), Arc::clone(&health)));
        let store = Self {
            reader,
            writer,
            games,
            health,
        };
        store.log_engine().await?;
        Ok(store)
    }

    /// Applies every pending migration, in one transaction that holds the
    /// database's write lock (SQLite) or a transaction-scoped advisory lock
    /// (Postgres), so replicas starting together apply them once: the
    /// others wait, then find nothing pending. Both engines' DDL is
    /// transactional, so a failed migration leaves nothing half-done.
    /// Returns the names of the migrations applied.
    pub async fn migrate(&self) -> Result<Vec<String>, DbErr> {
        let txn = self.health.begin(&self.writer).await?;
        if self.backend() == DbBackend::Postgres {
            txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                .await?;
        }
        let pending: Vec<String> = Migrator::get_pending_migrations(&txn)
            .await?
            .iter()
            .map(|migration| migration.name().to_owned())
            .collect();
        Migrator::up(&txn, None).await?;
        txn.commit().await?;
        if !pending.is_empty() {
            tracing::info!(applied = ?pending, "database migrations applied");
        }
        Ok(pending)
    }

    /// The names of the migrations this version has that the database lacks
    /// (creates nothing).
    pub async fn pending_migrations(&self) -> Result<Vec<String>, DbErr> {
        Ok(Migrator::get_pending_migrations_read_only(&self.reader)
            .await?
            .iter()
            .map(|migration| migration.name().to_owned())
            .collect())
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

    /// The database's backend.
    pub fn backend(&self) -> DbBackend {
        self.reader.get_database_backend()
    }

    /// Succeeds when the database answers a read. Writes failing for a
    /// storage reason (a full disk) do not count: reads still work.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.reader.ping().await
    }

    /// Records write waits and failures in `metrics` from now on.
    pub fn set_metrics(&self, metrics: crate::metrics::Metrics) {
        self.health.set_metrics(metrics);
    }

    /// Connections per pool: (pool, in use, idle).
    pub fn pool_stats(&self) -> Vec<(&'static str, u32, u32)> {
        let stats = |pool: &'static str, db: &DatabaseConnection| {
            let (size, idle) = match db.get_database_backend() {
                DbBackend::Sqlite => {
                    let pool = db.get_sqlite_connection_pool();
                    (pool.size(), pool.num_idle())
                }
                _ => {
                    let pool = db.get_postgres_connection_pool();
                    (pool.size(), pool.num_idle())
                }
            };
            let idle = u32::try_from(idle).unwrap_or(u32::MAX);
            (pool, size.saturating_sub(idle), idle)
        };
        if self.backend() == DbBackend::Sqlite {
            vec![stats("reader", &self.reader), stats("writer", &self.writer)]
        } else {
            vec![stats("shared", &self.reader)]
        }
    }

    /// Whether the last storage-related write failed (full or failing disk).
    pub fn writes_failing(&self) -> bool {
        self.health.is_failing()
    }

    /// Closes every connection.
    pub async fn close(self) {
        for pool in [self.reader, self.writer] {
            if let Err(error) = pool.close().await {
                tracing::warn!(%error, "closing the database pool failed");
            }
        }
    }

    /// Runs a write and notes whether storage is failing (see `WriteHealth`).
    async fn observed<T>(&self, work: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let result = work.await;
        self.health.observe(&result);
        result
    }

    /// The first result of a user RPC called with `request_id`, and the
    /// name it was about; `None` when the key is new (or expired).
    #[tracing::instrument(skip_all)]
    pub async fn find_user_request(
        &self,
        method: UserMethod,
        request_id: &RequestId,
    ) -> Result<Option<(NameKey, Vec<u8>)>, Error> {
        find_user_request(&self.reader, method, request_id).await
    }

    /// Inserts a new user. Fails with `UserAlreadyExists` when the canonical
    /// name is taken: the UNIQUE index decides, never a prior read. With a
    /// `request_id`, records the result so that a retry replays it.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn insert_user(
        &self,
        name: &UserName,
        password_hash: &PasswordHash,
        now: DateTime<Utc>,
        request: Option<&RequestId>,
    ) -> Result<Written<User>, Error> {
        // Every backend we support keeps microseconds; trim so the value we
        // return equals the value read back later.
        let now = now.trunc_subsecs(6);
        let user = User {
            id: Uuid::now_v7(),
            name: name.display().to_owned(),
            create_time: now,
            update_time: now,
        };
        let row = users::ActiveModel {
            id: Set(user.id),
            name: Set(user.name.clone()),
            name_key: Set(name.key().as_str().to_owned()),
            password_hash: Set(password_hash.as_phc().to_owned()),
            create_time: Set(now),
            update_time: Set(now),
        };
        let method = UserMethod::CreateUser;
        let written = self
            .observed(async {
                let txn = self.health.begin(&self.writer).await.map_err(classify)?;
                // No RETURNING: every column is known here (see write.rs).
                if let Err(error) = users::Entity::insert(row)
                    .exec_without_returning(&txn)
                    .await
                {
                    return Err(if is_unique_violation(&error) {
                        Error::UserAlreadyExists
                    } else {
                        classify(error)
                    });
                }
                let recorded = record_user_request(
                    &txn,
                    method,
                    request,
                    name.key(),
                    &encode_user(&user),
                    now,
                )
                .await?;
                if !recorded {
                    return Ok(None);
                }
                let seq =
                    outbox::append_one(&txn, &Change::Account(name.key().clone()), now).await?;
                txn.commit().await.map_err(classify)?;
                Ok(Some(seq))
            })
            .await;
        match written {
            Ok(Some(seq)) => Ok(Written::New { value: user, seq }),
            // A concurrent call with the same request_id committed first.
            Ok(None) => self.replay(method, request, name.key(), decode_user).await,
            // A retry whose first call committed: the name is taken by it.
            Err(Error::UserAlreadyExists) if request.is_some() => {
                match self.replay(method, request, name.key(), decode_user).await {
                    Ok(replayed) => Ok(replayed),
                    Err(_) => Err(Error::UserAlreadyExists),
                }
            }
            Err(error) => Err(error),
        }
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
    /// change wins otherwise). A password change (`Some(request)`, even
    /// without a request_id inside) advances update_time and is recorded for
    /// the caches; a re-hash (`None`) changes nothing callers can see.
    /// Returns the updated user, or `None` when the hash had changed
    /// underneath.
    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    pub async fn replace_password_hash(
        &self,
        key: &NameKey,
        user: &User,
        old: &PasswordHash,
        new: &PasswordHash,
        change: Option<Option<&RequestId>>,
    ) -> Result<Option<Written<User>>, Error> {
        let mut updated = user.clone();
        let now = Utc::now().trunc_subsecs(6);
        if change.is_some() {
            // Strictly later than before, even within one microsecond.
            updated.update_time = now.max(user.update_time + chrono::Duration::microseconds(1));
        }
        let method = UserMethod::ChangePassword;
        let request = change.flatten();
        let written = self
            .observed(async {
                let txn = self.health.begin(&self.writer).await.map_err(classify)?;
                let result = users::Entity::update_many()
                    .col_expr(users::Column::PasswordHash, Expr::value(new.as_phc()))
                    .col_expr(users::Column::UpdateTime, Expr::value(updated.update_time))
                    .filter(users::Column::Id.eq(user.id))
                    .filter(users::Column::PasswordHash.eq(old.as_phc()))
                    .exec(&txn)
                    .await
                    .map_err(classify)?;
                if result.rows_affected != 1 {
                    return Ok(Some(None));
                }
                if change.is_none() {
                    txn.commit().await.map_err(classify)?;
                    return Ok(Some(Some(0)));
                }
                if !record_user_request(&txn, method, request, key, &encode_user(&updated), now)
                    .await?
                {
                    return Ok(None);
                }
                let seq = outbox::append_one(&txn, &Change::Account(key.clone()), now).await?;
                txn.commit().await.map_err(classify)?;
                Ok(Some(Some(seq)))
            })
            .await?;
        match written {
            Some(Some(seq)) => Ok(Some(Written::New {
                value: updated,
                seq,
            })),
            Some(None) => Ok(None),
            None => self
                .replay(method, request, key, decode_user)
                .await
                .map(Some),
        }
    }

    /// Deletes the user and, through ON DELETE CASCADE foreign keys,
    /// everything that belongs to them, in one transaction. Returns the
    /// deleted user's id; `None` when there was no such user.
    #[tracing::instrument(skip_all, fields(user = %key))]
    pub async fn delete_user(
        &self,
        key: &NameKey,
        request: Option<&RequestId>,
    ) -> Result<Option<Written<Uuid>>, Error> {
        let method = UserMethod::DeleteUser;
        let now = Utc::now().trunc_subsecs(6);
        let written = self
            .observed(async {
                let txn = self.health.begin(&self.writer).await.map_err(classify)?;
                let id: Option<Uuid> = users::Entity::find()
                    .select_only()
                    .column(users::Column::Id)
                    .filter(users::Column::NameKey.eq(key.as_str()))
                    .into_tuple()
                    .one(&txn)
                    .await
                    .map_err(classify)?;
                let Some(id) = id else {
                    return Ok(Some(None));
                };
                users::Entity::delete_by_id(id)
                    .exec(&txn)
                    .await
                    .map_err(classify)?;
                if !record_user_request(&txn, method, request, key, id.as_bytes(), now).await? {
                    return Ok(None);
                }
                let seq = outbox::append_one(&txn, &Change::Deleted(key.clone(), id), now).await?;
                txn.commit().await.map_err(classify)?;
                Ok(Some(Some((id, seq))))
            })
            .await?;
        match written {
            Some(Some((value, seq))) => Ok(Some(Written::New { value, seq })),
            Some(None) => Ok(None),
            None => self
                .replay(method, request, key, |bytes| Uuid::from_slice(bytes).ok())
                .await
                .map(Some),
        }
    }

    /// The first call's result for a request_id whose record exists.
    async fn replay<T>(
        &self,
        method: UserMethod,
        request: Option<&RequestId>,
        key: &NameKey,
        decode: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<Written<T>, Error> {
        let request = request.ok_or_else(|| Error::internal("replay without a request_id"))?;
        let (first_key, result) = find_user_request(&self.writer, method, request)
            .await?
            .ok_or_else(|| Error::internal("a request_id conflicted but has no record"))?;
        if first_key != *key {
            return Err(request_id_reused());
        }
        decode(&result)
            .map(Written::Replayed)
            .ok_or_else(|| Error::internal("undecodable user_requests.result"))
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

/// Refuses a Postgres URL that does not parse (without quoting it: it may
/// hold a password) and one that carries a password when `password_apart`
/// says a password file gives one too.
fn check_postgres_url(url: &str, password_apart: bool) -> Result<(), DbErr> {
    let parsed = url::Url::parse(url).map_err(|error| {
        DbErr::Custom(format!(
            "DATABASE_URL is not a valid URL ({error}); not shown, as it may hold a password"
        ))
    })?;
    if password_apart && parsed.password().is_some() {
        return Err(DbErr::Custom(
            "DATABASE_URL carries a password and so does DATABASE_PASSWORD_FILE; give it \
             once, preferably in the file"
                .into(),
        ));
    }
    Ok(())
}

fn sqlite_options(url: &str, max_connections: u32, writer: bool) -> ConnectOptions {
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
        })
        .map_sqlx_sqlite_pool_opts(move |pool| {
            if writer {
                pool.after_release(write::release_writer)
            } else {
                pool.after_release(write::release_reader)
            }
        });
    options
}

async fn find_user_request(
    db: &impl ConnectionTrait,
    method: UserMethod,
    request_id: &RequestId,
) -> Result<Option<(NameKey, Vec<u8>)>, Error> {
    let row = user_requests::Entity::find_by_id((
        method.as_str().to_owned(),
        request_id.as_str().to_owned(),
    ))
    .one(db)
    .await
    .map_err(classify)?;
    Ok(row.map(|row| (NameKey::from_stored(row.name_key), row.result)))
}

/// Records a user RPC's result under its request_id (if any) inside `txn`.
/// `false` when the request_id is already recorded (a concurrent call with
/// the same key committed first): the caller must roll back and replay.
async fn record_user_request(
    txn: &DatabaseTransaction,
    method: UserMethod,
    request: Option<&RequestId>,
    key: &NameKey,
    result: &[u8],
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    let Some(request) = request else {
        return Ok(true);
    };
    let row = user_requests::ActiveModel {
        method: Set(method.as_str().to_owned()),
        request_id: Set(request.as_str().to_owned()),
        name_key: Set(key.as_str().to_owned()),
        result: Set(result.to_vec()),
        create_time: Set(now),
    };
    match user_requests::Entity::insert(row)
        .exec_without_returning(txn)
        .await
    {
        Ok(_) => Ok(true),
        Err(error) if is_unique_violation(&error) => Ok(false),
        Err(error) => Err(classify(error)),
    }
}

fn request_id_reused() -> Error {
    Error::InvalidArgument(vec![RequestId::reused().on("request_id")])
}

fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// Maps a database error to the caller's answer: a full disk is
/// `StorageFull`, a failing one `StorageFailed`, a busy or unreachable
/// database `DatabaseUnavailable` (retrying later may help), anything else
/// INTERNAL.
pub(crate) fn classify(error: DbErr) -> Error {
    // Every foreign key points at users: the user was deleted under us.
    if matches!(
        error.sql_err(),
        Some(SqlErr::ForeignKeyConstraintViolation(_))
    ) {
        return Error::UserNotFound;
    }
    match fault_of(&error) {
        Fault::Full => Error::StorageFull(error),
        Fault::Storage => Error::StorageFailed(error),
        Fault::Transient => Error::DatabaseUnavailable(error),
        Fault::Other => Error::internal(error),
    }
}

/// What kind of fault a database error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// No space left (SQLITE_FULL, Postgres 53100 disk_full).
    Full,
    /// The storage under the database failed: SQLITE_IOERR*, SQLITE_READONLY*,
    /// SQLITE_CANTOPEN*, SQLITE_CORRUPT*, SQLITE_NOTADB, SQLITE_PROTOCOL.
    Storage,
    /// Retrying later may help: busy, locked, unreachable, pool exhausted.
    Transient,
    /// Anything else.
    Other,
}

fn fault_of(error: &DbErr) -> Fault {
    use sea_orm::sqlx::Error as Sqlx;
    match error {
        DbErr::ConnectionAcquire(_) => Fault::Transient,
        // A new connection whose set-up was garbled: nothing was sent on it,
        // and the database was not reached. A server that accepts and closes
        // at once (a proxy or pooler with nothing behind it, a cut link)
        // makes sqlx read its TLS answer from an empty socket and report
        // "unexpected response from SSLRequest: 0x00" (measured, issue 9).
        DbErr::Conn(RuntimeErr::SqlxError(inner))
            if matches!(inner.as_ref(), Sqlx::Protocol(_)) =>
        {
            Fault::Transient
        }
        DbErr::Exec(RuntimeErr::SqlxError(inner))
        | DbErr::Query(RuntimeErr::SqlxError(inner))
        | DbErr::Conn(RuntimeErr::SqlxError(inner)) => match inner.as_ref() {
            Sqlx::Io(_)
            | Sqlx::PoolTimedOut
            | Sqlx::PoolClosed
            | Sqlx::WorkerCrashed
            | Sqlx::Tls(_) => Fault::Transient,
            Sqlx::Database(db) => {
                let code = db.code().unwrap_or_default();
                if db
                    .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                    .is_some()
                {
                    sqlite_fault(&code)
                } else {
                    postgres_fault(&code)
                }
            }
            _ => Fault::Other,
        },
        DbErr::Conn(_) => Fault::Transient,
        _ => Fault::Other,
    }
}

/// By primary result code (the low byte of an extended code).
fn sqlite_fault(code: &str) -> Fault {
    match code.parse::<i32>().map(|code| code & 0xff) {
        // SQLITE_BUSY, SQLITE_LOCKED
        Ok(5 | 6) => Fault::Transient,
        // SQLITE_FULL
        Ok(13) => Fault::Full,
        // SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_CANTOPEN,
        // SQLITE_PROTOCOL, SQLITE_NOTADB
        Ok(8 | 10 | 11 | 14 | 15 | 26) => Fault::Storage,
        _ => Fault::Other,
    }
}

/// SQLSTATE 53100 (disk_full) and class 58 (system error, I/O) are storage
/// faults; classes 08 (connection), 53 (insufficient resources), 57P0x
/// (shutdown), and serialization failure or deadlock (40001, 40P01) are
/// transient.
fn postgres_fault(code: &str) -> Fault {
    if code == "53100" {
        Fault::Full
    } else if code.starts_with("58") {
        Fault::Storage
    } else if code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P0")
        || code == "40001"
        || code == "40P01"
    {
        Fault::Transient
    } else {
        Fault::Other
    }
}
