//! VerifyPassword and ChangePassword: checks, timing, throttle, re-hash, rules.

use std::time::{Duration, Instant};

use roster::proto::roster::v1 as pb;
use sea_orm::{ConnectionTrait, Statement};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{PASSWORD, TestApp, reason, spawn_app, spawn_with, test_config, violations};

async fn verify(
    app: &TestApp,
    name: &str,
    password: &str,
) -> Result<pb::VerifyPasswordResponse, tonic::Status> {
    app.client
        .clone()
        .verify_password(pb::VerifyPasswordRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn change(
    app: &TestApp,
    name: &str,
    current: &str,
    new: &str,
) -> Result<pb::User, tonic::Status> {
    app.client
        .clone()
        .change_password(pb::ChangePasswordRequest {
            name: name.into(),
            current_password: current.into(),
            new_password: new.into(),
            ..Default::default()
        })
        .await
        .map(|response| response.into_inner().user.unwrap())
}

async fn stored_hash(app: &TestApp, key: &str) -> String {
    let db = app.database().await;
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT password_hash FROM users WHERE name_key = ?",
            [key.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "password_hash").unwrap()
}

#[tokio::test]
async fn verify_accepts_the_right_password_and_refuses_others_alike() {
    let app = spawn_app().await;
    let created = app.create_user("Quinn").await;

    let ok = verify(&app, "QUINN", PASSWORD).await.unwrap();
    assert!(ok.valid);
    assert_eq!(ok.user.unwrap(), created);

    let wrong = verify(&app, "quinn", "not the password").await.unwrap();
    assert!(!wrong.valid);
    assert!(wrong.user.is_none());
    let unknown = verify(&app, "nobody-here", PASSWORD).await.unwrap();
    assert_eq!(
        unknown, wrong,
        "an unknown user looks like a wrong password"
    );
}

#[tokio::test]
async fn verify_normalizes_the_password_to_nfc() {
    let app = spawn_app().await;
    app.client
        .clone()
        .create_user(pb::CreateUserRequest {
            name: "rene".into(),
            password: "Ren\u{e9}-secret-42".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        verify(&app, "rene", "Rene\u{301}-secret-42")
            .await
            .unwrap()
            .valid
    );
}

#[tokio::test]
async fn verify_never_reads_the_cache() {
    let app = spawn_app().await;
    app.create_user("Sybil").await;
    // Make the cached copy say something the database does not.
    app.get_user("sybil").await.unwrap();
    let db = app.database().await;
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        "UPDATE users SET name = 'Sybil-db' WHERE name_key = 'sybil'",
    ))
    .await
    .unwrap();
    let response = verify(&app, "sybil", PASSWORD).await.unwrap();
    assert_eq!(response.user.unwrap().name, "Sybil-db");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_takes_the_same_time_for_unknown_users_and_wrong_passwords() {
    let app = spawn_app().await;
    app.create_user("Trent").await;
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    // Interleaved so that drift in machine load hits both alike. Distinct
    // unknown names and a wrong password keep the throttle out of the way
    // (the limit is 10 consecutive failures per account), so "Trent" gets a
    // right password every fifth call.
    for i in 0..300 {
        let password = if i % 5 == 0 {
            PASSWORD
        } else {
            "wrong password"
        };
        let ghost = format!("ghost-{i}");
        // Alternate which goes first, so neither side always follows the other.
        for first_known in [i % 2 == 0, i % 2 != 0] {
            let began = Instant::now();
            if first_known {
                verify(&app, "trent", password).await.unwrap();
                known.push(began.elapsed());
            } else {
                let response = verify(&app, &ghost, PASSWORD).await.unwrap();
                unknown.push(began.elapsed());
                assert!(!response.valid);
            }
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64()
    };
    let (known, unknown) = (median(&mut known), median(&mut unknown));
    let gap = (known - unknown).abs() / known.max(unknown);
    eprintln!(
        "verify timing: known {:.2} ms, unknown {:.2} ms, gap {:.1}%",
        known * 1000.0,
        unknown * 1000.0,
        gap * 100.0
    );
    assert!(
        gap < 0.10,
        "medians differ by {:.1}% (known {:.2} ms, unknown {:.2} ms)",
        gap * 100.0,
        known * 1000.0,
        unknown * 1000.0
    );
}

#[tokio::test]
async fn failed_checks_are_throttled_per_account_and_reset_by_a_success() {
    let dir = tempfile::tempdir().unwrap();
    let redis = crate::helpers::RedisServer::start();
    let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
    config.login_base_delay = Duration::from_millis(600);
    let app = spawn_with(config, dir, redis).await;
    app.create_user("Uma").await;
    app.create_user("Victor").await;

    for _ in 0..10 {
        assert!(!verify(&app, "uma", "wrong password").await.unwrap().valid);
    }
    let status = verify(&app, "uma", PASSWORD).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "TOO_MANY_FAILED_ATTEMPTS");
    let retry = status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(600),
        "{retry:?}"
    );
    // ChangePassword is throttled by the same count.
    let status = change(&app, "uma", PASSWORD, "a brand new passphrase")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Other accounts are unaffected.
    assert!(verify(&app, "victor", PASSWORD).await.unwrap().valid);

    // After the delay one more failure doubles it.
    tokio::time::sleep(retry + Duration::from_millis(50)).await;
    assert!(!verify(&app, "uma", "wrong password").await.unwrap().valid);
    let status = verify(&app, "uma", PASSWORD).await.unwrap_err();
    let longer = status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .unwrap();
    assert!(
        longer > Duration::from_millis(600),
        "the delay grows: {longer:?}"
    );

    // A success resets the count.
    tokio::time::sleep(longer + Duration::from_millis(50)).await;
    assert!(verify(&app, "uma", PASSWORD).await.unwrap().valid);
    for _ in 0..9 {
        assert!(!verify(&app, "uma", "wrong password").await.unwrap().valid);
    }
    assert!(verify(&app, "uma", PASSWORD).await.unwrap().valid);
}

#[tokio::test]
async fn a_weaker_stored_hash_is_upgraded_on_a_successful_check() {
    let app = spawn_app().await;
    app.create_user("Walter").await;
    // A hash made under an older, weaker policy.
    let weak = roster::credentials::PasswordHasher::new(
        roster::credentials::HashPolicy {
            memory_kib: 8192,
            iterations: 1,
            parallelism: 1,
        },
        1,
    )
    .unwrap()
    .hash_blocking(&roster::domain::Password::parse(PASSWORD.into()).unwrap())
    .unwrap();
    let db = app.database().await;
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        "UPDATE users SET password_hash = ? WHERE name_key = 'walter'",
        [weak.as_phc().into()],
    ))
    .await
    .unwrap();
    let before = app.get_user("walter").await.unwrap();

    assert!(
        !verify(&app, "walter", "wrong password")
            .await
            .unwrap()
            .valid
    );
    assert!(
        stored_hash(&app, "walter").await.contains("m=8192,t=1"),
        "no upgrade on failure"
    );
    assert!(verify(&app, "walter", PASSWORD).await.unwrap().valid);
    let upgraded = stored_hash(&app, "walter").await;
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );
    assert!(verify(&app, "walter", PASSWORD).await.unwrap().valid);
    let db_after = app.database().await;
    let row = db_after
        .query_one_raw(Statement::from_string(
            db_after.get_database_backend(),
            "SELECT update_time FROM users WHERE name_key = 'walter'",
        ))
        .await
        .unwrap()
        .unwrap();
    let update_time: chrono::DateTime<chrono::Utc> = row.try_get("", "update_time").unwrap();
    let shown = before.update_time.unwrap();
    assert_eq!(
        update_time.timestamp(),
        shown.seconds,
        "an upgrade is not a user change"
    );
}

