//! Prometheus metrics, served on their own listener (`--metrics-addr`,
//! `GET /metrics`, Prometheus text format). The gRPC metrics use
//! go-grpc-prometheus's names and labels, so existing dashboards work;
//! Roster's own are `roster_*`, each described in its HELP text and the
//! README.
//!
//! `prometheus-client` (the Prometheus project's Rust client) rather than
//! `metrics` + `metrics-exporter-prometheus`: its registry is a value passed
//! where it is needed, not a process-wide recorder, so several servers in
//! one process (the tests) keep their own counts; and its label sets are
//! typed structs.

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};

/// Latency buckets in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A gRPC method's labels (go-grpc-prometheus).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

/// A handled call's labels (go-grpc-prometheus).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// One label naming what happened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    kind: &'static str,
}

impl Kind {
    /// The label `kind="…"`.
    pub fn new(kind: &'static str) -> Self {
        Self { kind }
    }
}

/// Where a read was answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    source: &'static str,
}

/// A refusal's ErrorInfo reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    reason: String,
}

/// A connection's state: handshaking (TLS, HTTP/2 preface) or open.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionState {
    state: &'static str,
}

/// Why a connection was refused or closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Cause {
    reason: &'static str,
}

/// One label naming a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    result: &'static str,
}

impl Outcome {
    /// The label `result="…"`.
    pub fn new(result: &'static str) -> Self {
        Self { result }
    }
}

/// Every metric Roster records. Cheap to clone (handles to shared values).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The hot paths' series, resolved once (a family look-up hashes its
    /// labels under a lock on every call).
    hot: Arc<Hot>,
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: Family<MethodLabels, Histogram>,
    received: Family<MethodLabels, Counter>,
    sent: Family<MethodLabels, Counter>,
    /// User cache look-ups by result: hit, miss, error, bypassed.
    pub cache_lookups: Family<Outcome, Counter>,
    /// Fills refused because a write voided their lease.
    pub cache_fills_voided: Counter,
    /// Delivery rounds by result: current, behind, failed, flushed.
    pub delivery_rounds: Family<Outcome, Counter>,
    /// Outbox changes Redis lacked at the last round.
    pub cache_pending: Gauge,
    /// Calls queued for a hashing slot, by how long they waited (seconds).
    pub hash_queue_wait: Histogram,
    /// Calls refused (RESOURCE_EXHAUSTED, PERMISSION_DENIED,
    /// UNAUTHENTICATED), by the ErrorInfo reason they carried.
    refusals: Family<Reason, Counter>,
    /// Time to begin a write transaction (pool and lock wait), seconds.
    pub db_write_wait: Histogram,
    /// Write failures by kind: full, storage, unavailable, other.
    pub db_write_errors: Family<Kind, Counter>,
    /// Board reads by where they were answered: copy, script, database.
    pub board_reads: Family<Source, Counter>,
    /// Times this process loaded its board copy.
    pub board_copy_loads: Counter,
    /// Redis command failures by kind: timeout, error.
    pub redis_errors: Family<Kind, Counter>,
    /// Connections open now, by state: handshaking, open.
    connections: Family<ConnectionState, Gauge>,
    /// Connections closed as soon as accepted, by the cap they were over.
    connections_refused: Family<Cause, Counter>,
    /// Connections the server closed or told to go away, by reason.
    connections_closed: Family<Cause, Counter>,
    /// Failed accept(2) calls (EMFILE and the like).
    accept_errors: Counter,
}

/// Series incremented on every cached read.
#[derive(Debug)]
struct Hot {
    cache: [Counter; 4],
    board: [Counter; 3],
}

