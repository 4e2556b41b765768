//! Roster's benchmark: one run, one server, every figure the README quotes.
//!
//! Preloads users into a SQLite file in a temp directory, starts Roster in this
//! process on its own runtime (with a private redis-server on a free port
//! unless `--redis-url` is given), waits until it has built its board, then
//! drives each call from a separate client runtime over loopback and counts
//! only calls that returned OK.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

mod costs;

use std::{
    future::Future,
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;

// The server binary's allocator, so the in-process server runs as it would.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use fred::prelude::{Builder, ClientLike, Config as RedisConfig, KeysInterface};
use hdrhistogram::Histogram;
use roster::{
    config::Config,
    credentials::{HashPolicy, PasswordHasher},
    domain::{PageSize, PageToken, Password, UserName},
    proto::roster::v1::{
        self as pb, leaderboard_service_client::LeaderboardServiceClient,
        user_service_client::UserServiceClient,
    },
    startup::Application,
    store::{
        Store,
        entities::{leaderboard_entries, leaderboard_sequence, user_stats, users},
    },
};
use sea_orm::{ActiveValue::Set, Database, EntityTrait, TransactionTrait};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark Roster: Health/Check, GetUser hit and miss, CreateUser, the leaderboard"
)]
struct Args {
    /// How long each scenario runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent calls in flight for the read scenarios.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Concurrent calls in flight for CreateUser.
    #[arg(long, default_value_t = 16)]
    create_concurrency: usize,
    /// HTTP/2 connections the client spreads its calls over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Users preloaded into the database (the miss scenario reads each once).
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Concurrent calls in flight for RecordGame.
    #[arg(long, default_value_t = 32)]
    record_concurrency: usize,
    /// Server log filter (tracing EnvFilter syntax).
    #[arg(long, default_value = "warn")]
    log_filter: String,
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long)]
    redis_url: Option<String>,
    /// Worker threads of the server's runtime (default: the number of cores).
    #[arg(long)]
    server_threads: Option<usize>,
    /// Run only the scenarios whose names contain one of these words
    /// (case-insensitive, comma-separated), e.g. `--only health,around`.
    /// "GetUser (cache hit)" reads the users the miss scenario cached.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Turn tracing on: export every span over OTLP to a sink in this
    /// process that discards them (compare the `cost: plaintext` line with
    /// and without it: `--only cost:`).
    #[arg(long)]
    otlp_sink: bool,
}

impl Args {
    fn runs(&self, scenario: &str) -> bool {
        let scenario = scenario.to_lowercase();
        self.only.is_empty()
            || self
                .only
                .iter()
                .any(|word| scenario.contains(&word.to_lowercase()))
    }
}

struct Report {
    name: &'static str,
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// What Redis did meanwhile: commands run (those inside Lua scripts
    /// included) and CPU seconds used.
    redis: RedisUse,
}

/// Redis's own counters (`INFO stats`, `INFO cpu`), to tell per call how
/// often the server went to Redis and what that cost Redis.
#[derive(Debug, Clone, Copy, Default)]
struct RedisUse {
    commands: f64,
    cpu_seconds: f64,
}

impl RedisUse {
    async fn read(redis: &fred::clients::Client) -> Self {
        let info: String = redis.info(None).await.unwrap();
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Self {
            commands: field("total_commands_processed"),
            cpu_seconds: field("used_cpu_user") + field("used_cpu_sys"),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            // The INFO call that took `self` is not the server's.
            commands: self.commands - before.commands - 1.0,
            cpu_seconds: self.cpu_seconds - before.cpu_seconds,
        }
    }
}

/// What every scenario runs against.
struct Rig<'a> {
    args: &'a Args,
    addr: std::net::SocketAddr,
    channels: Vec<Channel>,
    redis: fred::clients::Client,
}

impl Report {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        let calls = self.ok.max(1) as f64;
        println!(
            "{:<26} {:>10.0} ok/s  p50 {:>8.2} ms  p99 {:>8.2} ms  \
             redis {:>5.2} cmd {:>5.1} us/call  ({} ok, {} errors)",
            self.name,
            self.rate(),
            self.latency.value_at_quantile(0.50) as f64 / 1000.0,
            self.latency.value_at_quantile(0.99) as f64 / 1000.0,
            self.redis.commands / calls,
            self.redis.cpu_seconds * 1e6 / calls,
            self.ok,
            self.errors,
        );
    }
}

