//! Malformed input from a raw client against a live server, for a few
//! seconds: garbage and broken HTTP/2 over plain TCP, oversized headers and
//! reset floods through the `h2` crate, broken gRPC framing, and valid gRPC
//! frames holding random or mutated protobuf for every Roster method.
//!
//! After each phase a normal GetUser on a fresh connection must still succeed
//! and health must still be SERVING; every gRPC answer must come within
//! `CALL_TIMEOUT` with an expected code; and no thread of the server may
//! panic. The counts per answer are printed (`--nocapture` shows them).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use prost::Message;
use rand::{Rng, SeedableRng, rngs::StdRng};
use roster::proto::roster::v1::{self as pb, user_service_client::UserServiceClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{TestApp, spawn_app};

/// Longest any call or connection may take to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a raw connection is watched for the server's reaction.
const WATCH: Duration = Duration::from_millis(1500);
/// How long random protobuf is sent.
const MUTATION_TIME: Duration = Duration::from_secs(3);
/// The user whose GetUser proves the server still serves.
const PROBE: &str = "Liveness-Probe";
/// The runtime's threads: a panic on one of them is the server's.
const THREAD_NAME: &str = "roster-malformed";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on the server's threads, then reports them as usual.
fn count_server_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(THREAD_NAME) {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Answers per label, for one phase.
#[derive(Default, Clone)]
struct Tally(Arc<Mutex<BTreeMap<String, usize>>>);

impl Tally {
    fn add(&self, label: impl Into<String>) {
        *self.0.lock().unwrap().entry(label.into()).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, usize> {
        self.0.lock().unwrap().clone()
    }

    fn print(&self, phase: &str) {
        let counts = self.snapshot();
        let total: usize = counts.values().sum();
        println!("{phase}: {total} exchanges");
        for (label, count) in &counts {
            println!("  {label:<40} {count:>6}");
        }
    }
}

#[test]
fn malformed_input_never_panics_hangs_or_gets_an_unexpected_code() {
    count_server_panics();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(THREAD_NAME)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = spawn_app().await;
        // A name no mutation below can reach, so no call deletes it.
        app.create_user(PROBE).await;
        let seed = std::env::var("ROSTER_MALFORMED_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(rand::random::<u64>);
        println!("seed {seed} (ROSTER_MALFORMED_SEED={seed} repeats it)");
        let mut rng = StdRng::seed_from_u64(seed);
        let began = Instant::now();

        let tally = raw_http2(app.addr, &mut rng).await;
        tally.print("raw TCP: garbage and broken HTTP/2");
        still_serving(&app, "raw TCP").await;

        let tally = h2_limits(app.addr).await;
        tally.print("HTTP/2: oversized headers and reset floods");
        still_serving(&app, "HTTP/2 limits").await;

        let tally = grpc_framing(app.addr).await;
        tally.print("gRPC framing");
        still_serving(&app, "gRPC framing").await;

        let tally = mutated_protobuf(app.addr, &mut rng).await;
        tally.print("random and mutated protobuf");
        still_serving(&app, "protobuf").await;

        println!("all phases in {:?}", began.elapsed());
        assert_eq!(
            SERVER_PANICS.load(Ordering::SeqCst),
            0,
            "a server thread panicked (seed {seed})"
        );
    });
}

/// A normal GetUser on a fresh connection succeeds, and health is SERVING.
async fn still_serving(app: &TestApp, after: &str) {
    let check = async {
        let channel = Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let user = UserServiceClient::new(channel.clone())
            .get_user(pb::GetUserRequest {
                name: PROBE.to_lowercase(),
            })
            .await
            .unwrap_or_else(|status| panic!("GetUser after {after}: {status:?}"))
            .into_inner();
        assert_eq!(user.user.unwrap().name, PROBE);
        for service in ["", "roster.v1.UserService", "roster.v1.LeaderboardService"] {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{service:?} after {after}"
            );
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| panic!("the server hangs after {after}"));
}

// ---- raw TCP -------------------------------------------------------------

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(payload.len() as u32, kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

/// A frame header alone, declaring `len` bytes of payload.
fn frame_header(len: u32, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend((stream & 0x7fff_ffff).to_be_bytes());
    out
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = pairs
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    frame(0x4, 0, 0, &payload)
}

/// An HPACK literal header field without indexing (no Huffman coding).
fn literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut out = vec![0x00, name.len() as u8];
    out.extend(name.as_bytes());
    out.push(value.len() as u8);
    out.extend(value.as_bytes());
    out
}

/// The HPACK block of a gRPC request to `path`.
fn request_block(path: &str) -> Vec<u8> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .flat_map(|(name, value)| literal(name, value))
    .collect()
}

/// A gRPC length-prefixed message.
fn grpc_message(flag: u8, declared: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend(declared.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A whole, valid HTTP/2 connection's bytes for one GetUser call.
fn valid_connection() -> Vec<u8> {
    let body = pb::GetUserRequest {
        name: "alice".into(),
    }
    .encode_to_vec();
    let mut out = PREFACE.to_vec();
    out.extend(settings(&[]));
    out.extend(frame(
        0x1,
        0x4,
        1,
        &request_block("/roster.v1.UserService/GetUser"),
    ));
    out.extend(frame(
        0x0,
        0x1,
        1,
        &grpc_message(0, body.len() as u32, &body),
    ));
    out
}

/// The byte streams sent over raw TCP: garbage, then broken HTTP/2.
fn raw_cases(rng: &mut StdRng) -> Vec<(String, Vec<u8>)> {
    let open = |rest: Vec<u8>| {
        let mut out = PREFACE.to_vec();
        out.extend(settings(&[]));
        out.extend(rest);
        out
    };
    let headers = |stream: u32| frame(0x1, 0x5, stream, &request_block("/x/y"));
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "http/1.1 request".into(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("truncated preface".into(), PREFACE[..10].to_vec()),
        ("preface only".into(), PREFACE.to_vec()),
        (
            "bad preface".into(),
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec(),
        ),
        ("preface then garbage".into(), {
            let mut out = PREFACE.to_vec();
            out.extend((0..512).map(|_| rng.random::<u8>()));
            out
        }),
        ("settings of 5 bytes".into(), {
            let mut out = PREFACE.to_vec();
            out.extend(frame(0x4, 0, 0, &[0; 5]));
            out
        }),
        ("settings enable_push=2".into(), {
            let mut out = PREFACE.to_vec();
            out.extend(settings(&[(0x2, 2)]));
            out
        }),
        ("settings window 2^31".into(), {
            let mut out = PREFACE.to_vec();
            out.extend(settings(&[(0x4, 1 << 31)]));
            out
        }),
        ("settings max_frame_size 1".into(), {
            let mut out = PREFACE.to_vec();
            out.extend(settings(&[(0x5, 1)]));
            out
        }),
        ("settings on stream 1".into(), {
            let mut out = PREFACE.to_vec();
            out.extend(frame(0x4, 0, 1, &[]));
            out
        }),
        (
            "frame over max size".into(),
            open(frame_header(0xff_ffff, 0x0, 0, 1)),
        ),
        ("headers on stream 0".into(), open(headers(0))),
        ("headers on even stream".into(), open(headers(2))),
        (
            "data on idle stream".into(),
            open(frame(0x0, 0x1, 1, b"hello")),
        ),
        (
            "continuation alone".into(),
            open(frame(0x9, 0x4, 1, &request_block("/x/y"))),
        ),
        ("headers without end_headers, then data".into(), {
            let mut out = frame(0x1, 0x1, 1, &request_block("/x/y"));
            out.extend(frame(0x0, 0x1, 1, b"x"));
            open(out)
        }),
        (
            "garbage hpack".into(),
            open(frame(0x1, 0x5, 1, &[0xff; 40])),
        ),
        ("hpack index 0".into(), open(frame(0x1, 0x5, 1, &[0x80]))),
        (
            "hpack table size 2^32".into(),
            open(frame(0x1, 0x5, 1, &[0x3f, 0xff, 0xff, 0xff, 0xff, 0x0f])),
        ),
        ("ping of 7 bytes".into(), open(frame(0x6, 0, 0, &[0; 7]))),
        ("ping on stream 1".into(), open(frame(0x6, 0, 1, &[0; 8]))),
        ("window_update of 0".into(), open(frame(0x8, 0, 0, &[0; 4]))),
        ("window_update overflow".into(), {
            let big = 0x7fff_ffffu32.to_be_bytes();
            let mut out = frame(0x8, 0, 0, &big);
            out.extend(frame(0x8, 0, 0, &big));
            open(out)
        }),
        (
            "rst_stream on idle stream".into(),
            open(frame(0x3, 0, 1, &[0, 0, 0, 8])),
        ),
        (
            "priority on itself".into(),
            open(frame(0x2, 0, 1, &[0, 0, 0, 1, 16])),
        ),
        ("goaway garbage".into(), open(frame(0x7, 0, 0, &[0xff; 3]))),
        (
            "unknown frame type".into(),
            open(frame(0xfa, 0xff, 1, b"whatever")),
        ),
        (
            "padding longer than frame".into(),
            open(frame(0x1, 0x8 | 0x4, 1, &[200, 0, 0])),
        ),
        (
            "100 tiny settings".into(),
            open((0..100).flat_map(|_| settings(&[])).collect()),
        ),
    ];
    for i in 0..8 {
        let len = rng.random_range(1..4096);
        cases.push((
            format!("random bytes #{i}"),
            (0..len).map(|_| rng.random()).collect(),
        ));
    }
    // A valid GetUser connection with a few bytes changed.
    let valid = valid_connection();
    cases.push(("valid GetUser connection".into(), valid.clone()));
    for i in 0..24 {
        let mut bytes = valid.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(PREFACE.len()..bytes.len());
            bytes[at] = rng.random();
        }
        cases.push((format!("mutated GetUser connection #{i}"), bytes));
    }
    cases
}

/// Sends `bytes`, then watches what the server does for `WATCH`.
async fn raw_exchange(addr: SocketAddr, bytes: Vec<u8>) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let write = stream.write_all(&bytes).await;
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + WATCH;
    let end = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) => break "closed",
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Ok(Err(_)) => break "reset",
            Err(_) => break "open",
        }
    };
    let write = if write.is_err() { "write failed, " } else { "" };
    format!("{write}{}{end}", frames_seen(&received))
}

