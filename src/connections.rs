//! The gRPC listener: accepts connections, closes those over the caps at
//! once, and serves each over HTTP/2 with a handshake deadline, an idle limit
//! and a jittered maximum age; on shutdown it stops accepting and tells every
//! connection to go away.
//!
//! Roster serves its connections with hyper itself rather than through
//! tonic's `Server::serve_with_incoming_shutdown`, which can only tell all
//! connections to go away at once: it has no deadline for a connection that
//! never sends its HTTP/2 preface (such connections were held until the
//! process ran out of file descriptors), no idle limit, no caps, and its
//! `max_connection_age` with a grace period closes the connection at age +
//! grace without a GOAWAY first, all connections at the same age (tonic
//! 0.14.9). What tonic's server adds to each call is done here too: the
//! connection's addresses (and TLS certificates) in the request's extensions,
//! the `grpc-timeout` deadline capped by `--request-timeout` (answered
//! CANCELLED, as tonic answers), and the trace span. Unlike tonic, hyper's
//! default bound on streams reset for errors (a defence against reset floods)
//! stays in force.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
    time::{Instant, Sleep},
};
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::{access::tls::Tls, config::ConnectionCap, metrics::Metrics, telemetry::LogThrottle};

/// How often a repeated problem (accept errors, refusals, handshake
/// timeouts) is logged at most; each line says how many happened since.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// The pause after a failed accept, doubling while accepts keep failing:
/// an accept that fails for want of file descriptors leaves the connection
/// in the backlog, and retrying at once would spin.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(500));
/// `--max-connections auto` never goes above this: past it, memory rather
/// than file descriptors is what runs out.
const AUTO_MAX_CONNECTIONS: usize = 10_000;
/// File descriptors kept for everything but client connections (listeners,
/// Redis, logs, the runtime), besides four per database connection (SQLite
/// holds the database, its WAL and shared memory files).
const FD_RESERVE: usize = 64;
/// The HTTP/2 client connection preface (RFC 9113 §3.4), which a SETTINGS
/// frame must follow.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const SETTINGS_FRAME: u8 = 0x4;
/// The largest frame a peer may send before SETTINGS raise it.
const MAX_INITIAL_FRAME: usize = 16_384;

/// How connections are capped, timed and served.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// TLS handshake plus HTTP/2 preface and SETTINGS must finish within it.
    pub handshake_timeout: Duration,
    /// GOAWAY after this long without a call in flight.
    pub max_idle: Option<Duration>,
    /// GOAWAY after this long (±10% per connection).
    pub max_age: Option<Duration>,
    /// Calls may go on this long after a GOAWAY the server sent on its own
    /// (age, idleness); then the connection is closed.
    pub max_age_grace: Option<Duration>,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one non-loopback address (0: no cap).
    pub max_connections_per_peer: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval.
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered.
    pub keepalive_timeout: Duration,
    /// The ceiling on any call's deadline.
    pub request_timeout: Duration,
    /// Whether each call gets a trace span.
    pub trace: bool,
}

/// Raises the soft open-file limit to the hard one, as Go's runtime does at
/// start (the soft limit is often 1024, far below what a server needs), and
/// returns the soft limit in force.
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The connection cap `setting` means under an open-file limit of
/// `open_files` with a database pool of `db_connections`.
pub fn connection_cap(
    setting: ConnectionCap,
    open_files: Option<u64>,
    db_connections: u32,
) -> usize {
    match setting {
        ConnectionCap::Fixed(cap) => cap,
        ConnectionCap::Auto => {
            let open_files = open_files.map_or(AUTO_MAX_CONNECTIONS, |limit| {
                usize::try_from(limit).unwrap_or(usize::MAX)
            });
            let reserve = FD_RESERVE.saturating_add(
                usize::try_from(db_connections)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(4),
            );
            open_files
                .saturating_sub(reserve)
                .max(open_files / 2)
                .clamp(1, AUTO_MAX_CONNECTIONS)
        }
    }
}