/// Runs `call` from `concurrency` tasks for `duration`; only OK calls count.
/// `call` returns `None` when it has no more work.
/// `None` when `--only` leaves the scenario out.
async fn load<F, Fut>(
    rig: &Rig<'_>,
    name: &'static str,
    concurrency: usize,
    call: F,
) -> Option<Report>
where
    F: Fn(Channel) -> Option<Fut> + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    if !rig.args.runs(name) {
        return None;
    }
    Some(run_load(rig, name, concurrency, call).await)
}

/// [`load`] without the `--only` check.
async fn run_load<F, Fut>(rig: &Rig<'_>, name: &'static str, concurrency: usize, call: F) -> Report
where
    F: Fn(Channel) -> Option<Fut> + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let duration = rig.args.duration;
    let channels = &rig.channels;
    // Progress on stderr (unbuffered), so a profiler can be aimed at one scenario.
    eprintln!("running {name} ...");
    let redis_before = RedisUse::read(&rig.redis).await;
    let start = Instant::now();
    let stop = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let call = call.clone();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let (mut ok, mut errors) = (0u64, 0u64);
                while Instant::now() < stop {
                    let Some(future) = call(channel.clone()) else {
                        break;
                    };
                    let began = Instant::now();
                    match future.await {
                        Ok(()) => {
                            ok += 1;
                            latency.saturating_record(began.elapsed().as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    }
                }
                (ok, errors, latency)
            })
        })
        .collect();
    let mut report = Report {
        name,
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
        redis: RedisUse::default(),
    };
    for task in tasks {
        let (ok, errors, latency) = task.await.unwrap();
        report.ok += ok;
        report.errors += errors;
        report.latency.add(latency).unwrap();
    }
    report.elapsed = start.elapsed();
    report.redis = RedisUse::read(&rig.redis).await.since(redis_before);
    report
}

/// One ListLeaderboardAroundUser call: the 11-entry window around `name`.
async fn around_call(channel: Channel, name: String) -> Result<(), tonic::Status> {
    LeaderboardServiceClient::new(channel)
        .list_leaderboard_around_user(pb::ListLeaderboardAroundUserRequest {
            name,
            page_size: 11,
        })
        .await
        .map(drop)
}

/// One RecordGame call.
async fn record_call(channel: Channel, game: pb::RecordGameRequest) -> Result<(), tonic::Status> {
    LeaderboardServiceClient::new(channel)
        .record_game(game)
        .await
        .map(drop)
}

/// This process's resident memory, as Linux reports it (`VmRSS`).
fn resident_set_size() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .map(|rss| rss.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct PrivateRedis(Child);

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn start_redis(dir: &std::path::Path) -> (String, PrivateRedis) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (or pass --redis-url)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    (format!("redis://127.0.0.1:{port}"), PrivateRedis(child))
}

/// Names of preloaded users in a fixed scattered order (a prime stride), so
/// reads hit every part of the board rather than one hot corner.
fn spread_over_users(total: usize) -> impl Fn() -> String + Clone + Send + 'static {
    let cursor = Arc::new(AtomicUsize::new(0));
    move || name_of(cursor.fetch_add(7_919, Ordering::Relaxed) % total)
}

fn name_of(i: usize) -> String {
    format!("bench-user-{i}")
}

/// The preloaded best score of user `i`: spread out, with many ties.
fn score_of(i: usize) -> i64 {
    ((i * 7_919) % 50_000) as i64
}

