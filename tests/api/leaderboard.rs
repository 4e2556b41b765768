//! LeaderboardService: stats arithmetic, idempotency, concurrency, ties, page
//! edges, token misuse, Redis outages and rebuilds, and a property test that
//! compares every read with a brute-force ordering of the database.

use std::{cell::RefCell, collections::HashMap, time::Duration};

use fred::prelude::{ClientLike, KeysInterface, SortedSetsInterface};
use proptest::{
    prelude::*,
    test_runner::{Config as ProptestConfig, TestCaseError, TestRunner},
};
use roster::proto::roster::v1::{
    self as pb, GameOutcome, leaderboard_service_client::LeaderboardServiceClient,
};
use sea_orm::{ConnectionTrait, Statement};
use tonic::{Code, transport::Channel};

use crate::helpers::{
    RedisServer, TestApp, eventually, reason, spawn_app, spawn_with, test_config, violations,
};

pub(crate) const SET_KEY: &str = "roster:v1:board:{lb}:set";
pub(crate) const READY_KEY: &str = "roster:v1:board:{lb}:ready";
const MAX_SCORE: i64 = (1 << 53) - 1;

pub(crate) fn client(app: &TestApp) -> LeaderboardServiceClient<Channel> {
    LeaderboardServiceClient::new(app.channel.clone())
}

