//! Server limits: connection caps and the handshake deadline under a flood
//! of silent connections with a low open-file limit, the idle limit, the
//! maximum connection age (GOAWAY, then the call in flight completes), and
//! load shedding beyond the global limit on calls in flight.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use fred::prelude::KeysInterface;
use prost::Message;
use roster::{cache::Keys, domain::UserName, failpoint, proto::roster::v1 as pb};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{RedisServer, TestApp, reason, spawn_with, test_config},
    rig::ServerProcess,
};

/// Roster in this process, with `adjust` applied to its configuration.
async fn spawn_adjusted(adjust: impl FnOnce(&mut roster::config::Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
    adjust(&mut config);
    spawn_with(config, dir, redis).await
}

/// Creates `name` and drops it from the cache, so that a GetUser reads the
/// database (where a failpoint can hold it).
async fn create_uncached(app: &TestApp, name: &str) {
    app.create_user(name).await;
    let redis = app.redis.client().await;
    let _: i64 = redis
        .del(Keys::default().user(UserName::parse(name).unwrap().key()))
        .await
        .unwrap();
}

/// One health check on a new connection, within `within`.
async fn health_on_a_new_connection(addr: &str, within: Duration) -> Result<(), String> {
    let attempt = async {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(within)
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|status| format!("check: {status:?}"))?;
        if answer.into_inner().status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            Err("not SERVING".to_owned())
        }
    };
    tokio::time::timeout(within, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

#[tokio::test]
async fn silent_connections_beyond_the_open_file_limit_do_not_lock_new_clients_out() {
    const OPEN_FILES: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let database = format!("sqlite://{}", dir.path().join("roster.db").display());
    // soft = hard: raising the limit at start cannot help.
    let server = ServerProcess::start_with_open_files(
        &database,
        &redis.url(),
        &[("ROSTER_HANDSHAKE_TIMEOUT", "1s")],
        OPEN_FILES,
    )
    .await;

    // More connections than the server has descriptors; none sends a byte.
    // A server that stops accepting leaves its backlog full, and a connect
    // then waits for SYN retries: each is bounded.
    let mut hoard = Vec::new();
    for _ in 0..(OPEN_FILES as usize + 150) {
        let connect = TcpStream::connect(server.addr());
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(100), connect).await {
            hoard.push(stream);
        }
    }
    let flooded = Instant::now();
    let mut last_error = String::new();
    let answered = loop {
        match health_on_a_new_connection(&server.addr(), Duration::from_millis(500)).await {
            Ok(()) => break true,
            Err(error) => last_error = error,
        }
        if flooded.elapsed() > Duration::from_secs(2) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = server.log();
    assert!(
        answered,
        "no health answer within 2 s while {} silent connections are held ({last_error}); log:\n{log}",
        hoard.len()
    );
    assert!(
        log.contains("connections refused over the connection caps"),
        "{log}"
    );
    assert!(
        log.contains("not finishing the TLS handshake and HTTP/2 preface"),
        "{log}"
    );
    assert!(log.contains("\"open_files\":256"), "{log}");
    drop(hoard);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout() {
    let app = spawn_adjusted(|config| config.handshake_timeout = Duration::from_millis(500)).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let opened = Instant::now();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}"
    );
    // A client that speaks promptly is served as ever.
    health_on_a_new_connection(&app.addr.to_string(), Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_connection_gets_a_goaway_and_its_call_in_flight_completes() {
    let app = spawn_adjusted(|config| {
        config.max_connection_age = Duration::from_secs(1);
        config.max_connection_age_grace = Duration::from_secs(30);
    })
    .await;
    create_uncached(&app, "aged-caller").await;
    let pause = failpoint::arm("user-db-read", "aged-caller");
    let (mut client, received, driver) = raw_h2(app.addr).await;
    let opened = Instant::now();
    let response = start_get_user(&mut client, app.addr, "aged-caller");
    tokio::time::timeout(Duration::from_secs(5), pause.reached.notified())
        .await
        .expect("the call reaches the database read");

    let goaway = wait_for(Duration::from_secs(3), || {
        has_goaway(&received.lock().unwrap())
    })
    .await;
    assert!(goaway, "no GOAWAY within 3 s of the 1 s age");
    let after = opened.elapsed();
    assert!(
        after >= Duration::from_millis(850),
        "GOAWAY after {after:?}"
    );

    pause.resume.notify_one();
    let code = tokio::time::timeout(Duration::from_secs(5), grpc_code(response))
        .await
        .expect("the call in flight completes");
    assert_eq!(code.as_deref(), Some("0"), "the call in flight succeeds");
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the server closes the connection after its last call")
        .unwrap();
}

#[tokio::test]
async fn an_idle_connection_gets_a_goaway_and_is_closed() {
    let app = spawn_adjusted(|config| {
        config.max_connection_idle = Duration::from_millis(500);
    })
    .await;
    let (_client, received, driver) = raw_h2(app.addr).await;
    let opened = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the server closes the idle connection")
        .unwrap();
    assert!(
        has_goaway(&received.lock().unwrap()),
        "closed without GOAWAY"
    );
    assert!(opened.elapsed() >= Duration::from_millis(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_global_limit_are_shed_with_resource_exhausted() {
    let app = spawn_adjusted(|config| config.max_concurrent_calls = 1).await;
    create_uncached(&app, "held-call").await;
    app.create_user("second-call").await;
    let pause = failpoint::arm("user-db-read", "held-call");
    let held = tokio::spawn({
        let mut client = app.client.clone();
        async move {
            client
                .get_user(pb::GetUserRequest {
                    name: "held-call".into(),
                })
                .await
        }
    });
    tokio::time::timeout(Duration::from_secs(5), pause.reached.notified())
        .await
        .expect("the first call is in flight");

    let began = Instant::now();
    let status = app.get_user("second-call").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "SERVER_OVERLOADED");
    assert!(began.elapsed() < Duration::from_secs(1), "shed at once");
    // Health checks are never shed.
    health_on_a_new_connection(&app.addr.to_string(), Duration::from_secs(2))
        .await
        .unwrap();

    pause.resume.notify_one();
    held.await.unwrap().expect("the call in flight completes");
    app.get_user("second-call").await.expect("served again");
}

// ---- a raw HTTP/2 client that keeps what the server sent --------------------

type Received = Arc<Mutex<Vec<u8>>>;

/// An h2 client connection whose received bytes are kept, and its driver.
async fn raw_h2(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    Received,
    tokio::task::JoinHandle<()>,
) {
    let received = Received::default();
    let tap = Tap {
        stream: TcpStream::connect(addr).await.unwrap(),
        received: Arc::clone(&received),
    };
    let (client, connection) = h2::client::handshake(tap).await.unwrap();
    let driver = tokio::spawn(async move {
        connection.await.ok();
    });
    (client, received, driver)
}

fn start_get_user(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    name: &str,
) -> h2::client::ResponseFuture {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/roster.v1.UserService/GetUser"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let message = pb::GetUserRequest { name: name.into() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    send.send_data(frame.into(), true).unwrap();
    response
}

/// The call's grpc-status, from the headers (trailers-only) or trailers.
async fn grpc_code(response: h2::client::ResponseFuture) -> Option<String> {
    let response = response.await.ok()?;
    let status = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(code) = status(response.headers()) {
        return Some(code);
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.ok()?;
        body.flow_control().release_capacity(data.len()).ok();
    }
    status(&body.trailers().await.ok()??)
}

/// Whether the server's bytes hold a GOAWAY frame.
fn has_goaway(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes[3] == 0x7 {
            return true;
        }
        let Some(rest) = bytes.get(9 + len..) else {
            return false;
        };
        bytes = rest;
    }
    false
}

async fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// A TCP stream that keeps a copy of every byte it reads.
struct Tap {
    stream: TcpStream,
    received: Received,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.received
                .lock()
                .unwrap()
                .extend_from_slice(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