/// Inserts `count` users in large transactions, all with one real hash, and
/// gives each one game (stats and a board entry) so every user is ranked.
async fn preload(database_url: &str, count: usize, phc: &str) {
    let db = Database::connect(database_url).await.unwrap();
    let now = Utc::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(5_000) {
        let txn = db.begin().await.unwrap();
        for batch in chunk.chunks(500) {
            let ids: Vec<_> = batch.iter().map(|_| uuid::Uuid::now_v7()).collect();
            let rows = batch.iter().zip(&ids).map(|(&i, &id)| {
                let name = UserName::parse(&name_of(i)).unwrap();
                users::ActiveModel {
                    id: Set(id),
                    name: Set(name.display().to_owned()),
                    name_key: Set(name.key().as_str().to_owned()),
                    password_hash: Set(phc.to_owned()),
                    create_time: Set(now),
                    update_time: Set(now),
                }
            });
            users::Entity::insert_many(rows).exec(&txn).await.unwrap();
            let stats = batch
                .iter()
                .zip(&ids)
                .map(|(&i, &id)| user_stats::ActiveModel {
                    user_id: Set(id),
                    games_played: Set(1),
                    wins: Set(1),
                    losses: Set(0),
                    draws: Set(0),
                    best_score: Set(score_of(i)),
                    total_score: Set(score_of(i)),
                    update_time: Set(now),
                });
            user_stats::Entity::insert_many(stats)
                .exec(&txn)
                .await
                .unwrap();
            let entries =
                batch
                    .iter()
                    .zip(&ids)
                    .map(|(&i, &id)| leaderboard_entries::ActiveModel {
                        user_id: Set(id),
                        score: Set(score_of(i)),
                        seq: Set(i as i64 + 1),
                    });
            leaderboard_entries::Entity::insert_many(entries)
                .exec(&txn)
                .await
                .unwrap();
        }
        txn.commit().await.unwrap();
    }
    leaderboard_sequence::Entity::update(leaderboard_sequence::ActiveModel {
        id: Set(1),
        last_value: Set(count as i64),
    })
    .exec(&db)
    .await
    .unwrap();
    db.close().await.unwrap();
}

/// argon2 alone: the CreateUser ceiling is cores / one hash's time. Also
/// measured with every core hashing at once, which shares memory bandwidth.
struct Argon2Alone {
    hash_time: Duration,
    ceiling: f64,
    parallel: f64,
}

impl Argon2Alone {
    fn measure(hasher: &PasswordHasher, password: &Password, cores: usize) -> Self {
        let rounds = 20;
        // The median of single hashes: robust to a noisy neighbour on a shared machine.
        let mut times: Vec<Duration> = (0..rounds)
            .map(|_| {
                let began = Instant::now();
                hasher.hash_blocking(password).unwrap();
                began.elapsed()
            })
            .collect();
        times.sort();
        let hash_time = times[times.len() / 2];
        let began = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..cores {
                scope.spawn(|| {
                    for _ in 0..rounds {
                        hasher.hash_blocking(password).unwrap();
                    }
                });
            }
        });
        Self {
            hash_time,
            ceiling: cores as f64 / hash_time.as_secs_f64(),
            parallel: (cores as u32 * rounds) as f64 / began.elapsed().as_secs_f64(),
        }
    }
}

