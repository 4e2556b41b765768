//! Storage faults under a running server (a real child process): the disk
//! fills up, the file system turns read-only, the database's directory
//! becomes unwritable. Every acknowledged write must be stored, every
//! refusal must be a clear code (never INTERNAL, never OK), reads must keep
//! working, and a full disk must recover without a restart.

use std::time::{Duration, Instant};

use roster::proto::roster::v1::{self as pb, user_service_client::UserServiceClient};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{PASSWORD, RedisServer, reason},
    history::{self, Workload},
    rig::{Mount, ServerProcess, can_mount},
};

async fn sqlite(path: &std::path::Path) -> sea_orm::DatabaseConnection {
    sea_orm::Database::connect(format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap()
}

async fn create(
    channel: &tonic::transport::Channel,
    name: &str,
) -> Result<pb::User, tonic::Status> {
    UserServiceClient::new(channel.clone())
        .create_user(pb::CreateUserRequest {
            name: name.into(),
            password: PASSWORD.into(),
            request_id: format!("{name}-create"),
        })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

async fn serving(channel: &tonic::transport::Channel) -> bool {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "roster.v1.UserService".into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

fn workload(prefix: &str, seconds: u64) -> Workload {
    Workload {
        prefix: prefix.into(),
        duration: Duration::from_secs(seconds),
        settle: Duration::from_secs(5),
        ..Workload::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_storage_full_loses_nothing_and_recovers_without_a_restart()
{
    if !can_mount() {
        return;
    }
    let disk = Mount::tmpfs("8m");
    let redis = RedisServer::start();
    let db = disk.path().join("roster.db");
    let mut server =
        ServerProcess::start(&format!("sqlite://{}", db.display()), &redis.url(), &[]).await;
    let channel = server.channel();

    let before = history::run(&workload("full-before", 1), std::slice::from_ref(&channel)).await;
    let filler = disk.fill();
    let during = history::run(&workload("full-during", 3), std::slice::from_ref(&channel)).await;
    // Reads kept working and health stayed SERVING while writes failed.
    assert!(
        during.reads_ok() > 0,
        "reads work on a full disk: {:?}",
        during.codes
    );
    assert!(serving(&channel).await, "health stays SERVING for reads");
    let refused = during.count("ResourceExhausted STORAGE_FULL");
    assert!(
        refused > 0,
        "the disk was full, yet no write was refused: {:?}",
        during.codes
    );

    // Space is back: writes succeed again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let mut recovered = None;
    while freed.elapsed() < Duration::from_secs(10) {
        if create(&channel, "after-the-disk-was-freed").await.is_ok() {
            recovered = Some(freed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = recovered.expect("writes succeed again once space is back");
    let after = history::run(&workload("full-after", 1), std::slice::from_ref(&channel)).await;
    assert_eq!(
        after.count("ResourceExhausted STORAGE_FULL"),
        0,
        "{:?}",
        after.codes
    );

    // The episode ends at a write that succeeds 2 s after the last failure
    // (successes interleaved with failures on a nearly full disk do not end
    // it); the last failure came before the disk was freed.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(freed.elapsed())).await;
    create(&channel, "two-seconds-after-the-disk-was-freed")
        .await
        .expect("a write after the episode");
    assert!(server.terminate(), "clean exit after the episode");
    let db = sqlite(&db).await;
    for (phase, history) in [("before", &before), ("during", &during), ("after", &after)] {
        assert!(history.forbidden.is_empty(), "{phase}: {:?}", history.codes);
        let verdict = history.check(&db).await;
        verdict.assert_clean(phase);
        eprintln!(
            "disk full, {phase}: {} acknowledged, {} refused, {} unknown, {} reads, longest call {:?}; \
             writes back {recovered:?} after space was freed",
            verdict.acknowledged, verdict.refused, verdict.unknown, verdict.reads, verdict.longest
        );
    }
    let log = server.log();
    assert_eq!(
        log.matches("database writes are failing").count(),
        1,
        "one ERROR line per episode, not one per call"
    );
    assert!(log.contains("database writes succeed again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_turned_read_only_refuses_writes_as_unavailable_and_keeps_serving_reads() {
    if !can_mount() {
        return;
    }
    let disk = Mount::ext4(32);
    let redis = RedisServer::start();
    let db_path = disk.path().join("roster.db");
    let mut server = ServerProcess::start(
        &format!("sqlite://{}", db_path.display()),
        &redis.url(),
        &[],
    )
    .await;
    let channel = server.channel();
    let known = create(&channel, "written-before-the-fault").await.unwrap();

    let before = history::run(&workload("ro-before", 1), std::slice::from_ref(&channel)).await;
    disk.break_to_read_only();
    let during = history::run(&workload("ro-during", 2), std::slice::from_ref(&channel)).await;
    let status = create(&channel, "written-during-the-fault")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "STORAGE_UNAVAILABLE");
    assert!(
        during.reads_ok() > 0,
        "reads keep working: {:?}",
        during.codes
    );
    let read = UserServiceClient::new(channel.clone())
        .get_user(pb::GetUserRequest {
            name: "written-before-the-fault".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(read, known);
    assert!(serving(&channel).await, "health stays SERVING for reads");
    server.kill9();

    // The file system stays read-only; check a copy of the database.
    let copy = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let from = disk.path().join(format!("roster.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("roster.db{suffix}"))).unwrap();
        }
    }
    let db = sea_orm::Database::connect(format!(
        "sqlite://{}",
        copy.path().join("roster.db").display()
    ))
    .await
    .unwrap();
    for (phase, history) in [("before", &before), ("during", &during)] {
        assert!(history.forbidden.is_empty(), "{phase}: {:?}", history.codes);
        let verdict = history.check(&db).await;
        verdict.assert_clean(phase);
        eprintln!(
            "read-only, {phase}: {} acknowledged, {} refused, {} unknown, {} reads, longest call {:?}",
            verdict.acknowledged, verdict.refused, verdict.unknown, verdict.reads, verdict.longest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_database_directory_loses_nothing_and_a_restart_refuses_clearly() {
    if !can_mount() {
        return;
    }
    // The server runs as an unprivileged user (root ignores permissions).
    let dir = Mount::tmpfs("32m");
    let nobody = 65534;
    let redis = RedisServer::start();
    let db_path = dir.path().join("roster.db");
    let url = format!("sqlite://{}", db_path.display());
    let mut server = ServerProcess::start_as(&url, &redis.url(), &[], Some(nobody)).await;
    let channel = server.channel();
    let before = history::run(&workload("dir-before", 1), std::slice::from_ref(&channel)).await;
    set_mode(dir.path(), 0o555);
    let during = history::run(&workload("dir-during", 2), std::slice::from_ref(&channel)).await;
    assert!(server.terminate(), "clean exit");

    // The WAL outlived the exit (it could not be deleted); once it is gone,
    // a new start cannot create it, and says so instead of serving.
    set_mode(dir.path(), 0o777);
    let mut again = ServerProcess::start_as(&url, &redis.url(), &[], Some(nobody)).await;
    assert!(again.terminate(), "clean exit");
    set_mode(dir.path(), 0o555);
    let mut refused = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={nobody}"),
            &format!("--regid={nobody}"),
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_roster"))
        .args([
            "--listen-addr",
            "127.0.0.1:0",
            "--database-url",
            &url,
            "--redis-url",
            "",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            refused.kill().ok();
            panic!("roster started without a writable database directory");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !status.success(),
        "cannot start without a writable database"
    );
    let output = refused.wait_with_output().unwrap();
    let output = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.contains("roster stopped with an error") && output.contains("readonly"),
        "a clear start-up error: {output}"
    );

    set_mode(dir.path(), 0o777);
    let db = sqlite(&db_path).await;
    for (phase, history) in [("before", &before), ("during", &during)] {
        assert!(history.forbidden.is_empty(), "{phase}: {:?}", history.codes);
        let verdict = history.check(&db).await;
        verdict.assert_clean(phase);
        eprintln!(
            "unwritable directory, {phase}: {} acknowledged, {} refused, {} unknown, {} reads, \
             longest call {:?}",
            verdict.acknowledged, verdict.refused, verdict.unknown, verdict.reads, verdict.longest
        );
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}
