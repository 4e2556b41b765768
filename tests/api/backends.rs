//! Credentials for the backends, with real servers and real certificates
//! (rcgen): Redis over TLS (`rediss://`, a private CA, a client certificate)
//! with an ACL user whose password comes from a file; a wrong password or a
//! server certificate from another CA leaves the cache unused while Roster
//! serves from the database. Postgres over TLS (`sslmode=verify-full`) with
//! SCRAM authentication and the password from a file, on a private
//! PostgreSQL server. Every secret reaches Roster through a file named in
//! the environment, none on its command line, and none may appear in its
//! log. Each test skips, saying why, where its server cannot run here.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use roster::{
    cache::Keys,
    domain::UserName,
    proto::roster::v1::{self as pb, user_service_client::UserServiceClient},
    startup::Application,
};
use sea_orm::{ConnectionTrait, Database};
use tempfile::TempDir;

use crate::{
    access::Pki,
    helpers::{PASSWORD, RedisServer, eventually, free_port, spawn_with, test_config},
    postgres_faults::PrivatePostgres,
    rig::ServerProcess,
};

/// The ACL user's password, in the test's Redis configuration and in the
/// file Roster reads; it must never show in Roster's log.
const REDIS_SECRET: &str = "redis-acl-secret-4f9c2e";

