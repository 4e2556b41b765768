//! Two replicas on one database and one Redis, one of them (A) reaching
//! Redis through a proxy the test cuts: what A acknowledges, B serves within
//! the staleness bound (users, stats, the board), during the cut and after
//! it; A's undelivered invalidations leave Redis without any further call to
//! A; and the history checker across both replicas with the cut injected.
//! On SQLite, and on Postgres when one is there.

use std::time::{Duration, Instant};

use fred::prelude::KeysInterface;
use roster::proto::roster::v1::{self as pb, GameOutcome};
use tonic::Code;

use crate::{
    helpers::{PASSWORD, RedisServer, TestApp, spawn_with, test_config},
    history::{self, Workload},
    leaderboard::{list, record, stats},
    postgres::TestDatabase,
    rig::Proxy,
};

/// The server's default staleness bound.
const BOUND: Duration = Duration::from_secs(1);

/// B (reaching Redis directly) and A (through `proxy`), on one database.
async fn replicas(database: Option<String>) -> (TestApp, TestApp, Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr()).await;
    let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
    if let Some(url) = database {
        config.database_url = url;
    }
    let b = spawn_with(config, dir, redis).await;
    let a = b
        .spawn_replica_with(|config| {
            config.redis_url = format!("redis://{}", proxy.addr());
        })
        .await;
    (a, b, proxy)
}

