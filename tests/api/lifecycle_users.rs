//! DeleteUser and ListUsers.

use std::collections::{BTreeSet, HashMap};

use roster::proto::roster::v1 as pb;
use tonic::Code;

use crate::helpers::{TestApp, reason, spawn_app, violations};

async fn delete(app: &TestApp, name: &str) -> Result<(), tonic::Status> {
    app.client
        .clone()
        .delete_user(pb::DeleteUserRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .map(drop)
}

async fn list(
    app: &TestApp,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListUsersResponse, tonic::Status> {
    app.client
        .clone()
        .list_users(pb::ListUsersRequest {
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn delete_removes_the_user_and_frees_the_name_at_once() {
    let app = spawn_app().await;
    let first = app.create_user("Amber").await;
    app.get_user("amber").await.unwrap(); // cached

    delete(&app, "AMBER").await.unwrap();
    let status = app.get_user("amber").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "not served from the cache");
    let status = delete(&app, "amber").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(reason(&status), "USER_NOT_FOUND");

    let second = app.create_user("amber").await;
    assert_ne!(second.id, first.id);
    assert_eq!(app.get_user("Amber").await.unwrap(), second);
}

#[tokio::test]
async fn list_pages_through_users_in_canonical_order() {
    let app = spawn_app().await;
    for name in ["delta", "Alpha", "charlie", "ECHO", "bravo"] {
        app.create_user(name).await;
    }
    let first = list(&app, 2, "").await.unwrap();
    let names: Vec<_> = first.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["Alpha", "bravo"]);
    let second = list(&app, 2, &first.next_page_token).await.unwrap();
    let names: Vec<_> = second.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["charlie", "delta"]);
    let third = list(&app, 2, &second.next_page_token).await.unwrap();
    let names: Vec<_> = third.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["ECHO"]);
    assert!(third.next_page_token.is_empty());

    let all = list(&app, 0, "").await.unwrap();
    assert_eq!(all.users.len(), 5, "page_size 0 means the default (50)");
    assert!(all.next_page_token.is_empty());
    let capped = list(&app, 5000, "").await.unwrap();
    assert_eq!(capped.users.len(), 5);
}

#[tokio::test]
async fn list_refuses_negative_sizes_and_foreign_tokens() {
    let app = spawn_app().await;
    let status = list(&app, -1, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&status),
        vec![("page_size".to_owned(), "PAGE_SIZE_NEGATIVE".to_owned())]
    );
    for token in ["garbage", "dXNlcnMvdjEvQUxJQ0U", "%%%"] {
        let status = list(&app, 10, token).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{token}");
        assert_eq!(
            violations(&status),
            vec![("page_token".to_owned(), "PAGE_TOKEN_INVALID".to_owned())]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_sees_every_user_present_throughout_exactly_once_despite_churn() {
    let app = spawn_app().await;
    let mut stable = BTreeSet::new();
    for i in 0..60 {
        let name = format!("stable-{i:03}");
        app.create_user(&name).await;
        stable.insert(name);
    }
    for i in 0..30 {
        app.create_user(&format!("churn-{i:03}")).await;
    }
    // Churn: delete the churn users and create new ones while paging.
    let churn = {
        let client = app.client.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                let mut c = client.clone();
                c.delete_user(pb::DeleteUserRequest {
                    name: format!("churn-{i:03}"),
                    ..Default::default()
                })
                .await
                .unwrap();
                c.create_user(pb::CreateUserRequest {
                    name: format!("newcomer-{i:03}"),
                    password: crate::helpers::PASSWORD.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        })
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut token = String::new();
    loop {
        let page = list(&app, 7, &token).await.unwrap();
        for user in page.users {
            *seen.entry(user.name).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    churn.await.unwrap();
    for name in &stable {
        assert_eq!(seen.get(name), Some(&1), "{name}");
    }
    assert!(seen.values().all(|&n| n == 1), "no user is seen twice");
}

#[tokio::test]
async fn delete_cascades_to_stats_and_the_board_and_a_new_user_starts_clean() {
    use roster::proto::roster::v1::{
        GameOutcome, GetUserStatsRequest, ListLeaderboardRequest, RecordGameRequest,
        leaderboard_service_client::LeaderboardServiceClient,
    };
    use sea_orm::{ConnectionTrait, Statement};
    let app = spawn_app().await;
    let mut board = LeaderboardServiceClient::new(app.channel.clone());
    for (name, score) in [("Bea", 50), ("Cal", 70)] {
        app.create_user(name).await;
        board
            .record_game(RecordGameRequest {
                name: name.into(),
                outcome: GameOutcome::Win as i32,
                score,
                request_id: format!("{name}-1"),
            })
            .await
            .unwrap();
    }
    let listed = board
        .list_leaderboard(ListLeaderboardRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_size, 2);

    delete(&app, "cal").await.unwrap();

    let listed = board
        .list_leaderboard(ListLeaderboardRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed
        .entries
        .iter()
        .map(|e| (e.rank, e.name.as_str()))
        .collect();
    assert_eq!(names, [(1, "Bea")]);
    assert_eq!(listed.total_size, 1);
    let db = app.database().await;
    for table in ["user_stats", "leaderboard_entries", "record_game_requests"] {
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .unwrap()
            .unwrap();
        let n: i64 = row.try_get("", "n").unwrap();
        assert_eq!(n, 1, "{table} keeps only Bea's row");
    }

    // The name is free at once, and its new owner starts with nothing.
    app.create_user("Cal").await;
    let stats = board
        .get_user_stats(GetUserStatsRequest { name: "cal".into() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(
        (stats.games_played, stats.best_score, stats.rank),
        (0, 0, 0)
    );
    // Replaying the old request id counts as a new game for the new user.
    let replay = board
        .record_game(RecordGameRequest {
            name: "cal".into(),
            outcome: GameOutcome::Loss as i32,
            score: 1,
            request_id: "Cal-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!((replay.games_played, replay.losses, replay.rank), (1, 1, 2));
}
