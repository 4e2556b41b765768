//! Redis (fred): one fail-open connection shared by the user cache, the
//! leaderboard's sorted set, the outbox delivery marks and the login
//! throttle, with the names of their keys under the deployment's prefix,
//! plus the Lua script runner they use, and the freshness gate in front of
//! every cached answer. A Redis failure never fails a call.

pub mod board;
mod freshness;
mod keys;
pub mod outbox;
mod users;

use std::{sync::Arc, time::Duration};

use fred::prelude::{
    Builder, ClientLike, Config as RedisConfig, Error as RedisError, EventInterface,
    ReconnectPolicy, TcpConfig,
};

use fred::types::config::{TlsConfig, TlsConnector, TlsHostMapping};
use secrecy::{ExposeSecret, SecretString};

use crate::{metrics::Metrics, telemetry::LogThrottle};

pub use freshness::{Freshness, Round};
pub use keys::{KeyPrefix, Keys};
pub use users::UserCache;

/// How Roster signs in to Redis and checks it, beyond what the URL says.
#[derive(Clone, Default)]
pub struct RedisCredentials {
    /// The ACL user, when the URL names none.
    pub username: Option<String>,
    /// The password (read from a file), when the URL carries none.
    pub password: Option<SecretString>,
    /// The TLS client configuration for `rediss://` (a private CA, a client
    /// certificate); `None` keeps fred's default (the system's roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A Redis connection that is used only while it is up. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    client: fred::clients::Client,
    keys: Arc<Keys>,
    warnings: Arc<LogThrottle>,
    metrics: Metrics,
}

impl Redis {
    /// Starts connecting to `url` in the background and returns at once:
    /// Roster serves without Redis and starts using it once it answers.
    /// Every key it uses starts with `prefix`. Fails only when the URL
    /// itself is invalid.
    pub fn connect(
        url: &str,
        credentials: &RedisCredentials,
        timeout: Duration,
        prefix: KeyPrefix,
        metrics: Metrics,
    ) -> Result<Self, RedisError> {
        let mut config = match &credentials.tls {
            // fred would load the system's roots for a TLS URL (and fail
            // where that store is broken); ours replace them.
            Some(tls) => {
                let mut config = RedisConfig::from_url(&without_tls_scheme(url))?;
                config.tls = Some(TlsConfig {
                    connector: TlsConnector::Rustls(tokio_rustls::TlsConnector::from(Arc::clone(
                        tls,
                    ))),
                    hostnames: TlsHostMapping::None,
                });
                config
            }
            None => RedisConfig::from_url(url)?,
        };
        if let Some(username) = &credentials.username {
            config.username = Some(username.clone());
        }
        if let Some(password) = &credentials.password {
            config.password = Some(password.expose_secret().to_owned());
        }
        // Without this fred gives up for good when the first connection fails;
        // with it, the reconnect policy applies from the start. Commands never
        // wait for a reconnect: `connected()` short-circuits them.
        config.fail_fast = false;
        // A span per command (name and sizes only, never keys or values),
        // only when traces are exported.
        config.tracing =
            fred::types::config::TracingConfig::new(crate::telemetry::otlp_configured());
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
        let redis = Self {
            client: client.clone(),
            keys: Arc::new(Keys::new(prefix.clone())),
            warnings: Arc::new(LogThrottle::new(Duration::from_secs(10))),
            metrics,
        };
        client.on_reconnect(move |server| {
            tracing::info!(%server, key_prefix = %prefix, "redis connected");
            async { Ok(()) }
        });
        let warnings = Arc::clone(&redis.warnings);
        client.on_error(move |(error, server)| {
            if let Some(suppressed) = warnings.admit() {
                tracing::warn!(%error, ?server, suppressed, "redis connection error; cache bypassed");
            }
            async { Ok(()) }
        });
        // Detached: the connection task reconnects on its own until `quit`.
        drop(client.connect());
        Ok(redis)
    }

