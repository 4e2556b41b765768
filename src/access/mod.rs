//! The trust boundary: who is calling (TLS client certificates, a mesh's
//! forwarded identity when trusted, bearer tokens), what they may call (the
//! policy), how often they may hash (caller quotas). One tower layer in front
//! of every service applies it to each call and hands the handlers a
//! [`Caller`] for the audit trail.

mod identity;
mod policy;
mod quota;
pub mod tls;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwapOption;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

pub use identity::{Identity, Tokens};
pub use policy::{DEFAULT_PUBLIC, Decision, Policy};
pub use quota::{CallerQuota, HASHING_METHODS};

/// The methods the audit trail records (their handlers read the [`Caller`]).
pub const AUDITED_METHODS: [&str; 5] = [
    "roster.v1.UserService/CreateUser",
    "roster.v1.UserService/ChangePassword",
    "roster.v1.UserService/DeleteUser",
    "roster.v1.UserService/ListUsers",
    "roster.v1.UserService/VerifyPassword",
];

use crate::error::Error;

/// Which forwarded identity header, if any, to believe. Only a sidecar that
/// strips or overwrites the header on every inbound request makes it safe:
/// any caller can send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedIdentity {
    /// Never (the default).
    None,
    /// Envoy/Istio `x-forwarded-client-cert` (its URI, DNS or Subject).
    Envoy,
    /// Linkerd `l5d-client-id`.
    Linkerd,
}

/// Who made a call, as far as the server knows.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The caller's identity; `None` for an anonymous caller.
    pub identity: Option<Identity>,
    /// The connection's remote address.
    pub peer: Option<SocketAddr>,
}

impl Caller {
    /// The key of the caller's quota bucket: the identity, else the peer's
    /// IP. `None` for an anonymous caller on loopback: that is a sidecar or
    /// a local proxy speaking for many callers, not one caller (give
    /// callers identities to have per-caller quotas behind a mesh).
    fn quota_key(&self) -> Option<String> {
        match (&self.identity, self.peer) {
            (Some(identity), _) => Some(format!("id:{identity}")),
            (None, Some(peer)) if !peer.ip().is_loopback() => Some(format!("ip:{}", peer.ip())),
            (None, _) => None,
        }
    }
}

/// The access settings, shared by every call. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    inner: Arc<State>,
}

struct State {
    /// `None`: no policy, every method open (logged at start).
    policy: ArcSwapOption<Policy>,
    /// Identities of client certificates seen (parsing X.509 on every call
    /// would cost more than the call); cleared when it grows past a bound.
    certificates: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Option<Identity>>>,
    policy_file: Option<PathBuf>,
    methods: Vec<String>,
    forwarded: ForwardedIdentity,
    quota: CallerQuota,
}

/// How often the policy and TLS files are checked for changes.
const CHECK_EVERY: Duration = Duration::from_secs(5);

impl Access {
    /// Loads the policy (if a file is given; a policy that does not load
    /// refuses to start), over `methods`, the server's `package.Service/Method`
    /// names.
    pub fn new(
        policy_file: Option<PathBuf>,
        methods: Vec<String>,
        forwarded: ForwardedIdentity,
        quota: CallerQuota,
    ) -> Result<Self, String> {
        let policy = match &policy_file {
            Some(path) => Some(Arc::new(load(path, &methods)?)),
            None => None,
        };
        match &policy {
            Some(policy) => tracing::info!(
                file = ?policy_file,
                policy = %policy.summary(),
                "access policy loaded; calls need an allowed identity"
            ),
            None => {
                tracing::info!("no access policy (--policy): every method is open to every caller")
            }
        }
        Ok(Self {
            inner: Arc::new(State {
                policy: ArcSwapOption::new(policy),
                certificates: std::sync::Mutex::default(),
                policy_file,
                methods,
                forwarded,
                quota,
            }),
        })
    }

