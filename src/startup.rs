//! Builds the application (listener, database, cache, services) and runs it
//! until a shutdown signal, then drains within a deadline.

use std::{error::Error as StdError, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::TcpListener,
    sync::{Notify, oneshot},
    task::JoinHandle,
};
use tonic::service::Routes;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    access::{
        self, Access, CallerQuota,
        tls::{Tls, TlsFiles},
    },
    backends::{BackendCredentials, read_secret_file, redact_url},
    cache::{Freshness, Redis, UserCache, board::BoardCache, outbox::OutboxCache},
    config::{CallerQuotaSetting, Config, MigrateMode},
    connections::{self, ConnectionSettings},
    credentials::{HashPolicy, PasswordHasher},
    delivery::Delivery,
    grpc::{LeaderboardServiceImpl, UserServiceImpl},
    leaderboard::Leaderboard,
    limits::CallLimitLayer,
    metrics::{self, GrpcMetricsLayer, Metrics},
    proto::{
        self,
        roster::v1::{
            leaderboard_service_server::LeaderboardServiceServer,
            user_service_server::UserServiceServer,
        },
    },
    store::Store,
    throttle::{Throttle, ThrottlePolicy},
    users::Users,
};

/// Errors that stop the server from starting or running.
pub type StartupError = Box<dyn StdError + Send + Sync>;

/// Requests are small; refuse anything larger before decoding it.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// gRPC names of the services whose health we report ("" is the whole
/// server): SERVING while the database answers, NOT_SERVING from the moment
/// a shutdown starts.
const HEALTH_SERVICES: [&str; 3] = ["", "roster.v1.UserService", "roster.v1.LeaderboardService"];
/// The health name for liveness probes: SERVING for as long as the process
/// serves calls, whatever the database does (a restart cures no database
/// outage).
const LIVENESS: &str = "liveness";

/// A built, not yet serving, Roster: the listener is bound and migrations ran.
pub struct Application {
    listener: TcpListener,
    config: Config,
    store: Store,
    redis: Option<Redis>,
    users: Users,
    leaderboard: Leaderboard,
    delivery: Delivery,
    access: Access,
    tls: Option<Tls>,
    metrics: Metrics,
    /// The metrics listener and its registry, when `--metrics-addr` is set.
    metrics_listener: Option<(TcpListener, prometheus_client::registry::Registry)>,
    /// How gRPC connections are capped, timed and served.
    connections: ConnectionSettings,
}

