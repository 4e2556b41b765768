//! The Redis read-through cache of users (fred). Keys, TTL, get and fill.
//! A cache failure never fails a call: every error or timeout is a miss.

pub mod board;

use std::{sync::Arc, time::Duration};

use fred::{
    prelude::{
        Builder, ClientLike, Config as RedisConfig, Error as RedisError, EventInterface,
        Expiration, KeysInterface, ReconnectPolicy, TcpConfig,
    },
    types::Key,
};
use prost::{Message, bytes::Bytes};

use crate::{
    domain::{NameKey, User},
    proto::roster::v1 as pb,
    telemetry::LogThrottle,
};

/// Version of the key scheme and value encoding; bump it to orphan old entries.
const KEY_PREFIX: &str = "roster:v1:user:";

/// The Redis key that caches the user with canonical name `key`.
pub fn user_key(key: &NameKey) -> String {
    format!("{KEY_PREFIX}{key}")
}

/// The user cache. Cheap to clone; a disabled cache misses on every read.
#[derive(Clone)]
pub struct UserCache {
    client: Option<fred::clients::Client>,
    ttl: Duration,
    warnings: Arc<LogThrottle>,
}

impl UserCache {
    /// A cache that never holds anything (no Redis configured).
    pub fn disabled() -> Self {
        Self {
            client: None,
            ttl: Duration::ZERO,
            warnings: Arc::new(LogThrottle::new(Duration::from_secs(10))),
        }
    }

    /// Starts connecting to `url` in the background and returns at once:
    /// Roster serves without Redis and starts using it once it answers.
    /// Fails only when the URL itself is invalid.
    pub fn connect(url: &str, ttl: Duration, timeout: Duration) -> Result<Self, RedisError> {
        let mut config = RedisConfig::from_url(url)?;
        // Without this fred gives up for good when the first connection fails;
        // with it, the reconnect policy applies from the start. Commands never
        // wait for a reconnect: `connected()` short-circuits them.
        config.fail_fast = false;
        let client = Builder::from_config(config)
            .with_performance_config(|perf| {
                // fred has no command timeout by default: a hung Redis would hang every call.
                perf.default_command_timeout = timeout;
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = Duration::from_secs(1);
                conn.internal_command_timeout = Duration::from_secs(1);
                conn.max_command_attempts = 1;
                conn.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..TcpConfig::default()
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        let cache = Self {
            client: Some(client.clone()),
            ttl,
            warnings: Arc::new(LogThrottle::new(Duration::from_secs(10))),
        };
        client.on_reconnect(|server| async move {
            tracing::info!(%server, "redis connected; cache in use");
            Ok(())
        });
        let warnings = Arc::clone(&cache.warnings);
        client.on_error(move |(error, server)| {
            if let Some(suppressed) = warnings.admit() {
                tracing::warn!(%error, ?server, suppressed, "redis connection error; cache bypassed");
            }
            async { Ok(()) }
        });
        // Detached: the connection task reconnects on its own until `quit`.
        drop(client.connect());
        Ok(cache)
    }

    /// Waits up to `timeout` for the first connection, so a healthy Redis is
    /// in use from the first call; returns early, connected or not.
    pub async fn wait_connected(&self, timeout: Duration) {
        if let Some(client) = &self.client
            && tokio::time::timeout(timeout, client.wait_for_connect())
                .await
                .is_err()
        {
            tracing::warn!(
                ?timeout,
                "redis not reachable yet; serving without the cache"
            );
        }
    }

    /// The cached user, or `None` on a miss, a Redis error or a timeout.
    pub async fn get(&self, key: &NameKey) -> Option<User> {
        let client = self.connected()?;
        match client
            .get::<Option<Bytes>, _>(Key::from(user_key(key)))
            .await
        {
            Ok(Some(bytes)) => match decode(&bytes) {
                Some(user) => Some(user),
                None => {
                    self.warn("undecodable cache entry; treated as a miss", None);
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                self.warn("redis read failed; treated as a miss", Some(&error));
                None
            }
        }
    }

    /// Stores `user` under `key` for the configured TTL. Failures are logged only.
    pub async fn put(&self, key: &NameKey, user: &User) {
        let Some(client) = self.connected() else {
            return;
        };
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let value = Bytes::from(pb::User::from(user).encode_to_vec());
        let result: Result<(), _> = client
            .set(user_key(key), value, Some(Expiration::EX(ttl)), None, false)
            .await;
        if let Err(error) = result {
            self.warn("redis write failed; cache not filled", Some(&error));
        }
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        if let Some(client) = &self.client {
            drop(client.quit().await);
        }
    }

    /// The client, connected or not; `None` when Redis is disabled.
    pub(crate) fn client(&self) -> Option<&fred::clients::Client> {
        self.client.as_ref()
    }

    /// The client when it is connected; a disconnected cache misses at once
    /// instead of waiting for a timeout on every call.
    pub(crate) fn connected(&self) -> Option<&fred::clients::Client> {
        let client = self.client.as_ref()?;
        if client.is_connected() {
            Some(client)
        } else {
            self.warn("redis not connected; cache bypassed", None);
            None
        }
    }

    /// Logs a cache problem, at most once per throttle period.
    pub(crate) fn warn(&self, what: &str, error: Option<&RedisError>) {
        if let Some(suppressed) = self.warnings.admit() {
            match error {
                Some(error) => tracing::warn!(%error, suppressed, "{what}"),
                None => tracing::warn!(suppressed, "{what}"),
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Option<User> {
    pb::User::decode(bytes).ok()?.try_into().ok()
}