const CACHE_RESULTS: [&str; 4] = ["hit", "miss", "error", "bypassed"];
const BOARD_SOURCES: [&str; 3] = ["copy", "script", "database"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh, zeroed metrics.
    pub fn new() -> Self {
        let latency = || Histogram::new(LATENCY_BUCKETS);
        let cache_lookups: Family<Outcome, Counter> = Family::default();
        let board_reads: Family<Source, Counter> = Family::default();
        let hot = Hot {
            cache: CACHE_RESULTS
                .map(|result| cache_lookups.get_or_create(&Outcome { result }).clone()),
            board: BOARD_SOURCES
                .map(|source| board_reads.get_or_create(&Source { source }).clone()),
        };
        Self {
            hot: Arc::new(hot),
            started: Family::default(),
            handled: Family::default(),
            handling: Family::new_with_constructor(latency),
            received: Family::default(),
            sent: Family::default(),
            cache_lookups,
            cache_fills_voided: Counter::default(),
            delivery_rounds: Family::default(),
            cache_pending: Gauge::default(),
            hash_queue_wait: latency(),
            refusals: Family::default(),
            db_write_wait: latency(),
            db_write_errors: Family::default(),
            board_reads,
            board_copy_loads: Counter::default(),
            redis_errors: Family::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            accept_errors: Counter::default(),
        }
    }

    /// The gauge of connections in `state` (handshaking, open).
    pub fn connections(&self, state: &'static str) -> Gauge {
        self.connections
            .get_or_create(&ConnectionState { state })
            .clone()
    }

    /// Counts a connection refused for `reason` (the cap it was over).
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&Cause { reason })
            .inc();
    }

    /// Counts a connection closed, or told to go away, for `reason`.
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&Cause { reason })
            .inc();
    }

    /// Counts a failed accept.
    pub fn accept_error(&self) {
        self.accept_errors.inc();
    }

    /// Counts one look-up result of the user cache: hit, miss, error or
    /// bypassed.
    pub fn cache(&self, result: &'static str) {
        match CACHE_RESULTS.iter().position(|r| *r == result) {
            Some(index) => self.hot.cache[index].inc(),
            None => self.cache_lookups.get_or_create(&Outcome { result }).inc(),
        };
    }

    /// Counts one board read answered by `source`: copy, script or database.
    pub fn board_read(&self, source: &'static str) {
        match BOARD_SOURCES.iter().position(|s| *s == source) {
            Some(index) => self.hot.board[index].inc(),
            None => self.board_reads.get_or_create(&Source { source }).inc(),
        };
    }

    /// A registry with every metric, plus `state` read at each scrape.
    pub fn registry(&self, state: State) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            self.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            self.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            self.handling.clone(),
        );
        registry.register(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server",
            self.received.clone(),
        );
        registry.register(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server",
            self.sent.clone(),
        );
        registry.register(
            "roster_cache_lookups",
            "User cache look-ups by result: hit, miss, error (Redis failed or timed out), bypassed (freshness gate closed or Redis disconnected)",
            self.cache_lookups.clone(),
        );
        registry.register(
            "roster_cache_fills_voided",
            "Cache fills not stored because a write voided their lease (the stale-set race, prevented)",
            self.cache_fills_voided.clone(),
        );
        registry.register(
            "roster_cache_delivery_rounds",
            "Outbox delivery rounds by result: current (Redis held everything), behind (changes delivered), flushed (Redis lost its position), failed",
            self.delivery_rounds.clone(),
        );
        registry.register(
            "roster_cache_invalidations_pending",
            "Outbox changes (invalidations, board updates) Redis lacked at the last delivery round",
            self.cache_pending.clone(),
        );
        registry.register(
            "roster_hash_queue_wait_seconds",
            "How long password-hashing calls waited for a hashing slot",
            self.hash_queue_wait.clone(),
        );
        registry.register(
            "roster_refusals",
            "Calls refused with RESOURCE_EXHAUSTED, PERMISSION_DENIED or UNAUTHENTICATED, by reason: HASHING_CAPACITY_EXHAUSTED, CALLER_QUOTA_EXCEEDED, TOO_MANY_FAILED_ATTEMPTS, STORAGE_FULL, IDENTITY_REQUIRED, METHOD_NOT_ALLOWED, INVALID_CREDENTIALS, SERVER_OVERLOADED, REQUEST_TOO_LARGE",
            self.refusals.clone(),
        );
        registry.register(
            "roster_db_write_wait_seconds",
            "Time to begin a write transaction: waiting for the writer connection and the write lock",
            self.db_write_wait.clone(),
        );
        registry.register(
            "roster_db_write_errors",
            "Failed writes by kind: full (disk full), storage (I/O, read-only), unavailable (unreachable, busy), other",
            self.db_write_errors.clone(),
        );
        registry.register(
            "roster_board_reads",
            "Board reads (stats, pages, windows) by where they were answered: copy (this process's copy), script (Redis), database",
            self.board_reads.clone(),
        );
        registry.register(
            "roster_board_copy_loads",
            "Times this process loaded its copy of the board from Redis",
            self.board_copy_loads.clone(),
        );
        registry.register(
            "roster_redis_errors",
            "Redis command failures by kind: timeout, error",
            self.redis_errors.clone(),
        );
        registry.register(
            "roster_connections",
            "gRPC connections open now, by state: handshaking (TLS handshake and HTTP/2 preface not finished), open",
            self.connections.clone(),
        );
        registry.register(
            "roster_connections_refused",
            "Connections closed as soon as they were accepted, by reason: max_connections, max_connections_per_peer",
            self.connections_refused.clone(),
        );
        registry.register(
            "roster_connections_closed",
            "Connections the server closed or told to go away, by reason: handshake_timeout, idle, max_age (GOAWAY), max_age_grace (closed under calls still running)",
            self.connections_closed.clone(),
        );
        registry.register(
            "roster_accept_errors",
            "Failed accepts of new connections (e.g. EMFILE: out of file descriptors)",
            self.accept_errors.clone(),
        );
        registry.register_collector(Box::new(state));
        registry
    }
}

