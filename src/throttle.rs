//! The per-account throttle of failed password checks, shared by every
//! replica through Redis. After `limit` consecutive failures an account is
//! refused for a delay that doubles with each further failure (capped), and a
//! success clears it. Other accounts are unaffected. Redis down: fail open.

use std::time::Duration;

use fred::prelude::KeysInterface;

use crate::{
    cache::{Redis, Script},
    domain::NameKey,
    error::Error,
};

/// How the throttle counts and waits.
#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Consecutive failures allowed before checks are refused.
    pub limit: u32,
    /// The first refusal's delay; each further failure doubles it.
    pub base_delay: Duration,
    /// The longest delay (so an attacker cannot lock an account out for long).
    pub max_delay: Duration,
}

/// How long a run of failures is remembered without further attempts.
const MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Milliseconds the account must still wait (0 = go ahead). Server time, so
/// replicas with skewed clocks agree.
static REMAINING: Script = Script::new(
    r"
local blocked = redis.call('HGET', KEYS[1], 'until')
if not blocked then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = tonumber(blocked) - now
if left > 0 then return left end
return 0",
);

/// Counts one failure; from the `limit`th on, blocks for base * 2^(n - limit)
/// ms (capped). Returns the delay set (0 = still under the limit).
static FAILED: Script = Script::new(
    r"
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local limit = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local memory = tonumber(ARGV[4])
local delay = 0
if n >= limit then
  delay = base * math.pow(2, math.min(n - limit, 40))
  if delay > cap then delay = cap end
  delay = math.floor(delay)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'until', now + delay)
end
redis.call('PEXPIRE', KEYS[1], memory + delay)
return delay",
);

/// The throttle. Cheap to clone.
#[derive(Clone)]
pub struct Throttle {
    redis: Option<Redis>,
    policy: ThrottlePolicy,
}

impl Throttle {
    /// A throttle over `redis`; without Redis it lets everything through.
    pub fn new(redis: Option<Redis>, policy: ThrottlePolicy) -> Self {
        Self { redis, policy }
    }

    /// `TooManyAttempts` while the account must wait.
    pub async fn check(&self, key: &NameKey) -> Result<(), Error> {
        let Some((client, throttle_key)) = self.connected(key) else {
            return Ok(());
        };
        let result: Result<i64, _> = REMAINING
            .eval(client, vec![throttle_key], Vec::<String>::new())
            .await;
        match result {
            Ok(left) if left > 0 => Err(Error::TooManyAttempts {
                retry_after: Duration::from_millis(left.unsigned_abs()),
            }),
            Ok(_) => Ok(()),
            Err(error) => {
                self.fail_open(&error);
                Ok(())
            }
        }
    }

    /// Counts a failed check.
    pub async fn record_failure(&self, key: &NameKey) {
        let Some((client, throttle_key)) = self.connected(key) else {
            return;
        };
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).to_string();
        let args = vec![
            self.policy.limit.max(1).to_string(),
            millis(self.policy.base_delay),
            millis(self.policy.max_delay),
            millis(MEMORY),
        ];
        let result: Result<i64, _> = FAILED.eval(client, vec![throttle_key], args).await;
        match result {
            Ok(delay) if delay > 0 => {
                tracing::warn!(user = %key, delay_ms = delay, "failed password checks throttled");
            }
            Ok(_) => {}
            Err(error) => self.fail_open(&error),
        }
    }

    /// Clears the account's failures after a successful check.
    pub async fn record_success(&self, key: &NameKey) {
        let Some((client, throttle_key)) = self.connected(key) else {
            return;
        };
        let result: Result<i64, _> = client.del(throttle_key).await;
        if let Err(error) = result {
            self.fail_open(&error);
        }
    }

    /// The client, when connected, and the Redis key of `account`'s failures.
    fn connected(&self, account: &NameKey) -> Option<(&fred::clients::Client, String)> {
        let redis = self.redis.as_ref()?;
        let Some(client) = redis.connected() else {
            redis.warn("redis unavailable; login throttle failing open", None);
            return None;
        };
        Some((client, redis.keys().throttle(account)))
    }

    fn fail_open(&self, error: &fred::prelude::Error) {
        if let Some(redis) = &self.redis {
            redis.warn("login throttle failing open", Some(error));
        }
    }
}