impl Application {
    /// Binds the listener (port 0 picks a free port), connects to the
    /// database and runs migrations, and starts connecting to Redis.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let open_files = connections::raise_open_file_limit();
        let connections = connection_settings(&config, open_files);
        tracing::info!(
            open_files,
            max_connections = connections.max_connections,
            max_connections_per_peer = connections.max_connections_per_peer,
            max_concurrent_calls = config.max_concurrent_calls,
            "connection limits"
        );
        let metrics = Metrics::new();
        let hasher = PasswordHasher::new(
            HashPolicy {
                memory_kib: config.argon2_memory_kib,
                iterations: config.argon2_iterations,
                parallelism: config.argon2_parallelism,
            },
            config.effective_hash_concurrency(),
        )?
        .with_metrics(metrics.clone());
        let credentials = BackendCredentials::load(&config)?;
        tracing::info!(
            database = %redact_url(&config.database_url),
            redis = %redact_url(&config.redis_url),
            redis_tls = credentials.redis.tls.is_some(),
            "connecting to the backends"
        );
        let store = Store::open_with_password(
            &config.database_url,
            credentials.database_password.as_ref(),
            config.db_max_connections,
        )
        .await?;
        match config.migrate {
            MigrateMode::Auto => {
                store.migrate().await?;
            }
            MigrateMode::Off => {
                let pending = store.pending_migrations().await?;
                if !pending.is_empty() {
                    return Err(format!(
                        "the database lacks {} migration(s) ({}); run `roster migrate`, \
                         or start with --migrate auto",
                        pending.len(),
                        pending.join(", ")
                    )
                    .into());
                }
            }
        }
        let redis = if config.redis_url.is_empty() {
            tracing::info!("no REDIS_URL; cache and login throttle disabled");
            None
        } else {
            let redis = Redis::connect(
                &config.redis_url,
                &credentials.redis,
                config.redis_timeout,
                config.redis_key_prefix.clone(),
                metrics.clone(),
            )?;
            redis.wait_connected(Duration::from_secs(1)).await;
            Some(redis)
        };
        let freshness = Arc::new(Freshness::new(config.cache_staleness_bound));
        if let Some(redis) = &redis {
            redis.close_on_reconnect(&freshness);
        }
        let attention = Arc::new(Notify::new());
        let cache = UserCache::new(redis.clone(), config.cache_ttl, Arc::clone(&freshness));
        let throttle = Throttle::new(
            redis.clone(),
            ThrottlePolicy {
                limit: config.login_failure_limit,
                base_delay: config.login_base_delay,
                max_delay: config.login_max_delay,
            },
        );
        let quota = match config.caller_quota {
            CallerQuotaSetting::Off => CallerQuota::new(0, 0),
            CallerQuotaSetting::PerSecond(rate) => CallerQuota::new(rate, rate.saturating_mul(2)),
            CallerQuotaSetting::Auto => {
                // Half of what the hashing slots can do per second.
                let capacity = hasher.slots() as f64 / hasher.hash_time().as_secs_f64().max(1e-3);
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let rate = ((capacity / 2.0).ceil() as u32).max(1);
                tracing::info!(
                    per_second = rate,
                    "per-caller quota on password hashing calls"
                );
                CallerQuota::new(rate, rate.saturating_mul(2))
            }
        };
        let access = Access::new(
            config.policy.clone(),
            access::served_methods(),
            config.trust_forwarded_identity,
            quota,
        )?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
                client_auth: config.tls_client_auth,
            })?),
            _ => None,
        };
        if tls.is_none() && !config.mesh_tls && !config.listen_addr.ip().is_loopback() {
            tracing::warn!(
                address = %config.listen_addr,
                "listening without TLS on a non-loopback address: calls and passwords cross \
                 the network in plaintext. Set --tls-cert/--tls-key, or --mesh-tls when a \
                 mesh sidecar terminates TLS in front of Roster"
            );
        }
        let listener = TcpListener::bind(config.listen_addr).await?;
        let board = BoardCache::new(
            redis.clone(),
            Arc::clone(&freshness),
            Arc::clone(&attention),
            config.board_copy,
        );
        let delivery = Delivery::new(
            store.clone(),
            board.clone(),
            redis.clone().map(OutboxCache::new),
            Arc::clone(&freshness),
            attention,
            config.cache_sync_interval,
            metrics.clone(),
        );
        store.set_metrics(metrics.clone());
        let metrics_listener = match config.metrics_addr {
            Some(address) => {
                let state = metrics::State {
                    hashing: Box::new({
                        let hasher = hasher.clone();
                        move || (hasher.slots(), hasher.busy(), hasher.waiting())
                    }),
                    pools: Box::new({
                        let store = store.clone();
                        move || store.pool_stats()
                    }),
                    fresh: Box::new({
                        let freshness = Arc::clone(&freshness);
                        move || freshness.is_fresh()
                    }),
                    writes_failing: Box::new({
                        let store = store.clone();
                        move || store.writes_failing()
                    }),
                    copy: Box::new({
                        let board = board.clone();
                        move || board.copy_stats()
                    }),
                };
                Some((TcpListener::bind(address).await?, metrics.registry(state)))
            }
            None => None,
        };
        let users = Users::new(store.clone(), cache, board.clone(), throttle, hasher);
        let leaderboard = Leaderboard::new(store.clone(), board, users.clone());
        Ok(Self {
            listener,
            config,
            store,
            redis,
            users,
            leaderboard,
            delivery,
            access,
            tls,
            metrics,
            metrics_listener,
            connections,
        })
    }

    /// The board cache, to watch its state from outside (the benchmark
    /// waits for the board copy before measuring).
    pub fn board(&self) -> BoardCache {
        self.leaderboard.board().clone()
    }

    /// The address the metrics listener is bound to, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound TcpListener always knows its address.
        self.listener
            .local_addr()
            .unwrap_or(self.config.listen_addr)
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING, waits the
    /// shutdown delay, stops accepting calls, and gives in-flight calls until
    /// the drain deadline before closing what is left.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        let Self {
            listener,
            config,
            store,
            redis,
            users,
            leaderboard,
            delivery,
            access,
            tls,
            metrics,
            metrics_listener,
            connections,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let user_service = UserServiceServer::new(UserServiceImpl::new(users))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let leaderboard_service =
            LeaderboardServiceServer::new(LeaderboardServiceImpl::new(leaderboard.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES);
        // Keeps this process's board copy current; delivers the cache outbox
        // (and rebuilds the Redis board when it is missing, and prunes).
        let maintenance = tokio::spawn(async move {
            tokio::join!(leaderboard.maintain(), delivery.run());
        });

        let address = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let mut routes = Routes::builder();
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(user_service)
            .add_service(leaderboard_service);
        let service = tower::ServiceBuilder::new()
            // The gRPC metrics only when something can scrape them: without
            // `--metrics-addr` a call pays nothing for them.
            .option_layer(
                metrics_listener
                    .is_some()
                    .then(|| GrpcMetricsLayer::new(metrics.clone(), &access::served_methods())),
            )
            .layer(CallLimitLayer::new(
                config.max_concurrent_calls,
                MAX_REQUEST_BYTES,
            ))
            .layer(access.layer())
            .service(routes.routes().prepare());
        let stop_serving = async {
            drop(stopped.await);
        };
        // Reloads the policy on change or SIGHUP; prunes quota buckets.
        let access_upkeep = tokio::spawn(access.maintain());
        let metrics_server = metrics_listener.map(|(listener, registry)| {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "metrics served at /metrics");
            }
            tokio::spawn(metrics::serve(listener, registry))
        });
        let tls_upkeep = tls.clone().map(|tls| tokio::spawn(tls.watch()));
        let mut server: JoinHandle<()> = tokio::spawn(connections::serve(
            listener,
            tls,
            service,
            connections,
            metrics,
            stop_serving,
        ));
        let watcher = tokio::spawn(watch_database(
            store.clone(),
            health.clone(),
            config.health_interval,
        ));
        tracing::info!(%address, "roster serving");

        tokio::select! {
            result = &mut server => {
                watcher.abort();
                maintenance.abort();
                access_upkeep.abort();
                if let Some(upkeep) = tls_upkeep {
                    upkeep.abort();
                }
                if let Some(server) = metrics_server {
                    server.abort();
                }
                return Ok(result?);
            }
            () = shutdown => {}
        }

        tracing::info!("shutting down: reporting NOT_SERVING");
        watcher.abort();
        set_health(&health, ServingStatus::NotServing).await;
        tokio::time::sleep(config.shutdown_delay).await;
        stop.send(()).ok();
        match tokio::time::timeout(config.drain_deadline, &mut server).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!(
                    deadline = ?config.drain_deadline,
                    "drain deadline passed; closing the remaining connections"
                );
                server.abort();
            }
        }
        maintenance.abort();
        access_upkeep.abort();
        if let Some(upkeep) = tls_upkeep {
            upkeep.abort();
        }
        if let Some(server) = metrics_server {
            server.abort();
        }
        if let Some(redis) = redis {
            redis.quit().await;
        }
        store.close().await;
        tracing::info!("roster stopped");
        Ok(())
    }
}