/// The server's frames that tell how it judged the connection.
fn frames_seen(mut bytes: &[u8]) -> String {
    const REASONS: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    let reason = |code: &[u8]| {
        let code = u32::from_be_bytes(code.try_into().unwrap()) as usize;
        REASONS.get(code).copied().unwrap_or("UNKNOWN_CODE")
    };
    let mut seen = String::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let kind = bytes[3];
        let Some(payload) = bytes.get(9..9 + len) else {
            break;
        };
        match kind {
            0x1 => seen.push_str("response, "),
            0x3 if len == 4 => seen.push_str(&format!("rst_stream {}, ", reason(payload))),
            0x7 if len >= 8 => seen.push_str(&format!("goaway {}, ", reason(&payload[4..8]))),
            _ => {}
        }
        bytes = &bytes[9 + len..];
    }
    seen
}

async fn raw_http2(addr: SocketAddr, rng: &mut StdRng) -> Tally {
    let tally = Tally::default();
    let mut tasks = JoinSet::new();
    for (name, bytes) in raw_cases(rng) {
        let tally = tally.clone();
        tasks.spawn(async move {
            let seen = raw_exchange(addr, bytes).await;
            if !name.starts_with("mutated") && !name.starts_with("random") {
                println!("  raw {name}: {seen}");
            }
            tally.add(seen);
        });
    }
    tokio::time::timeout(WATCH + CALL_TIMEOUT, async {
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
    })
    .await
    .expect("raw exchanges end");
    tally
}

