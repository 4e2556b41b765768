//! The trust boundary, with real certificates (made by rcgen) and a real TLS
//! client: TLS and mTLS (a missing, untrusted or expired certificate is
//! refused; TLS 1.1 is refused and 1.2 and 1.3 served, asked by the real
//! `openssl s_client`), identities from certificates, bearer tokens and
//! (only when trusted) mesh headers, the policy's roles, certificate
//! rotation without a restart, policy validation and reload, per-caller
//! quotas, and the audit trail.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use roster::{
    config::Config,
    proto::roster::v1::{self as pb, user_service_client::UserServiceClient},
    startup::Application,
};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity as TlsIdentity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{PASSWORD, RedisServer, reason, test_config};

/// A certificate authority and what it signed, as PEM files in a directory.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca: Issuer<'static, KeyPair>,
    pub(crate) ca_pem: String,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: cert.pem(),
            ca: Issuer::new(params, key),
        }
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        let path = self.path("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }

    /// A leaf certificate with `sans` (DNS names, IPs, or `spiffe://` URIs)
    /// and common name `cn`; returns (cert PEM, key PEM).
    pub(crate) fn leaf(&self, cn: &str, sans: &[&str]) -> (String, String) {
        self.leaf_with(cn, sans, |_| {})
    }

    /// As [`Self::leaf`], with `adjust` applied to the certificate's
    /// parameters before signing (e.g. its validity period).
    pub(crate) fn leaf_with(
        &self,
        cn: &str,
        sans: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for san in sans {
            params
                .subject_alt_names
                .push(if san.starts_with("spiffe://") {
                    SanType::URI((*san).try_into().unwrap())
                } else if let Ok(ip) = san.parse() {
                    SanType::IpAddress(ip)
                } else {
                    SanType::DnsName((*san).try_into().unwrap())
                });
        }
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server certificate for localhost; returns (cert, key) paths.
    pub(crate) fn server_files(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(cn, &["localhost", "127.0.0.1"]);
        let (cert_path, key_path) = (self.path("server.pem"), self.path("server-key.pem"));
        // Key first, then the certificate, each replaced in one rename, as
        // a certificate manager would.
        for (path, body) in [(&key_path, key), (&cert_path, cert)] {
            let temporary = path.with_extension("tmp");
            std::fs::write(&temporary, body).unwrap();
            std::fs::rename(&temporary, path).unwrap();
        }
        (cert_path, key_path)
    }
}

/// A Roster with TLS, in this process.
struct TlsApp {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl TlsApp {
    async fn start(pki: &Pki, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start();
        let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
        let (cert, key) = pki.server_files("roster");
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
        config.tls_client_ca = Some(pki.ca_file());
        adjust(&mut config);
        let app = Application::build(config).await.expect("roster starts");
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run_until(async {
                stopped.await.ok();
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            stop: Some(stop),
            task,
            _redis: redis,
            _dir: dir,
        }
    }

    /// A TLS channel trusting `pki`'s CA, presenting `client` if given.
    async fn channel(
        &self,
        pki: &Pki,
        client: Option<&(String, String)>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = client {
            tls = tls.identity(TlsIdentity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        (&mut self.task).await.unwrap();
    }
}

async fn get_user(channel: &Channel, name: &str) -> Result<pb::User, tonic::Status> {
    UserServiceClient::new(channel.clone())
        .get_user(pb::GetUserRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

async fn create_user(channel: &Channel, name: &str) -> Result<pb::User, tonic::Status> {
    UserServiceClient::new(channel.clone())
        .create_user(pb::CreateUserRequest {
            name: name.into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

async fn delete_user(channel: &Channel, name: &str) -> Result<(), tonic::Status> {
    UserServiceClient::new(channel.clone())
        .delete_user(pb::DeleteUserRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .map(drop)
}

const GAMES: &str = "spiffe://prod/ns/games/sa/matchmaker";
const OPS: &str = "spiffe://prod/ns/ops/sa/admin";

fn policy_file(pki: &Pki, extra: &str) -> PathBuf {
    let path = pki.path("policy.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[roles]
reader = ["roster.v1.UserService/GetUser", "roster.v1.LeaderboardService/GetUserStats"]
auth = ["roster.v1.UserService/CreateUser", "roster.v1.UserService/VerifyPassword", "roster.v1.UserService/ChangePassword"]
admin = ["*"]

[[grant]]
identities = ["spiffe://prod/ns/games/*"]
roles = ["reader"]

[[grant]]
identities = ["{OPS}"]
roles = ["admin"]
{extra}
"#
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_plaintext_a_missing_certificate_and_an_untrusted_one() {
    let pki = Pki::new("roster test CA");
    let app = TlsApp::start(&pki, |_| {}).await;
    let ops = pki.leaf("ops", &[OPS]);

    // Plaintext to a TLS port.
    let plain = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert!(get_user(&plain, "nobody").await.is_err());
    // TLS without a client certificate (required by default).
    let anonymous = app.channel(&pki, None).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(channel) => get_user(&channel, "nobody").await.is_err(),
    };
    assert!(refused, "a client without a certificate is refused");
    // A certificate from another CA.
    let rogue = Pki::new("rogue CA");
    let forged = rogue.leaf("ops", &[OPS]);
    let untrusted = match app.channel(&pki, Some(&forged)).await {
        Err(_) => true,
        Ok(channel) => get_user(&channel, "nobody").await.is_err(),
    };
    assert!(untrusted, "a certificate from an untrusted CA is refused");
    // The right certificate: served.
    let channel = app.channel(&pki, Some(&ops)).await.unwrap();
    assert_eq!(
        get_user(&channel, "nobody").await.unwrap_err().code(),
        Code::NotFound
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_allows_each_identity_only_its_roles_methods() {
    let pki = Pki::new("roster test CA");
    let policy = policy_file(&pki, "");
    let app = TlsApp::start(&pki, |config| {
        config.policy = Some(policy);
        config.tls_client_auth = roster::access::tls::ClientAuth::Optional;
    })
    .await;
    let ops = app
        .channel(&pki, Some(&pki.leaf("ops", &[OPS])))
        .await
        .unwrap();
    let games = app
        .channel(&pki, Some(&pki.leaf("matchmaker", &[GAMES])))
        .await
        .unwrap();
    let stranger = app
        .channel(
            &pki,
            Some(&pki.leaf("stranger", &["spiffe://prod/ns/other/sa/x"])),
        )
        .await
        .unwrap();
    let anonymous = app.channel(&pki, None).await.unwrap();

    create_user(&ops, "policy-target").await.unwrap();
    get_user(&games, "policy-target").await.unwrap();
    let denied = delete_user(&games, "policy-target").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(reason(&denied), "METHOD_NOT_ALLOWED");
    let denied = get_user(&stranger, "policy-target").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let unauthenticated = get_user(&anonymous, "policy-target").await.unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    assert_eq!(reason(&unauthenticated), "IDENTITY_REQUIRED");
    // Health stays open.
    HealthClient::new(anonymous.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    delete_user(&ops, "policy-target").await.unwrap();
    app.stop().await;
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_name_identities_by_their_hash_and_mesh_headers_count_only_when_trusted() {
    let token = "6c4b3f0e-roster-test-token-with-enough-entropy";
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
[roles]
admin = ["*"]
[[grant]]
identities = ["batch", "{OPS}"]
roles = ["admin"]
[[token]]
sha256 = "{hash}"
identity = "batch"
"#
        ),
    )
    .unwrap();
    assert!(!std::fs::read_to_string(&policy).unwrap().contains(token));

    for trust in [false, true] {
        let redis = RedisServer::start();
        let db = tempfile::tempdir().unwrap();
        let mut config = test_config(&db.path().join("roster.db"), &redis.url());
        config.policy = Some(policy.clone());
        if trust {
            config.trust_forwarded_identity = roster::access::ForwardedIdentity::Envoy;
        }
        let app = crate::helpers::spawn_with(config, db, redis).await;
        let mut client = app.client.clone();
        // A known token.
        let answer = client
            .get_user(bearer(
                pb::GetUserRequest {
                    name: "nobody".into(),
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            answer.code(),
            Code::NotFound,
            "the token's identity may call"
        );
        // An unknown one.
        let answer = client
            .get_user(bearer(
                pb::GetUserRequest {
                    name: "nobody".into(),
                },
                "guess",
            ))
            .await
            .unwrap_err();
        assert_eq!(answer.code(), Code::Unauthenticated);
        // A forwarded client certificate header from the (absent) mesh.
        let mut request = tonic::Request::new(pb::GetUserRequest {
            name: "nobody".into(),
        });
        request.metadata_mut().insert(
            "x-forwarded-client-cert",
            format!("By=spiffe://prod/ns/roster/sa/roster;Hash=0;URI={OPS}")
                .parse()
                .unwrap(),
        );
        let answer = client.get_user(request).await.unwrap_err();
        let expected = if trust {
            Code::NotFound
        } else {
            Code::Unauthenticated
        };
        assert_eq!(answer.code(), expected, "trusting the mesh header: {trust}");
        drop(app.stop().await);
    }
}

/// The certificate a new TLS connection to `addr` is served.
async fn served_certificate(addr: std::net::SocketAddr, pki: &Pki) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let (cert, key) = pki.leaf("probe", &[OPS]);
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_without_a_restart_or_dropping_open_ones() {
    let pki = Pki::new("roster test CA");
    let app = TlsApp::start(&pki, |_| {}).await;
    let ops = pki.leaf("ops", &[OPS]);
    let open = app.channel(&pki, Some(&ops)).await.unwrap();
    create_user(&open, "rotation").await.unwrap();
    let before = served_certificate(app.addr, &pki).await;

    pki.server_files("roster-rotated");
    let rotated = Instant::now();
    let mut after = before.clone();
    while after == before {
        assert!(rotated.elapsed() < Duration::from_secs(15), "no rotation");
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = served_certificate(app.addr, &pki).await;
    }
    eprintln!(
        "new connections got the rotated certificate {:?} after the files changed",
        rotated.elapsed()
    );
    // The connection opened before the rotation still serves calls.
    get_user(&open, "rotation").await.unwrap();
    // New connections work with the new certificate.
    let fresh = app.channel(&pki, Some(&ops)).await.unwrap();
    get_user(&fresh, "rotation").await.unwrap();
    app.stop().await;
}

fn write(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_naming_unknown_methods_or_roles_refuses_to_start_and_a_broken_reload_keeps_the_last_good_one()
 {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    write(
        &policy,
        "[roles]\nreader = [\"roster.v1.UserService/GetUsr\"]\n[[grant]]\nidentities = [\"x\"]\nroles = [\"writer\"]\n",
    );
    let redis = RedisServer::start();
    let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
    config.policy = Some(policy.clone());
    let error = Application::build(config.clone())
        .await
        .err()
        .expect("a bad policy refuses to start")
        .to_string();
    assert!(
        error.contains("GetUsr") && error.contains("unknown role"),
        "{error}"
    );

    // A good policy: everything needs an identity; then a broken edit.
    write(&policy, "[roles]\nadmin = [\"*\"]\n");
    let app = crate::helpers::spawn_with(config, tempfile::tempdir().unwrap(), redis).await;
    let status = app.get_user("nobody").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    write(&policy, "this is not toml [");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let status = app.get_user("nobody").await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "the last good policy stays"
    );
    // A good edit that opens GetUser to everyone takes effect.
    write(
        &policy,
        "public = [\"grpc.health.v1.Health/*\", \"roster.v1.UserService/GetUser\"]\n",
    );
    let reloaded = crate::helpers::eventually(Duration::from_secs(12), || async {
        app.get_user("nobody").await.map_err(|s| s.code()) == Err(Code::NotFound)
    })
    .await;
    assert!(reloaded, "the edited policy is reloaded");
    drop(app.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_noisy_caller_cannot_take_the_hashing_capacity_from_the_others() {
    let (noisy, quiet) = (
        "noisy-caller-token-0123456789",
        "quiet-caller-token-0123456789",
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let hash = |token: &str| hex::encode(Sha256::digest(token.as_bytes()));
    write(
        &policy,
        &format!(
            "[roles]\nadmin = [\"*\"]\n[[grant]]\nidentities = [\"noisy\", \"quiet\"]\nroles = [\"admin\"]\n\
             [[token]]\nsha256 = \"{}\"\nidentity = \"noisy\"\n[[token]]\nsha256 = \"{}\"\nidentity = \"quiet\"\n",
            hash(noisy),
            hash(quiet)
        ),
    );
    let redis = RedisServer::start();
    let mut config = test_config(&dir.path().join("roster.db"), &redis.url());
    config.policy = Some(policy);
    config.caller_quota = roster::config::CallerQuotaSetting::PerSecond(5);
    let app = crate::helpers::spawn_with(config, tempfile::tempdir().unwrap(), redis).await;

    let client = app.client.clone();
    // The quiet caller alone.
    let mut alone = Vec::new();
    for i in 0..5 {
        let (answer, took) = timed_create(client.clone(), quiet, format!("quiet-alone-{i}")).await;
        answer.unwrap();
        alone.push(took);
    }
    // The noisy caller floods (40 at once, again and again) while the quiet
    // one keeps creating.
    let flood = tokio::spawn({
        let client = client.clone();
        async move {
            let mut refused = 0;
            let mut with_retry_info = 0;
            for round in 0..8 {
                let calls: Vec<_> = (0..40)
                    .map(|i| {
                        tokio::spawn(timed_create(
                            client.clone(),
                            noisy,
                            format!("noisy-{round}-{i}"),
                        ))
                    })
                    .collect();
                for call in calls {
                    if let (Err(status), _) = call.await.unwrap()
                        && status.code() == Code::ResourceExhausted
                        && reason(&status) == "CALLER_QUOTA_EXCEEDED"
                    {
                        refused += 1;
                        use tonic_types::StatusExt;
                        if status.get_details_retry_info().is_some() {
                            with_retry_info += 1;
                        }
                    }
                }
            }
            (refused, with_retry_info)
        }
    });
    let mut during = Vec::new();
    for i in 0..5 {
        let (answer, took) = timed_create(client.clone(), quiet, format!("quiet-during-{i}")).await;
        answer.expect("the quiet caller is served during the flood");
        during.push(took);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (refused, with_retry_info) = flood.await.unwrap();
    assert!(refused > 0, "the noisy caller is refused");
    assert_eq!(refused, with_retry_info, "every refusal carries RetryInfo");
    let worst = |times: &[Duration]| times.iter().max().copied().unwrap_or_default();
    // Without the quota, the quiet caller's calls would queue behind all 320
    // of the flood's hashes (seconds).
    assert!(
        worst(&during) < Duration::from_secs(3),
        "the quiet caller waited {:?}",
        worst(&during)
    );
    eprintln!(
        "caller quota: quiet caller's CreateUser alone up to {:?}, during the flood up to {:?}; \
         the noisy caller got {refused} refusals",
        worst(&alone),
        worst(&during)
    );
    drop(app.stop().await);
}

async fn timed_create(
    mut client: UserServiceClient<Channel>,
    token: &'static str,
    name: String,
) -> (
    Result<tonic::Response<pb::CreateUserResponse>, tonic::Status>,
    Duration,
) {
    let began = Instant::now();
    let answer = client
        .create_user(bearer(
            pb::CreateUserRequest {
                name,
                password: PASSWORD.into(),
                ..Default::default()
            },
            token,
        ))
        .await;
    (answer, began.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused_at_the_handshake() {
    let pki = Pki::new("roster test CA");
    let app = TlsApp::start(&pki, |_| {}).await;
    let expired = pki.leaf_with("ops", &[OPS], |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let refusal = handshake(app.addr, &pki, &expired)
        .await
        .expect_err("an expired certificate is refused");
    assert!(
        refusal.contains("CertificateExpired"),
        "the server says why: {refusal}"
    );
    let refused = match app.channel(&pki, Some(&expired)).await {
        Err(_) => true,
        Ok(channel) => get_user(&channel, "nobody").await.is_err(),
    };
    assert!(refused, "no call gets through with an expired certificate");
    // The same identity with a current certificate: served.
    let current = pki.leaf("ops", &[OPS]);
    handshake(app.addr, &pki, &current).await.unwrap();
    app.stop().await;
}

/// A TLS handshake with `client` (cert, key) as the client certificate,
/// completed by one round trip: under TLS 1.3 the server judges the client
/// certificate after the client has finished, and says so with an alert
/// that the client reads next. `Err` holds the client's error.
async fn handshake(
    addr: std::net::SocketAddr,
    pki: &Pki,
    client: &(String, String),
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(client.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(client.1.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // The HTTP/2 preface; a server that accepted us answers with SETTINGS.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 9];
    tls.read_exact(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// `openssl s_client` against `addr` with `args`; `None` (after saying so)
/// when openssl is not installed. Returns (succeeded, stdout + stderr).
async fn s_client(addr: std::net::SocketAddr, args: Vec<String>) -> Option<(bool, String)> {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new("openssl")
            .arg("s_client")
            .args(["-connect", &addr.to_string(), "-servername", "localhost"])
            .args(["-brief", "-verify_return_error"])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output();
        match output {
            Ok(output) => Some((
                output.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            )),
            Err(error) => {
                eprintln!("SKIPPED: openssl cannot run here: {error}");
                None
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_is_refused_tls_1_1_and_served_tls_1_2_and_1_3() {
    let pki = Pki::new("roster test CA");
    let app = TlsApp::start(&pki, |_| {}).await;
    let (cert, key) = pki.leaf("ops", &[OPS]);
    let cert_path = pki.path("client.pem");
    let key_path = pki.path("client-key.pem");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let client = |version: &str| {
        let mut args = vec![version.to_owned()];
        for (flag, path) in [
            ("-CAfile", pki.ca_file()),
            ("-cert", cert_path.clone()),
            ("-key", key_path.clone()),
        ] {
            args.push(flag.to_owned());
            args.push(path.display().to_string());
        }
        args
    };

    // OpenSSL 3 completes TLS 1.1 only at security level 0: above it, the
    // client gives up by itself mid-handshake (TLS 1.1 signs with SHA-1),
    // even with a server that allows TLS 1.1. With `@SECLEVEL=0` it would
    // complete one, so a refusal here is the server's.
    let mut old = client("-tls1_1");
    old.extend(["-cipher".to_owned(), "DEFAULT:@SECLEVEL=0".to_owned()]);
    let Some((accepted, output)) = s_client(app.addr, old).await else {
        return;
    };
    assert!(!accepted, "TLS 1.1 is refused: {output}");
    // rustls answers a hello with no version it speaks with a
    // handshake_failure alert; OpenSSL prints the number of an alert it
    // received, and "no protocols available" when it refused by itself.
    assert!(
        output.contains("SSL alert number") && !output.contains("no protocols available"),
        "the server, not the client, refuses TLS 1.1: {output}"
    );
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (accepted, output) = s_client(app.addr, client(flag)).await.unwrap();
        assert!(accepted, "{name} is served: {output}");
        assert!(
            output.contains(&format!("Protocol version: {name}")),
            "{name} is negotiated: {output}"
        );
    }
    app.stop().await;
}
