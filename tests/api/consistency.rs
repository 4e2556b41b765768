//! The cache is never stale after a write: the read-old / write / set-old race,
//! single-flight misses, and every RPC with Redis down.

use std::time::Duration;

use fred::prelude::KeysInterface;
use roster::{cache::Keys, domain::UserName, failpoint, proto::roster::v1 as pb};
use tonic::Code;

use crate::helpers::{PASSWORD, TestApp, spawn_app};

fn key_of(name: &str) -> String {
    UserName::parse(name).unwrap().key().as_str().to_owned()
}

/// A GetUser misses, reads the row, and is paused before filling the cache;
/// `write` runs in the gap. Returns what GetUser answers afterwards.
async fn race_fill_against(
    app: &TestApp,
    name: &str,
    guarded: bool,
    write: impl std::future::Future<Output = ()>,
) -> Result<pb::User, tonic::Status> {
    let key = key_of(name);
    failpoint::set_unguarded(&key, !guarded);
    let redis = app.redis.client().await;
    let _: i64 = redis
        .del(Keys::default().user(UserName::parse(name).unwrap().key()))
        .await
        .unwrap();

    let pause = failpoint::arm("user-fill", &key);
    let reader = {
        let app_client = app.client.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut client = app_client;
            client.get_user(pb::GetUserRequest { name }).await
        })
    };
    pause.reached.notified().await; // the reader holds the old row
    write.await;
    pause.resume.notify_one();
    reader.await.unwrap().unwrap(); // the in-flight read answers what it read
    failpoint::set_unguarded(&key, false);
    app.get_user(name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_raced_a_delete_does_not_bring_the_user_back() {
    let app = spawn_app().await;
    app.create_user("race-delete").await;
    let after = race_fill_against(&app, "race-delete", true, app.delete_user("race-delete")).await;
    assert_eq!(after.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_guard_the_same_race_serves_a_deleted_user() {
    // The previous test's scenario with the lease check switched off: proves
    // the test can see the bug the guard prevents.
    let app = spawn_app().await;
    let created = app.create_user("race-unguarded").await;
    let after = race_fill_against(&app, "race-unguarded", false, async {
        app.client
            .clone()
            .delete_user(pb::DeleteUserRequest {
                name: "race-unguarded".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    })
    .await;
    assert_eq!(
        after.unwrap(),
        created,
        "stale entry served: the race is real"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_raced_a_password_change_does_not_serve_the_old_user() {
    for guarded in [true, false] {
        let app = spawn_app().await;
        let created = app.create_user("race-change").await;
        let mut changed = None;
        let after = race_fill_against(&app, "race-change", guarded, async {
            changed = Some(
                app.client
                    .clone()
                    .change_password(pb::ChangePasswordRequest {
                        name: "race-change".into(),
                        current_password: PASSWORD.into(),
                        new_password: "a brand new passphrase".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .user
                    .unwrap(),
            );
        })
        .await
        .unwrap();
        if guarded {
            assert_eq!(Some(after), changed, "the new update_time is served");
        } else {
            assert_eq!(after, created, "without the guard the old value comes back");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_for_one_name_read_the_database_once() {
    let app = spawn_app().await;
    app.create_user("popular").await;
    let key = key_of("popular");
    let redis = app.redis.client().await;
    let _: i64 = redis
        .del(Keys::default().user(UserName::parse("popular").unwrap().key()))
        .await
        .unwrap();

    let reads_before = failpoint::count("user-db-read", &key);
    let pause = failpoint::arm("user-fill", &key);
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .get_user(pb::GetUserRequest {
                        name: "POPULAR".into(),
                    })
                    .await
            })
        })
        .collect();
    pause.reached.notified().await;
    tokio::time::sleep(Duration::from_millis(200)).await; // let the others pile up
    pause.resume.notify_one();
    for reader in readers {
        assert_eq!(
            reader
                .await
                .unwrap()
                .unwrap()
                .into_inner()
                .user
                .unwrap()
                .name,
            "popular"
        );
    }
    assert_eq!(failpoint::count("user-db-read", &key) - reads_before, 1);
}

#[tokio::test]
async fn every_rpc_works_with_redis_down_and_a_missed_invalidation_is_delivered_later() {
    let mut app = spawn_app().await;
    let ada = app.create_user("Ada").await;
    app.get_user("ada").await.unwrap(); // cached while Redis is up
    app.redis.stop();

    let mut client = app.client.clone();
    let created = app.create_user("Grace").await;
    assert_eq!(app.get_user("grace").await.unwrap(), created);
    let verified = client
        .verify_password(pb::VerifyPasswordRequest {
            name: "ada".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.valid);
    let changed = client
        .change_password(pb::ChangePasswordRequest {
            name: "ada".into(),
            current_password: PASSWORD.into(),
            new_password: "a brand new passphrase".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_ne!(changed.update_time, ada.update_time);
    let listed = client
        .list_users(pb::ListUsersRequest {
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.users.len(), 2);
    client
        .delete_user(pb::DeleteUserRequest {
            name: "grace".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        app.get_user("grace").await.unwrap_err().code(),
        Code::NotFound
    );

    // Redis comes back with its old contents would be the dangerous case; a
    // restarted Redis is empty, so simulate the survivor by writing the stale
    // entry back the moment it is up, as a lagging replica might.
    app.redis.restart();
    let redis = app.redis.client().await;
    let stale = prost::Message::encode_to_vec(&ada);
    let _: () = redis
        .set(
            Keys::default().user(UserName::parse("ada").unwrap().key()),
            stale,
            None,
            None,
            false,
        )
        .await
        .unwrap();
    // Roster reconnects within its backoff (at most 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.get_user("ada").await.unwrap(),
        changed,
        "no stale entry served"
    );
    // ...and it uses Redis again: the entry is refilled with the fresh value.
    let refilled = crate::helpers::eventually(Duration::from_secs(5), || async {
        app.get_user("ada").await.unwrap();
        let cached: Option<Vec<u8>> = redis
            .get(Keys::default().user(UserName::parse("ada").unwrap().key()))
            .await
            .unwrap();
        cached.is_some_and(|bytes| {
            <pb::User as prost::Message>::decode(bytes.as_slice()).unwrap() == changed
        })
    })
    .await;
    assert!(refilled);
}