// ---- HTTP/2 through the h2 crate -------------------------------------------

type SendRequest = h2::client::SendRequest<Bytes>;

/// An HTTP/2 connection; the driver's end (how the server closed it) comes
/// back through the handle.
async fn connect(addr: SocketAddr) -> (SendRequest, tokio::task::JoinHandle<String>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (client, connection) = h2::client::Builder::new()
        .max_concurrent_reset_streams(1000)
        .handshake(tcp)
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        match connection.await {
            Ok(()) => "connection closed cleanly".to_owned(),
            Err(error) => match error.reason() {
                Some(reason) => format!("connection error {reason:?}"),
                None => format!("connection error: {error}"),
            },
        }
    });
    (client, driver)
}

/// What came back for one call: the gRPC code, else what HTTP/2 said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Grpc(Code),
    Http(u16),
    Reset(String),
    Refused(String),
    Timeout,
}

impl Answer {
    fn label(&self) -> String {
        match self {
            Answer::Grpc(code) => format!("grpc {code:?}"),
            Answer::Http(status) => format!("http {status} without grpc-status"),
            Answer::Reset(reason) => format!("stream reset {reason}"),
            Answer::Refused(why) => format!("client could not send: {why}"),
            Answer::Timeout => "no answer in time".into(),
        }
    }
}

