//! Health, reflection, restarts and shutdown.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{spawn_app, spawn_with, test_config};

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_user_service() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "roster.v1.UserService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
}

#[tokio::test]
async fn a_redis_outage_does_not_change_health() {
    let mut app = spawn_app().await;
    app.redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "roster.v1.UserService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn reflection_lists_and_describes_every_service() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let mut reflection = ServerReflectionClient::new(app.channel.clone());
    let requests = tokio_stream::iter([
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("roster.v1.UserService".into()),
        MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
        // So clients can decode the error details in our statuses.
        MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into()),
    ])
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut responses = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "roster.v1.UserService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for _ in 0..3 {
        let response = responses.next().await.unwrap().unwrap().message_response;
        assert!(
            matches!(response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{response:?}"
        );
    }

    // The older v1alpha protocol answers too (grpcurl falls back to it).
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest as AlphaRequest,
        server_reflection_client::ServerReflectionClient as AlphaClient,
        server_reflection_request::MessageRequest as AlphaMessage,
    };
    let mut alpha = AlphaClient::new(app.channel.clone());
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([AlphaRequest {
            host: String::new(),
            message_request: Some(AlphaMessage::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.next().await.unwrap().is_ok());
}

#[tokio::test]
async fn data_survives_a_server_restart() {
    let app = spawn_app().await;
    let created = app.create_user("Olivia").await;
    let (dir, redis) = app.stop().await;
    let config = test_config(&dir.path().join("roster.db"), &redis.url());
    // Flush Redis so the answer must come from the database file.
    let client = redis.client().await;
    use fred::interfaces::ClientLike;
    let () = client.flushall::<()>(false).await.unwrap();
    let app = spawn_with(config, dir, redis).await;
    assert_eq!(app.get_user("olivia").await.unwrap(), created);
}

#[test]
fn sigterm_drains_in_flight_calls_and_exits_zero_even_with_an_open_stream() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let redis = crate::helpers::RedisServer::start();
    let port = crate::helpers::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["--listen-addr", &format!("127.0.0.1:{port}")])
        .args([
            "--database-url",
            &format!("sqlite://{}", dir.path().join("roster.db").display()),
        ])
        .args(["--redis-url", &redis.url(), "--drain-deadline", "2s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(async {
        let endpoint = format!("http://127.0.0.1:{port}");
        let channel = loop {
            match tonic::transport::Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect()
                .await
            {
                Ok(channel) => break channel,
                Err(_) if started.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("server did not start: {error}"),
            }
        };
        // An open Watch stream that never ends on its own.
        let mut watch = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            watch.message().await.unwrap().unwrap().status,
            ServingStatus::Serving as i32
        );
        // A call in flight when the signal arrives (hashing takes a while).
        let mut client =
            roster::proto::roster::v1::user_service_client::UserServiceClient::new(channel);
        let in_flight = tokio::spawn(async move {
            client
                .create_user(roster::proto::roster::v1::CreateUserRequest {
                    name: "peggy".into(),
                    password: crate::helpers::PASSWORD.into(),
                    ..Default::default()
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY-free: libc::kill only sends a signal to the child we spawned.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        // Health flips to NOT_SERVING on the open stream.
        let next = watch.message().await.unwrap().unwrap().status;
        assert_eq!(next, ServingStatus::NotServing as i32);
        in_flight.await.unwrap()
    });
    assert!(outcome.is_ok(), "the in-flight call finished: {outcome:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}