fn main() {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let dir = tempfile::tempdir().unwrap();
    let (redis_url, _redis) = match &args.redis_url {
        Some(url) => (url.clone(), None),
        None => {
            let (url, child) = start_redis(dir.path());
            (url, Some(child))
        }
    };
    let database_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let config = Config::parse_from([
        "roster",
        "--listen-addr",
        "127.0.0.1:0",
        "--database-url",
        &database_url,
        "--redis-url",
        &redis_url,
        "--log-filter",
        &args.log_filter,
    ]);
    let keys = roster::cache::Keys::new(config.redis_key_prefix.clone());

    // The server gets its own runtime, as it would in its own process.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads.unwrap_or(cores))
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    if args.otlp_sink {
        let endpoint = client_runtime.block_on(otlp_sink());
        // SAFETY: no other thread reads the environment yet (the runtimes'
        // workers run nothing until the telemetry is installed below).
        unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint) };
        println!("tracing on: every span exported over OTLP to a discarding sink");
    }
    // The OTLP exporter, when on, needs a runtime to install into.
    let _telemetry = server_runtime
        .block_on(async { roster::telemetry::init(config.log_format, &config.log_filter) });

    // One real hash for every preloaded user.
    let hasher = PasswordHasher::new(HashPolicy::default(), cores).unwrap();
    let password = Password::parse("correct horse battery staple".into()).unwrap();
    let phc = hasher.hash_blocking(&password).unwrap();
    // Only CreateUser needs argon2's ceiling: 60 hashes not worth making otherwise.
    let argon2 = args
        .runs("CreateUser")
        .then(|| Argon2Alone::measure(&hasher, &password, cores));

    println!(
        "roster-bench: {cores} cores, {} per scenario, concurrency {} over {} connections",
        humantime::format_duration(args.duration),
        args.concurrency,
        args.connections
    );
    // Preload first, then start Roster, so it builds its board from the full
    // database at start (as after a deploy) and no scenario shares the machine
    // with that rebuild.
    println!("preloading {} users, each ranked ...", args.users);
    let redis = client_runtime.block_on(async {
        let redis = Builder::from_config(RedisConfig::from_url(&redis_url).unwrap())
            .build()
            .unwrap();
        redis.init().await.unwrap();
        // Only matters with --redis-url: start from an empty cache and board.
        let _: () = redis.flushall(false).await.unwrap();
        // Creates the file and the schema, as the server would.
        Store::connect(&database_url, 1)
            .await
            .unwrap()
            .close()
            .await;
        preload(&database_url, args.users, phc.as_phc()).await;
        redis
    });
    let rss_before = resident_set_size();
    let began = Instant::now();
    let app = server_runtime
        .block_on(Application::build(config.clone()))
        .expect("roster starts");
    let addr = app.local_addr();
    let board = app.board();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_runtime.spawn(app.run_until(async {
        stopped.await.ok();
    }));

    let reports = client_runtime.block_on(async {
        let mut channels = Vec::new();
        for _ in 0..args.connections.max(1) {
            channels.push(
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        loop {
            let ready: i64 = redis.exists(keys.board_ready()).await.unwrap();
            if ready == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "board of {} ranked users built in redis {:.2} s after start (process RSS {})",
            args.users,
            began.elapsed().as_secs_f64(),
            resident_set_size()
        );
        // Then the server's own copy of it, loaded from Redis.
        while board.copy_len() != Some(args.users as u64) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "board copy loaded in the server {:.2} s after start (process RSS {} before start, {} now)",
            began.elapsed().as_secs_f64(),
            rss_before,
            resident_set_size()
        );

        let rig = Rig {
            args: &args,
            addr,
            channels,
            redis,
        };
        let mut reports = Vec::new();
        reports.extend(
            load(&rig, "Health/Check", args.concurrency, |ch| {
                Some(async move {
                    HealthClient::new(ch)
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .map(drop)
                })
            })
            .await,
        );

        // Misses: each preloaded user is read once, with the cache empty.
        let next = Arc::new(AtomicUsize::new(0));
        let total = args.users;
        let cursor = Arc::clone(&next);
        let miss = load(&rig, "GetUser (cache miss)", args.concurrency, move |ch| {
            let i = cursor.fetch_add(1, Ordering::Relaxed);
            (i < total).then_some(async move {
                UserServiceClient::new(ch)
                    .get_user(pb::GetUserRequest { name: name_of(i) })
                    .await
                    .map(drop)
            })
        })
        .await;
        let read = next.load(Ordering::Relaxed).min(total).max(1);
        reports.extend(miss);

        // Hits: the users just read are all in Redis now.
        let hit = move |cursor: Arc<AtomicUsize>| {
            move |ch| {
                let i = cursor.fetch_add(1, Ordering::Relaxed) % read;
                Some(async move {
                    UserServiceClient::new(ch)
                        .get_user(pb::GetUserRequest { name: name_of(i) })
                        .await
                        .map(drop)
                })
            }
        };
        reports.extend(
            load(
                &rig,
                "GetUser (cache hit)",
                args.concurrency,
                hit(Arc::default()),
            )
            .await,
        );
        reports.extend(
            costs::run(
                &rig,
                server_runtime.handle(),
                &config,
                args.users as u64,
                dir.path(),
                hit(Arc::default()),
            )
            .await,
        );

        reports.extend(
            load(&rig, "ListLeaderboard top", args.concurrency, |ch| {
                Some(async move {
                    LeaderboardServiceClient::new(ch)
                        .list_leaderboard(pb::ListLeaderboardRequest {
                            page_size: 10,
                            page_token: String::new(),
                        })
                        .await
                        .map(drop)
                })
            })
            .await,
        );
        let deep = PageToken::new(
            PageSize::parse_page(10).unwrap(),
            (total as u64 / 2) / 10 * 10,
        );
        let deep = deep.encode();
        reports.extend(
            load(&rig, "ListLeaderboard deep", args.concurrency, move |ch| {
                let page_token = deep.clone();
                Some(async move {
                    let page = LeaderboardServiceClient::new(ch)
                        .list_leaderboard(pb::ListLeaderboardRequest {
                            page_size: 10,
                            page_token,
                        })
                        .await?;
                    assert_eq!(page.into_inner().entries.len(), 10);
                    Ok(())
                })
            })
            .await,
        );
        let next_user = spread_over_users(total);
        reports.extend(
            load(&rig, "AroundUser", args.concurrency, move |ch| {
                Some(around_call(ch, next_user()))
            })
            .await,
        );
        let next_user = spread_over_users(total);
        reports.extend(
            load(&rig, "GetUserStats", args.concurrency, move |ch| {
                let name = next_user();
                Some(async move {
                    LeaderboardServiceClient::new(ch)
                        .get_user_stats(pb::GetUserStatsRequest { name })
                        .await
                        .map(drop)
                })
            })
            .await,
        );
        let cursor = Arc::new(AtomicUsize::new(0));
        reports.extend(
            load(&rig, "RecordGame", args.record_concurrency, move |ch| {
                let n = cursor.fetch_add(1, Ordering::Relaxed);
                let game = pb::RecordGameRequest {
                    name: name_of(n.wrapping_mul(7_919) % total),
                    outcome: pb::GameOutcome::Win.into(),
                    score: (n % 60_000) as i64,
                    request_id: format!("bench-{n}"),
                };
                Some(record_call(ch, game))
            })
            .await,
        );

        // Board reads while games are recorded: every read's sync then also
        // brings the copy the games logged since the last one. Redis
        // figures for these two are for both together.
        if args.runs("mixed") {
            let next_user = spread_over_users(total);
            let reads = run_load(&rig, "Mixed: AroundUser", args.concurrency, move |ch| {
                Some(around_call(ch, next_user()))
            });
            let cursor = Arc::new(AtomicUsize::new(0));
            let writes = run_load(
                &rig,
                "Mixed: RecordGame",
                args.record_concurrency,
                move |ch| {
                    let n = cursor.fetch_add(1, Ordering::Relaxed);
                    let game = pb::RecordGameRequest {
                        name: name_of(n.wrapping_mul(7_919) % total),
                        outcome: pb::GameOutcome::Loss.into(),
                        score: (60_000 + n % 60_000) as i64,
                        request_id: String::new(),
                    };
                    Some(record_call(ch, game))
                },
            );
            let (reads, writes) = tokio::join!(reads, writes);
            reports.extend([reads, writes]);
        }

        let cursor = Arc::new(AtomicUsize::new(total));
        reports.extend(
            load(&rig, "CreateUser", args.create_concurrency, move |ch| {
                let i = cursor.fetch_add(1, Ordering::Relaxed);
                Some(async move {
                    UserServiceClient::new(ch)
                        .create_user(pb::CreateUserRequest {
                            name: name_of(i),
                            password: "correct horse battery staple".into(),
                            ..Default::default()
                        })
                        .await
                        .map(drop)
                })
            })
            .await,
        );
        if args.runs("storm") {
            reports.extend(storm(&rig, cursor_after(total)).await);
        }
        rig.redis.quit().await.ok();
        reports
    });

    stop.send(()).ok();
    server_runtime.block_on(server).unwrap().unwrap();

    println!();
    for report in &reports {
        report.print();
    }
    let rate = |name: &str| reports.iter().find(|r| r.name == name).map(Report::rate);
    println!();
    if let Some(argon2) = &argon2 {
        println!(
            "argon2id alone: {:.1} ms per hash, ceiling {:.1} hashes/s on {cores} cores \
             ({:.1} hashes/s measured with {cores} threads hashing at once)",
            argon2.hash_time.as_secs_f64() * 1000.0,
            argon2.ceiling,
            argon2.parallel
        );
    }
    if let Some(health) = rate("Health/Check") {
        for name in [
            "GetUser (cache hit)",
            "ListLeaderboard top",
            "ListLeaderboard deep",
            "AroundUser",
            "GetUserStats",
        ] {
            if let Some(calls) = rate(name) {
                let ratio = calls / health;
                println!(
                    "{:<31} {ratio:.2}  (target >= 0.50) {}",
                    format!("{name} / Health:"),
                    verdict(ratio >= 0.5)
                );
            }
        }
    }
    costs::print_ratios(&reports);
    if let Some(record) = rate("RecordGame") {
        println!(
            "{:<31} {record:.0}/s  (target >= 1000/s) {}",
            "RecordGame:",
            verdict(record >= 1000.0)
        );
    }
    if let Some((create, argon2)) = rate("CreateUser").zip(argon2.as_ref()) {
        let ratio = create / argon2.ceiling;
        println!(
            "{:<31} {ratio:.2}  (target >= 0.80) {}",
            "CreateUser / argon2 ceiling:",
            verdict(ratio >= 0.8)
        );
    }
}