/// Server reflection over every descriptor a caller may meet: Roster's
/// services, health, and the google.rpc error details in our statuses (so
/// grpcurl and `buf curl` can decode them).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// The connection settings `config` asks for, under an open-file limit of
/// `open_files`. A zero duration turns its limit off.
fn connection_settings(config: &Config, open_files: Option<u64>) -> ConnectionSettings {
    let nonzero = |duration: Duration| (!duration.is_zero()).then_some(duration);
    ConnectionSettings {
        handshake_timeout: config.handshake_timeout,
        max_idle: nonzero(config.max_connection_idle),
        max_age: nonzero(config.max_connection_age),
        max_age_grace: nonzero(config.max_connection_age_grace),
        max_connections: connections::connection_cap(
            config.max_connections,
            open_files,
            config.db_max_connections,
        ),
        max_connections_per_peer: config.max_connections_per_peer,
        max_concurrent_streams: config.max_concurrent_streams,
        keepalive_interval: nonzero(config.http2_keepalive_interval),
        keepalive_timeout: config.http2_keepalive_timeout,
        request_timeout: config.request_timeout,
        // A span per call only when traces are exported: none otherwise.
        trace: crate::telemetry::otlp_configured(),
    }
}

/// Probes the database every `interval` and reports NOT_SERVING while it
/// does not answer. Redis plays no part: the service works without it.
async fn watch_database(store: Store, health: HealthReporter, interval: Duration) {
    let mut serving = true;
    loop {
        tokio::time::sleep(interval).await;
        let result = tokio::time::timeout(interval, store.ping()).await;
        let healthy = matches!(result, Ok(Ok(())));
        if healthy != serving {
            serving = healthy;
            if healthy {
                tracing::info!("database reachable again; SERVING");
                set_health(&health, ServingStatus::Serving).await;
            } else {
                tracing::error!(?result, "database unreachable; NOT_SERVING");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

/// `roster migrate [--check]`: applies pending migrations (or, with
/// `check`, only lists them). Returns whether none is pending afterwards.
pub async fn migrate(config: &Config, check: bool) -> Result<bool, StartupError> {
    let password = config
        .database_password_file
        .as_deref()
        .map(read_secret_file)
        .transpose()?;
    let store = Store::open_with_password(&config.database_url, password.as_ref(), 1).await?;
    let pending = if check {
        store.pending_migrations().await?
    } else {
        let applied = store.migrate().await?;
        tracing::info!(
            count = applied.len(),
            "migrations applied; the database is current"
        );
        Vec::new()
    };
    if check {
        if pending.is_empty() {
            tracing::info!("no migration pending");
        } else {
            tracing::warn!(?pending, "migrations pending");
        }
    }
    store.close().await;
    Ok(pending.is_empty())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
