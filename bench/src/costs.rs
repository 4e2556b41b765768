//! What TLS, mTLS, authorization, the metrics and tracing cost a GetUser
//! cache hit: one fresh Roster per variant on the same database and Redis,
//! each driven exactly like the plaintext one, side by side in one run.
//! Tracing on needs its own run (`--otlp-sink`): the exporter is installed
//! once per process, at start.

use std::{path::Path, sync::Arc, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use roster::{config::Config, startup::Application};
use tokio::runtime::Handle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The variants, in the order they run; the first is the baseline.
const VARIANTS: [&str; 5] = [
    "cost: plaintext",
    "cost: metrics endpoint on",
    "cost: TLS",
    "cost: mTLS",
    "cost: mTLS + policy",
];

/// A CA, a server certificate for 127.0.0.1 and a client certificate with a
/// SPIFFE ID, as PEM; the files the server reads are written into `dir`.
struct Pki {
    ca_pem: String,
    client: (String, String),
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    ca_file: std::path::PathBuf,
    policy: std::path::PathBuf,
}

const CLIENT_ID: &str = "spiffe://bench/ns/games/sa/reader";

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "bench CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = params.self_signed(&ca_key).unwrap().pem();
        let ca = Issuer::new(params, ca_key);
        let leaf = |sans: Vec<SanType>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = sans;
            (
                params.signed_by(&key, &ca).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let (server_pem, server_key_pem) = leaf(vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ]);
        let client = leaf(vec![SanType::URI(CLIENT_ID.try_into().unwrap())]);
        let write = |name: &str, body: &str| {
            let path = dir.join(name);
            std::fs::write(&path, body).unwrap();
            path
        };
        let policy = String::from(
            "[roles]\nreader = [\"roster.v1.UserService/GetUser\"]\n\n\
             [[grant]]\nidentities = [\"spiffe://bench/ns/games/*\"]\nroles = [\"reader\"]\n",
        );
        Self {
            server_cert: write("server.pem", &server_pem),
            server_key: write("server-key.pem", &server_key_pem),
            ca_file: write("ca.pem", &ca_pem),
            policy: write("policy.toml", &policy),
            ca_pem,
            client,
        }
    }

    fn client_tls(&self, with_certificate: bool) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if with_certificate {
            tls.identity(Identity::from_pem(&self.client.0, &self.client.1))
        } else {
            tls
        }
    }
}

/// Runs every variant whose name `--only` selects (`--only cost` runs all)
/// with `hit` (one GetUser of a cached user per call) and returns the reports.
pub async fn run<F, Fut>(
    rig: &crate::Rig<'_>,
    server: &Handle,
    base: &Config,
    users: u64,
    dir: &Path,
    hit: F,
) -> Vec<crate::Report>
where
    F: Fn(Channel) -> Option<Fut> + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let pki = Arc::new(Pki::new(dir));
    let mut reports = Vec::new();
    for name in VARIANTS {
        if !rig.args.runs(name) {
            continue;
        }
        let mut config = base.clone();
        let mut client_tls = None;
        match name {
            "cost: metrics endpoint on" => {
                config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
            }
            "cost: TLS" => {
                config.tls_cert = Some(pki.server_cert.clone());
                config.tls_key = Some(pki.server_key.clone());
                client_tls = Some(pki.client_tls(false));
            }
            "cost: mTLS" | "cost: mTLS + policy" => {
                config.tls_cert = Some(pki.server_cert.clone());
                config.tls_key = Some(pki.server_key.clone());
                config.tls_client_ca = Some(pki.ca_file.clone());
                if name == "cost: mTLS + policy" {
                    config.policy = Some(pki.policy.clone());
                }
                client_tls = Some(pki.client_tls(true));
            }
            _ => {}
        }
        let app = server
            .spawn(Application::build(config))
            .await
            .unwrap()
            .expect("roster starts");
        let addr = app.local_addr();
        let board = app.board();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = server.spawn(app.run_until(async {
            stopped.await.ok();
        }));
        // Its board copy loads at start: wait, so the load does not share
        // the machine with the measurement.
        while board.copy_len() != Some(users) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut channels = Vec::new();
        for _ in 0..rig.args.connections.max(1) {
            let scheme = if client_tls.is_some() {
                "https"
            } else {
                "http"
            };
            let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}")).unwrap();
            if let Some(tls) = &client_tls {
                endpoint = endpoint.tls_config(tls.clone()).unwrap();
            }
            channels.push(endpoint.connect().await.unwrap());
        }
        let variant = crate::Rig {
            args: rig.args,
            addr,
            channels,
            redis: rig.redis.clone(),
        };
        reports.push(crate::run_load(&variant, name, rig.args.concurrency, hit.clone()).await);
        drop(variant);
        stop.send(()).ok();
        serving.await.unwrap().unwrap();
    }
    reports
}

/// The ratio of each variant to the plaintext one, for the summary.
pub fn print_ratios(reports: &[crate::Report]) {
    let rate = |name: &str| reports.iter().find(|r| r.name == name).map(|r| r.rate());
    let Some(plain) = rate(VARIANTS[0]) else {
        return;
    };
    for name in &VARIANTS[1..] {
        if let Some(calls) = rate(name) {
            println!(
                "{:<31} {:.2} of plaintext",
                format!("{}:", name.trim_start_matches("cost: ")),
                calls / plain
            );
        }
    }
}