fn h2_error(error: &h2::Error) -> String {
    error
        .reason()
        .map_or_else(|| error.to_string(), |reason| format!("{reason:?}"))
}

/// A gRPC call with a hand-made body and extra headers.
async fn call(
    client: &mut SendRequest,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let exchange = async {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap();
        let ready = client.clone().ready().await;
        let mut ready = match ready {
            Ok(ready) => ready,
            Err(error) => return Answer::Refused(h2_error(&error)),
        };
        let (response, mut send) = match ready.send_request(request, body.is_empty()) {
            Ok(sent) => sent,
            Err(error) => return Answer::Refused(h2_error(&error)),
        };
        if !body.is_empty() && send.send_data(Bytes::from(body), true).is_err() {
            // The server may answer before it has read the body.
        }
        let response = match response.await {
            Ok(response) => response,
            Err(error) => return Answer::Reset(h2_error(&error)),
        };
        let (parts, mut body) = response.into_parts();
        if let Some(code) = grpc_status(&parts.headers) {
            return Answer::Grpc(code);
        }
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(chunk) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                Err(error) => return Answer::Reset(h2_error(&error)),
            }
        }
        match body.trailers().await {
            Ok(Some(trailers)) => {
                grpc_status(&trailers).map_or(Answer::Http(parts.status.as_u16()), Answer::Grpc)
            }
            Ok(None) => Answer::Http(parts.status.as_u16()),
            Err(error) => Answer::Reset(h2_error(&error)),
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .unwrap_or(Answer::Timeout)
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(value))
}