/// A discarding OTLP trace receiver on a free loopback port; returns its
/// endpoint. It runs on the current runtime until the process ends.
async fn otlp_sink() -> String {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    };
    struct Sink;
    #[tonic::async_trait]
    impl TraceService for Sink {
        async fn export(
            &self,
            _request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    endpoint
}

/// Where the storm's new users start: past the preloaded users and past any
/// the CreateUser scenario may have made.
fn cursor_after(total: usize) -> usize {
    total + 10_000_000
}

/// The overload scenario of issue 9: GetUser (cache hits, 8 in flight) alone,
/// then again while 200 CreateUser calls with 3 s deadlines are in flight at
/// all times. Prints what the CreateUser calls got, and how fast refusals came.
async fn storm(rig: &Rig<'_>, first: usize) -> Vec<Report> {
    const WARM: usize = 1_000;
    const READERS: usize = 8;
    const CREATORS: usize = 200;
    const DEADLINE: Duration = Duration::from_secs(3);
    for i in 0..WARM {
        UserServiceClient::new(rig.channels[0].clone())
            .get_user(pb::GetUserRequest { name: name_of(i) })
            .await
            .unwrap();
    }
    let hits = || {
        let cursor = Arc::new(AtomicUsize::new(0));
        move |ch: Channel| {
            let i = cursor.fetch_add(1, Ordering::Relaxed) % WARM;
            Some(async move {
                UserServiceClient::new(ch)
                    .get_user(pb::GetUserRequest { name: name_of(i) })
                    .await
                    .map(drop)
            })
        }
    };
    let idle = run_load(rig, "Storm: GetUser idle", READERS, hits()).await;

    // The storm comes from another caller: its own connections, so the
    // readers' calls do not queue behind its streams in shared HTTP/2
    // connections.
    let mut storm_channels = Vec::new();
    for _ in 0..rig.channels.len() {
        storm_channels.push(
            Channel::from_shared(format!("http://{}", rig.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let stop = Instant::now() + rig.args.duration;
    let cursor = Arc::new(AtomicUsize::new(first));
    let creators: Vec<_> = (0..CREATORS)
        .map(|i| {
            let channel = storm_channels[i % storm_channels.len()].clone();
            let cursor = Arc::clone(&cursor);
            tokio::spawn(async move {
                let mut outcomes: Vec<(tonic::Code, Duration)> = Vec::new();
                while Instant::now() < stop {
                    let n = cursor.fetch_add(1, Ordering::Relaxed);
                    let mut request = tonic::Request::new(pb::CreateUserRequest {
                        name: name_of(n),
                        password: "correct horse battery staple".into(),
                        ..Default::default()
                    });
                    request.set_timeout(DEADLINE);
                    let began = Instant::now();
                    let code = match UserServiceClient::new(channel.clone())
                        .create_user(request)
                        .await
                    {
                        Ok(_) => tonic::Code::Ok,
                        Err(status) => status.code(),
                    };
                    outcomes.push((code, began.elapsed()));
                    if code == tonic::Code::ResourceExhausted {
                        // A client honouring RetryInfo waits; this one
                        // retries soon, to keep the storm up.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                outcomes
            })
        })
        .collect();
    let during = run_load(rig, "Storm: GetUser during", READERS, hits()).await;
    let mut by_code: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    for creator in creators {
        for (code, took) in creator.await.unwrap() {
            by_code.entry(format!("{code:?}")).or_default().push(took);
        }
    }
    for (code, mut took) in by_code {
        took.sort();
        println!(
            "storm CreateUser {code:<18} {:>6} calls  median {:>8.2} ms  max {:>8.2} ms",
            took.len(),
            took[took.len() / 2].as_secs_f64() * 1000.0,
            took[took.len() - 1].as_secs_f64() * 1000.0
        );
    }
    let (idle99, during99) = (
        idle.latency.value_at_quantile(0.99) as f64 / 1000.0,
        during.latency.value_at_quantile(0.99) as f64 / 1000.0,
    );
    println!(
        "storm GetUser p99: idle {idle99:.2} ms, during {during99:.2} ms = {:.2}x (target <= 2x) {}",
        during99 / idle99,
        verdict(during99 <= 2.0 * idle99)
    );
    vec![idle, during]
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "BELOW TARGET" }
}
