//! Deployments that share one Redis under different key prefixes: each reads
//! only its own cached users, board and throttle, a flush touches only its
//! own keys; and a bad prefix refuses to start.

use std::{collections::BTreeSet, process::Command, time::Duration};

use clap::Parser;
use fred::prelude::{ClientLike, KeysInterface, SortedSetsInterface};
use roster::{cache::KeyPrefix, config::Config, proto::roster::v1 as pb};
use tonic::Code;

use crate::{
    helpers::{RedisServer, TestApp, eventually, spawn_with, test_config},
    leaderboard::{list, stats, win},
};

const BLUE: &str = "roster:blue:";
const GREEN: &str = "roster:green:";

/// A deployment with its own database, on the shared `redis`, under `prefix`.
async fn deployment(redis: &RedisServer, prefix: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
    config.redis_key_prefix = KeyPrefix::parse(prefix).unwrap();
    spawn_with(config, dir, redis.share()).await
}

/// Waits until the deployment under `prefix` has taken Redis into use: its
/// first delivery round (which flushes its user cache, Redis being new to
/// it) is over and its board is rebuilt.
async fn wait_until_in_use(redis: &fred::clients::Client, prefix: &str) {
    let delivered = format!("{prefix}outbox:{{lb}}:delivered");
    let ready = format!("{prefix}board:{{lb}}:ready");
    let in_use = eventually(Duration::from_secs(15), || async {
        let found: i64 = redis
            .exists(vec![delivered.clone(), ready.clone()])
            .await
            .unwrap_or(0);
        found == 2
    })
    .await;
    assert!(in_use, "the {prefix} deployment takes Redis into use");
}

async fn fail_password(app: &TestApp, name: &str) {
    let answer = app
        .client
        .clone()
        .verify_password(pb::VerifyPasswordRequest {
            name: name.into(),
            password: "not the password at all".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_with_their_own_key_prefixes_share_a_redis_without_seeing_each_other() {
    let redis = RedisServer::start();
    let inspect = redis.client().await;
    let blue = deployment(&redis, BLUE).await;
    wait_until_in_use(&inspect, BLUE).await;
    let blue_ada = blue.create_user("ada").await;
    let bob = blue.create_user("bob").await;
    let blue_ada_key = format!("{BLUE}user:{{ada}}");
    let cached: i64 = inspect.exists(&blue_ada_key).await.unwrap();
    assert_eq!(cached, 1, "blue caches its new user");

    // Green starts on a Redis that holds nothing of its own: its first round
    // flushes its user cache, and only its own.
    let green = deployment(&redis, GREEN).await;
    wait_until_in_use(&inspect, GREEN).await;
    let cached: i64 = inspect.exists(&blue_ada_key).await.unwrap();
    assert_eq!(cached, 1, "green's flush leaves blue's cached users alone");

    // The same name in both, two different users.
    let green_ada = green.create_user("ada").await;
    assert_ne!(blue_ada.id, green_ada.id);
    for _ in 0..3 {
        assert_eq!(blue.get_user("ada").await.unwrap().id, blue_ada.id);
        assert_eq!(green.get_user("ada").await.unwrap().id, green_ada.id);
    }
    assert_eq!(blue.get_user("bob").await.unwrap().id, bob.id);
    assert_eq!(
        green.get_user("bob").await.unwrap_err().code(),
        Code::NotFound,
        "blue's bob is not green's"
    );

    // Each board holds its own games only.
    win(&blue, "ada", 10).await;
    win(&blue, "bob", 5).await;
    win(&green, "ada", 99).await;
    let entries = |response: pb::ListLeaderboardResponse| {
        response
            .entries
            .into_iter()
            .map(|e| (e.user_id, e.score))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        entries(list(&blue, 10, "").await.unwrap()),
        [(blue_ada.id.clone(), 10), (bob.id.clone(), 5)]
    );
    assert_eq!(
        entries(list(&green, 10, "").await.unwrap()),
        [(green_ada.id.clone(), 99)]
    );
    let blue_stats = stats(&blue, "ada").await.unwrap();
    assert_eq!((blue_stats.best_score, blue_stats.rank), (10, 1));
    let green_stats = stats(&green, "ada").await.unwrap();
    assert_eq!((green_stats.best_score, green_stats.rank), (99, 1));
    assert_eq!(
        stats(&green, "bob").await.unwrap_err().code(),
        Code::NotFound
    );

    // Each throttle counts its own failures.
    fail_password(&blue, "ada").await;
    fail_password(&green, "ada").await;

    // In Redis: every key under one of the two prefixes, each deployment's
    // board set holding only its own users.
    let keys: Vec<String> = inspect.custom(fred::cmd!("KEYS"), vec!["*"]).await.unwrap();
    let under = |prefix: &str| -> BTreeSet<String> {
        keys.iter()
            .filter_map(|key| key.strip_prefix(prefix))
            .map(str::to_owned)
            .collect()
    };
    let (blue_keys, green_keys) = (under(BLUE), under(GREEN));
    assert_eq!(
        blue_keys.len() + green_keys.len(),
        keys.len(),
        "every key is under one of the prefixes: {keys:?}"
    );
    for (prefix, found) in [(BLUE, &blue_keys), (GREEN, &green_keys)] {
        for expected in [
            "user:{ada}",
            "throttle:{ada}",
            "board:{lb}:set",
            "board:{lb}:members",
            "board:{lb}:stats",
            "board:{lb}:ready",
            "board:{lb}:version",
            "board:{lb}:log",
            "outbox:{lb}:delivered",
        ] {
            assert!(found.contains(expected), "{prefix}{expected} in {found:?}");
        }
    }
    for (prefix, own) in [
        (BLUE, vec![&blue_ada.id, &bob.id]),
        (GREEN, vec![&green_ada.id]),
    ] {
        let members: Vec<String> = inspect
            .zrange(
                format!("{prefix}board:{{lb}}:set"),
                0,
                -1,
                None,
                false,
                None,
                false,
            )
            .await
            .unwrap();
        assert_eq!(members.len(), own.len(), "{prefix}: {members:?}");
        assert!(
            members
                .iter()
                .all(|m| own.iter().any(|id| m.contains(id.as_str()))),
            "{prefix} ranks only its own users: {members:?}"
        );
    }
    inspect.quit().await.ok();
}

#[test]
fn a_key_prefix_with_a_brace_a_space_or_nothing_is_refused_with_the_rule_it_breaks() {
    for (prefix, rule) in [
        ("roster:{blue}:", "must not contain '{' or '}'"),
        ("roster blue:", "printable ASCII without spaces"),
        ("", "must not be empty"),
    ] {
        let error = Config::try_parse_from(["roster", "--redis-key-prefix", prefix])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--redis-key-prefix") && error.contains(rule),
            "{prefix:?}: {error}"
        );
    }
    assert_eq!(
        Config::try_parse_from(["roster"])
            .unwrap()
            .redis_key_prefix
            .as_str(),
        "roster:v1:",
        "the default stays"
    );
}

#[test]
fn the_server_refuses_to_start_with_a_bad_key_prefix_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("roster.db");
    let output = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["--listen-addr", "127.0.0.1:0", "--redis-url", ""])
        .arg("--database-url")
        .arg(format!("sqlite://{}", database.display()))
        .env("ROSTER_REDIS_KEY_PREFIX", "roster:{blue}:")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("--redis-key-prefix") && stderr.contains("must not contain '{' or '}'"),
        "{stderr}"
    );
    assert!(!database.exists(), "refused before touching the database");
}
