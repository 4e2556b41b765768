//! OpenTelemetry: Roster (a real child process) exports its spans over OTLP
//! to a receiver in this test process; a call that carries a W3C
//! `traceparent` produces a server span in that trace, child of the
//! caller's span, with the use-case and database spans below it; JSON log
//! lines inside the call carry the trace and span ids; no span carries a
//! password.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};
use roster::proto::roster::v1::{self as pb, user_service_client::UserServiceClient};
use tokio_stream::wrappers::TcpListenerStream;

use crate::{helpers::PASSWORD, rig::ServerProcess};

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    exported: Arc<Mutex<Vec<u8>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        self.exported
            .lock()
            .unwrap()
            .extend(prost::Message::encode_to_vec(&request));
        let mut spans = self.spans.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_a_traceparent_produces_spans_in_the_callers_trace() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let collector = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("roster.db").display());
    let server = ServerProcess::start_with(
        &db,
        "",
        &[],
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "roster-under-test"),
        ],
    )
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut client = UserServiceClient::new(server.channel());
    let mut request = tonic::Request::new(pb::CreateUserRequest {
        name: "traced".into(),
        password: PASSWORD.into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    client.create_user(request).await.unwrap();

    // The batch exporter sends within ~100 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    let in_trace = loop {
        let spans: Vec<Span> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|span| hex(&span.trace_id) == trace_id)
            .cloned()
            .collect();
        if spans.iter().any(|s| s.name.contains("insert_user")) {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "no spans in the caller's trace arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let server_span = in_trace
        .iter()
        .find(|span| span.name == "roster.v1.UserService/CreateUser")
        .expect("a server span named after the method");
    assert_eq!(
        hex(&server_span.parent_span_id),
        parent_id,
        "child of the caller's span"
    );
    let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"create"), "the use case's span: {names:?}");
    assert!(
        names.contains(&"insert_user"),
        "the store's span: {names:?}"
    );
    // No secret in anything exported.
    let exported = receiver.exported.lock().unwrap().clone();
    assert!(
        !String::from_utf8_lossy(&exported).contains(PASSWORD),
        "a password reached the trace exporter"
    );
    // JSON logs inside the call carry the ids.
    let log = server.log();
    assert!(
        log.lines()
            .any(|line| line.contains("user created") && line.contains(trace_id)),
        "log lines inside the call carry the trace id"
    );
    drop(server);
    collector.abort();
}
