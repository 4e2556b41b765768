//! Every setting, with its flag, environment variable, default and `--help` text.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};

use crate::cache::KeyPrefix;

/// Roster's configuration, read from flags and the environment (flags win).
#[derive(Debug, Clone, Parser)]
#[command(name = "roster", version, about = "Roster: a gRPC user service")]
pub struct Config {
    /// What to do; serving when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Whether serving applies pending database migrations first (`auto`),
    /// or refuses to start while any is pending (`off`: run `roster
    /// migrate` as a step of its own, e.g. a Kubernetes Job). Replicas that
    /// migrate at once take turns (a lock), so `auto` is safe with many.
    #[arg(long, env = "ROSTER_MIGRATE", value_enum, default_value_t = MigrateMode::Auto, global = true)]
    pub migrate: MigrateMode,

    /// Address to listen on for gRPC (port 0 picks a free port).
    #[arg(long, env = "ROSTER_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// Database URL: `sqlite://FILE` (created if missing) or `postgres://...`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://roster.db",
        global = true
    )]
    pub database_url: String,

    /// File holding the Postgres password (the container `*_FILE`
    /// convention): read once at start, a trailing line break dropped, never
    /// logged. For a DATABASE_URL without a password; TLS is set in the URL
    /// (`?sslmode=verify-full&sslrootcert=/path/ca.pem`).
    #[arg(long, env = "DATABASE_PASSWORD_FILE", global = true)]
    pub database_password_file: Option<std::path::PathBuf>,

    /// Maximum connections in the database pool (SQLite writes always use one).
    #[arg(
        long,
        env = "ROSTER_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,

    /// Redis URL for the cache: redis://, rediss://, redis-cluster:// or
    /// redis-sentinel://. Empty disables the cache.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,

    /// ACL user to sign in to Redis as, for a REDIS_URL that names none
    /// (`rediss://USER@host:port` works too).
    #[arg(long, env = "ROSTER_REDIS_USERNAME", global = true)]
    pub redis_username: Option<String>,

    /// File holding the Redis password (AUTH, or the ACL user's password):
    /// read once at start, a trailing line break dropped, never logged.
    /// For a REDIS_URL without a password.
    #[arg(long, env = "REDIS_PASSWORD_FILE", global = true)]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// CA bundle (PEM) that a `rediss://` server's certificate must chain
    /// to, instead of the system's roots.
    #[arg(long, env = "ROSTER_REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Client certificate chain (PEM) to present to a `rediss://` server
    /// that requires one (mTLS).
    #[arg(
        long,
        env = "ROSTER_REDIS_CLIENT_CERT",
        requires = "redis_client_key",
        global = true
    )]
    pub redis_client_cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of `--redis-client-cert`.
    #[arg(
        long,
        env = "ROSTER_REDIS_CLIENT_KEY",
        requires = "redis_client_cert",
        global = true
    )]
    pub redis_client_key: Option<std::path::PathBuf>,

    /// Every Redis key Roster uses starts with this (cached users, fill
    /// leases, the board, the outbox marks, the login throttle), and a flush
    /// of the user cache touches only keys under it. Deployments sharing a
    /// Redis must each use their own. Printable ASCII without spaces, `{` or
    /// `}` (keys carry a Redis Cluster hash tag after it), at most 64 bytes.
    #[arg(long, env = "ROSTER_REDIS_KEY_PREFIX", default_value = KeyPrefix::DEFAULT)]
    pub redis_key_prefix: KeyPrefix,

    /// How long a cached user lives in Redis.
    #[arg(long, env = "ROSTER_CACHE_TTL", default_value = "300s", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,

    /// Timeout of every Redis command; a slower answer counts as a cache miss.
    #[arg(long, env = "ROSTER_REDIS_TIMEOUT", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// The staleness bound: cached answers (users, stats, the board) are
    /// served only while a delivery round that began less than this long ago
    /// found Redis holding every committed change; otherwise reads go to the
    /// database. A write acknowledged by any replica is seen by every read
    /// that starts this long after it, on every replica.
    #[arg(long, env = "ROSTER_CACHE_STALENESS_BOUND", default_value = "1s", value_parser = humantime::parse_duration)]
    pub cache_staleness_bound: Duration,

    /// How often a delivery round checks the database's cache outbox against
    /// Redis (Postgres also wakes it at every commit). Must be well below
    /// the staleness bound.
    #[arg(long, env = "ROSTER_CACHE_SYNC_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub cache_sync_interval: Duration,

    /// Keep a copy of the leaderboard in this process and answer board reads
    /// from it, checked against Redis on every read (see README). `false`
    /// answers every board read with a Redis script instead: slower, and no
    /// memory for the copy (about 0.3-0.5 KB per ranked user).
    #[arg(long, env = "ROSTER_BOARD_COPY", default_value_t = true, action = clap::ArgAction::Set)]
    pub board_copy: bool,

    /// Argon2id memory cost in KiB (OWASP minimum: 19456).
    #[arg(long, env = "ROSTER_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,

    /// Argon2id iterations (OWASP minimum with 19456 KiB: 2).
    #[arg(long, env = "ROSTER_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// Argon2id parallelism (lanes).
    #[arg(long, env = "ROSTER_ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,

    /// Password hashes computed at once; 0 means one per CPU core.
    #[arg(long, env = "ROSTER_HASH_CONCURRENCY", default_value_t = 0)]
    pub hash_concurrency: usize,

    /// Consecutive failed password checks an account may have before further
    /// checks are refused for a while.
    #[arg(long, env = "ROSTER_LOGIN_FAILURE_LIMIT", default_value_t = 10)]
    pub login_failure_limit: u32,

    /// The first refusal's delay after too many failures; it doubles with each
    /// further failure.
    #[arg(long, env = "ROSTER_LOGIN_BASE_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub login_base_delay: Duration,

    /// The longest delay a run of failures can cause.
    #[arg(long, env = "ROSTER_LOGIN_MAX_DELAY", default_value = "15m", value_parser = humantime::parse_duration)]
    pub login_max_delay: Duration,

    /// Server-side ceiling on any call's duration (a client deadline may be shorter).
    #[arg(long, env = "ROSTER_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// HTTP/2 streams (calls) one connection may have open at once
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); a client, or a mesh sidecar,
    /// opens another connection for more.
    #[arg(long, env = "ROSTER_MAX_CONCURRENT_STREAMS", default_value_t = 128)]
    pub max_concurrent_streams: u32,

    /// Calls in flight at once over all connections; a call beyond it is
    /// answered RESOURCE_EXHAUSTED (reason SERVER_OVERLOADED) at once rather
    /// than queued. Health checks are not counted. 0 turns the limit off.
    #[arg(long, env = "ROSTER_MAX_CONCURRENT_CALLS", default_value_t = 1024)]
    pub max_concurrent_calls: usize,

    /// Interval of the HTTP/2 PINGs that find dead peers; `0s` turns them off.
    #[arg(long, env = "ROSTER_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a keepalive PING may go unanswered before the connection is
    /// closed.
    #[arg(long, env = "ROSTER_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// After this long (±10% per connection) a connection is told to go
    /// away (GOAWAY): its calls finish, new calls go to a new connection, so
    /// that a plain Kubernetes Service spreads long-lived HTTP/2 clients over
    /// new replicas. `0s` turns it off.
    #[arg(long, env = "ROSTER_MAX_CONNECTION_AGE", default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,

    /// How long calls may go on after a connection's GOAWAY for its age
    /// before the connection is closed under them. `0s`: no limit.
    #[arg(long, env = "ROSTER_MAX_CONNECTION_AGE_GRACE", default_value = "1m", value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Duration,

    /// A connection with no call in flight for this long is told to go away
    /// (GOAWAY) and closed; `0s` turns it off.
    #[arg(long, env = "ROSTER_MAX_CONNECTION_IDLE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_idle: Duration,

    /// A new connection must finish its TLS handshake (if any) and send the
    /// HTTP/2 client preface and SETTINGS within this long, or it is closed.
    #[arg(long, env = "ROSTER_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Connections open at once; more are closed as soon as they are
    /// accepted. `auto`: the open-file limit less what the database pool and
    /// the rest of the process need, at most 10000.
    #[arg(long, env = "ROSTER_MAX_CONNECTIONS", default_value = "auto")]
    pub max_connections: ConnectionCap,

    /// Connections open at once from one client address (an IPv6 /64 counts
    /// as one); loopback peers are not capped, since behind a mesh sidecar
    /// every caller arrives from loopback. 0 turns the cap off.
    #[arg(long, env = "ROSTER_MAX_CONNECTIONS_PER_PEER", default_value_t = 64)]
    pub max_connections_per_peer: usize,

    /// How often the database is probed for the health status.
    #[arg(long, env = "ROSTER_HEALTH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,

    /// On SIGTERM/SIGINT, time between reporting NOT_SERVING and refusing new
    /// calls, so load balancers and meshes stop routing here first.
    #[arg(long, env = "ROSTER_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before
    /// remaining connections are closed and the process exits.
    #[arg(long, env = "ROSTER_DRAIN_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_deadline: Duration,

    /// Server certificate chain (PEM) for TLS; with `--tls-key`, the listener
    /// speaks TLS 1.2/1.3 only. Re-read when it changes or on SIGHUP.
    #[arg(long, env = "ROSTER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// Server private key (PEM) for TLS.
    #[arg(long, env = "ROSTER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// CA bundle (PEM) that client certificates must chain to (mTLS); the
    /// verified certificate's SPIFFE URI SAN, else DNS SAN, else subject CN
    /// is the caller's identity.
    #[arg(long, env = "ROSTER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Whether a client certificate is required, or verified only when sent.
    #[arg(long, env = "ROSTER_TLS_CLIENT_AUTH", value_enum, default_value_t = crate::access::tls::ClientAuth::Required)]
    pub tls_client_auth: crate::access::tls::ClientAuth,

    /// States that a service-mesh sidecar terminates TLS in front of Roster,
    /// so listening without TLS on a non-loopback address is intended (no
    /// warning at start).
    #[arg(long, env = "ROSTER_MESH_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub mesh_tls: bool,

    /// Believe a mesh's forwarded caller identity: `envoy`
    /// (x-forwarded-client-cert) or `linkerd` (l5d-client-id). Only safe when
    /// the sidecar overwrites the header on every request: any caller can
    /// send it.
    #[arg(long, env = "ROSTER_TRUST_FORWARDED_IDENTITY", value_enum, default_value_t = crate::access::ForwardedIdentity::None)]
    pub trust_forwarded_identity: crate::access::ForwardedIdentity,

    /// Access policy (TOML): roles, grants of roles to identities, public
    /// methods, bearer token hashes. Validated at start (a policy that does
    /// not load refuses to start) and re-read when it changes or on SIGHUP.
    /// Without one every method is open to every caller.
    #[arg(long, env = "ROSTER_POLICY")]
    pub policy: Option<std::path::PathBuf>,

    /// Per-caller quota on CreateUser, VerifyPassword and ChangePassword
    /// together, in calls per second (bursts of twice that): `auto` lets
    /// each caller use at most half the hashing capacity (measured at start),
    /// `off` disables it, a number sets it.
    #[arg(long, env = "ROSTER_CALLER_QUOTA", default_value = "auto")]
    pub caller_quota: CallerQuotaSetting,

    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g.
    /// `127.0.0.1:9464`; off when unset.
    #[arg(long, env = "ROSTER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "ROSTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info,roster=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,
}