/// Values read at each scrape, from the parts that hold them.
pub struct State {
    /// Hashing slots: (slots, busy, waiting).
    pub hashing: Box<dyn Fn() -> (usize, usize, usize) + Send + Sync>,
    /// Database pool connections: (pool, in use, idle).
    pub pools: Box<dyn Fn() -> Vec<(&'static str, u32, u32)> + Send + Sync>,
    /// Whether cached answers are served now (the freshness gate).
    pub fresh: Box<dyn Fn() -> bool + Send + Sync>,
    /// Whether database writes are failing for a storage reason now.
    pub writes_failing: Box<dyn Fn() -> bool + Send + Sync>,
    /// Board copy: (ranked users in it, log entries behind Redis).
    pub copy: Box<dyn Fn() -> Option<(u64, u64)> + Send + Sync>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

fn as_i64(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (slots, busy, waiting) = (self.hashing)();
        gauge(
            &mut encoder,
            "roster_hash_slots",
            "Password hashes that may run at once",
            as_i64(slots),
        )?;
        gauge(
            &mut encoder,
            "roster_hash_slots_busy",
            "Password hashes running now",
            as_i64(busy),
        )?;
        gauge(
            &mut encoder,
            "roster_hash_waiting",
            "Calls waiting for a hashing slot now",
            as_i64(waiting),
        )?;
        let pools = (self.pools)();
        let family = ConstGauge::new(0i64);
        let mut metric = encoder.encode_descriptor(
            "roster_db_connections",
            "Database pool connections by pool (reader, writer) and state (in_use, idle)",
            None,
            family.metric_type(),
        )?;
        for (pool, in_use, idle) in pools {
            for (state, value) in [("in_use", in_use), ("idle", idle)] {
                ConstGauge::new(i64::from(value))
                    .encode(metric.encode_family(&PoolLabels { pool, state })?)?;
            }
        }
        gauge(
            &mut encoder,
            "roster_cache_fresh",
            "1 while cached answers are served (a delivery round found Redis holding every committed change within the staleness bound), else 0",
            i64::from((self.fresh)()),
        )?;
        gauge(
            &mut encoder,
            "roster_db_writes_failing",
            "1 while database writes fail for a storage reason (full, read-only or failing disk), else 0",
            i64::from((self.writes_failing)()),
        )?;
        if let Some((users, lag)) = (self.copy)() {
            gauge(
                &mut encoder,
                "roster_board_copy_users",
                "Ranked users in this process's copy of the board",
                as_i64(users),
            )?;
            gauge(
                &mut encoder,
                "roster_board_copy_lag",
                "Board change-log entries this process's copy is behind Redis, at its last sync",
                as_i64(lag),
            )?;
        }
        process(&mut encoder)
    }
}

/// The process_* metrics Prometheus clients export, from /proc (Linux).
fn process(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name (which may hold spaces, in parens).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok());
        // utime and stime are fields 14 and 15 of stat, in clock ticks
        // (100 per second on Linux); here offset by the two before ')'.
        if let (Some(user), Some(system)) = (field(11), field(12)) {
            let counter = ConstCounter::new((user + system) as f64 / 100.0);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        if let Some(pages) = field(21) {
            gauge(
                encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                as_i64(pages * 4096),
            )?;
        }
        if let Some(bytes) = field(20) {
            gauge(
                encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                as_i64(bytes),
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                encoder,
                "process_open_fds",
                "Number of open file descriptors",
                as_i64(fds.count()),
            )?;
        }
        if let Some(threads) = field(17) {
            gauge(
                encoder,
                "process_threads",
                "Number of OS threads in the process",
                as_i64(threads),
            )?;
        }
    }
    Ok(())
}