pub(crate) async fn record(
    app: &TestApp,
    name: &str,
    outcome: GameOutcome,
    score: i64,
    request_id: &str,
) -> Result<pb::UserStats, tonic::Status> {
    client(app)
        .record_game(pb::RecordGameRequest {
            name: name.into(),
            outcome: outcome.into(),
            score,
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().stats.unwrap())
}

pub(crate) async fn win(app: &TestApp, name: &str, score: i64) -> pb::UserStats {
    record(app, name, GameOutcome::Win, score, "")
        .await
        .unwrap()
}

pub(crate) async fn stats(app: &TestApp, name: &str) -> Result<pb::UserStats, tonic::Status> {
    client(app)
        .get_user_stats(pb::GetUserStatsRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().stats.unwrap())
}

pub(crate) async fn list(
    app: &TestApp,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListLeaderboardResponse, tonic::Status> {
    client(app)
        .list_leaderboard(pb::ListLeaderboardRequest {
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every page of the board with `page_size`, and the total_size of each page.
pub(crate) async fn all_pages(
    app: &TestApp,
    page_size: i32,
) -> (Vec<Vec<pb::LeaderboardEntry>>, Vec<i64>) {
    let (mut pages, mut totals, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = list(app, page_size, &token).await.unwrap();
        pages.push(page.entries);
        totals.push(page.total_size);
        if page.next_page_token.is_empty() {
            return (pages, totals);
        }
        token = page.next_page_token;
    }
}

pub(crate) async fn around(
    app: &TestApp,
    name: &str,
    page_size: i32,
) -> Result<Vec<pb::LeaderboardEntry>, tonic::Status> {
    client(app)
        .list_leaderboard_around_user(pb::ListLeaderboardAroundUserRequest {
            name: name.into(),
            page_size,
        })
        .await
        .map(|r| r.into_inner().entries)
}

pub(crate) fn names(entries: &[pb::LeaderboardEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.name.as_str()).collect()
}

pub(crate) fn ranks(entries: &[pb::LeaderboardEntry]) -> Vec<i64> {
    entries.iter().map(|e| e.rank).collect()
}

/// Waits until this Roster has rebuilt the board in Redis and trusts it.
pub(crate) async fn wait_for_redis_board(app: &TestApp, ranked: i64) {
    let redis = app.redis.client().await;
    let ready = eventually(Duration::from_secs(15), || async {
        let exists: i64 = redis.exists(READY_KEY).await.unwrap_or(0);
        let card: i64 = redis.zcard(SET_KEY).await.unwrap_or(-1);
        exists == 1 && card == ranked
    })
    .await;
    assert!(ready, "the board is rebuilt in redis");
    redis.quit().await.ok();
}

/// Creates users named `names` and gives each the given best score, in order.
pub(crate) async fn board_of(app: &TestApp, players: &[(&str, i64)]) {
    for (name, _) in players {
        app.create_user(name).await;
    }
    for (name, score) in players {
        win(app, name, *score).await;
    }
}

#[tokio::test]
async fn record_game_adds_up_wins_losses_draws_best_and_total_scores() {
    let app = spawn_app().await;
    let user = app.create_user("Ada").await;
    let first = record(&app, "ada", GameOutcome::Win, 30, "").await.unwrap();
    assert_eq!(
        (
            first.games_played,
            first.wins,
            first.best_score,
            first.total_score,
            first.rank
        ),
        (1, 1, 30, 30, 1)
    );
    assert_eq!(first.user_id, user.id);
    assert_eq!(first.name, "Ada");
    assert!(first.update_time.is_some());
    record(&app, "ADA", GameOutcome::Loss, 50, "")
        .await
        .unwrap();
    let last = record(&app, "Ada", GameOutcome::Draw, 20, "")
        .await
        .unwrap();
    assert_eq!(
        (
            last.games_played,
            last.wins,
            last.losses,
            last.draws,
            last.best_score,
            last.total_score,
            last.rank
        ),
        (3, 1, 1, 1, 50, 100, 1)
    );
    assert_eq!(stats(&app, "ada").await.unwrap(), last);
}

#[tokio::test]
async fn a_user_with_no_games_has_zero_stats_rank_zero_and_an_empty_window() {
    let app = spawn_app().await;
    let user = app.create_user("Bea").await;
    let zero = stats(&app, "bea").await.unwrap();
    assert_eq!(
        zero,
        pb::UserStats {
            user_id: user.id,
            name: "Bea".into(),
            ..Default::default()
        }
    );
    assert!(around(&app, "bea", 0).await.unwrap().is_empty());
    let empty = list(&app, 0, "").await.unwrap();
    assert!(empty.entries.is_empty());
    assert_eq!((empty.total_size, empty.next_page_token.as_str()), (0, ""));
}

#[tokio::test]
async fn unknown_users_are_not_found_on_every_call() {
    let app = spawn_app().await;
    let status = record(&app, "ghost", GameOutcome::Win, 1, "")
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::NotFound, "USER_NOT_FOUND")
    );
    assert_eq!(
        stats(&app, "ghost").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        around(&app, "ghost", 5).await.unwrap_err().code(),
        Code::NotFound
    );
    // Also when other users are ranked (the Redis path answers "unranked").
    app.create_user("Cleo").await;
    win(&app, "cleo", 1).await;
    wait_for_redis_board(&app, 1).await;
    assert_eq!(
        stats(&app, "ghost").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        around(&app, "ghost", 5).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn bad_fields_are_invalid_argument_with_a_violation_per_field() {
    let app = spawn_app().await;
    app.create_user("Dora").await;
    let status = client(&app)
        .record_game(pb::RecordGameRequest {
            name: "Dora".into(),
            outcome: 0,
            score: -1,
            request_id: "x".repeat(65),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&status),
        vec![
            ("outcome".into(), "OUTCOME_REQUIRED".into()),
            ("score".into(), "SCORE_OUT_OF_RANGE".into()),
            ("request_id".into(), "REQUEST_ID_TOO_LONG".into()),
        ]
    );
    for (outcome, score, field, why) in [
        (9, 1, "outcome", "OUTCOME_UNKNOWN"),
        (1, MAX_SCORE + 1, "score", "SCORE_OUT_OF_RANGE"),
    ] {
        let status = client(&app)
            .record_game(pb::RecordGameRequest {
                name: "Dora".into(),
                outcome,
                score,
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(violations(&status), vec![(field.into(), why.into())]);
    }
    let status = list(&app, -1, "").await.unwrap_err();
    assert_eq!(
        violations(&status),
        vec![("page_size".into(), "PAGE_SIZE_NEGATIVE".into())]
    );
    let status = around(&app, "Dora", -1).await.unwrap_err();
    assert_eq!(
        violations(&status),
        vec![("page_size".into(), "PAGE_SIZE_NEGATIVE".into())]
    );
    let status = stats(&app, "").await.unwrap_err();
    assert_eq!(
        violations(&status),
        vec![("name".into(), "NAME_EMPTY".into())]
    );
    // Nothing was recorded; the largest score is accepted.
    assert_eq!(stats(&app, "dora").await.unwrap().games_played, 0);
    assert_eq!(win(&app, "dora", MAX_SCORE).await.best_score, MAX_SCORE);
    let top = list(&app, 1, "").await.unwrap();
    assert_eq!(top.entries[0].score, MAX_SCORE, "exact through Redis");
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_returns_the_first_result_and_counts_once() {
    let app = spawn_app().await;
    app.create_user("Eve").await;
    app.create_user("Finn").await;
    let first = record(&app, "eve", GameOutcome::Win, 10, "req-1")
        .await
        .unwrap();
    let retry = record(&app, "eve", GameOutcome::Loss, 99, "req-1")
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert_eq!(stats(&app, "eve").await.unwrap().games_played, 1);
    // The key is per user, and a new key counts.
    let finn = record(&app, "finn", GameOutcome::Win, 5, "req-1")
        .await
        .unwrap();
    assert_eq!(finn.games_played, 1);
    let second = record(&app, "eve", GameOutcome::Loss, 1, "req-2")
        .await
        .unwrap();
    assert_eq!(second.games_played, 2);
    // After more games, the old key still replays the first call's stats.
    assert_eq!(
        record(&app, "eve", GameOutcome::Win, 1, "req-1")
            .await
            .unwrap()
            .games_played,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_retries_of_one_request_id_count_once_and_agree() {
    let app = spawn_app().await;
    app.create_user("Gus").await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = client(&app);
            tokio::spawn(async move {
                client
                    .record_game(pb::RecordGameRequest {
                        name: "gus".into(),
                        outcome: GameOutcome::Draw.into(),
                        score: 7,
                        request_id: "same-key".into(),
                    })
                    .await
                    .map(|r| r.into_inner().stats.unwrap())
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap().unwrap());
    }
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    assert_eq!((results[0].games_played, results[0].draws), (1, 1));
    assert_eq!(stats(&app, "gus").await.unwrap().games_played, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_games_for_one_user_lose_no_update() {
    let app = spawn_app().await;
    app.create_user("Hal").await;
    let calls: Vec<_> = (0..1000i64)
        .map(|i| {
            let mut client = client(&app);
            tokio::spawn(async move {
                client
                    .record_game(pb::RecordGameRequest {
                        name: "hal".into(),
                        outcome: GameOutcome::Win.into(),
                        score: i,
                        request_id: String::new(),
                    })
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let hal = stats(&app, "hal").await.unwrap();
    assert_eq!(
        (
            hal.games_played,
            hal.wins,
            hal.best_score,
            hal.total_score,
            hal.rank
        ),
        (1000, 1000, 999, 999 * 1000 / 2, 1)
    );
}

#[tokio::test]
async fn equal_scores_rank_by_who_reached_the_score_first() {
    let app = spawn_app().await;
    for name in ["Ivy", "Jon", "Kim"] {
        app.create_user(name).await;
    }
    win(&app, "jon", 10).await;
    win(&app, "ivy", 10).await;
    win(&app, "kim", 5).await;
    let board = list(&app, 0, "").await.unwrap().entries;
    assert_eq!(names(&board), ["Jon", "Ivy", "Kim"]);
    assert_eq!(ranks(&board), [1, 2, 3]);
    // Equalling one's best does not move anyone; a lower score neither.
    win(&app, "jon", 10).await;
    win(&app, "jon", 1).await;
    assert_eq!(
        names(&list(&app, 0, "").await.unwrap().entries),
        ["Jon", "Ivy", "Kim"]
    );
    // Kim reaches 10 last: third among the tens.
    assert_eq!(win(&app, "kim", 10).await.rank, 3);
    // Ivy goes higher, then Jon reaches the same: Ivy was first.
    assert_eq!(win(&app, "ivy", 11).await.rank, 1);
    assert_eq!(win(&app, "jon", 11).await.rank, 2);
    let board = list(&app, 0, "").await.unwrap().entries;
    assert_eq!(names(&board), ["Ivy", "Jon", "Kim"]);
    assert_eq!(stats(&app, "kim").await.unwrap().rank, 3);
}

#[tokio::test]
async fn pages_cover_the_board_exactly_at_every_edge() {
    let app = spawn_app().await;
    let players: Vec<(String, i64)> = (0..7).map(|i| (format!("p{i}"), 70 - i * 10)).collect();
    let players: Vec<(&str, i64)> = players.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    board_of(&app, &players).await;
    let all = ["p0", "p1", "p2", "p3", "p4", "p5", "p6"];

    // A last partial page.
    let (pages, totals) = all_pages(&app, 3).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert!(totals.iter().all(|&t| t == 7));
    assert_eq!(
        pages.concat().iter().map(|e| e.rank).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(names(&pages.concat()), all);
    // Exactly full pages: no empty page at the end.
    let (pages, _) = all_pages(&app, 7).await;
    assert_eq!(pages.len(), 1);
    app.create_user("p7").await;
    win(&app, "p7", 0).await;
    let (pages, _) = all_pages(&app, 4).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4]);
    // page_size 1.
    let (pages, _) = all_pages(&app, 1).await;
    assert_eq!(pages.len(), 8);
    assert!(pages.iter().all(|p| p.len() == 1));
    // Default and cap.
    assert_eq!(list(&app, 0, "").await.unwrap().entries.len(), 8);
    assert_eq!(list(&app, 1000, "").await.unwrap().entries.len(), 8);

    // Around the user at rank 1 and at the last rank: clamped windows.
    let top = around(&app, "p0", 3).await.unwrap();
    assert_eq!(
        (names(&top), ranks(&top)),
        (vec!["p0", "p1", "p2"], vec![1, 2, 3])
    );
    let bottom = around(&app, "p7", 3).await.unwrap();
    assert_eq!(
        (names(&bottom), ranks(&bottom)),
        (vec!["p5", "p6", "p7"], vec![6, 7, 8])
    );
    let middle = around(&app, "p4", 3).await.unwrap();
    assert_eq!(names(&middle), ["p3", "p4", "p5"]);
    let one = around(&app, "p4", 1).await.unwrap();
    assert_eq!(names(&one), ["p4"]);
    // The default window (11) is larger than the board: all of it.
    assert_eq!(around(&app, "p4", 0).await.unwrap().len(), 8);
}

#[tokio::test]
async fn a_page_token_is_refused_with_another_page_size_or_when_forged() {
    let app = spawn_app().await;
    board_of(&app, &[("q0", 3), ("q1", 2), ("q2", 1)]).await;
    let first = list(&app, 2, "").await.unwrap();
    assert!(!first.next_page_token.is_empty());
    let status = list(&app, 3, &first.next_page_token).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&status),
        vec![("page_token".into(), "PAGE_TOKEN_PAGE_SIZE_MISMATCH".into())]
    );
    for forged in ["nonsense", "bGIxOjI6MQ", "%%%"] {
        let status = list(&app, 2, forged).await.unwrap_err();
        assert_eq!(
            violations(&status),
            vec![("page_token".into(), "PAGE_TOKEN_INVALID".into())],
            "{forged}"
        );
    }
    let second = list(&app, 2, &first.next_page_token).await.unwrap();
    assert_eq!(names(&second.entries), ["q2"]);
}

/// Tokens Roster never issues: offsets no board reaches (past a signed
/// 64-bit count, which the database's OFFSET binding refused with a panic,
/// answered CANCELLED, when the board was read from the database), and other
/// spellings of real offsets (a plus sign, leading zeros), which were served
/// as if Roster had issued them. Found by the page-token property test.
const UNISSUABLE_TOKENS: [(i32, &str); 6] = [
    (5, "lb1:5:18446744073709551615"),
    (1, "lb1:1:9223372036854775807"),
    (2, "lb1:2:9223372036854775808"),
    (2, "lb1:2:+2"),
    (2, "lb1:2:02"),
    (2, "lb1:02:2"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_roster_could_not_have_issued_is_refused_whatever_serves_the_board() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    for board_copy in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start();
        let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
        config.board_copy = board_copy;
        let app = spawn_with(config, dir, redis).await;
        board_of(&app, &[("f0", 3), ("f1", 2), ("f2", 1)]).await;
        for (size, text) in UNISSUABLE_TOKENS {
            let token = URL_SAFE_NO_PAD.encode(text);
            let status = list(&app, size, &token)
                .await
                .expect_err(&format!("{text} accepted (board copy {board_copy})"));
            assert_eq!(
                violations(&status),
                vec![("page_token".into(), "PAGE_TOKEN_INVALID".into())],
                "{text}, board copy {board_copy}: {status:?}"
            );
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn the_board_and_stats_are_kept_in_redis_after_each_game() {
    let app = spawn_app().await;
    board_of(&app, &[("r0", 3), ("r1", 2)]).await;
    wait_for_redis_board(&app, 2).await;
    let redis = app.redis.client().await;
    let scores: Vec<(String, f64)> = redis.zrevrange(SET_KEY, 0, -1, true).await.unwrap();
    assert_eq!(scores.len(), 2);
    assert!(scores[0].0.ends_with("r0") && scores[0].1 == 3.0);
    // Change the database underneath: a read served from Redis cannot see it.
    let db = app.database().await;
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        "DELETE FROM leaderboard_entries",
    ))
    .await
    .unwrap();
    let served_from_redis = eventually(Duration::from_secs(5), || async {
        list(&app, 0, "").await.unwrap().entries.len() == 2
    })
    .await;
    assert!(served_from_redis);
    assert_eq!(stats(&app, "r1").await.unwrap().rank, 2);
    redis.quit().await.ok();
}

#[tokio::test]
async fn with_redis_stopped_every_read_gives_the_same_answers_and_a_restart_rebuilds_the_set() {
    let mut app = spawn_app().await;
    board_of(&app, &[("s0", 5), ("s1", 5), ("s2", 9), ("s3", 1)]).await;
    app.create_user("s4").await;
    wait_for_redis_board(&app, 4).await;

    async fn snapshot(
        app: &TestApp,
    ) -> (
        Vec<Vec<pb::LeaderboardEntry>>,
        Vec<pb::UserStats>,
        Vec<Vec<pb::LeaderboardEntry>>,
    ) {
        let (pages, _) = all_pages(app, 2).await;
        let mut all_stats = Vec::new();
        let mut windows = Vec::new();
        for name in ["s0", "s1", "s2", "s3", "s4"] {
            all_stats.push(stats(app, name).await.unwrap());
            windows.push(around(app, name, 3).await.unwrap());
        }
        (pages, all_stats, windows)
    }
    let before = snapshot(&app).await;
    assert_eq!(names(&before.0.concat()), ["s2", "s0", "s1", "s3"]);

    app.redis.stop();
    assert_eq!(
        snapshot(&app).await,
        before,
        "the database answers the same"
    );
    // Writes while Redis is down are read back exactly.
    assert_eq!(win(&app, "s3", 9).await.rank, 2);
    assert_eq!(win(&app, "s4", 0).await.rank, 5);
    let down = snapshot(&app).await;
    assert_eq!(names(&down.0.concat()), ["s2", "s3", "s0", "s1", "s4"]);

    app.redis.restart();
    wait_for_redis_board(&app, 5).await;
    assert_eq!(
        snapshot(&app).await,
        down,
        "the rebuilt set answers the same"
    );
    assert_eq!(win(&app, "s1", 10).await.rank, 1);
    assert_eq!(
        names(&list(&app, 0, "").await.unwrap().entries),
        ["s1", "s2", "s3", "s0", "s4"]
    );
}

#[tokio::test]
async fn a_flushed_redis_is_noticed_and_rebuilt_without_a_wrong_answer() {
    let app = spawn_app().await;
    board_of(&app, &[("t0", 2), ("t1", 1)]).await;
    wait_for_redis_board(&app, 2).await;
    let redis = app.redis.client().await;
    let _: () = redis.flushall(false).await.unwrap();
    // The ready marker is gone: the reads fall back to the database.
    assert_eq!(
        names(&list(&app, 0, "").await.unwrap().entries),
        ["t0", "t1"]
    );
    assert_eq!(stats(&app, "t1").await.unwrap().rank, 2);
    wait_for_redis_board(&app, 2).await;
    assert_eq!(around(&app, "t1", 1).await.unwrap()[0].rank, 2);
    redis.quit().await.ok();
}

// ---- property test: every read agrees with a brute-force ordering ----

#[derive(Debug, Clone)]
struct Game {
    player: usize,
    outcome: GameOutcome,
    score: i64,
}

fn game() -> impl Strategy<Value = Game> {
    (
        0usize..4,
        prop_oneof![
            Just(GameOutcome::Win),
            Just(GameOutcome::Loss),
            Just(GameOutcome::Draw)
        ],
        // Few distinct scores, so ties are common; sometimes the largest.
        prop_oneof![4 => 0i64..4, 1 => Just(MAX_SCORE)],
    )
        .prop_map(|(player, outcome, score)| Game {
            player,
            outcome,
            score,
        })
}

/// What the model expects of one user: stats and when the best was reached.
#[derive(Debug, Clone, Default)]
struct Expected {
    games: i64,
    wins: i64,
    losses: i64,
    draws: i64,
    best: i64,
    total: i64,
    reached_at: u64,
}

struct World {
    app: TestApp,
    model: HashMap<String, Expected>,
    clock: u64,
    case: usize,
    /// Starts every player's name, so that runs in parallel keep their
    /// failpoint counts apart.
    prefix: &'static str,
}

async fn brute_force_board(app: &TestApp) -> Vec<(String, i64)> {
    let db = app.database().await;
    let board = board_in(&db).await;
    db.close().await.ok();
    board
}

/// The board as a brute-force sort of the database's rows: best score
/// first, then whoever reached it first; (name, score) per rank.
pub(crate) async fn board_in(db: &sea_orm::DatabaseConnection) -> Vec<(String, i64)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT u.name AS name, b.score AS score, b.seq AS seq \
             FROM leaderboard_entries b JOIN users u ON u.id = b.user_id",
        ))
        .await
        .unwrap();
    let mut board: Vec<(String, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "name").unwrap(),
                r.try_get("", "score").unwrap(),
                r.try_get("", "seq").unwrap(),
            )
        })
        .collect();
    board.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    board
        .into_iter()
        .map(|(name, score, _)| (name, score))
        .collect()
}

async fn play_and_check(
    world: &mut World,
    history: Vec<Game>,
    page_size: i32,
    window: i32,
    redis_down: bool,
) -> Result<(), TestCaseError> {
    world.case += 1;
    let players: Vec<String> = (0..4)
        .map(|i| format!("{}{}u{i}", world.prefix, world.case))
        .collect();
    for name in &players {
        world.app.create_user(name).await;
    }
    if redis_down {
        world.app.redis.stop();
    }
    for game in &history {
        let name = &players[game.player];
        let got = record(&world.app, name, game.outcome, game.score, "")
            .await
            .unwrap();
        world.clock += 1;
        let e = world.model.entry(name.clone()).or_default();
        if e.games == 0 || game.score > e.best {
            e.reached_at = world.clock;
        }
        e.games += 1;
        e.best = e.best.max(game.score);
        e.total += game.score;
        match game.outcome {
            GameOutcome::Win => e.wins += 1,
            GameOutcome::Loss => e.losses += 1,
            _ => e.draws += 1,
        }
        prop_assert_eq!(got.games_played, e.games);
    }

    // The model's order (best desc, reached first) and the database's agree.
    let mut expected: Vec<(&String, &Expected)> = world.model.iter().collect();
    expected.sort_by(|a, b| {
        b.1.best
            .cmp(&a.1.best)
            .then(a.1.reached_at.cmp(&b.1.reached_at))
    });
    let expected: Vec<(String, i64)> = expected
        .iter()
        .map(|(n, e)| ((*n).clone(), e.best))
        .collect();
    let database = brute_force_board(&world.app).await;
    prop_assert_eq!(&database, &expected);

    // Every page.
    let (pages, totals) = all_pages(&world.app, page_size).await;
    let listed: Vec<(String, i64)> = pages
        .concat()
        .into_iter()
        .map(|e| (e.name, e.score))
        .collect();
    prop_assert_eq!(&listed, &expected);
    prop_assert!(totals.iter().all(|&t| t == expected.len() as i64));
    prop_assert!(
        pages
            .iter()
            .rev()
            .skip(1)
            .all(|p| p.len() == page_size as usize)
    );
    // Every player's stats, rank and window.
    for name in &players {
        let got = stats(&world.app, name).await.unwrap();
        let rank = expected
            .iter()
            .position(|(n, _)| n == name)
            .map_or(0, |i| i as i64 + 1);
        let e = world.model.get(name).cloned().unwrap_or_default();
        prop_assert_eq!(
            (
                got.games_played,
                got.wins,
                got.losses,
                got.draws,
                got.best_score,
                got.total_score,
                got.rank
            ),
            (e.games, e.wins, e.losses, e.draws, e.best, e.total, rank)
        );
        let entries = around(&world.app, name, window).await.unwrap();
        if rank == 0 {
            prop_assert!(entries.is_empty());
            continue;
        }
        let size = window as usize;
        let index = rank as usize - 1;
        let start = index
            .saturating_sub((size - 1) / 2)
            .min(expected.len().saturating_sub(size));
        let want: Vec<(String, i64)> = expected.iter().skip(start).take(size).cloned().collect();
        let got: Vec<(String, i64)> = entries.iter().map(|e| (e.name.clone(), e.score)).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(entries[0].rank, start as i64 + 1);
    }
    if redis_down {
        world.app.redis.restart();
    }
    Ok(())
}

#[test]
fn every_read_agrees_with_a_brute_force_ordering_of_the_database_over_random_histories() {
    let (from_copy, keyed) = agree_with_brute_force("c", true);
    // Reads while Redis is stopped (a fifth of the cases) cannot use it.
    assert!(
        from_copy * 2 >= keyed,
        "the board copy answered only {from_copy} of {keyed} stats and window reads"
    );
}

#[test]
fn with_the_board_copy_off_every_read_still_agrees_with_a_brute_force_ordering() {
    // The Redis scripts then answer every read that Redis can.
    let (from_copy, _) = agree_with_brute_force("s", false);
    assert_eq!(from_copy, 0, "the board copy is off");
}

/// Runs the property test on a Roster with the board copy on or off; returns
/// how many stats and window reads the copy answered, and how many there were.
fn agree_with_brute_force(prefix: &'static str, board_copy: bool) -> (usize, usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start();
        let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
        config.board_copy = board_copy;
        spawn_with(config, dir, redis).await
    });
    let world = RefCell::new(World {
        app,
        model: HashMap::new(),
        clock: 0,
        case: 0,
        prefix,
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 24,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        proptest::collection::vec(game(), 0..12),
        1i32..=5,
        1i32..=6,
        proptest::bool::weighted(0.2),
    );
    let result = runner.run(&strategy, |(history, page_size, window, redis_down)| {
        runtime.block_on(play_and_check(
            &mut world.borrow_mut(),
            history,
            page_size,
            window,
            redis_down,
        ))
    });
    let world = world.into_inner();
    let copy_reads = (1..=world.case)
        .flat_map(|case| (0..4).map(move |i| format!("{prefix}{case}u{i}")))
        .map(|name| roster::failpoint::count("board-copy-read", &name))
        .sum();
    let keyed = world.case * 4 * 2;
    runtime.block_on(async move { drop(world.app.stop().await) });
    result.unwrap();
    (copy_reads, keyed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_game_committed_together_with_others_undoes_only_itself() {
    use sea_orm::{ConnectionTrait, Statement};
    let app = spawn_app().await;
    app.create_user("overflowing").await;
    app.create_user("steady").await;
    win(&app, "overflowing", 1).await;
    // One more big game would overflow this user's 64-bit total.
    let db = app.database().await;
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        "UPDATE user_stats SET total_score = 9223372036854775000",
    ))
    .await
    .unwrap();

    // Concurrent games share SQLite commits: failures must not take others along.
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let app_channel = app.channel.clone();
            tokio::spawn(async move {
                let name = if i % 2 == 0 { "overflowing" } else { "steady" };
                LeaderboardServiceClient::new(app_channel)
                    .record_game(pb::RecordGameRequest {
                        name: name.into(),
                        outcome: GameOutcome::Win.into(),
                        score: 1_000_000,
                        request_id: format!("game-{i}"),
                    })
                    .await
                    .map(drop)
                    .map_err(|status| status.code())
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let result = call.await.unwrap();
        if i % 2 == 0 {
            assert_eq!(result, Err(tonic::Code::FailedPrecondition));
        } else {
            assert_eq!(result, Ok(()));
        }
    }
    assert_eq!(stats(&app, "steady").await.unwrap().games_played, 20);
    assert_eq!(stats(&app, "overflowing").await.unwrap().games_played, 1);
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM record_game_requests",
        ))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get("", "n").unwrap();
    assert_eq!(n, 20, "only the counted games keep their request ids");
}