async fn h2_limits(addr: SocketAddr) -> Tally {
    let tally = Tally::default();
    let get_user = "/roster.v1.UserService/GetUser";
    let body = pb::GetUserRequest {
        name: "alice".into(),
    }
    .encode_to_vec();
    let message = grpc_message(0, body.len() as u32, &body);

    // Oversized and numerous headers, each on a fresh connection.
    let big = "v".repeat(64 * 1024);
    let many: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("x-header-{i}"), "value".to_owned()))
        .collect();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("one 64 KiB header", vec![("x-big", big.as_str())]),
        (
            "2000 headers",
            many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
        ),
        ("64 KiB grpc-timeout", vec![("grpc-timeout", big.as_str())]),
        (
            "64 KiB authorization",
            vec![("authorization", big.as_str())],
        ),
    ];
    for (name, headers) in cases {
        let (mut client, driver) = connect(addr).await;
        let answer = call(&mut client, get_user, &headers, message.clone()).await;
        drop(client);
        let end = tokio::time::timeout(CALL_TIMEOUT, driver)
            .await
            .map_or_else(|_| "connection still open".to_owned(), Result::unwrap);
        println!("  {name}: {} ({end})", answer.label());
        assert_ne!(answer, Answer::Timeout, "{name}");
        tally.add(format!("{name}: {}", answer.label()));
    }

    // Reset floods: open streams and cancel them at once, then see whether
    // the connection still serves (or was closed, as a flood deserves).
    for (name, resets) in [("reset flood of 50", 50), ("reset flood of 500", 500)] {
        let (client, driver) = connect(addr).await;
        let mut sent = 0;
        for _ in 0..resets {
            let Ok(mut ready) = client.clone().ready().await else {
                break;
            };
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("http://localhost{get_user}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let Ok((_response, mut send)) = ready.send_request(request, false) else {
                break;
            };
            send.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        let mut client = client;
        let after = call(&mut client, get_user, &[], message.clone()).await;
        drop(client);
        let end = tokio::time::timeout(CALL_TIMEOUT, driver)
            .await
            .map_or_else(|_| "connection still open".to_owned(), Result::unwrap);
        println!(
            "  {name}: {sent} resets sent; a call after: {}; {end}",
            after.label()
        );
        assert_ne!(after, Answer::Timeout, "{name}");
        tally.add(format!("{name}: then {}", after.label()));
    }
    tally
}

// ---- gRPC framing ------------------------------------------------------------

/// A name, a path, extra headers, the request body, and the codes it may get.
type FramingCase<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    &'a [Code],
);