#[tokio::test]
async fn change_password_checks_the_current_one_and_advances_update_time() {
    let app = spawn_app().await;
    let created = app.create_user("Xena").await;

    let status = change(&app, "xena", "wrong password", "a brand new passphrase")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason(&status), "INVALID_CREDENTIALS");
    let status = change(&app, "nobody-here", PASSWORD, "a brand new passphrase")
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "unknown users look the same"
    );

    let changed = change(&app, "XENA", PASSWORD, "a brand new passphrase")
        .await
        .unwrap();
    assert_eq!(changed.id, created.id);
    assert_eq!(changed.create_time, created.create_time);
    let (before, after) = (created.update_time.unwrap(), changed.update_time.unwrap());
    assert!((after.seconds, after.nanos) > (before.seconds, before.nanos));
    assert!(!verify(&app, "xena", PASSWORD).await.unwrap().valid);
    assert!(
        verify(&app, "xena", "a brand new passphrase")
            .await
            .unwrap()
            .valid
    );
    // The read path sees the change at once (the cache entry was invalidated).
    assert_eq!(app.get_user("xena").await.unwrap(), changed);
}

#[tokio::test]
async fn new_passwords_must_follow_the_rules_and_not_be_common_or_the_name() {
    let app = spawn_app().await;
    app.create_user("Yusuf").await;
    let cases = [
        ("short", "PASSWORD_TOO_SHORT"),
        ("password", "PASSWORD_TOO_COMMON"),
        ("Password1", "PASSWORD_TOO_COMMON"),
        ("qwertyuiop", "PASSWORD_TOO_COMMON"),
        ("yusuf", "PASSWORD_TOO_SHORT"),
    ];
    for (new, expected) in cases {
        let status = change(&app, "yusuf", PASSWORD, new).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{new}");
        assert_eq!(
            violations(&status),
            vec![("new_password".to_owned(), expected.to_owned())]
        );
    }
    let status = app
        .client
        .clone()
        .create_user(pb::CreateUserRequest {
            name: "Zachary-Long".into(),
            password: "zachary-long".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violations(&status),
        vec![("password".to_owned(), "PASSWORD_IS_NAME".to_owned())]
    );
    let status = app
        .client
        .clone()
        .create_user(pb::CreateUserRequest {
            name: "zoe".into(),
            password: "iloveyou".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        violations(&status),
        vec![("password".to_owned(), "PASSWORD_TOO_COMMON".to_owned())]
    );
    // A bad name and an over-long password are reported together.
    let status = verify(&app, "a b", &"x".repeat(1025)).await.unwrap_err();
    assert_eq!(
        violations(&status),
        vec![
            ("name".to_owned(), "NAME_WHITESPACE".to_owned()),
            ("password".to_owned(), "PASSWORD_TOO_LONG".to_owned())
        ]
    );
}
