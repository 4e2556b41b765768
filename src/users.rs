//! The user use cases: the business rules of creating, reading, checking,
//! changing, deleting and listing users.

use std::sync::Arc;

use chrono::Utc;
use tokio::time::Instant;

use crate::{
    cache::{UserCache, board::BoardCache},
    credentials::{PasswordHash, PasswordHasher},
    domain::{NameKey, PageSize, Password, User, UserCursor, UserName},
    error::Error,
    single_flight::SingleFlight,
    store::Store,
    throttle::Throttle,
};

/// The user use cases over the store, the cache, the throttle and the hasher.
#[derive(Clone)]
pub struct Users {
    store: Store,
    cache: UserCache,
    board: BoardCache,
    throttle: Throttle,
    hasher: PasswordHasher,
    misses: Arc<SingleFlight<NameKey, Option<User>>>,
}

impl Users {
    /// Wires the use cases to their dependencies.
    pub fn new(
        store: Store,
        cache: UserCache,
        board: BoardCache,
        throttle: Throttle,
        hasher: PasswordHasher,
    ) -> Self {
        Self {
            store,
            cache,
            board,
            throttle,
            hasher,
            misses: Arc::default(),
        }
    }

    /// Registers a user: hash (within `deadline`), insert (the UNIQUE index
    /// decides duplicates), then fill the cache so the user is readable at once.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn create(
        &self,
        name: UserName,
        password: Password,
        deadline: Option<Instant>,
    ) -> Result<User, Error> {
        let hash = self.hasher.hash(password, deadline).await?;
        // The lease is taken before the commit: a delete committed after ours
        // voids it, so this fill cannot resurrect a deleted user.
        let lease = self.cache.lease(name.key()).await;
        let user = self.store.insert_user(&name, &hash, Utc::now()).await?;
        if let Some(token) = lease {
            self.cache.fill(name.key(), &user, &token).await;
        }
        tracing::info!(user_id = %user.id, "user created");
        Ok(user)
    }

    /// Reads a user through the cache: a hit is served from Redis; concurrent
    /// misses share one database read, whose result fills the cache unless a
    /// write happened in between.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn get(&self, name: UserName) -> Result<User, Error> {
        let key = name.key();
        if let Some(user) = self.cache.get(key).await {
            return Ok(user);
        }
        let user = self
            .misses
            .run(key, || async {
                let lease = self.cache.lease(key).await;
                #[cfg(feature = "failpoints")]
                crate::failpoint::hit("user-db-read", key.as_str()).await;
                let user = self.store.find_user(key).await?;
                #[cfg(feature = "failpoints")]
                crate::failpoint::hit("user-fill", key.as_str()).await;
                if let (Some(user), Some(token)) = (&user, lease) {
                    self.cache.fill(key, user, &token).await;
                }
                Ok::<_, Error>(user)
            })
            .await?;
        user.ok_or(Error::UserNotFound)
    }

    /// Checks a password; `None` for a wrong password or an unknown user, which
    /// cost the same (an unknown user is checked against a dummy hash). Never
    /// reads the cache. Upgrades a hash weaker than the current policy.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn verify_password(
        &self,
        name: UserName,
        password: Password,
        deadline: Option<Instant>,
    ) -> Result<Option<User>, Error> {
        let Some((user, old_hash, upgraded)) =
            self.check_password(name.key(), password, deadline).await?
        else {
            return Ok(None);
        };
        if let Some(upgraded) = upgraded {
            // update_time is left alone: the user did not change anything.
            match self
                .store
                .replace_password_hash(&user, &old_hash, &upgraded, false)
                .await
            {
                Ok(Some(_)) => tracing::info!("password hash upgraded to the current policy"),
                Ok(None) => tracing::info!("password changed concurrently; no upgrade"),
                Err(error) => tracing::warn!(
                    error = %crate::error::Chain(&error),
                    "password hash upgrade failed; will retry at the next check"
                ),
            }
        }
        Ok(Some(user))
    }

    /// Replaces a password after checking the current one (throttled like
    /// [`Self::verify_password`]); invalidates the cache entry after commit.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn change_password(
        &self,
        name: UserName,
        current: Password,
        new: Password,
        deadline: Option<Instant>,
    ) -> Result<User, Error> {
        let key = name.key();
        let (user, old_hash, _) = self
            .check_password(key, current, deadline)
            .await?
            .ok_or(Error::InvalidCredentials)?;
        let new_hash = self.hasher.hash(new, deadline).await?;
        let updated = self
            .store
            .replace_password_hash(&user, &old_hash, &new_hash, true)
            .await?;
        self.cache.invalidate(key).await;
        let user = updated.ok_or(Error::ConcurrentUpdate)?;
        tracing::info!(user_id = %user.id, "password changed");
        Ok(user)
    }

    /// The throttled password check behind VerifyPassword and ChangePassword:
    /// the user, their stored hash and an upgraded hash (if the stored one is
    /// weaker than the policy) when `password` is theirs; `None` otherwise,
    /// counted as a failure. Unknown users cost the same as wrong passwords.
    async fn check_password(
        &self,
        key: &NameKey,
        password: Password,
        deadline: Option<Instant>,
    ) -> Result<Option<(User, PasswordHash, Option<PasswordHash>)>, Error> {
        self.throttle.check(key).await?;
        let record = self.store.find_credentials(key).await?;
        let stored = record.as_ref().map(|(_, hash)| hash.clone());
        let verdict = self.hasher.verify(password, stored, deadline).await?;
        match record.filter(|_| verdict.valid) {
            Some((user, hash)) => {
                self.throttle.record_success(key).await;
                Ok(Some((user, hash, verdict.upgraded)))
            }
            None => {
                self.throttle.record_failure(key).await;
                Ok(None)
            }
        }
    }

    /// Deletes a user and everything that belongs to them; the name is free
    /// again at once. Invalidates the cache entry after commit.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn delete(&self, name: UserName) -> Result<(), Error> {
        let deleted = self.store.delete_user(name.key()).await?;
        self.cache.invalidate(name.key()).await;
        // The database rows went with the cascade; the Redis board entry goes
        // here (a failure withdraws trust in the board until it is rebuilt).
        self.board.remove(name.key(), deleted).await;
        if deleted.is_some() {
            tracing::info!("user deleted");
            Ok(())
        } else {
            Err(Error::UserNotFound)
        }
    }

    /// One page of users in canonical-name order, and the cursor of the next
    /// page if there is one.
    #[tracing::instrument(skip_all)]
    pub async fn list(
        &self,
        size: PageSize,
        cursor: Option<UserCursor>,
    ) -> Result<(Vec<User>, Option<UserCursor>), Error> {
        let limit = u64::from(size.get());
        // One extra row tells whether another page follows.
        let mut rows = self
            .store
            .list_users(cursor.as_ref().map(UserCursor::key), limit + 1)
            .await?;
        let next = if rows.len() as u64 > limit {
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            rows.last().map(|(key, _)| UserCursor::after(key.clone()))
        } else {
            None
        };
        Ok((rows.into_iter().map(|(_, user)| user).collect(), next))
    }
}