/// A private redis-server that speaks TLS only, with an ACL user `roster`
/// (password [`REDIS_SECRET`]) and the default user off. Killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl TlsRedis {
    /// Starts redis-server serving a certificate signed by `server_ca`,
    /// verifying client certificates against `client_ca` when
    /// `require_client_cert`. `None`, after saying why, when this
    /// redis-server cannot serve TLS.
    fn start(server_ca: &Pki, client_ca: &Pki, require_client_cert: bool) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = server_ca.leaf("redis", &["localhost", "127.0.0.1"]);
        let file = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            path.display().to_string()
        };
        let port = free_port();
        let conf = format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {dir}\n\
             tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
             tls-auth-clients {auth}\n\
             user default off\nuser roster on >{REDIS_SECRET} ~* &* +@all\n",
            dir = dir.path().display(),
            cert = file("server.pem", &cert),
            key = file("server-key.pem", &key),
            ca = file("client-ca.pem", &client_ca.ca_pem),
            auth = if require_client_cert { "yes" } else { "no" },
        );
        let conf = file("redis.conf", &conf);
        let log = std::fs::File::create(dir.path().join("redis.log")).unwrap();
        let mut child = Command::new("redis-server")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server must be installed to run the tests (see README)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.path().join("redis.log")).unwrap();
                eprintln!(
                    "SKIPPED: this redis-server does not serve TLS ({status}); its log:\n{log}"
                );
                return None;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Self {
            port,
            child,
            _dir: dir,
        })
    }

    /// The URL for Roster: TLS, user `roster`, no password.
    fn url(&self) -> String {
        format!("rediss://roster@127.0.0.1:{}", self.port)
    }

    /// Runs a command with redis-cli over TLS as `roster`, trusting `ca`
    /// and presenting `client` (cert, key) if given; returns its output.
    fn cli(&self, ca: &Path, client: Option<(&Path, &Path)>, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--tls"])
            .arg("--cacert")
            .arg(ca)
            .args([
                "--user",
                "roster",
                "--pass",
                REDIS_SECRET,
                "--no-auth-warning",
            ]);
        if let Some((cert, key)) = client {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let output = command.args(args).output().unwrap();
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn key(name: &str) -> String {
    Keys::default().user(UserName::parse(name).unwrap().key())
}

/// Writes `text` (plus the line break an editor adds) to `name` in `dir`.
fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).unwrap();
    path
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

async fn create_and_get(server: &ServerProcess, name: &str) {
    let mut client = UserServiceClient::new(server.channel());
    client
        .create_user(pb::CreateUserRequest {
            name: name.into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect("CreateUser is served");
    let user = client
        .get_user(pb::GetUserRequest { name: name.into() })
        .await
        .expect("GetUser is served")
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.name, name);
}

/// Roster as a process on a fresh SQLite file, with `env` (every secret
/// and TLS file is passed this way, none as a flag).
async fn roster(dir: &TempDir, redis_url: &str, env: &[(&str, &Path)]) -> ServerProcess {
    let database = format!("sqlite://{}", dir.path().join("roster.db").display());
    let env: Vec<(&str, String)> = env
        .iter()
        .map(|(name, path)| (*name, path.display().to_string()))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProcess::start_with(&database, redis_url, &[], None, &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_a_client_certificate_and_an_acl_password_from_a_file_serves_the_cache()
 {
    let pki = Pki::new("redis test CA");
    let Some(redis) = TlsRedis::start(&pki, &pki, true) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.ca_file();
    let (cert, key_pem) = pki.leaf("roster", &["roster"]);
    let client_cert = write_pem(dir.path(), "client.pem", &cert);
    let client_key = write_pem(dir.path(), "client-key.pem", &key_pem);
    let password = secret_file(dir.path(), "redis-password", REDIS_SECRET);
    let server = roster(
        &dir,
        &redis.url(),
        &[
            ("ROSTER_REDIS_CA_FILE", &ca),
            ("ROSTER_REDIS_CLIENT_CERT", &client_cert),
            ("ROSTER_REDIS_CLIENT_KEY", &client_key),
            ("REDIS_PASSWORD_FILE", &password),
        ],
    )
    .await;
    let client = Some((client_cert.as_path(), client_key.as_path()));
    assert!(
        eventually(Duration::from_secs(10), || async {
            server.log().contains("redis connected")
        })
        .await,
        "roster connects to Redis over TLS; its log:\n{}",
        server.log()
    );

    create_and_get(&server, "Tess").await;
    // CreateUser filled the key; drop it and see a GetUser miss fill it again.
    redis.cli(&ca, client, &["DEL", &key("tess")]);
    let mut users = UserServiceClient::new(server.channel());
    let filled = eventually(Duration::from_secs(10), || {
        let mut users = users.clone();
        let redis = &redis;
        let ca = &ca;
        async move {
            users
                .get_user(pb::GetUserRequest {
                    name: "tess".into(),
                })
                .await
                .unwrap();
            redis.cli(ca, client, &["EXISTS", &key("tess")]) == "1"
        }
    })
    .await;
    assert!(filled, "a GetUser miss fills the cache over TLS");
    users
        .get_user(pb::GetUserRequest {
            name: "tess".into(),
        })
        .await
        .unwrap();

    let log = server.log();
    assert!(!log.contains(REDIS_SECRET), "the password is never logged");
    assert!(
        log.contains(&format!("rediss://roster@127.0.0.1:{}", redis.port)),
        "the Redis URL is logged, without a password: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_is_logged_without_the_password_and_roster_serves_from_the_database()
{
    let pki = Pki::new("redis test CA");
    let Some(redis) = TlsRedis::start(&pki, &pki, false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.ca_file();
    let wrong = "not-the-redis-password-81d0";
    let password = secret_file(dir.path(), "redis-password", wrong);
    let server = roster(
        &dir,
        &redis.url(),
        &[
            ("ROSTER_REDIS_CA_FILE", &ca),
            ("REDIS_PASSWORD_FILE", &password),
        ],
    )
    .await;

    create_and_get(&server, "Ursula").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            server.log().contains("WRONGPASS")
        })
        .await,
        "the refused sign-in is logged; the log:\n{}",
        server.log()
    );
    assert_eq!(
        redis.cli(&ca, None, &["DBSIZE"]),
        "0",
        "nothing reached Redis"
    );
    let log = server.log();
    assert!(!log.contains(wrong), "the password is never logged: {log}");
    assert!(!log.contains("redis connected"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_server_certificate_from_another_ca_is_refused_and_roster_serves_from_the_database()
{
    let pki = Pki::new("redis test CA");
    let rogue = Pki::new("rogue CA");
    let Some(redis) = TlsRedis::start(&rogue, &pki, false) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.ca_file();
    let password = secret_file(dir.path(), "redis-password", REDIS_SECRET);
    let server = roster(
        &dir,
        &redis.url(),
        &[
            ("ROSTER_REDIS_CA_FILE", &ca),
            ("REDIS_PASSWORD_FILE", &password),
        ],
    )
    .await;

    create_and_get(&server, "Vera").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            server.log().contains("UnknownIssuer")
        })
        .await,
        "the certificate is refused, and that is logged; the log:\n{}",
        server.log()
    );
    assert_eq!(
        redis.cli(&rogue.ca_file(), None, &["DBSIZE"]),
        "0",
        "nothing reached Redis"
    );
    let log = server.log();
    assert!(!log.contains("redis connected"), "{log}");
    assert!(!log.contains(REDIS_SECRET), "{log}");
}

#[tokio::test]
async fn tls_files_with_a_plaintext_redis_url_or_a_missing_secret_file_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("redis test CA");
    let mut config = test_config(&dir.path().join("roster.db"), "redis://127.0.0.1:1");
    config.redis_ca_file = Some(pki.ca_file());
    let error = Application::build(config).await.err().unwrap().to_string();
    assert!(error.contains("need a TLS URL"), "{error}");

    let mut config = test_config(&dir.path().join("roster.db"), "rediss://127.0.0.1:1");
    config.redis_password_file = Some(dir.path().join("no-such-file"));
    let error = Application::build(config).await.err().unwrap().to_string();
    assert!(
        error.contains("cannot read secret file") && error.contains("no-such-file"),
        "{error}"
    );

    let mut config = test_config(
        &dir.path().join("roster.db"),
        "rediss://:in-the-url@127.0.0.1:1",
    );
    config.redis_password_file = Some(secret_file(dir.path(), "redis-password", "x"));
    let error = Application::build(config).await.err().unwrap().to_string();
    assert!(error.contains("give it once"), "{error}");
    assert!(!error.contains("in-the-url"), "{error}");

    let mut config = test_config(&dir.path().join("roster.db"), "");
    config.database_url = "postgres://roster@127.0.0.1:1/roster".into();
    config.database_password_file = Some(dir.path().join("no-such-password"));
    let error = Application::build(config).await.err().unwrap().to_string();
    assert!(
        error.contains("cannot read secret file") && error.contains("no-such-password"),
        "{error}"
    );
}

/// The role Roster signs in as, and its password (with characters a URL
/// would need to encode). No single quote: it goes into SQL as a literal.
const PG_ROLE: &str = "roster_app";
const PG_SECRET: &str = "pg p@ss:w/rd%?#-6b1e";

/// A private PostgreSQL server that accepts only TLS connections over TCP,
/// `postgres` by trust (for the test's own set-up) and [`PG_ROLE`] by
/// SCRAM; with a database `roster` owned by the role.
async fn tls_postgres(pki: &Pki) -> Option<PrivatePostgres> {
    let (cert, key) = pki.leaf("postgres", &["localhost", "127.0.0.1"]);
    let server = PrivatePostgres::start_with(
        "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server-key.pem'\n\
         password_encryption = 'scram-sha-256'\n",
        Some(&format!(
            "local all all trust\n\
             hostssl all postgres 127.0.0.1/32 trust\n\
             hostssl all {PG_ROLE} 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 reject\n"
        )),
        &[("server.pem", &cert), ("server-key.pem", &key)],
    )?;
    let admin = Database::connect(format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        server.port()
    ))
    .await
    .unwrap();
    admin
        .execute_unprepared(&format!(
            "CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{PG_SECRET}'"
        ))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE roster OWNER {PG_ROLE}"))
        .await
        .unwrap();
    admin.close().await.unwrap();
    Some(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verified_tls_signs_in_with_the_password_from_a_file() {
    let pki = Pki::new("postgres test CA");
    let Some(postgres) = tls_postgres(&pki).await else {
        return;
    };
    let port = postgres.port();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.ca_file();
    let url = |sslmode: &str, root: &Path| {
        format!(
            "postgres://{PG_ROLE}@127.0.0.1:{port}/roster?sslmode={sslmode}&sslrootcert={}",
            root.display()
        )
    };
    let password = secret_file(dir.path(), "pg-password", PG_SECRET);
    let config_for = |url: String, password: &Path| {
        let mut config = test_config(&dir.path().join("unused.db"), "");
        config.database_url = url;
        config.database_password_file = Some(password.to_path_buf());
        config
    };

    // The right password over verified TLS: served, as the role, encrypted.
    let config = config_for(url("verify-full", &ca), &password);
    let app = spawn_with(config, tempfile::tempdir().unwrap(), RedisServer::start()).await;
    app.create_user("Wanda").await;
    assert_eq!(app.get_user("wanda").await.unwrap().name, "Wanda");
    let admin = Database::connect(format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require"
    ))
    .await
    .unwrap();
    let encrypted = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT count(*) FILTER (WHERE s.ssl) AS tls, count(*) AS total \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.usename = '{PG_ROLE}' AND a.datname = 'roster'"
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    let (tls, total): (i64, i64) = (
        encrypted.try_get("", "tls").unwrap(),
        encrypted.try_get("", "total").unwrap(),
    );
    assert!(
        total > 0 && tls == total,
        "{tls} of {total} connections use TLS"
    );
    drop(app.stop().await);

    // A wrong password: refused, and the error does not quote it.
    let wrong = secret_file(dir.path(), "wrong-password", "not-the-pg-password-20aa");
    let error = Application::build(config_for(url("verify-full", &ca), &wrong))
        .await
        .err()
        .expect("a wrong password refuses to start")
        .to_string();
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!error.contains("not-the-pg-password"), "{error}");
    // Without TLS: the server refuses.
    let error = Application::build(config_for(url("disable", &ca), &password))
        .await
        .err()
        .expect("a plaintext connection is refused")
        .to_string();
    assert!(error.contains("no encryption"), "{error}");
    // A server certificate from a CA other than sslrootcert: refused.
    let rogue = Pki::new("rogue CA");
    let error = Application::build(config_for(url("verify-full", &rogue.ca_file()), &password))
        .await
        .err()
        .expect("an unverifiable server certificate is refused")
        .to_string();
    assert!(
        error.to_lowercase().contains("certificate"),
        "the refusal names the certificate: {error}"
    );
    assert!(!error.contains(PG_SECRET), "{error}");
}
