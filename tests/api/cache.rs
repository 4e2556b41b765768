//! The Redis read-through cache: fills, TTL, contents, and failing open.

use std::time::Duration;

use fred::prelude::{ClientLike, KeysInterface};
use prost::Message;
use roster::{cache::Keys, domain::UserName, proto::roster::v1 as pb};
use sea_orm::{ConnectionTrait, Statement};

use crate::helpers::{eventually, spawn_app};

fn key(name: &str) -> String {
    Keys::default().user(UserName::parse(name).unwrap().key())
}

async fn rename_row_underneath(app: &crate::helpers::TestApp, key: &str, new_name: &str) {
    let db = app.database().await;
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "UPDATE users SET name = ? WHERE name_key = ?",
            [new_name.into(), key.into()],
        ))
        .await
        .unwrap();
    assert_eq!(result.rows_affected(), 1);
}

#[tokio::test]
async fn get_fills_the_cache_with_a_ttl_of_300_seconds_and_no_secrets() {
    let app = spawn_app().await;
    app.create_user("Grace").await;
    let redis = app.redis.client().await;
    // CreateUser filled the key; drop it to see GetUser fill it.
    let _: i64 = redis.del(key("grace")).await.unwrap();
    let fetched = app.get_user("GRACE").await.unwrap();

    let ttl: i64 = redis.ttl(key("grace")).await.unwrap();
    assert!(ttl > 290 && ttl <= 300, "ttl {ttl}");
    let value: Vec<u8> = redis.get(key("grace")).await.unwrap();
    let cached = pb::User::decode(value.as_slice()).unwrap();
    assert_eq!(cached, fetched);
    let text = String::from_utf8_lossy(&value);
    assert!(!text.contains("argon2"), "the cache holds no hash");
    assert!(!text.contains(crate::helpers::PASSWORD));
}

#[tokio::test]
async fn create_fills_the_cache_so_the_user_is_readable_at_once() {
    let app = spawn_app().await;
    let created = app.create_user("Heidi").await;
    let redis = app.redis.client().await;
    let value: Option<Vec<u8>> = redis.get(key("heidi")).await.unwrap();
    let cached = pb::User::decode(value.expect("filled on create").as_slice()).unwrap();
    assert_eq!(cached, created);
}

#[tokio::test]
async fn a_second_get_is_served_from_redis() {
    let app = spawn_app().await;
    app.create_user("Ivan").await;
    let first = app.get_user("ivan").await.unwrap();
    // Change the row underneath: a cache hit cannot see it.
    rename_row_underneath(&app, "ivan", "IVAN-changed").await;
    let second = app.get_user("ivan").await.unwrap();
    assert_eq!(second, first);
    assert_eq!(second.name, "Ivan");
    // Without the cache entry the database answers.
    let redis = app.redis.client().await;
    let _: i64 = redis.del(key("ivan")).await.unwrap();
    assert_eq!(app.get_user("ivan").await.unwrap().name, "IVAN-changed");
}

#[tokio::test]
async fn with_redis_down_answers_come_from_the_database_and_the_cache_refills_after_restart() {
    let mut app = spawn_app().await;
    let judy = app.create_user("Judy").await;
    app.redis.stop();

    // Reads and writes still work, from the database.
    assert_eq!(app.get_user("judy").await.unwrap(), judy);
    let mallory = app.create_user("Mallory").await;
    assert_eq!(app.get_user("MALLORY").await.unwrap(), mallory);
    assert_eq!(
        app.get_user("nobody").await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // Redis comes back empty; Roster reconnects and fills it again.
    app.redis.restart();
    let redis = app.redis.client().await;
    let refilled = eventually(Duration::from_secs(10), || async {
        app.get_user("judy").await.unwrap();
        redis.exists::<i64, _>(key("judy")).await.unwrap() == 1
    })
    .await;
    assert!(refilled, "the cache is used again after Redis restarts");
    redis.quit().await.unwrap();
}

#[tokio::test]
async fn roster_starts_and_serves_with_redis_down_at_boot() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = crate::helpers::RedisServer::start();
    redis.stop();
    let config = crate::helpers::test_config(&dir.path().join("roster.db"), &redis.url());
    let app = crate::helpers::spawn_with(config, dir, redis).await;
    let created = app.create_user("Niaj").await;
    assert_eq!(app.get_user("niaj").await.unwrap(), created);
}
