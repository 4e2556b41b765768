//! The user use cases: the business rules of creating, reading, checking,
//! changing, deleting and listing users.

use std::sync::Arc;

use chrono::Utc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    cache::{UserCache, board::BoardCache},
    credentials::{PasswordHash, PasswordHasher},
    domain::{NameKey, PageSize, Password, RequestId, User, UserCursor, UserMethod, UserName},
    error::Error,
    single_flight::SingleFlight,
    store::{Store, Written},
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
    /// decides duplicates), then fill the cache so the user is readable at
    /// once. A retry with the `request_id` of a call that committed gets
    /// that call's user, even though the name is now taken.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn create(
        &self,
        name: UserName,
        password: Password,
        request: Option<RequestId>,
        deadline: Option<Instant>,
    ) -> Result<User, Error> {
        if let Some(user) = self
            .replayed_user(UserMethod::CreateUser, request.as_ref(), name.key())
            .await?
        {
            self.settle_replay(name.key(), None).await;
            return Ok(user);
        }
        let hash = self.hasher.hash(password, deadline).await?;
        // The lease is taken before the commit: a delete committed after ours
        // voids it, so this fill cannot resurrect a deleted user.
        let lease = self.cache.lease(name.key()).await;
        let written = self
            .store
            .insert_user(&name, &hash, Utc::now(), request.as_ref())
            .await?;
        match written {
            Written::New { value: user, seq } => {
                self.cache.created(name.key(), &user, lease, seq).await;
                tracing::info!(user_id = %user.id, "user created");
                Ok(user)
            }
            Written::Replayed(user) => {
                self.settle_replay(name.key(), None).await;
                Ok(user)
            }
        }
    }

    /// The first call's stored result for a retried `request`, if it
    /// committed; INVALID_ARGUMENT when that call was about another user.
    async fn replayed(
        &self,
        method: UserMethod,
        request: Option<&RequestId>,
        key: &NameKey,
    ) -> Result<Option<Vec<u8>>, Error> {
        let Some(request) = request else {
            return Ok(None);
        };
        let Some((first_key, result)) = self.store.find_user_request(method, request).await? else {
            return Ok(None);
        };
        if first_key != *key {
            return Err(Error::InvalidArgument(vec![
                RequestId::reused().on("request_id"),
            ]));
        }
        tracing::debug!("request_id seen before; replaying the first result");
        Ok(Some(result))
    }

    /// For a replayed write: the first call committed, but its answer may
    /// have been lost before it reached Redis (a connection cut while its
    /// COMMIT was in flight), and no delivery round may have run since. So
    /// the cached user goes (and, for a delete, the `deleted` user's board
    /// entry), as after the first call, before the replay answers; a
    /// failure closes this process's gate, as it would have then.
    async fn settle_replay(&self, key: &NameKey, deleted: Option<Uuid>) {
        self.cache.forget(key).await;
        if let Some(id) = deleted {
            self.board.remove(key, id, 0).await;
        }
    }

    /// The first call's user for a retried `request`, if it committed.
    async fn replayed_user(
        &self,
        method: UserMethod,
        request: Option<&RequestId>,
        key: &NameKey,
    ) -> Result<Option<User>, Error> {
        match self.replayed(method, request, key).await? {
            Some(result) => crate::proto::decode_user(&result)
                .map(Some)
                .ok_or_else(|| Error::internal("undecodable user_requests.result")),
            None => Ok(None),
        }
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
                .replace_password_hash(name.key(), &user, &old_hash, &upgraded, None)
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
    /// A retry with the `request_id` of a call that committed gets that
    /// call's user (its current password is no longer the one sent).
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn change_password(
        &self,
        name: UserName,
        current: Password,
        new: Password,
        request: Option<RequestId>,
        deadline: Option<Instant>,
    ) -> Result<User, Error> {
        let key = name.key();
        if let Some(user) = self
            .replayed_user(UserMethod::ChangePassword, request.as_ref(), key)
            .await?
        {
            self.settle_replay(key, None).await;
            return Ok(user);
        }
        let (user, old_hash, _) = self
            .check_password(key, current, deadline)
            .await?
            .ok_or(Error::InvalidCredentials)?;
        let new_hash = self.hasher.hash(new, deadline).await?;
        let written = self
            .store
            .replace_password_hash(key, &user, &old_hash, &new_hash, Some(request.as_ref()))
            .await?
            .ok_or(Error::ConcurrentUpdate)?;
        match written {
            Written::New { value: user, seq } => {
                self.cache.invalidate(key, seq).await;
                tracing::info!(user_id = %user.id, "password changed");
                Ok(user)
            }
            Written::Replayed(user) => {
                self.settle_replay(key, None).await;
                Ok(user)
            }
        }
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
    /// again at once. Invalidates the cache entry and removes the board
    /// entry after commit. A retry with the `request_id` of a call that
    /// committed succeeds again instead of answering NOT_FOUND.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn delete(&self, name: UserName, request: Option<RequestId>) -> Result<(), Error> {
        let key = name.key();
        if let Some(result) = self
            .replayed(UserMethod::DeleteUser, request.as_ref(), key)
            .await?
        {
            self.settle_replay(key, Uuid::from_slice(&result).ok())
                .await;
            return Ok(());
        }
        match self.store.delete_user(key, request.as_ref()).await? {
            Some(Written::New { value: id, seq }) => {
                // The database rows went with the cascade. The change is
                // marked delivered only once both the cached user and the
                // board entry are gone; otherwise a delivery round does it.
                let forgotten = self.cache.forget(key).await;
                let seq = if forgotten { seq } else { 0 };
                self.board.remove(key, id, seq).await;
                tracing::info!(user_id = %id, "user deleted");
                Ok(())
            }
            Some(Written::Replayed(id)) => {
                self.settle_replay(key, Some(id)).await;
                Ok(())
            }
            None => Err(Error::UserNotFound),
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