    /// Waits up to `timeout` for the first connection, so a healthy Redis is
    /// in use from the first call; returns early, connected or not.
    pub async fn wait_connected(&self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.client.wait_for_connect())
            .await
            .is_err()
        {
            tracing::warn!(?timeout, "redis not reachable yet; serving without it");
        }
    }

    /// Closes `freshness` whenever the connection breaks and on every
    /// (re)connection: the Redis reached next may have lost writes (a
    /// restart, a failover) until a delivery round has checked it. The
    /// error closes it first: fred may send commands on a new connection
    /// before its reconnect notification has run.
    pub fn close_on_reconnect(&self, freshness: &Arc<Freshness>) {
        let on_reconnect = Arc::clone(freshness);
        self.client.on_reconnect(move |_| {
            on_reconnect.withdraw();
            async { Ok(()) }
        });
        let on_error = Arc::clone(freshness);
        self.client.on_error(move |_| {
            on_error.withdraw();
            async { Ok(()) }
        });
    }

    /// Closes the connection.
    pub async fn quit(&self) {
        drop(self.client.quit().await);
    }

    /// The client, connected or not (for reconnect notifications).
    pub(crate) fn client(&self) -> &fred::clients::Client {
        &self.client
    }

    /// The client when it is connected; a disconnected Redis is skipped at
    /// once instead of waiting for a timeout on every call.
    pub(crate) fn connected(&self) -> Option<&fred::clients::Client> {
        if self.client.is_connected() {
            Some(&self.client)
        } else {
            self.warn("redis not connected; bypassed", None);
            None
        }
    }

    /// The names of Roster's keys, under this deployment's prefix.
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The metrics Roster records.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts a Redis problem and logs it, at most once per 10 s.
    pub(crate) fn warn(&self, what: &str, error: Option<&RedisError>) {
        if let Some(error) = error {
            let kind = if *error.kind() == fred::error::ErrorKind::Timeout {
                "timeout"
            } else {
                "error"
            };
            self.metrics
                .redis_errors
                .get_or_create(&crate::metrics::Kind::new(kind))
                .inc();
        }
        if let Some(suppressed) = self.warnings.admit() {
            match error {
                Some(error) => tracing::warn!(%error, suppressed, "{what}"),
                None => tracing::warn!(suppressed, "{what}"),
            }
        }
    }
}

/// `url` with its TLS scheme (`rediss`, `rediss-cluster`, `valkeys`, ...)
/// named without the TLS part, for a configuration whose TLS is set apart.
fn without_tls_scheme(url: &str) -> String {
    for (tls, plain) in [("rediss", "redis"), ("valkeys", "valkey")] {
        if let Some(rest) = url.strip_prefix(tls) {
            return format!("{plain}{rest}");
        }
    }
    url.to_owned()
}

/// A Lua script run by its SHA-1 (EVALSHA), so the hot paths do not send and
/// hash the script body on every call. The digest comes from SCRIPT LOAD the
/// first time; a NOSCRIPT answer (Redis restarted, flushed its scripts, or a
/// Cluster node has not seen it) loads it again and falls back to EVAL.
pub(crate) struct Script {
    source: &'static str,
    sha: std::sync::OnceLock<String>,
}

impl Script {
    /// A script with this Lua source.
    pub(crate) const fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: std::sync::OnceLock::new(),
        }
    }

    /// Runs the script with `keys` and `args`.
    pub(crate) async fn eval<R, K, V>(
        &self,
        client: &fred::clients::Client,
        keys: K,
        args: V,
    ) -> Result<R, RedisError>
    where
        R: fred::types::FromValue,
        K: Into<fred::types::MultipleKeys> + Clone + Send,
        V: TryInto<fred::types::MultipleValues> + Clone + Send,
        V::Error: Into<RedisError> + Send,
    {
        use fred::prelude::LuaInterface;
        if let Some(sha) = self.sha.get() {
            // Boxed: fred's command futures are about 7 KB, and inlined they
            // would make every caller's future that large, copied each time
            // it is moved (into tonic's box, into tracing's wrapper).
            match Box::pin(client.evalsha::<R, _, _, _>(sha.as_str(), keys.clone(), args.clone()))
                .await
            {
                Err(error) if error.details().starts_with("NOSCRIPT") => {}
                result => return result,
            }
        }
        let sha: String = Box::pin(client.script_load(self.source)).await?;
        // Same source, same digest: a second set is a no-op.
        let _ = self.sha.set(sha);
        Box::pin(client.eval(self.source, keys, args)).await
    }
}
