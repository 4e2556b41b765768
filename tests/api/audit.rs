//! The audit trail: one structured event (target `roster::audit`) per call
//! that changes or reveals account data and per access denial, with the
//! caller, peer, method, user, outcome and request id, and never a password
//! or a hash anywhere in the log. Roster runs as a child process writing
//! JSON lines, which the test reads back.

use roster::proto::roster::v1::{self as pb, user_service_client::UserServiceClient};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::{helpers::PASSWORD, rig::ServerProcess};

const TOKEN: &str = "audit-test-token-0123456789abcdef";
const NEW_PASSWORD: &str = "an entirely new passphrase";

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_call_and_denial_writes_one_audit_event_and_no_secret_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[roles]\nadmin = [\"*\"]\n[[grant]]\nidentities = [\"auditor\"]\nroles = [\"admin\"]\n\
             [[token]]\nsha256 = \"{}\"\nidentity = \"auditor\"\n",
            hex::encode(Sha256::digest(TOKEN.as_bytes()))
        ),
    )
    .unwrap();
    let db = format!("sqlite://{}", dir.path().join("roster.db").display());
    let policy_arg = policy.display().to_string();
    let server = ServerProcess::start(&db, "", &["--policy", &policy_arg]).await;
    let mut client = UserServiceClient::new(server.channel());

    client
        .create_user(with_token(pb::CreateUserRequest {
            name: "Audited".into(),
            password: PASSWORD.into(),
            request_id: "audit-create-1".into(),
        }))
        .await
        .unwrap();
    for password in [PASSWORD, "not the password"] {
        client
            .verify_password(with_token(pb::VerifyPasswordRequest {
                name: "audited".into(),
                password: password.into(),
            }))
            .await
            .unwrap();
    }
    client
        .change_password(with_token(pb::ChangePasswordRequest {
            name: "audited".into(),
            current_password: PASSWORD.into(),
            new_password: NEW_PASSWORD.into(),
            request_id: "audit-change-1".into(),
        }))
        .await
        .unwrap();
    client
        .list_users(with_token(pb::ListUsersRequest::default()))
        .await
        .unwrap();
    client
        .delete_user(with_token(pb::DeleteUserRequest {
            name: "audited".into(),
            request_id: "audit-delete-1".into(),
        }))
        .await
        .unwrap();
    let denied = client
        .delete_user(pb::DeleteUserRequest {
            name: "someone".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);

    let log = server.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["target"] == "roster::audit")
        .collect();
    let find = |method: &str, outcome: &str| {
        events
            .iter()
            .find(|e| e["method"] == method && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no audit event {method}/{outcome} in {events:#?}"))
    };
    let created = find("CreateUser", "ok");
    assert_eq!(created["caller"], "auditor");
    assert_eq!(created["user"], "audited");
    assert_eq!(created["request_id"], "audit-create-1");
    assert!(created["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(created["timestamp"].is_string());
    find("VerifyPassword", "valid");
    find("VerifyPassword", "invalid");
    assert_eq!(find("ChangePassword", "ok")["request_id"], "audit-change-1");
    find("ListUsers", "ok");
    assert_eq!(find("DeleteUser", "ok")["user"], "audited");
    let refused = events
        .iter()
        .find(|e| e["event"] == "denied" && e["outcome"] == "IDENTITY_REQUIRED")
        .expect("the denial is audited");
    assert_eq!(refused["caller"], "anonymous");
    assert_eq!(refused["method"], "roster.v1.UserService/DeleteUser");
    // One event per call: six account calls audited, plus the denial.
    let calls = events.iter().filter(|e| e["event"] == "call").count();
    assert_eq!(calls, 6, "{events:#?}");

    for secret in [PASSWORD, NEW_PASSWORD, TOKEN, "$argon2id$"] {
        assert!(!log.contains(secret), "{secret:?} reached the log");
    }
}
