//! kill -9 at random points under a write-heavy load: every acknowledged
//! write survives, nothing unsent appears, no read after a restart is
//! stale, and SQLite's integrity check passes. The short form runs in CI;
//! `ROSTER_FAULT_TRIALS=20` runs the long form (see README).

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::{ConnectionTrait, Statement};

use crate::{
    helpers::RedisServer,
    history::{self, Workload},
    rig::{ServerProcess, trials},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_no_acknowledged_write() {
    let kills = trials(3);
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let db_path = dir.path().join("roster.db");
    let mut server = ServerProcess::start(
        &format!("sqlite://{}", db_path.display()),
        &redis.url(),
        &[],
    )
    .await;
    let channel = server.channel();
    let workload = Workload {
        prefix: "kill".into(),
        clients: 8,
        users: 4,
        // Long enough for every kill and restart to land inside it.
        duration: Duration::from_millis(1500 * kills as u64 + 1000),
        call_timeout: Duration::from_secs(2),
        settle: Duration::from_secs(30),
        seed: 9,
    };
    let load = tokio::spawn({
        let channel = channel.clone();
        async move { history::run(&workload, &[channel]).await }
    });
    let mut rng = StdRng::seed_from_u64(42);
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        server.kill9();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        server.restart().await;
    }
    let history = load.await.unwrap();
    assert!(server.terminate(), "clean exit");

    let db = sea_orm::Database::connect(format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    let check = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "PRAGMA integrity_check",
        ))
        .await
        .unwrap()
        .unwrap();
    let integrity: String = check.try_get_by_index(0).unwrap();
    assert_eq!(integrity, "ok");
    let verdict = history.check(&db).await;
    verdict.assert_clean("kill -9");
    assert!(history.forbidden.is_empty(), "{:?}", history.codes);
    assert!(verdict.acknowledged > 0);
    eprintln!(
        "kill -9: {kills} trials, {} acknowledged, {} unknown, {} reads, lost {}, stale {}, \
         longest call {:?}",
        verdict.acknowledged,
        verdict.unknown,
        verdict.reads,
        verdict.lost.len(),
        verdict.stale.len(),
        verdict.longest
    );
}