    /// The tower layer that applies it.
    pub fn layer(&self) -> AccessLayer {
        AccessLayer(self.clone())
    }

    /// Who is calling: the verified client certificate, else the forwarded
    /// identity (when trusted), else a bearer token the policy knows.
    pub fn caller<B>(&self, request: &http::Request<B>) -> Caller {
        let extensions = request.extensions();
        let tls = extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
        let peer = tls.and_then(|tls| tls.get_ref().remote_addr()).or_else(|| {
            extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
        });
        let from_cert = tls
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|certs| certs.first().and_then(|cert| self.identify(cert)));
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        let forwarded = || match self.inner.forwarded {
            ForwardedIdentity::None => None,
            ForwardedIdentity::Envoy => {
                header("x-forwarded-client-cert").and_then(Identity::from_xfcc)
            }
            ForwardedIdentity::Linkerd => header("l5d-client-id").and_then(Identity::parse),
        };
        let bearer = || {
            let token = header("authorization")?;
            let token = token
                .strip_prefix("Bearer ")
                .or_else(|| token.strip_prefix("bearer "))?;
            self.inner
                .policy
                .load()
                .as_ref()?
                .tokens()
                .identify(token.trim())
        };
        Caller {
            identity: from_cert.or_else(forwarded).or_else(bearer),
            peer,
        }
    }

    /// The identity in a verified client certificate, parsed once per
    /// certificate.
    fn identify(&self, der: &[u8]) -> Option<Identity> {
        const KEEP: usize = 10_000;
        let mut known = self
            .inner
            .certificates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(identity) = known.get(der) {
            return identity.clone();
        }
        if known.len() >= KEEP {
            known.clear();
        }
        let identity = Identity::from_certificate(der);
        known.insert(der.to_vec(), identity.clone());
        identity
    }

    /// Whether a call of `method` needs its caller identified: always under
    /// a policy; otherwise only for the quotas and the audit trail.
    fn needs_caller(&self, method: &str) -> bool {
        self.inner.policy.load().is_some()
            || HASHING_METHODS.contains(&method)
            || AUDITED_METHODS.contains(&method)
    }

    /// Whether `caller` may call `method` now: the policy, then the quota.
    pub fn check(&self, method: &str, caller: &Caller) -> Result<(), Error> {
        if let Some(policy) = self.inner.policy.load().as_ref() {
            match policy.decide(method, caller.identity.as_ref()) {
                Decision::Allow => {}
                Decision::Unauthenticated => return Err(Error::Unauthenticated),
                Decision::Denied => return Err(Error::PermissionDenied),
            }
        }
        if HASHING_METHODS.contains(&method)
            && let Some(key) = caller.quota_key()
            && let Err(retry_after) = self.inner.quota.check(&key)
        {
            return Err(Error::CallerQuotaExceeded { retry_after });
        }
        Ok(())
    }

    /// Reads the policy file again; on success, new calls use it. A policy
    /// that does not load leaves the current one in place.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.inner.policy_file else {
            return Ok(());
        };
        let policy = load(path, &self.inner.methods)?;
        tracing::info!(policy = %policy.summary(), "access policy reloaded");
        self.inner.policy.store(Some(Arc::new(policy)));
        Ok(())
    }

    /// Reloads the policy when its file changes or SIGHUP arrives, and
    /// prunes idle quota buckets, for as long as it runs.
    pub async fn maintain(self) {
        let files: Vec<PathBuf> = self.inner.policy_file.iter().cloned().collect();
        let mut trigger = Reload::new(files);
        loop {
            let due = trigger.wait().await;
            self.inner.quota.prune();
            if due && let Err(error) = self.reload() {
                tracing::error!(%error, "access policy did not load; keeping the previous one");
            }
        }
    }
}