async fn grpc_framing(addr: SocketAddr) -> Tally {
    let tally = Tally::default();
    let get_user = "/roster.v1.UserService/GetUser";
    let body = pb::GetUserRequest {
        name: "nobody".into(),
    }
    .encode_to_vec();
    let n = body.len() as u32;
    let oversized = vec![0u8; 64 * 1024 + 1];
    let one_message = grpc_message(0, n, &body);
    let two_messages = [one_message.clone(), one_message.clone()].concat();
    use Code::*;
    let cases: Vec<FramingCase> = vec![
        (
            "well formed",
            get_user,
            vec![],
            one_message.clone(),
            &[NotFound],
        ),
        (
            "length prefix too long",
            get_user,
            vec![],
            grpc_message(0, n + 100, &body),
            &[Internal],
        ),
        (
            "length prefix too short",
            get_user,
            vec![],
            grpc_message(0, n - 2, &body),
            &[Internal],
        ),
        (
            "length prefix 0, bytes follow",
            get_user,
            vec![],
            grpc_message(0, 0, &body),
            &[Internal],
        ),
        (
            "truncated prefix",
            get_user,
            vec![],
            vec![0, 0, 0],
            &[Internal],
        ),
        ("no message", get_user, vec![], vec![], &[Internal]),
        (
            "two messages",
            get_user,
            vec![],
            two_messages,
            &[Internal, NotFound],
        ),
        (
            "compressed flag, no grpc-encoding",
            get_user,
            vec![],
            grpc_message(1, n, &body),
            &[Internal],
        ),
        (
            "flag 0xff",
            get_user,
            vec![],
            grpc_message(0xff, n, &body),
            &[Internal],
        ),
        (
            "gzip compressed",
            get_user,
            vec![("grpc-encoding", "gzip")],
            grpc_message(1, n, &body),
            &[Unimplemented],
        ),
        (
            "unknown encoding",
            get_user,
            vec![("grpc-encoding", "bogus")],
            grpc_message(1, n, &body),
            &[Unimplemented],
        ),
        (
            "64 KiB + 1 message",
            get_user,
            vec![],
            grpc_message(0, oversized.len() as u32, &oversized),
            &[ResourceExhausted],
        ),
        (
            "prefix says 4 GiB",
            get_user,
            vec![],
            grpc_message(0, u32::MAX, &body),
            &[ResourceExhausted],
        ),
        (
            "protobuf garbage",
            get_user,
            vec![],
            grpc_message(0, 4, &[0xff; 4]),
            &[Internal],
        ),
        (
            "invalid UTF-8 name",
            get_user,
            vec![],
            grpc_message(0, 4, &[0x0a, 2, 0xc3, 0x28]),
            &[Internal],
        ),
        (
            "unknown method",
            "/roster.v1.UserService/Nope",
            vec![],
            one_message.clone(),
            &[Unimplemented],
        ),
        (
            "unknown service",
            "/roster.v9.Nope/GetUser",
            vec![],
            one_message.clone(),
            &[Unimplemented],
        ),
        (
            "root path",
            "/",
            vec![],
            one_message.clone(),
            &[Unimplemented],
        ),
        (
            "grpc-timeout 1n",
            get_user,
            vec![("grpc-timeout", "1n")],
            one_message.clone(),
            &[DeadlineExceeded, Cancelled, NotFound],
        ),
        (
            "grpc-timeout garbage",
            get_user,
            vec![("grpc-timeout", "soon")],
            one_message.clone(),
            &[NotFound],
        ),
        (
            "grpc-timeout 99999999H",
            get_user,
            vec![("grpc-timeout", "99999999H")],
            one_message.clone(),
            &[NotFound],
        ),
        (
            "content-type json",
            get_user,
            vec![("content-type", "application/json")],
            one_message.clone(),
            &[NotFound, Unknown, Internal],
        ),
    ];
    let (mut client, _driver) = connect(addr).await;
    for (name, path, headers, body, expected) in cases {
        let answer = call(&mut client, path, &headers, body).await;
        println!("  {name}: {}", answer.label());
        tally.add(format!("{name}: {}", answer.label()));
        match answer {
            Answer::Grpc(code) => assert!(
                expected.contains(&code),
                "{name}: {code:?}, expected one of {expected:?}"
            ),
            other => panic!("{name}: {other:?}"),
        }
    }
    // A message cut into one-byte DATA frames is still one message.
    let ready = client.clone().ready().await.unwrap();
    let mut ready = ready;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{get_user}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = ready.send_request(request, false).unwrap();
    let bytes = grpc_message(0, n, &body);
    for (i, byte) in bytes.iter().enumerate() {
        send.send_data(Bytes::copy_from_slice(&[*byte]), i + 1 == bytes.len())
            .unwrap();
    }
    let response = tokio::time::timeout(CALL_TIMEOUT, response)
        .await
        .expect("an answer")
        .unwrap();
    let (parts, mut body) = response.into_parts();
    let code = match grpc_status(&parts.headers) {
        Some(code) => code,
        None => {
            while body.data().await.is_some() {}
            grpc_status(&body.trailers().await.unwrap().unwrap()).unwrap()
        }
    };
    assert_eq!(code, NotFound, "one-byte DATA frames");
    tally.add(format!("one-byte DATA frames: grpc {code:?}"));
    tally
}

// ---- random and mutated protobuf -----------------------------------------

