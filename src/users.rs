//! The user use cases: the business rules of creating and reading users.

use chrono::Utc;
use tokio::time::Instant;

use crate::{
    cache::UserCache,
    credentials::PasswordHasher,
    domain::{Password, User, UserName},
    error::Error,
    store::Store,
};

/// Creates and reads users over the store, the cache and the password hasher.
#[derive(Clone)]
pub struct Users {
    store: Store,
    cache: UserCache,
    hasher: PasswordHasher,
}

impl Users {
    /// Wires the use cases to their dependencies.
    pub fn new(store: Store, cache: UserCache, hasher: PasswordHasher) -> Self {
        Self {
            store,
            cache,
            hasher,
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
        let user = self.store.insert_user(&name, &hash, Utc::now()).await?;
        self.cache.put(name.key(), &user).await;
        tracing::info!(user_id = %user.id, "user created");
        Ok(user)
    }

    /// Reads a user through the cache: a hit is served from Redis; a miss
    /// reads the database and fills the cache.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn get(&self, name: UserName) -> Result<User, Error> {
        if let Some(user) = self.cache.get(name.key()).await {
            return Ok(user);
        }
        let user = self
            .store
            .find_user(name.key())
            .await?
            .ok_or(Error::UserNotFound)?;
        self.cache.put(name.key(), &user).await;
        Ok(user)
    }
}
