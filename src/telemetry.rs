//! Logs and traces: the tracing subscriber (text or JSON lines), a throttle
//! for repeated warnings, and
//! OpenTelemetry export over OTLP/gRPC, on when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and off otherwise, at no
//! cost (no span per call is even created). The standard `OTEL_*` variables
//! apply (`OTEL_SERVICE_NAME`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`...).
//! Callers' W3C `traceparent`/`tracestate` are taken from the request
//! metadata, so Roster's spans join the caller's trace.

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::LogFormat;

/// What [`init`] set up; call [`Telemetry::shutdown`] before exiting, so the
/// last spans are sent.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "trace exporter did not shut down cleanly");
        }
    }
}

/// Whether the standard variables ask for trace export.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

/// Installs the global subscriber (and the OTLP exporter when configured;
/// call from within the Tokio runtime). Safe to call more than once (later
/// calls do nothing).
pub fn init(format: LogFormat, filter: &str) -> Telemetry {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let output = match format {
        LogFormat::Text => fmt::layer().boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let (provider, otel) = if otlp_configured() {
        match exporter() {
            Ok(provider) => {
                let tracer = provider.tracer("roster");
                let layer = tracing_opentelemetry::layer().with_tracer(tracer).boxed();
                (Some(provider), Some(layer))
            }
            Err(error) => {
                eprintln!("roster: OTLP trace export not started: {error}");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    // Without an exporter nothing reads spans: turned off at their call
    // sites, a use case's or a query's `#[instrument]` span costs nothing
    // (at `info` they cost a GetUser cache hit ~15% of its throughput,
    // measured with the benchmark). Log lines then carry no span context,
    // which only the trace ids needed.
    let spans_off = provider
        .is_none()
        .then(|| tracing_subscriber::filter::filter_fn(|metadata| !metadata.is_span()));
    let installed = tracing_subscriber::registry()
        .with(spans_off)
        .with(filter)
        .with(output)
        .with(otel)
        .try_init();
    if installed.is_err() {
        // A second initialisation (tests start many servers in one process).
        return Telemetry::default();
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing::info!("OpenTelemetry trace export on (OTLP over gRPC)");
    }
    Telemetry { provider }
}

fn exporter() -> Result<SdkTracerProvider, Box<dyn std::error::Error + Send + Sync>> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "roster".to_owned());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build())
}

/// Reads W3C trace context from gRPC metadata (HTTP/2 headers).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one gRPC call (OpenTelemetry's RPC conventions), child of
/// the caller's span when the call carries a `traceparent`. Its `trace_id`
/// and `span_id` fields put the ids on every log line written inside it.
pub fn request_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    // Fails only when no OpenTelemetry layer is installed.
    let _ = span.set_parent(parent);
    let context = span.context();
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", ids.trace_id().to_string());
        span.record("span_id", ids.span_id().to_string());
    }
    span
}
/// Lets a repeated warning through at most once per period and counts the
/// ones it held back, so an outage logs a line every few seconds, not one per
/// request. Hand-written because it is a dozen lines; the crates that do this
/// bring a whole rate-limiting framework.
#[derive(Debug)]
pub struct LogThrottle {
    period: std::time::Duration,
    start: std::time::Instant,
    next_ms: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    /// A throttle that lets one event through per `period`.
    pub fn new(period: std::time::Duration) -> Self {
        Self {
            period,
            start: std::time::Instant::now(),
            next_ms: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event should be logged, `n` being how many were
    /// held back since the last one; `None` when it should be dropped.
    pub fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Relaxed);
        let period = u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now.saturating_add(period), Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}