/// Accepts and serves connections from `listener` with `service` until
/// `shutdown` completes; then closes the listener, sends every connection a
/// GOAWAY and waits for them all to close (the caller bounds the wait;
/// dropping this future closes whatever is left).
pub async fn serve<S>(
    listener: TcpListener,
    tls: Option<Tls>,
    service: S,
    settings: ConnectionSettings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let shared = Arc::new(Shared {
        admission: Arc::new(Admission {
            max_total: settings.max_connections,
            max_per_peer: settings.max_connections_per_peer,
            counts: Mutex::default(),
            handshaking: metrics.connections("handshaking"),
            open: metrics.connections("open"),
        }),
        handshake_timeouts: LogThrottle::new(LOG_EVERY),
        settings,
        tls,
        http2,
        metrics,
    });
    let (stop_connections, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let accept_errors = LogThrottle::new(LOG_EVERY);
    let refusals = LogThrottle::new(LOG_EVERY);
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                report_panic(joined);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    match shared.admission.admit(peer.ip()) {
                        Ok(slot) => {
                            connections.spawn(connection(
                                Arc::clone(&shared),
                                service.clone(),
                                stream,
                                peer,
                                slot,
                                stopping.clone(),
                            ));
                        }
                        Err(reason) => {
                            // Closed at once: the client sees the connection
                            // end, and nothing is held for it.
                            drop(stream);
                            shared.metrics.connection_refused(reason);
                            if let Some(count) = reported(&refusals) {
                                tracing::warn!(
                                    count,
                                    reason,
                                    last_peer = %peer,
                                    max_connections = shared.settings.max_connections,
                                    max_connections_per_peer =
                                        shared.settings.max_connections_per_peer,
                                    "connections refused over the connection caps \
                                     (closed as soon as accepted) since the last report"
                                );
                            }
                        }
                    }
                }
                Err(error) if is_per_connection(&error) => {
                    tracing::debug!(%error, "a connection ended before it was accepted");
                }
                Err(error) => {
                    shared.metrics.accept_error();
                    if let Some(count) = reported(&accept_errors) {
                        tracing::error!(
                            %error,
                            count,
                            "accepting connections fails (count since the last report); \
                             new clients wait until it works again. Out of file \
                             descriptors? See roster_connections and --max-connections"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                }
            }
        }
    }
    drop(listener);
    stop_connections.send_replace(true);
    while let Some(joined) = connections.join_next().await {
        report_panic(joined);
    }
}

/// Errors of accept(2) that concern only the connection being accepted.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

fn report_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!(%error, "a connection's task panicked");
    }
}

/// What every connection task shares.
struct Shared {
    settings: ConnectionSettings,
    tls: Option<Tls>,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    admission: Arc<Admission>,
    handshake_timeouts: LogThrottle,
    metrics: Metrics,
}

impl Shared {
    fn handshake_timed_out(&self, peer: SocketAddr) {
        self.metrics.connection_closed("handshake_timeout");
        if let Some(count) = reported(&self.handshake_timeouts) {
            tracing::warn!(
                count,
                last_peer = %peer,
                timeout = ?self.settings.handshake_timeout,
                "connections closed for not finishing the TLS handshake and HTTP/2 \
                 preface in time, since the last report"
            );
        }
    }
}

/// One accepted connection, from handshake to close.
async fn connection<S>(
    shared: Arc<Shared>,
    service: S,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    stopping: watch::Receiver<bool>,
) where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // Without it, a response larger than a few hundred bytes waits ~40 ms
    // for the client's delayed ACK (Nagle).
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let accepted = Instant::now();
    let deadline = accepted + shared.settings.handshake_timeout;
    let call = (shared, service, peer, slot, stopping);
    match &call.0.tls {
        Some(tls) => match tokio::time::timeout_at(deadline, tls.handshake(stream, peer)).await {
            Ok(Some(stream)) => serve_http2(call, stream, accepted, deadline).await,
            Ok(None) => {}
            Err(_) => call.0.handshake_timed_out(peer),
        },
        None => serve_http2(call, stream, accepted, deadline).await,
    }
}

/// The shared state, service, peer, slot and shutdown signal of a connection.
type Parts<S> = (Arc<Shared>, S, SocketAddr, Slot, watch::Receiver<bool>);

/// Where a served connection is in its life.
#[derive(Clone, Copy)]
enum Phase {
    Serving,
    /// GOAWAY sent; closed at the instant, if any, when calls still run.
    Draining(Option<Instant>),
}

