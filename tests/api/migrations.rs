//! Migrations as a step of their own: `roster migrate` applies them and
//! exits, `roster migrate --check` says whether any is pending (exit 3),
//! `--migrate off` refuses to serve a database that lacks migrations, and
//! replicas that migrate at once (Postgres, under an advisory lock) do not
//! race.

use std::process::Command;

use crate::{
    helpers::{RedisServer, spawn_with, test_config},
    postgres::TestDatabase,
};

fn roster(database_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(args)
        .args(["--database-url", database_url, "--redis-url", ""])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_migrations_as_a_step_and_check_says_whether_any_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());

    let check = roster(&url, &["migrate", "--check"]);
    assert_eq!(check.status.code(), Some(3), "pending on a new database");
    let mut refused = roster(&url, &["--migrate", "off", "--listen-addr", "127.0.0.1:0"]);
    assert_eq!(refused.status.code(), Some(1));
    refused.stdout.extend(refused.stderr);
    let output = String::from_utf8_lossy(&refused.stdout);
    assert!(
        output.contains("roster migrate"),
        "a clear refusal: {output}"
    );

    let migrate = roster(&url, &["migrate"]);
    assert!(migrate.status.success(), "{migrate:?}");
    let check = roster(&url, &["migrate", "--check"]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "nothing pending after migrate"
    );

    // With migrations applied, --migrate off serves.
    let redis = RedisServer::start();
    let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
    config.migrate = roster::config::MigrateMode::Off;
    let app = spawn_with(config, dir, redis).await;
    app.create_user("migrated").await;
    drop(app.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_replicas_that_start_together_migrate_once_without_racing() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let starts = (0..4).map(|_| {
        let url = database.url();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let redis = RedisServer::start();
            let mut config = test_config(&dir.path().join("unused.db"), &redis.url());
            config.database_url = url;
            spawn_with(config, dir, redis).await
        }
    });
    let apps = futures_join_all(starts).await;
    apps[0].create_user("raced").await;
    for app in apps {
        drop(app.stop().await);
    }
    let check = roster(&database.url(), &["migrate", "--check"]);
    assert_eq!(check.status.code(), Some(0));
    database.drop_database().await;
}

/// Runs the futures at once and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}
