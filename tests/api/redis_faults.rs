//! Redis faults under load, with two replicas on one database: Redis frozen
//! (SIGSTOP), killed and restarted empty, and restarted from an old
//! snapshot (as a restore from backup, or a failover to a replica that
//! lagged, puts it back in time). No call fails for Redis's sake, no call
//! waits long, and no read is stale (the history checker across both
//! replicas).

use std::time::{Duration, Instant};

use fred::prelude::KeysInterface;

use crate::{
    helpers::RedisServer,
    history::{self, History, Workload},
    rig::ServerProcess,
};

struct Pair {
    _dir: tempfile::TempDir,
    db: String,
    a: ServerProcess,
    b: ServerProcess,
}

async fn pair(redis: &RedisServer) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("roster.db").display());
    let a = ServerProcess::start(&db, &redis.url(), &[]).await;
    let b = ServerProcess::start(&db, &redis.url(), &[]).await;
    Pair {
        _dir: dir,
        db,
        a,
        b,
    }
}

fn workload(prefix: &str, duration: Duration) -> Workload {
    Workload {
        prefix: prefix.into(),
        duration,
        call_timeout: Duration::from_secs(2),
        settle: Duration::from_secs(10),
        ..Workload::default()
    }
}

/// The server's default staleness bound: the two replicas reconnect to
/// Redis at different moments (each on its own backoff), and while one is
/// still away the other serves its writes within the bound.
const BOUND: Duration = Duration::from_secs(1);

async fn check(pair: &Pair, what: &str, history: &History) -> history::Verdict {
    let db = sea_orm::Database::connect(&pair.db).await.unwrap();
    let verdict = history.check_within(&db, BOUND).await;
    verdict.assert_clean(what);
    assert!(history.forbidden.is_empty(), "{what}: {:?}", history.codes);
    eprintln!(
        "{what}: {} acknowledged, {} unknown, {} reads, lost {}, stale {}, longest call {:?}",
        verdict.acknowledged,
        verdict.unknown,
        verdict.reads,
        verdict.lost.len(),
        verdict.stale.len(),
        verdict.longest
    );
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_fails_no_call_and_leaves_no_stale_read() {
    let redis = RedisServer::start();
    let pair = pair(&redis).await;
    let replicas = [pair.a.channel(), pair.b.channel()];
    let load = tokio::spawn({
        let replicas = replicas.clone();
        async move { history::run(&workload("frozen", Duration::from_secs(4)), &replicas).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.freeze();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.thaw();
    let history = load.await.unwrap();
    let verdict = check(&pair, "redis frozen 2 s", &history).await;
    assert_eq!(verdict.unknown, 0, "no call failed: {:?}", history.codes);
    let reads = history.longest_read();
    assert!(
        reads < Duration::from_secs(1),
        "no read waits on a frozen redis: {reads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_killed_and_restarted_empty_fails_no_call_and_leaves_no_stale_read() {
    let mut redis = RedisServer::start();
    let pair = pair(&redis).await;
    let replicas = [pair.a.channel(), pair.b.channel()];
    let load = tokio::spawn({
        let replicas = replicas.clone();
        async move { history::run(&workload("killed", Duration::from_secs(4)), &replicas).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    let history = load.await.unwrap();
    let verdict = check(&pair, "redis killed, restarted empty", &history).await;
    assert_eq!(verdict.unknown, 0, "no call failed: {:?}", history.codes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_from_an_old_snapshot_serves_nothing_stale_on_either_replica() {
    let mut redis = RedisServer::start();
    let pair = pair(&redis).await;
    let replicas = [pair.a.channel(), pair.b.channel()];
    // One run over the same users: cached, then a snapshot, then writes
    // (deletes, password changes, games) whose effects on Redis the snapshot
    // lacks, then Redis goes back to the snapshot while the run goes on.
    let load = tokio::spawn({
        let replicas = replicas.clone();
        async move { history::run(&workload("snap", Duration::from_secs(6)), &replicas).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let old = redis.snapshot().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restored = Instant::now();
    redis.restart_from(&old);
    let history = load.await.unwrap();
    check(&pair, "redis restored from an old snapshot", &history).await;
    // The replicas noticed and caught Redis up from the outbox.
    let log = pair.a.log() + &pair.b.log();
    assert!(
        log.contains("redis went back in time"),
        "the regression is noticed and logged"
    );
    let client = redis.client().await;
    let delivered: Option<u64> = client.get("roster:v1:outbox:{lb}:delivered").await.unwrap();
    assert!(
        delivered.is_some(),
        "caught up {:?} after the restore",
        restored.elapsed()
    );
}
