//! The user read-through cache: keys, TTL, lookups, and fills guarded by a
//! lease so a read that raced a write can never put the old value back.
//!
//! The race (Facebook's "stale set"): a reader misses, reads the old row, a
//! writer commits and deletes the key, then the reader stores the old row. The
//! guard: before reading the database a reader takes a lease (a random token
//! under a companion key); a fill stores the value only if its lease is still
//! there (one Lua script, atomic in Redis); every write deletes the value and
//! the lease after commit, which voids any fill that read before it.
//!
//! A write whose deletion cannot reach Redis is not remembered here: it is
//! in the database's outbox, and the next delivery round (on any replica)
//! deletes the key. Until then this process's freshness gate is closed, so
//! it reads the database; every read of the cache goes through that gate.

use std::{sync::Arc, time::Duration};

use fred::prelude::{Expiration, KeysInterface, SetOptions};
use prost::bytes::Bytes;

use super::{Freshness, Redis, Script, outbox::OutboxCache};
use crate::domain::{NameKey, User};

/// How long a lease lives: longer than any database read should take.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// Stores ARGV[2] under KEYS[1] for ARGV[3] seconds only if KEYS[2] (the
/// lease) still holds ARGV[1]; consumes the lease. Returns 1 when stored.
static GUARDED_FILL: Script = Script::new(
    r"
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0",
);

/// The user cache. Cheap to clone; without Redis every read misses.
#[derive(Clone)]
pub struct UserCache {
    redis: Option<Redis>,
    ttl: Duration,
    freshness: Arc<Freshness>,
}

impl UserCache {
    /// A cache over `redis` (or none) with entries living `ttl`, read only
    /// while `freshness` is open.
    pub fn new(redis: Option<Redis>, ttl: Duration, freshness: Arc<Freshness>) -> Self {
        Self {
            redis,
            ttl,
            freshness,
        }
    }

    /// The cached user, or `None` on a miss, a Redis error, a timeout, or
    /// while Redis may lack a committed change (the freshness gate).
    pub async fn get(&self, key: &NameKey) -> Option<User> {
        let redis = self.redis.as_ref()?;
        let metrics = redis.metrics();
        let Some(client) = redis.connected().filter(|_| self.freshness.is_fresh()) else {
            metrics.cache("bypassed");
            return None;
        };
        match client.get::<Option<Bytes>, _>(redis.keys().user(key)).await {
            Ok(Some(bytes)) => {
                let user = crate::proto::decode_user(&bytes);
                if user.is_none() {
                    redis.warn("undecodable cache entry; treated as a miss", None);
                }
                metrics.cache(if user.is_some() { "hit" } else { "error" });
                user
            }
            Ok(None) => {
                metrics.cache("miss");
                None
            }
            Err(error) => {
                metrics.cache("error");
                redis.warn("redis read failed; treated as a miss", Some(&error));
                None
            }
        }
    }

    /// Takes the fill lease for `key`; call it before reading the database.
    /// `None` when Redis is unavailable (then there is nothing to fill).
    pub async fn lease(&self, key: &NameKey) -> Option<String> {
        let redis = self.redis.as_ref()?;
        let client = redis.connected()?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expiry = Expiration::PX(i64::try_from(LEASE_TTL.as_millis()).unwrap_or(i64::MAX));
        let result: Result<(), _> = client
            .set(
                redis.keys().user_lease(key),
                token.as_str(),
                Some(expiry),
                None::<SetOptions>,
                false,
            )
            .await;
        match result {
            Ok(()) => Some(token),
            Err(error) => {
                redis.warn("redis lease failed; cache not filled", Some(&error));
                None
            }
        }
    }

    /// Stores `user` under `key` if the lease `token` was not voided by a
    /// write since it was taken. Returns whether it was stored; failures
    /// are logged only.
    pub async fn fill(&self, key: &NameKey, user: &User, token: &str) -> bool {
        let Some(redis) = self.redis.as_ref() else {
            return false;
        };
        let Some(client) = redis.connected() else {
            return false;
        };
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let value = Bytes::from(crate::proto::encode_user(user));
        let keys = vec![redis.keys().user(key), redis.keys().user_lease(key)];
        #[cfg(feature = "failpoints")]
        if crate::failpoint::is_unguarded(key.as_str()) {
            // Test-only: the fill without its guard, to show the race is real.
            let _: Result<(), _> = client
                .set(&keys[0], value, Some(Expiration::EX(ttl)), None, false)
                .await;
            return true;
        }
        let args: Vec<fred::types::Value> = vec![token.into(), value.into(), ttl.into()];
        let result: Result<i64, _> = GUARDED_FILL.eval(client, keys, args).await;
        match result {
            Ok(stored) => {
                if stored != 1 {
                    redis.metrics().cache_fills_voided.inc();
                }
                stored == 1
            }
            Err(error) => {
                redis.warn("redis fill failed; cache not filled", Some(&error));
                false
            }
        }
    }

    /// After a committed create (outbox number `seq`): fills the cache with
    /// the new user under the lease taken before the commit, or else deletes
    /// whatever the key held; then marks `seq` delivered.
    pub async fn created(&self, key: &NameKey, user: &User, lease: Option<String>, seq: u64) {
        let filled = match &lease {
            Some(token) => self.fill(key, user, token).await,
            None => false,
        };
        if filled {
            self.mark(seq).await;
        } else {
            self.invalidate(key, seq).await;
        }
    }

    /// Deletes the entry and voids its lease after a committed write
    /// (outbox number `seq`), then marks `seq` delivered. If Redis cannot be
    /// reached, this process's freshness gate closes until a delivery round
    /// has delivered the change from the outbox.
    pub async fn invalidate(&self, key: &NameKey, seq: u64) {
        if self.forget(key).await {
            self.mark(seq).await;
        }
    }

    /// Deletes the entry and voids its lease; `false` (and this process's
    /// gate closed) when Redis could not be reached.
    pub async fn forget(&self, key: &NameKey) -> bool {
        let Some(redis) = self.redis.clone() else {
            return true;
        };
        match OutboxCache::new(redis.clone()).forget_users(&[key]).await {
            Ok(()) => true,
            Err(error) => {
                redis.warn(
                    "redis invalidation failed; it will be delivered",
                    Some(&error),
                );
                self.freshness.withdraw();
                false
            }
        }
    }

    /// Marks outbox number `seq` delivered (best effort: a delivery round
    /// does it otherwise).
    async fn mark(&self, seq: u64) {
        if let Some(redis) = self.redis.clone()
            && let Err(error) = OutboxCache::new(redis.clone()).mark(seq).await
        {
            redis.warn("redis delivery mark failed", Some(&error));
        }
    }
}
