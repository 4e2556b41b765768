//! The user read-through cache: keys, TTL, lookups, and fills guarded by a
//! lease so a read that raced a write can never put the old value back.
//!
//! The race (Facebook's "stale set"): a reader misses, reads the old row, a
//! writer commits and deletes the key, then the reader stores the old row. The
//! guard: before reading the database a reader takes a lease (a random token
//! under a companion key); a fill stores the value only if its lease is still
//! there (one Lua script, atomic in Redis); every write deletes the value and
//! the lease after commit, which voids any fill that read before it.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fred::prelude::{Expiration, KeysInterface, SetOptions};
use prost::{Message, bytes::Bytes};

use super::{Redis, Script};
use crate::{
    domain::{NameKey, User},
    proto::roster::v1 as pb,
};

/// How long a lease lives: longer than any database read should take.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// The Redis key that caches the user with canonical name `key`. The name is
/// the hash tag, so the value and its lease share a Redis Cluster slot.
pub fn user_key(key: &NameKey) -> String {
    format!("roster:v1:user:{{{key}}}")
}

/// The companion key holding the current fill lease for `key`.
pub fn lease_key(key: &NameKey) -> String {
    format!("roster:v1:user-lease:{{{key}}}")
}

/// Stores ARGV[2] under KEYS[1] for ARGV[3] seconds only if KEYS[2] (the
/// lease) still holds ARGV[1]; consumes the lease.
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
    /// Invalidations that failed (Redis unreachable) and must reach Redis
    /// before it is trusted again: a value cached before the write could
    /// otherwise outlive it.
    pending: Arc<Pending>,
}

#[derive(Default)]
struct Pending {
    any: AtomicBool,
    keys: Mutex<HashSet<String>>,
}

impl UserCache {
    /// A cache over `redis` (or none) with entries living `ttl`.
    pub fn new(redis: Option<Redis>, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            pending: Arc::default(),
        }
    }

    /// The cached user, or `None` on a miss, a Redis error or a timeout.
    pub async fn get(&self, key: &NameKey) -> Option<User> {
        let redis = self.redis.as_ref()?;
        if !self.flush_pending(redis).await {
            return None;
        }
        let client = redis.connected()?;
        match client.get::<Option<Bytes>, _>(user_key(key)).await {
            Ok(Some(bytes)) => {
                let user = decode(&bytes);
                if user.is_none() {
                    redis.warn("undecodable cache entry; treated as a miss", None);
                }
                user
            }
            Ok(None) => None,
            Err(error) => {
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
                lease_key(key),
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
    /// write since it was taken. Failures are logged only.
    pub async fn fill(&self, key: &NameKey, user: &User, token: &str) {
        let Some(redis) = self.redis.as_ref() else {
            return;
        };
        let Some(client) = redis.connected() else {
            return;
        };
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let value = Bytes::from(pb::User::from(user).encode_to_vec());
        let keys = vec![user_key(key), lease_key(key)];
        #[cfg(feature = "failpoints")]
        if crate::failpoint::is_unguarded(key.as_str()) {
            // Test-only: the fill without its guard, to show the race is real.
            let _: Result<(), _> = client
                .set(&keys[0], value, Some(Expiration::EX(ttl)), None, false)
                .await;
            return;
        }
        let args: Vec<fred::types::Value> = vec![token.into(), value.into(), ttl.into()];
        let result: Result<i64, _> = GUARDED_FILL.eval(client, keys, args).await;
        if let Err(error) = result {
            redis.warn("redis fill failed; cache not filled", Some(&error));
        }
    }

    /// Deletes the entry and voids its lease; call it after every committed
    /// write. If Redis cannot be reached the key is remembered, and the cache
    /// is bypassed until the deletion has gone through.
    pub async fn invalidate(&self, key: &NameKey) {
        let Some(redis) = self.redis.as_ref() else {
            return;
        };
        let user_key = user_key(key);
        if !self
            .delete(redis, vec![user_key.clone(), lease_key(key)])
            .await
        {
            let mut keys = self.pending.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.insert(user_key);
            self.pending.any.store(true, Ordering::Release);
        }
    }

    /// Retries failed invalidations; `true` when none are left.
    async fn flush_pending(&self, redis: &Redis) -> bool {
        if !self.pending.any.load(Ordering::Acquire) {
            return true;
        }
        let keys: Vec<String> = {
            let keys = self.pending.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.iter().cloned().collect()
        };
        if !self.delete(redis, keys.clone()).await {
            return false;
        }
        let mut pending = self.pending.keys.lock().unwrap_or_else(|e| e.into_inner());
        for key in &keys {
            pending.remove(key);
        }
        if pending.is_empty() {
            self.pending.any.store(false, Ordering::Release);
            tracing::info!(count = keys.len(), "pending cache invalidations delivered");
        }
        pending.is_empty()
    }

    async fn delete(&self, redis: &Redis, keys: Vec<String>) -> bool {
        if keys.is_empty() {
            return true;
        }
        let Some(client) = redis.connected() else {
            return false;
        };
        // One DEL per key: in Redis Cluster the keys may live in different slots.
        for key in keys {
            let result: Result<i64, _> = client.del(key).await;
            if let Err(error) = result {
                redis.warn("redis invalidation failed; will retry", Some(&error));
                return false;
            }
        }
        true
    }
}

fn decode(bytes: &[u8]) -> Option<User> {
    pb::User::decode(bytes).ok()?.try_into().ok()
}
