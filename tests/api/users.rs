//! CreateUser and GetUser: the rules on names and passwords, and the answers.

use roster::proto::roster::v1 as pb;
use tonic::Code;

use crate::helpers::{PASSWORD, reason, spawn_app, violations};

#[tokio::test]
async fn create_then_get_returns_the_same_user() {
    let app = spawn_app().await;
    let created = app.create_user("Alice").await;
    assert_eq!(created.name, "Alice");
    assert!(
        uuid::Uuid::parse_str(&created.id)
            .unwrap()
            .get_version_num()
            == 7
    );
    assert!(created.create_time.is_some());
    assert_eq!(created.create_time, created.update_time);

    let fetched = app.get_user("Alice").await.unwrap();
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn get_finds_the_user_under_case_and_width_variants() {
    let app = spawn_app().await;
    let created = app.create_user("Alice").await;
    for variant in ["alice", "ALICE", "aLiCe", "ＡＬＩＣＥ", "ａｌｉｃｅ"] {
        let fetched = app.get_user(variant).await.unwrap();
        assert_eq!(fetched, created, "variant {variant}");
        assert_eq!(fetched.name, "Alice", "the name is shown as registered");
    }
}

#[tokio::test]
async fn create_refuses_a_name_that_differs_only_in_case_or_width() {
    let app = spawn_app().await;
    app.create_user("Bob").await;
    for variant in ["Bob", "bob", "BOB", "ｂｏｂ", "Ｂｏｂ"] {
        let status = app
            .client
            .clone()
            .create_user(pb::CreateUserRequest {
                name: variant.into(),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists, "variant {variant}");
        assert_eq!(reason(&status), "USER_ALREADY_EXISTS");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_name_yield_exactly_one_success() {
    let app = spawn_app().await;
    let calls = (0..200).map(|i| {
        let mut client = app.client.clone();
        let name = if i % 2 == 0 { "Carol" } else { "CAROL" };
        tokio::spawn(async move {
            client
                .create_user(pb::CreateUserRequest {
                    name: name.into(),
                    password: PASSWORD.into(),
                    ..Default::default()
                })
                .await
        })
    });
    let results = futures_join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let other: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| s.code() != Code::AlreadyExists)
        .map(|s| (s.code(), s.message().to_owned()))
        .collect();
    assert_eq!(ok, 1);
    assert!(other.is_empty(), "unexpected errors: {other:?}");
}

async fn futures_join_all<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test]
async fn bad_names_and_passwords_get_invalid_argument_with_the_field_and_reason() {
    let app = spawn_app().await;
    let long_name = "a".repeat(65);
    let huge_name = "é".repeat(30_000);
    let long_password = "p".repeat(1025);
    // (name, password, expected (field, reason) violations)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        ("", PASSWORD, &[("name", "NAME_EMPTY")]),
        ("a b", PASSWORD, &[("name", "NAME_WHITESPACE")]),
        ("a\tb", PASSWORD, &[("name", "NAME_WHITESPACE")]),
        ("nul\0byte", PASSWORD, &[("name", "NAME_CONTROL_CHARACTER")]),
        ("bell\u{7}", PASSWORD, &[("name", "NAME_CONTROL_CHARACTER")]),
        (
            "evil\u{202E}txt",
            PASSWORD,
            &[("name", "NAME_BIDI_CONTROL")],
        ),
        (
            "zero\u{200B}width",
            PASSWORD,
            &[("name", "NAME_DISALLOWED_CHARACTER")],
        ),
        (
            "soft\u{AD}hyphen",
            PASSWORD,
            &[("name", "NAME_DISALLOWED_CHARACTER")],
        ),
        (
            "unassigned\u{0378}",
            PASSWORD,
            &[("name", "NAME_UNASSIGNED_CHARACTER")],
        ),
        ("p\u{0430}ypal", PASSWORD, &[("name", "NAME_MIXED_SCRIPT")]),
        (&long_name, PASSWORD, &[("name", "NAME_TOO_LONG")]),
        (&huge_name, PASSWORD, &[("name", "NAME_TOO_LONG")]),
        ("dave", "short", &[("password", "PASSWORD_TOO_SHORT")]),
        ("dave", "", &[("password", "PASSWORD_TOO_SHORT")]),
        ("dave", &long_password, &[("password", "PASSWORD_TOO_LONG")]),
        (
            "",
            "short",
            &[("name", "NAME_EMPTY"), ("password", "PASSWORD_TOO_SHORT")],
        ),
    ];
    for (name, password, expected) in cases {
        let status = app
            .client
            .clone()
            .create_user(pb::CreateUserRequest {
                name: (*name).into(),
                password: (*password).into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        let shown: String = name.chars().take(20).collect();
        assert_eq!(status.code(), Code::InvalidArgument, "name {shown:?}");
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(f, r)| ((*f).to_owned(), (*r).to_owned()))
            .collect();
        assert_eq!(violations(&status), expected, "name {shown:?}");
        assert_eq!(reason(&status), expected[0].1);
        assert!(!status.message().contains(password) || password.is_empty());
    }
    // GetUser applies the same name rules.
    let status = app.get_user("a\u{0}b").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&status),
        vec![("name".to_owned(), "NAME_CONTROL_CHARACTER".to_owned())]
    );
}

#[tokio::test]
async fn get_of_an_unknown_name_is_not_found() {
    let app = spawn_app().await;
    let status = app.get_user("nobody").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(reason(&status), "USER_NOT_FOUND");
}

#[tokio::test]
async fn the_stored_password_is_an_argon2id_phc_string_with_owasp_parameters() {
    use sea_orm::{ConnectionTrait, Statement};
    let app = spawn_app().await;
    app.create_user("erin").await;
    let db = app.database().await;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT password_hash FROM users WHERE name_key = 'erin'",
        ))
        .await
        .unwrap()
        .unwrap();
    let hash: String = row.try_get("", "password_hash").unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!hash.contains(PASSWORD));
}

#[tokio::test]
async fn an_oversized_request_is_refused_before_decoding() {
    let app = spawn_app().await;
    let status = app
        .client
        .clone()
        .create_user(pb::CreateUserRequest {
            name: "frank".into(),
            password: "x".repeat(100 * 1024),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // gRPC's status code table: RESOURCE_EXHAUSTED (tonic alone says OUT_OF_RANGE).
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason(&status), "REQUEST_TOO_LARGE");
}