/// How long until `reflects` holds on a read that started after `since`;
/// panics past twice the bound.
async fn staleness<F, Fut>(since: Instant, mut reflects: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        let started = Instant::now();
        if reflects().await {
            return started.duration_since(since);
        }
        assert!(
            since.elapsed() < BOUND * 2,
            "still stale after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each account write on A, then reads of that user, its stats and the
/// board on B; returns the worst staleness seen per kind.
async fn writes_on_a_reach_b(
    a: &TestApp,
    b: &TestApp,
    tag: &str,
    score: i64,
) -> [(String, Duration); 4] {
    let (changed, deleted, player) = (
        format!("{tag}-changed"),
        format!("{tag}-deleted"),
        format!("{tag}-player"),
    );
    for name in [&changed, &deleted, &player] {
        b.create_user(name).await;
        // B caches the user, its stats and the board.
        b.get_user(name).await.unwrap();
    }
    record(b, &player, GameOutcome::Win, 10, "").await.unwrap();
    stats(b, &player).await.unwrap();
    list(b, 100, "").await.unwrap();

    // Create: B has no entry to be stale with.
    let created = a.create_user(&format!("{tag}-created")).await;
    let create = staleness(Instant::now(), || async {
        b.get_user(&format!("{tag}-created")).await.ok() == Some(created.clone())
    })
    .await;

    let user = a
        .client
        .clone()
        .change_password(pb::ChangePasswordRequest {
            name: changed.clone(),
            current_password: PASSWORD.into(),
            new_password: "a brand new passphrase".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let change = staleness(Instant::now(), || async {
        b.get_user(&changed).await.ok().map(|u| u.update_time) == Some(user.update_time)
    })
    .await;

    a.delete_user(&deleted).await;
    let delete = staleness(Instant::now(), || async {
        b.get_user(&deleted).await.map_err(|s| s.code()) == Err(Code::NotFound)
    })
    .await;

    let after = record(a, &player, GameOutcome::Win, score, "")
        .await
        .unwrap();
    let game = staleness(Instant::now(), || async {
        let stats = stats(b, &player).await.unwrap();
        let board = list(b, 100, "").await.unwrap();
        stats.games_played == after.games_played
            && board.entries.first().map(|e| (e.name.as_str(), e.score))
                == Some((player.as_str(), score))
    })
    .await;
    [
        ("create".to_owned(), create),
        ("change password".to_owned(), change),
        ("delete".to_owned(), delete),
        ("game (stats and board)".to_owned(), game),
    ]
}

async fn cut_off_writer(database: Option<String>, backend: &str) {
    let (a, b, proxy) = replicas(database).await;
    proxy.cut().await;
    let during = writes_on_a_reach_b(&a, &b, &format!("{backend}-cut"), 1_000).await;
    proxy.restore();
    // Each best score tops the board.
    let after = writes_on_a_reach_b(&a, &b, &format!("{backend}-healed"), 2_000).await;
    for ((kind, cut), (_, healed)) in during.iter().zip(&after) {
        eprintln!(
            "{backend}: {kind} on the cut-off replica, seen by the other after {cut:?} \
             (during the cut), {healed:?} (after it)"
        );
        assert!(
            *cut < BOUND && *healed < BOUND,
            "{kind}: {cut:?} / {healed:?}"
        );
    }
    drop(a.stop().await);
    drop(b.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_replica_cut_off_from_redis_acknowledges_the_other_serves_within_the_bound() {
    cut_off_writer(None, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_what_a_replica_cut_off_from_redis_acknowledges_the_other_serves_within_the_bound()
 {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    cut_off_writer(Some(database.url()), "postgres").await;
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_a_cut_off_replica_could_not_deliver_leave_redis_with_no_further_call_to_it()
{
    // One replica, alone, behind the proxy.
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.addr()).await;
    let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
    config.redis_url = format!("redis://{}", proxy.addr());
    let inspect = redis.client().await;
    let a = spawn_with(config, dir, redis).await;
    for name in ["remembered-change", "remembered-delete"] {
        a.create_user(name).await;
        // Read through the cache until the entry is there.
        for _ in 0..50 {
            a.get_user(name).await.unwrap();
            let cached: Option<Vec<u8>> = inspect
                .get(format!("roster:v1:user:{{{name}}}"))
                .await
                .unwrap();
            if cached.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    proxy.cut().await;
    a.client
        .clone()
        .change_password(pb::ChangePasswordRequest {
            name: "remembered-change".into(),
            current_password: PASSWORD.into(),
            new_password: "a brand new passphrase".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    a.delete_user("remembered-delete").await;
    for name in ["remembered-change", "remembered-delete"] {
        let cached: Option<Vec<u8>> = inspect
            .get(format!("roster:v1:user:{{{name}}}"))
            .await
            .unwrap();
        assert!(
            cached.is_some(),
            "the cut kept {name}'s stale entry in Redis"
        );
    }
    proxy.restore();
    // No call to A from here on.
    let healed = Instant::now();
    loop {
        let mut left = 0;
        for name in ["remembered-change", "remembered-delete"] {
            let cached: Option<Vec<u8>> = inspect
                .get(format!("roster:v1:user:{{{name}}}"))
                .await
                .unwrap();
            left += usize::from(cached.is_some());
        }
        if left == 0 {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(5),
            "stale entries still in Redis {:?} after the link healed",
            healed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "undelivered invalidations left Redis {:?} after the link healed",
        healed.elapsed()
    );
    drop(a.stop().await);
}

async fn history_with_a_cut(database: Option<String>, backend: &str) {
    let (a, b, proxy) = replicas(database.clone()).await;
    let load = tokio::spawn({
        let replicas = [a.channel.clone(), b.channel.clone()];
        let workload = Workload {
            prefix: format!("{backend}-part"),
            duration: Duration::from_secs(5),
            ..Workload::default()
        };
        async move { history::run(&workload, &replicas).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.restore();
    let history = load.await.unwrap();
    let db = sea_orm::Database::connect(
        database.unwrap_or_else(|| format!("sqlite://{}", b.db_path().display())),
    )
    .await
    .unwrap();
    let verdict = history.check_within(&db, BOUND).await;
    verdict.assert_clean(backend);
    assert!(history.forbidden.is_empty(), "{:?}", history.codes);
    eprintln!(
        "{backend}, two replicas, one cut off from Redis for 2.5 s: {} acknowledged, {} unknown, \
         {} reads, lost 0, stale (beyond {BOUND:?}) 0, longest call {:?}",
        verdict.acknowledged, verdict.unknown, verdict.reads, verdict.longest
    );
    drop(a.stop().await);
    drop(b.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_across_two_replicas_with_one_cut_off_from_redis_has_no_stale_read_or_loss() {
    history_with_a_cut(None, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_history_across_two_replicas_with_one_cut_off_has_no_stale_read_or_loss() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    history_with_a_cut(Some(database.url()), "postgres").await;
    database.drop_database().await;
}
