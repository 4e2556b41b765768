//! The Postgres path: health and errors through a TCP proxy the test can cut
//! to make the database unreachable, and two replicas recording games at
//! once. Needs a Postgres server: ROSTER_TEST_POSTGRES_URL, or
//! the local one at postgres://postgres@127.0.0.1:5432/test. Without one the
//! test says so and passes (the rest of the suite needs no Postgres).

use std::{collections::HashMap, time::Duration};

use roster::proto::roster::v1::{self as pb, GameOutcome};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tokio::task::JoinSet;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{RedisServer, eventually, spawn_with, test_config},
    leaderboard::{all_pages, board_in, client, stats},
    rig::Proxy,
};

async fn health(app: &crate::helpers::TestApp) -> i32 {
    health_of(app, "roster.v1.UserService").await
}

async fn health_of(app: &crate::helpers::TestApp, service: &str) -> i32 {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// A new, empty database on the test's Postgres server.
pub(crate) struct TestDatabase {
    admin: DatabaseConnection,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// `None` (after saying so) when there is no Postgres to test against.
    pub(crate) async fn create() -> Option<Self> {
        let admin_url = std::env::var("ROSTER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let Ok(Ok(admin)) =
            tokio::time::timeout(Duration::from_secs(3), Database::connect(&admin_url)).await
        else {
            eprintln!("SKIPPED: no Postgres at {admin_url}");
            return None;
        };
        let name = format!("roster_test_{}", uuid::Uuid::now_v7().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Some(Self {
            admin,
            admin_url,
            name,
        })
    }

    /// The database's URL.
    pub(crate) fn url(&self) -> String {
        url_for(&self.admin_url, &self.name)
    }

    /// The server's `host:port`.
    pub(crate) fn host_port(&self) -> String {
        host_port_of(&self.admin_url)
    }

    /// The database's URL with the server reached at `host_port` instead
    /// (a proxy in front of it).
    pub(crate) fn url_via(&self, host_port: &str) -> String {
        url_for(
            &self.admin_url.replace(&self.host_port(), host_port),
            &self.name,
        )
    }

    pub(crate) async fn drop_database(self) {
        self.admin
            .execute_unprepared(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_health_and_errors_follow_the_database_being_reachable() {
    let Some(test_database) = TestDatabase::create().await else {
        return;
    };
    let (admin_url, database) = (test_database.admin_url.clone(), test_database.name.clone());
    let host_port = host_port_of(&admin_url);
    let proxy = Proxy::start(host_port.clone()).await;
    let proxied = url_for(
        &admin_url.replace(&host_port, &format!("127.0.0.1:{}", proxy.port)),
        &database,
    );

    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let mut config = test_config(&dir.path().join("unused.db"), "");
    config.database_url = proxied;
    let app = spawn_with(config, dir, redis).await;

    let created = app.create_user("Postgres-User").await;
    assert_eq!(app.get_user("postgres-user").await.unwrap(), created);
    let status = app
        .client
        .clone()
        .create_user(roster::proto::roster::v1::CreateUserRequest {
            name: "POSTGRES-USER".into(),
            password: crate::helpers::PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(health(&app).await, ServingStatus::Serving as i32);

    proxy.cut().await;
    let down = eventually(Duration::from_secs(10), || async {
        health(&app).await == ServingStatus::NotServing as i32
    })
    .await;
    assert!(
        down,
        "health goes NOT_SERVING while the database is unreachable"
    );
    assert_eq!(
        health_of(&app, "liveness").await,
        ServingStatus::Serving as i32,
        "liveness does not follow the database"
    );
    let status = app.get_user("postgres-user").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().contains("127.0.0.1"),
        "no internals: {status:?}"
    );

    proxy.restore();
    let up = eventually(Duration::from_secs(10), || async {
        health(&app).await == ServingStatus::Serving as i32
    })
    .await;
    assert!(up, "health returns to SERVING");
    assert_eq!(app.get_user("postgres-user").await.unwrap(), created);

    drop(app.stop().await);
    drop(proxy);
    test_database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_two_replicas_count_every_game_once_and_agree_on_the_board() {
    let Some(test_database) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let mut config = test_config(&dir.path().join("unused.db"), &redis.url());
    config.database_url = test_database.url();
    let a = spawn_with(config, dir, redis).await;
    let b = a.spawn_replica().await;
    let players: Vec<String> = (0..5).map(|i| format!("pg-player-{i}")).collect();
    for player in &players {
        a.create_user(player).await;
    }

    // 200 games sent to both replicas at once, first games racing each
    // other; every fourth goes to both replicas with one request_id.
    let clients = [client(&a), client(&b)];
    let mut calls = JoinSet::new();
    let mut expected: HashMap<&str, (i64, i64)> = HashMap::new();
    for game in 0..200usize {
        let name = players[game % players.len()].clone();
        let score = (game * 37 % 50) as i64;
        let entry = expected.entry(&players[game % players.len()]).or_default();
        *entry = (entry.0 + 1, entry.1.max(score));
        let request_id = if game % 4 == 0 {
            format!("game-{game}")
        } else {
            String::new()
        };
        let sent_to: &[usize] = if game % 4 == 0 { &[0, 1] } else { &[game % 2] };
        for &replica in sent_to {
            let mut client = clients[replica].clone();
            let request = pb::RecordGameRequest {
                name: name.clone(),
                outcome: GameOutcome::Win.into(),
                score,
                request_id: request_id.clone(),
            };
            calls.spawn(async move { client.record_game(request).await });
        }
    }
    while let Some(call) = calls.join_next().await {
        call.unwrap().expect("every game is recorded");
    }

    let db = Database::connect(test_database.url()).await.unwrap();
    let board = board_in(&db).await;
    db.close().await.ok();
    assert_eq!(board.len(), players.len());
    for app in [&a, &b] {
        for (rank, (name, score)) in board.iter().enumerate() {
            let got = stats(app, name).await.unwrap();
            let (games, best) = expected[name.as_str()];
            assert_eq!(
                (got.games_played, got.best_score, got.rank),
                (games, best, rank as i64 + 1),
                "{name}"
            );
            assert_eq!(*score, best);
        }
        let listed: Vec<(String, i64)> = all_pages(app, 2)
            .await
            .0
            .concat()
            .into_iter()
            .map(|e| (e.name, e.score))
            .collect();
        assert_eq!(listed, board);
    }

    drop(b.stop().await);
    drop(a.stop().await);
    test_database.drop_database().await;
}

/// `postgres://user@host:port/db` -> `host:port`.
fn host_port_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let after_user = after_scheme
        .split_once('@')
        .map_or(after_scheme, |(_, rest)| rest);
    after_user.split('/').next().unwrap_or_default().to_owned()
}

fn url_for(base: &str, database: &str) -> String {
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{database}")
}