/// When files a server reads at start should be read again: when one of
/// them changed (checked every few seconds) or SIGHUP arrived.
pub(crate) struct Reload {
    files: Vec<PathBuf>,
    stamps: Vec<Option<SystemTime>>,
    check: tokio::time::Interval,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Reload {
    /// Watches `files` (as they are now).
    pub(crate) fn new(files: Vec<PathBuf>) -> Self {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            stamps: stamps(&files),
            files,
            check,
            #[cfg(unix)]
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    /// Waits for the next check; `true` when the files are due to be read
    /// again (one changed, or SIGHUP arrived).
    pub(crate) async fn wait(&mut self) -> bool {
        #[cfg(unix)]
        let forced = {
            let hangup = &mut self.hangup;
            tokio::select! {
                _ = self.check.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            }
        };
        #[cfg(not(unix))]
        let forced = {
            self.check.tick().await;
            false
        };
        let now = stamps(&self.files);
        let changed = now != self.stamps;
        self.stamps = now;
        forced || changed
    }
}

/// The files' modification times (to notice a change).
fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

fn load(path: &PathBuf, methods: &[String]) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Policy::parse(&text, methods).map_err(|e| format!("{}: {e}", path.display()))
}

/// Applies [`Access`] to every call (see [`AccessService`]).
#[derive(Clone)]
pub struct AccessLayer(Access);

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessService {
            inner,
            access: self.0.clone(),
        }
    }
}

/// Identifies the caller, refuses calls the policy or the quota forbids
/// (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, each audited),
/// and hands the rest on with the [`Caller`] in the request's extensions.
#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    access: Access,
}

pin_project_lite::pin_project! {
    /// The response future of [`AccessService`]: the call's (`inner`), or a
    /// refusal (`answer`, until it is handed out).
    #[allow(missing_docs)]
    #[project = AccessProjection]
    pub enum AccessFuture<F> {
        /// The call goes ahead.
        Call { #[pin] inner: F },
        /// The call was refused; the answer is ready.
        Refused { answer: Option<http::Response<tonic::body::Body>> },
    }
}

impl<F, E> std::future::Future for AccessFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AccessProjection::Call { inner } => inner.poll(cx),
            AccessProjection::Refused { answer } => match answer.take() {
                Some(answer) => Poll::Ready(Ok(answer)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S, B> tower::Service<http::Request<B>> for AccessService<S>
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
    type Future = AccessFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/');
        if !self.access.needs_caller(method) {
            // No policy, no quota, no audit: nothing to decide or record.
            return self.forward(request);
        }
        let method = method.to_owned();
        let caller = self.access.caller(&request);
        match self.access.check(&method, &caller) {
            Ok(()) => {
                request.extensions_mut().insert(caller);
                self.forward(request)
            }
            Err(error) => {
                crate::audit::denied(&caller, &method, &error);
                AccessFuture::Refused {
                    answer: Some(tonic::Status::from(error).into_http()),
                }
            }
        }
    }
}

impl<S: Clone> AccessService<S> {
    /// Hands `request` to the service that was made ready (a fresh clone
    /// waits for the next poll_ready).
    fn forward<B>(&mut self, request: http::Request<B>) -> AccessFuture<S::Future>
    where
        S: tower::Service<http::Request<B>>,
    {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        AccessFuture::Call {
            inner: ready.call(request),
        }
    }
}

/// Every method the server serves: Roster's (from its descriptor set),
/// health and reflection.
pub fn served_methods() -> Vec<String> {
    use prost::Message;
    let mut methods = vec![
        "grpc.health.v1.Health/Check".to_owned(),
        "grpc.health.v1.Health/Watch".to_owned(),
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned(),
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_owned(),
    ];
    if let Ok(set) = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET) {
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    methods.push(format!(
                        "{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_methods_include_every_roster_rpc_health_and_reflection() {
        let methods = served_methods();
        for method in [
            "roster.v1.UserService/CreateUser",
            "roster.v1.UserService/ListUsers",
            "roster.v1.LeaderboardService/RecordGame",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(methods.iter().any(|m| m == method), "{method}");
        }
    }
}