/// Every Roster method's path, with a valid request for it.
fn methods() -> Vec<(String, Vec<u8>)> {
    let user = |method: &str| format!("/roster.v1.UserService/{method}");
    let board = |method: &str| format!("/roster.v1.LeaderboardService/{method}");
    let password = "correct horse battery staple".to_owned();
    vec![
        (
            user("CreateUser"),
            pb::CreateUserRequest {
                name: "bob".into(),
                password: password.clone(),
                request_id: "create-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            user("GetUser"),
            pb::GetUserRequest {
                name: "alice".into(),
            }
            .encode_to_vec(),
        ),
        (
            user("VerifyPassword"),
            pb::VerifyPasswordRequest {
                name: "alice".into(),
                password: password.clone(),
            }
            .encode_to_vec(),
        ),
        (
            user("ChangePassword"),
            pb::ChangePasswordRequest {
                name: "carol".into(),
                current_password: password.clone(),
                new_password: "a brand new passphrase".into(),
                request_id: "change-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            user("DeleteUser"),
            pb::DeleteUserRequest {
                name: "dave".into(),
                request_id: "delete-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            user("ListUsers"),
            pb::ListUsersRequest {
                page_size: 2,
                page_token: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            board("RecordGame"),
            pb::RecordGameRequest {
                name: "alice".into(),
                outcome: 1,
                score: 42,
                request_id: "game-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            board("GetUserStats"),
            pb::GetUserStatsRequest {
                name: "alice".into(),
            }
            .encode_to_vec(),
        ),
        (
            board("ListLeaderboard"),
            pb::ListLeaderboardRequest {
                page_size: 10,
                page_token: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            board("ListLeaderboardAroundUser"),
            pb::ListLeaderboardAroundUserRequest {
                name: "alice".into(),
                page_size: 5,
            }
            .encode_to_vec(),
        ),
    ]
}

/// Text that the parsers find interesting, for string fields.
const TRICKY: &[&str] = &[
    "",
    "alice",
    "ALICE",
    "ａｌｉｃｅ",
    "a b",
    "a\u{0}b",
    "p\u{0430}ypal",
    "a\u{202E}b",
    "a\u{200B}b",
    "Stra\u{DF}e",
    "\u{1C5}",
    "e\u{301}",
    "🔑🔑🔑🔑🔑🔑🔑🔑",
    "password",
    "correct horse battery staple",
    "bGIxOjEwOjIw",
    "bGIxOjI6KzI",
    "bGIxOjU6MTg0NDY3NDQwNzM3MDk1NTE2MTU",
    "dXNlcnMvdjEvYWxpY2U",
];

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One random field: a random number and wire type with a fitting (or not) payload.
fn random_field(rng: &mut StdRng, out: &mut Vec<u8>) {
    let field = rng.random_range(1..8u64);
    let wire = rng.random_range(0..8u64);
    varint(field << 3 | wire, out);
    match wire {
        0 => varint(rng.random(), out),
        1 => out.extend(rng.random::<u64>().to_le_bytes()),
        2 => {
            let text: Vec<u8> = if rng.random_bool(0.5) {
                TRICKY[rng.random_range(0..TRICKY.len())]
                    .as_bytes()
                    .to_vec()
            } else {
                (0..rng.random_range(0..80)).map(|_| rng.random()).collect()
            };
            let len = if rng.random_bool(0.9) {
                text.len() as u64
            } else {
                rng.random_range(0..1 << 20)
            };
            varint(len, out);
            out.extend(text);
        }
        5 => out.extend(rng.random::<u32>().to_le_bytes()),
        _ => out.extend((0..rng.random_range(0..8)).map(|_| rng.random::<u8>())),
    }
}

/// A random or mutated request body for the method at `path`, whose valid
/// body is `valid`.
fn mutate(rng: &mut StdRng, path: &str, valid: &[u8]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    // Half the bodies are well typed, so the handlers' parsing and the use
    // cases behind it see most of them, not only the protobuf decoder.
    match rng.random_range(0..10) {
        0 => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
        1 => {
            for _ in 0..rng.random_range(1..4) {
                if !bytes.is_empty() {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.random_range(0..8);
                }
            }
            bytes
        }
        2 => {
            bytes.truncate(rng.random_range(0..=bytes.len()));
            bytes
        }
        3 => {
            let at = rng.random_range(0..=bytes.len());
            let insert: Vec<u8> = (0..rng.random_range(1..8)).map(|_| rng.random()).collect();
            bytes.splice(at..at, insert);
            bytes
        }
        4 => {
            let mut out = valid.to_vec();
            for _ in 0..rng.random_range(1..5) {
                random_field(rng, &mut out);
            }
            out
        }
        _ => typed(rng, path.rsplit('/').next().unwrap()),
    }
}

fn text(rng: &mut StdRng) -> String {
    if rng.random_bool(0.1) {
        // Around every length limit: names, request ids, passwords.
        let len = [64, 65, 256, 257, 1024, 1025][rng.random_range(0..6)];
        return "x".repeat(len);
    }
    TRICKY[rng.random_range(0..TRICKY.len())].to_owned()
}

fn number(rng: &mut StdRng) -> i64 {
    match rng.random_range(0..5) {
        0 => rng.random_range(-3..120),
        1 => i64::from(i32::MAX),
        2 => -1,
        3 => (1 << 53) - 1,
        _ => rng.random(),
    }
}

/// A well-typed request for `method` with tricky field values.
fn typed(rng: &mut StdRng, method: &str) -> Vec<u8> {
    match method {
        "CreateUser" => pb::CreateUserRequest {
            name: text(rng),
            password: text(rng),
            request_id: text(rng),
        }
        .encode_to_vec(),
        "GetUser" => pb::GetUserRequest { name: text(rng) }.encode_to_vec(),
        "VerifyPassword" => pb::VerifyPasswordRequest {
            name: text(rng),
            password: text(rng),
        }
        .encode_to_vec(),
        "ChangePassword" => pb::ChangePasswordRequest {
            name: text(rng),
            current_password: text(rng),
            new_password: text(rng),
            request_id: text(rng),
        }
        .encode_to_vec(),
        "DeleteUser" => pb::DeleteUserRequest {
            name: text(rng),
            request_id: text(rng),
        }
        .encode_to_vec(),
        "ListUsers" => pb::ListUsersRequest {
            page_size: number(rng) as i32,
            page_token: text(rng),
        }
        .encode_to_vec(),
        "RecordGame" => pb::RecordGameRequest {
            name: text(rng),
            outcome: number(rng) as i32,
            score: number(rng),
            request_id: text(rng),
        }
        .encode_to_vec(),
        "GetUserStats" => pb::GetUserStatsRequest { name: text(rng) }.encode_to_vec(),
        "ListLeaderboard" => pb::ListLeaderboardRequest {
            page_size: number(rng) as i32,
            page_token: text(rng),
        }
        .encode_to_vec(),
        _ => pb::ListLeaderboardAroundUserRequest {
            name: text(rng),
            page_size: number(rng) as i32,
        }
        .encode_to_vec(),
    }
}

async fn mutated_protobuf(addr: SocketAddr, rng: &mut StdRng) -> Tally {
    let tally = Tally::default();
    let methods = methods();
    let until = Instant::now() + MUTATION_TIME;
    let mut tasks = JoinSet::new();
    // Four connections, each with its own seeded sender and 8 calls in flight.
    for _ in 0..4 {
        let (client, _driver) = connect(addr).await;
        for _ in 0..8 {
            let mut rng = StdRng::seed_from_u64(rng.random());
            let methods = methods.clone();
            let tally = tally.clone();
            let mut client = client.clone();
            tasks.spawn(async move {
                while Instant::now() < until {
                    let (path, valid) = &methods[rng.random_range(0..methods.len())];
                    let body = mutate(&mut rng, path, valid);
                    let message = grpc_message(0, body.len() as u32, &body);
                    let answer = call(&mut client, path, &[], message).await;
                    let method = path.rsplit('/').next().unwrap();
                    let expected = match &answer {
                        Answer::Grpc(code) => matches!(
                            code,
                            Code::Ok
                                | Code::InvalidArgument
                                | Code::Internal
                                | Code::NotFound
                                | Code::AlreadyExists
                                | Code::Unauthenticated
                                | Code::ResourceExhausted
                                | Code::FailedPrecondition
                                // Two ChangePasswords racing on one user.
                                | Code::Aborted
                        ),
                        _ => false,
                    };
                    assert!(expected, "{method} with body {body:02x?}: {answer:?}");
                    tally.add(format!("{method}: {}", answer.label()));
                }
            });
        }
    }
    tokio::time::timeout(MUTATION_TIME + CALL_TIMEOUT * 2, async {
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
    })
    .await
    .expect("mutated calls end");
    let counts = tally.snapshot();
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for (label, count) in &counts {
        let code = label.split(": ").nth(1).unwrap_or(label).to_owned();
        *by_code.entry(code).or_default() += count;
    }
    println!("random and mutated protobuf, by answer: {by_code:?}");
    tally
}