async fn serve_http2<S, IO>(
    (shared, service, peer, mut slot, mut stopping): Parts<S>,
    mut io: IO,
    accepted: Instant,
    deadline: Instant,
) where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    IO: Connected + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let info = io.connect_info();
    let received = match tokio::time::timeout_at(deadline, read_preface(&mut io)).await {
        Ok(Ok(received)) => received,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "connection closed before its HTTP/2 preface");
            return;
        }
        Err(_) => {
            shared.handshake_timed_out(peer);
            return;
        }
    };
    slot.opened();
    let settings = &shared.settings;
    let activity = Arc::new(Activity::new());
    let per_connection = PerConnection {
        inner: service,
        info,
        activity: Arc::clone(&activity),
        request_timeout: settings.request_timeout,
        trace: settings.trace,
    };
    let mut connection = pin!(
        shared
            .http2
            .serve_connection(TokioIo::new(Rewind::new(received, io)), per_connection)
    );
    // Jittered so that connections opened together (after a deploy, say)
    // do not all reconnect together.
    let age_limit = settings
        .max_age
        .map(|age| accepted + age.mul_f64(rand::random_range(0.9..=1.1)));
    let mut phase = Phase::Serving;
    loop {
        let wake = match phase {
            Phase::Serving => earliest(
                age_limit,
                settings.max_idle.map(|idle| activity.idle_deadline(idle)),
            ),
            Phase::Draining(close_at) => close_at,
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = sleep_until(wake) => match phase {
                Phase::Serving => {
                    let now = Instant::now();
                    let reason = if age_limit.is_some_and(|limit| now >= limit) {
                        "max_age"
                    } else if settings
                        .max_idle
                        .is_some_and(|idle| now >= activity.idle_deadline(idle))
                    {
                        "idle"
                    } else {
                        continue;
                    };
                    tracing::debug!(%peer, reason, "telling a connection to go away");
                    shared.metrics.connection_closed(reason);
                    connection.as_mut().graceful_shutdown();
                    phase = Phase::Draining(settings.max_age_grace.map(|grace| now + grace));
                }
                Phase::Draining(_) => {
                    tracing::debug!(%peer, "closing a connection whose calls outlived the grace period");
                    shared.metrics.connection_closed("max_age_grace");
                    return;
                }
            },
            _ = stopping.changed(), if matches!(phase, Phase::Serving) => {
                // The server stops: GOAWAY; the drain deadline bounds the rest.
                connection.as_mut().graceful_shutdown();
                phase = Phase::Draining(None);
            }
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads the client's HTTP/2 preface and the SETTINGS frame that must
/// follow it, and returns every byte read, for hyper to read again. Bytes
/// that are not an HTTP/2 preface are returned as soon as they differ from
/// it: hyper answers them as it answers any broken connection.
async fn read_preface<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<Vec<u8>> {
    let mut received = Vec::with_capacity(PREFACE.len() + FRAME_HEADER_LEN + 64);
    let mut wanted = PREFACE.len() + FRAME_HEADER_LEN;
    let mut settings_length_known = false;
    loop {
        let compared = received.len().min(PREFACE.len());
        if received.get(..compared) != PREFACE.get(..compared) {
            return Ok(received);
        }
        if received.len() >= wanted {
            if settings_length_known {
                return Ok(received);
            }
            let Some(&[l0, l1, l2, kind, ..]) = received.get(PREFACE.len()..wanted) else {
                return Ok(received);
            };
            let length = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            if kind != SETTINGS_FRAME || length > MAX_INITIAL_FRAME {
                return Ok(received);
            }
            settings_length_known = true;
            wanted += length;
            continue;
        }
        received.reserve(wanted - received.len());
        if io.read_buf(&mut received).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A stream that first replays bytes already read from it.
struct Rewind<IO> {
    received: Vec<u8>,
    replayed: usize,
    io: IO,
}

impl<IO> Rewind<IO> {
    fn new(received: Vec<u8>, io: IO) -> Self {
        Self {
            received,
            replayed: 0,
            io,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.received.get(this.replayed..)
            && !rest.is_empty()
        {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.replayed += n;
            if this.replayed == this.received.len() {
                this.received = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The connection caps and the connection gauges.
struct Admission {
    max_total: usize,
    max_per_peer: usize,
    counts: Mutex<Counts>,
    handshaking: Gauge,
    open: Gauge,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

impl Admission {
    /// A slot for a connection from `peer`, or the cap it is over.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, &'static str> {
        let peer = self.peer_key(peer);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err("max_connections");
        }
        if let Some(peer) = peer {
            let count = counts.per_peer.entry(peer).or_default();
            if *count >= self.max_per_peer {
                return Err("max_connections_per_peer");
            }
            *count += 1;
        }
        counts.total += 1;
        self.handshaking.inc();
        Ok(Slot {
            admission: Arc::clone(self),
            peer,
            open: false,
        })
    }

    /// What the per-peer cap counts `peer` as: its address, an IPv6 /64
    /// (what one host is usually given), or nothing for loopback peers,
    /// which behind a mesh sidecar are every caller.
    fn peer_key(&self, peer: IpAddr) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        if self.max_per_peer == 0 || peer.is_loopback() {
            return None;
        }
        Some(match peer {
            IpAddr::V4(_) => peer,
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        })
    }
}

/// A connection's place under the caps, given back when it is dropped.
struct Slot {
    admission: Arc<Admission>,
    peer: Option<IpAddr>,
    open: bool,
}

impl Slot {
    /// The handshake is done: the connection counts as open.
    fn opened(&mut self) {
        if !self.open {
            self.open = true;
            self.admission.handshaking.dec();
            self.admission.open.inc();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.open {
            self.admission.open.dec();
        } else {
            self.admission.handshaking.dec();
        }
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(peer) = self.peer
            && let Some(count) = counts.per_peer.get_mut(&peer)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.per_peer.remove(&peer);
            }
        }
    }
}

/// Counts one occurrence under `throttle`; `Some(count)` of occurrences since
/// the last report (this one included) when it is time to report one.
fn reported(throttle: &LogThrottle) -> Option<u64> {
    throttle.admit().map(|held_back| held_back + 1)
}

/// Calls in flight on one connection, and since when there are none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(self))
    }

    /// When the connection will have been idle for `idle`: checked again
    /// after `idle` while a call is in flight (a call ending sooner moves
    /// the deadline on).
    fn idle_deadline(&self, idle: Duration) -> Instant {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Instant::now() + idle;
        }
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) + idle
    }
}

/// One call in flight, until its response body is dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }
}

/// The service hyper calls for each request of one connection.
struct PerConnection<S, I> {
    inner: S,
    info: I,
    activity: Arc<Activity>,
    request_timeout: Duration,
    trace: bool,
}

impl<S, I> hyper::service::Service<http::Request<Incoming>> for PerConnection<S, I>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone,
    I: Clone + Send + Sync + 'static,
{
    type Response = http::Response<Tracked>;
    type Error = Infallible;
    type Future = CallFuture<tower::util::Oneshot<S, http::Request<tonic::body::Body>>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let mut request = request.map(tonic::body::Body::new);
        request.extensions_mut().insert(self.info.clone());
        let timeout = crate::grpc::grpc_timeout(request.headers())
            .map_or(self.request_timeout, |timeout| {
                timeout.min(self.request_timeout)
            });
        let span = if self.trace {
            let (parts, body) = request.into_parts();
            let head = http::Request::from_parts(parts, ());
            let span = crate::telemetry::request_span(&head);
            let (parts, ()) = head.into_parts();
            request = http::Request::from_parts(parts, body);
            span
        } else {
            tracing::Span::none()
        };
        CallFuture {
            busy: Some(self.activity.begin()),
            inner: self.inner.clone().oneshot(request),
            deadline: tokio::time::sleep(timeout),
            span,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's response future: the call's deadline and trace span.
    struct CallFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        deadline: Sleep,
        span: tracing::Span,
        busy: Option<Busy>,
    }
}

impl<F> Future for CallFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, Infallible>>,
{
    type Output = Result<http::Response<Tracked>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Pending => {
                if this.deadline.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // As tonic answers a call past its deadline.
                tonic::Status::cancelled("Timeout expired").into_http()
            }
        };
        let busy = this.busy.take();
        Poll::Ready(Ok(response.map(|inner| Tracked { inner, _busy: busy })))
    }
}

/// A response body that keeps its call counted as in flight until it is
/// dropped.
struct Tracked {
    inner: tonic::body::Body,
    _busy: Option<Busy>,
}

impl http_body::Body for Tracked {
    type Data = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
