//! The Prometheus endpoint, scraped for real: go-grpc-prometheus's names and
//! labels, Roster's own metrics, a call moving the right counters, and the
//! exposition checked by the real `promtool check metrics` (Debian's
//! `prometheus` package; `.ci/test` installs it).

use std::{
    io::Write,
    process::{Command, Stdio},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::helpers::{RedisServer, spawn_with, test_config};

/// GET /metrics over plain HTTP/1.1.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: roster\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4")
    );
    // Chunked transfer encoding: drop the chunk sizes.
    if head.to_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.push_str(&tail[..size]);
            rest = &tail[size + 2..];
        }
        return out;
    }
    body.to_owned()
}

/// The value of the sample `name{labels}` (labels as written), or 0.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_passes_promtool_and_a_call_moves_the_right_counters() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
    config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let app = spawn_with(config, dir, redis).await;
    let addr = app.metrics_addr.expect("a metrics listener");

    let created = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="roster.v1.UserService",grpc_method="CreateUser",grpc_code="OK"}"#;
    let not_found = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="roster.v1.UserService",grpc_method="GetUser",grpc_code="NotFound"}"#;
    let started = r#"grpc_server_started_total{grpc_type="unary",grpc_service="roster.v1.UserService",grpc_method="GetUser"}"#;
    let latency = r#"grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="roster.v1.UserService",grpc_method="GetUser"}"#;
    let sent = r#"grpc_server_msg_sent_total{grpc_type="unary",grpc_service="roster.v1.UserService",grpc_method="CreateUser"}"#;
    let before = scrape(addr).await;

    app.create_user("metered").await;
    assert_eq!(
        app.get_user("nobody").await.unwrap_err().code(),
        Code::NotFound
    );
    app.get_user("metered").await.unwrap();
    let after = scrape(addr).await;

    assert_eq!(sample(&after, created) - sample(&before, created), 1.0);
    assert_eq!(sample(&after, not_found) - sample(&before, not_found), 1.0);
    assert_eq!(sample(&after, started) - sample(&before, started), 2.0);
    assert_eq!(sample(&after, latency) - sample(&before, latency), 2.0);
    assert_eq!(sample(&after, sent) - sample(&before, sent), 1.0);
    // Roster's own: the look-ups went through the cache, hashing had slots.
    let lookups: f64 = ["hit", "miss", "bypassed", "error"]
        .iter()
        .map(|result| {
            sample(
                &after,
                &format!(r#"roster_cache_lookups_total{{result="{result}"}}"#),
            )
        })
        .sum();
    assert!(lookups >= 2.0, "{after}");
    assert!(sample(&after, "roster_hash_slots") >= 1.0);
    assert!(after.contains("roster_db_connections{pool=\"writer\",state=\"idle\"}"));
    assert!(after.contains("process_resident_memory_bytes"));
    assert!(after.contains("roster_cache_fresh"));
    assert!(after.contains("\nroster_db_writes_failing 0\n"), "{after}");

    // The real promtool.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            promtool
                .stdin
                .take()
                .unwrap()
                .write_all(after.as_bytes())
                .unwrap();
            let output = promtool.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Err(_) => panic!("promtool is needed (Debian package prometheus; .ci/test installs it)"),
    }
    drop(app.stop().await);
}
