//! The board in Redis and each replica's in-process copy of it: every read a
//! copy serves reflects every game acknowledged before the read, whichever
//! replica acknowledged it; a gap in the board's change log sends reads to
//! Redis until the copy is loaded again; a game that reaches Redis after its
//! player was deleted does not bring the player back.

use std::time::Duration;

use fred::prelude::{ClientLike, KeysInterface, SortedSetsInterface, StreamsInterface};
use roster::{failpoint, proto::roster::v1 as pb};
use tonic::Code;

use crate::{
    helpers::{TestApp, eventually, spawn_app},
    leaderboard::{around, board_of, list, names, stats, win},
};

const COPY_READ: &str = "board-copy-read";
const LOG_KEY: &str = "roster:v1:board:{lb}:log";
const VERSION_KEY: &str = "roster:v1:board:{lb}:version";

/// Whether a GetUserStats for `name` on `app` was answered by its copy.
async fn served_from_copy(app: &TestApp, name: &str) -> bool {
    let before = failpoint::count(COPY_READ, name);
    stats(app, name).await.unwrap();
    failpoint::count(COPY_READ, name) > before
}

async fn wait_for_copy(app: &TestApp, name: &str) {
    let served = eventually(Duration::from_secs(20), || served_from_copy(app, name)).await;
    assert!(served, "the board copy answers reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_acknowledged_by_one_replica_is_in_every_read_of_another_at_once() {
    let a = spawn_app().await;
    let players = ["rep0", "rep1", "rep2", "rep3"];
    board_of(&a, &[("rep0", 1), ("rep1", 2), ("rep2", 3), ("rep3", 4)]).await;
    let b = a.spawn_replica().await;
    wait_for_copy(&a, "rep0").await;
    wait_for_copy(&b, "rep0").await;

    let copy_reads = || {
        players
            .iter()
            .map(|p| failpoint::count(COPY_READ, p))
            .sum::<usize>()
    };
    let before = copy_reads();
    let rounds = 60;
    for round in 0..rounds {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let name = players[round % players.len()];
        // Every game is a new best, so its player goes to the top.
        let written = win(writer, name, 10 + round as i64).await;
        assert_eq!(written.rank, 1);
        let read = stats(reader, name).await.unwrap();
        assert_eq!(
            (read.games_played, read.best_score, read.rank),
            (written.games_played, written.best_score, 1),
            "round {round}: stats on the other replica"
        );
        let top = list(reader, 2, "").await.unwrap();
        assert_eq!(
            top.entries[0].name, name,
            "round {round}: the top of the board"
        );
        assert_eq!(top.entries[0].score, written.best_score);
        let window = around(reader, name, 3).await.unwrap();
        assert_eq!(names(&window)[0], name, "round {round}: the window");
    }
    // Two keyed reads a round (stats and window); the copy answered them.
    let served = copy_reads() - before;
    assert!(
        served >= rounds * 2 * 9 / 10,
        "only {served} of {} reads came from the copies",
        rounds * 2
    );

    // A deletion on one replica is gone from the other's board at once.
    b.delete_user("rep3").await;
    let listed = list(&a, 10, "").await.unwrap();
    assert!(!names(&listed.entries).contains(&"rep3"));
    assert_eq!(listed.total_size, 3);
    assert_eq!(stats(&a, "rep3").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_sync_a_replica_would_read_a_stale_copy() {
    // The same reads as above with the per-read sync switched off for one
    // user: the other replica then answers from a copy that lacks the game,
    // which shows the test above can fail.
    let a = spawn_app().await;
    board_of(&a, &[("stale0", 1), ("stale1", 2)]).await;
    let b = a.spawn_replica().await;
    wait_for_copy(&a, "stale0").await;
    wait_for_copy(&b, "stale0").await;
    failpoint::set_unguarded("stale0", true);
    let mut stale = 0;
    for round in 0..20 {
        let written = win(&a, "stale0", 10 + round).await;
        let read = stats(&b, "stale0").await.unwrap();
        if read.games_played < written.games_played {
            stale += 1;
        }
    }
    failpoint::set_unguarded("stale0", false);
    assert!(stale > 0, "without the sync no read was stale");
    // With the sync back, the same read is exact again.
    let written = win(&a, "stale0", 100).await;
    assert_eq!(
        stats(&b, "stale0").await.unwrap().games_played,
        written.games_played
    );
}

#[tokio::test]
async fn a_gap_in_the_change_log_reloads_the_copy_without_a_wrong_answer() {
    let app = spawn_app().await;
    board_of(&app, &[("gap0", 5), ("gap1", 3)]).await;
    wait_for_copy(&app, "gap0").await;

    // Lose log entries: the version moves on, the entries are gone.
    let redis = app.redis.client().await;
    let _: i64 = redis.xtrim(LOG_KEY, ("MAXLEN", 0)).await.unwrap();
    let _: i64 = redis.incr_by(VERSION_KEY, 3).await.unwrap();
    let before = failpoint::count(COPY_READ, "gap1");
    let read = stats(&app, "gap1").await.unwrap();
    assert_eq!((read.rank, read.best_score), (2, 3));
    assert_eq!(
        failpoint::count(COPY_READ, "gap1"),
        before,
        "a copy behind a gap must not answer"
    );
    assert_eq!(
        names(&list(&app, 10, "").await.unwrap().entries),
        ["gap0", "gap1"]
    );

    // The copy is loaded again and follows the log from there.
    wait_for_copy(&app, "gap1").await;
    assert_eq!(win(&app, "gap1", 9).await.rank, 1);
    assert!(served_from_copy(&app, "gap1").await);
    assert_eq!(stats(&app, "gap1").await.unwrap().rank, 1);
    assert_eq!(
        names(&around(&app, "gap0", 2).await.unwrap()),
        ["gap1", "gap0"]
    );
    redis.quit().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_that_reaches_redis_after_its_player_was_deleted_does_not_bring_them_back() {
    let app = spawn_app().await;
    board_of(&app, &[("ghost", 5), ("alive", 3)]).await;
    wait_for_copy(&app, "alive").await;

    // The game commits, then waits before updating Redis; meanwhile the
    // player is deleted (database and board).
    let pause = failpoint::arm("record-before-board", "ghost");
    let game = tokio::spawn({
        let app_client = crate::leaderboard::client(&app);
        async move {
            let mut client = app_client;
            client
                .record_game(pb::RecordGameRequest {
                    name: "ghost".into(),
                    outcome: pb::GameOutcome::Win.into(),
                    score: 9,
                    request_id: String::new(),
                })
                .await
        }
    });
    pause.reached.notified().await;
    app.delete_user("ghost").await;
    pause.resume.notify_one();
    game.await
        .unwrap()
        .expect("the game committed before the deletion");

    let listed = list(&app, 10, "").await.unwrap();
    assert_eq!(names(&listed.entries), ["alive"], "no ghost on the board");
    assert_eq!(listed.total_size, 1);
    assert_eq!(stats(&app, "alive").await.unwrap().rank, 1);
    assert_eq!(
        stats(&app, "ghost").await.unwrap_err().code(),
        Code::NotFound
    );
    let redis = app.redis.client().await;
    let ranked: i64 = redis.zcard(crate::leaderboard::SET_KEY).await.unwrap();
    assert_eq!(ranked, 1, "the set in Redis holds no ghost either");

    // Someone new may take the name and play.
    app.create_user("ghost").await;
    assert_eq!(win(&app, "ghost", 1).await.rank, 2);
    assert_eq!(
        names(&list(&app, 10, "").await.unwrap().entries),
        ["alive", "ghost"]
    );
    redis.quit().await.ok();
}