/// Serves `GET /metrics` from `listener` for as long as it runs.
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) {
    use axum::response::IntoResponse;
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = Arc::clone(&registry);
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::prometheus_text::encode(&mut body, &registry) {
                    Ok(()) => (
                        [(
                            http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response(),
                    Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "metrics listener stopped");
    }
}

/// The tower layer that counts every gRPC call (go-grpc-prometheus). Each
/// method's series are resolved once, when the layer is made, so a call
/// touches only atomics (a method the server does not serve goes through
/// the label families).
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
    methods: Arc<HashMap<String, Arc<MethodSeries>>>,
}

impl GrpcMetricsLayer {
    /// The layer over `metrics`, with the series of `methods`
    /// (`package.Service/Method`) resolved up front.
    pub fn new(metrics: Metrics, methods: &[String]) -> Self {
        let methods = methods
            .iter()
            .map(|path| {
                (
                    format!("/{path}"),
                    Arc::new(MethodSeries::new(&metrics, path)),
                )
            })
            .collect();
        Self {
            metrics,
            methods: Arc::new(methods),
        }
    }
}

/// One method's label set and series.
struct MethodSeries {
    labels: MethodLabels,
    started: Counter,
    received: Counter,
    sent: Counter,
    handling: Histogram,
    /// `grpc_server_handled_total` by code (0 to 16), made on first use so
    /// that only codes that happened are exported.
    handled: [std::sync::OnceLock<Counter>; 17],
    metrics: Metrics,
}

impl MethodSeries {
    fn new(metrics: &Metrics, path: &str) -> Self {
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let labels = MethodLabels {
            grpc_type: grpc_type(service, method),
            grpc_service: service.to_owned(),
            grpc_method: method.to_owned(),
        };
        Self {
            started: metrics.started.get_or_create(&labels).clone(),
            received: metrics.received.get_or_create(&labels).clone(),
            sent: metrics.sent.get_or_create(&labels).clone(),
            handling: metrics.handling.get_or_create(&labels).clone(),
            handled: Default::default(),
            labels,
            metrics: metrics.clone(),
        }
    }

    fn finish(&self, code: tonic::Code, began: Instant, sent: u64) {
        let index = usize::try_from(code as i32).unwrap_or(2).min(16);
        self.handled[index]
            .get_or_init(|| {
                self.metrics
                    .handled
                    .get_or_create(&HandledLabels {
                        grpc_type: self.labels.grpc_type,
                        grpc_service: self.labels.grpc_service.clone(),
                        grpc_method: self.labels.grpc_method.clone(),
                        grpc_code: code_name(code),
                    })
                    .clone()
            })
            .inc();
        self.handling.observe(began.elapsed().as_secs_f64());
        if sent > 0 {
            self.sent.inc_by(sent);
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

pin_project_lite::pin_project! {
    /// The response future of [`GrpcMetricsService`]: records the call
    /// when its answer is known.
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
        refusals: Family<Reason, Counter>,
    }
}

impl<F, E> std::future::Future for MetricsFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            other => return other,
        };
        let Some(call) = this.call.take() else {
            return Poll::Ready(Ok(response));
        };
        // A call that failed before any message has its status in the
        // headers (trailers-only); otherwise it comes in the trailers.
        if let Some(code) = response.headers().get("grpc-status") {
            let code = status_code(code);
            if matches!(
                code,
                tonic::Code::ResourceExhausted
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
            ) {
                let reason = refusal_reason(response.headers()).unwrap_or_default();
                this.refusals.get_or_create(&Reason { reason }).inc();
            }
            call.series.finish(code, call.began, 0);
            return Poll::Ready(Ok(response));
        }
        let (parts, body) = response.into_parts();
        let observed = Observed {
            inner: body,
            call: Some(call),
        };
        Poll::Ready(Ok(http::Response::from_parts(
            parts,
            tonic::body::Body::new(observed),
        )))
    }
}