/// Roster's subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Applies pending database migrations and exits (0 on success).
    Migrate {
        /// Applies nothing: exits 0 when no migration is pending, 3 when
        /// some are (listing them), e.g. for a readiness gate.
        #[arg(long)]
        check: bool,
    },
}

/// The `--migrate` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateMode {
    /// Apply pending migrations at start.
    Auto,
    /// Refuse to start while migrations are pending.
    Off,
}

/// The `--caller-quota` setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CallerQuotaSetting {
    /// Half the hashing capacity per caller.
    Auto,
    /// No quota.
    Off,
    /// This many calls per second per caller.
    PerSecond(u32),
}

impl std::str::FromStr for CallerQuotaSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "off" | "0" => Ok(Self::Off),
            number => number
                .parse()
                .map(Self::PerSecond)
                .map_err(|_| format!("expected auto, off or a number, got {number:?}")),
        }
    }
}

/// The `--max-connections` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionCap {
    /// Derived from the open-file limit at start.
    Auto,
    /// This many.
    Fixed(usize),
}

impl std::str::FromStr for ConnectionCap {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            number => match number.parse() {
                Ok(0) | Err(_) => Err(format!(
                    "expected auto or a positive number, got {number:?}"
                )),
                Ok(n) => Ok(Self::Fixed(n)),
            },
        }
    }
}

/// How log lines are written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The number of password hashes allowed in flight at once.
    pub fn effective_hash_concurrency(&self) -> usize {
        if self.hash_concurrency > 0 {
            self.hash_concurrency
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }
}