/// The streaming kind of a method, as go-grpc-prometheus names it.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("grpc.health.v1.Health", "Watch") => "server_stream",
        (_, "ServerReflectionInfo") => "bidi_stream",
        _ => "unary",
    }
}

impl<S, B> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let series = self.layer.methods.get(path).cloned().unwrap_or_else(|| {
            Arc::new(MethodSeries::new(
                &self.layer.metrics,
                path.trim_start_matches('/'),
            ))
        });
        series.started.inc();
        series.received.inc();
        let call = Call {
            series,
            began: Instant::now(),
            messages: 0,
        };
        // The service that was made ready serves this call; a fresh clone
        // waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        MetricsFuture {
            inner: ready.call(request),
            call: Some(call),
            refusals: self.layer.metrics.refusals.clone(),
        }
    }
}

fn status_code(value: &http::HeaderValue) -> tonic::Code {
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from)
}

/// The ErrorInfo reason in a trailers-only error response's details.
fn refusal_reason(headers: &http::HeaderMap) -> Option<String> {
    use base64::{
        Engine, alphabet,
        engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    };
    use prost::Message;
    // gRPC's binary headers are base64, with or without padding.
    const BASE64: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let details = headers.get("grpc-status-details-bin")?.as_bytes();
    let bytes = BASE64.decode(details).ok()?;
    let status = tonic_types::pb::Status::decode(bytes.as_slice()).ok()?;
    status.details.iter().find_map(|any| {
        (any.type_url.ends_with("google.rpc.ErrorInfo"))
            .then(|| tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).ok())
            .flatten()
            .map(|info| info.reason)
    })
}

/// A code as go-grpc-prometheus's label.
fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

struct Call {
    series: Arc<MethodSeries>,
    began: Instant,
    messages: u64,
}

/// A response body that records the call when its trailers (and status)
/// go out, or as cancelled if it is dropped before.
struct Observed {
    inner: tonic::body::Body,
    call: Option<Call>,
}

impl http_body::Body for Observed {
    type Data = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if frame.is_data() {
                if let Some(call) = &mut self.call {
                    // Approximately one message per data frame.
                    call.messages += 1;
                }
            } else if let Some(trailers) = frame.trailers_ref()
                && let Some(call) = self.call.take()
            {
                let code = trailers
                    .get("grpc-status")
                    .map_or(tonic::Code::Unknown, status_code);
                call.series.finish(code, call.began, call.messages);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.series
                .finish(tonic::Code::Cancelled, call.began, call.messages);
        }
    }
}
