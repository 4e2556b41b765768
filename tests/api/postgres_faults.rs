//! Postgres faults under a write-heavy history (issue 9): the connection to
//! Postgres cut at random moments (some cuts land while a COMMIT is in
//! flight, so its outcome is unknown to Roster), and the Postgres server
//! itself restarted, stopped as by a crash (`immediate`), or its postmaster
//! killed with SIGKILL. Every acknowledged write must be in the database,
//! nothing may be applied twice, no read may be stale, no call may answer
//! INTERNAL, and Roster must answer UNAVAILABLE while Postgres is away and
//! recover by itself once it is back. One more test cuts the link during
//! chosen COMMITs, to check the read after a retry's answer.
//!
//! The cut tests use the machine's Postgres (see `postgres.rs`); the
//! restart tests start a private PostgreSQL server from the installed
//! binaries (see [`PrivatePostgres`]). Both skip, saying why, when they
//! cannot run. The short form runs in CI; `ROSTER_FAULT_TRIALS=20` runs
//! the long form.

use std::{
    future::Future,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use roster::proto::roster::v1::{
    self as pb, GameOutcome, leaderboard_service_client::LeaderboardServiceClient,
    user_service_client::UserServiceClient,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{PASSWORD, RedisServer, eventually, free_port, reason},
    history::{self, History, Verdict, Workload},
    postgres::TestDatabase,
    rig::{Proxy, ServerProcess, signal, trials},
};

/// How a [`PrivatePostgres`] is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT: "fast" shutdown; sessions are ended, a checkpoint is written.
    Fast,
    /// SIGQUIT: "immediate" shutdown; no checkpoint, crash recovery at the
    /// next start.
    Immediate,
}

/// A PostgreSQL server the test owns: its own data directory in a temp
/// dir, on a free loopback port, trust authentication, `fsync=on` and
/// `synchronous_commit=on`. Run as the `postgres` OS user when the test
/// runs as root (PostgreSQL refuses to run as root). Stopped and removed
/// on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    /// Owned by the user the server runs as; holds `data/`, the socket
    /// and the log.
    dir: TempDir,
    port: u16,
    /// The uid and gid to run the server as, when the test runs as root.
    run_as: Option<(u32, u32)>,
    postmaster: Option<Child>,
}

impl PrivatePostgres {
    /// Creates a cluster (initdb) and starts it; `None`, after saying why,
    /// when that is not possible here.
    pub fn start() -> Option<Self> {
        Self::start_with("", None, &[])
    }

    /// As [`Self::start`], with `settings` appended to postgresql.conf,
    /// `hba` (when given) as the whole pg_hba.conf, and `files` (name,
    /// content) written into the data directory, readable by the server
    /// only (as it wants its TLS key).
    pub fn start_with(
        extra_settings: &str,
        hba: Option<&str>,
        files: &[(&str, &str)],
    ) -> Option<Self> {
        let Some(bin) = server_binaries() else {
            eprintln!(
                "SKIPPED: no PostgreSQL server binaries (initdb, postgres, pg_isready) \
                 under /usr/lib/postgresql/*/bin or pg_config --bindir"
            );
            return None;
        };
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = if root {
            let Some(ids) = os_user("postgres") else {
                eprintln!(
                    "SKIPPED: PostgreSQL refuses to run as root, and there is no `postgres` \
                     OS user to run it as"
                );
                return None;
            };
            Some(ids)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("roster-pg-")
            .tempdir()
            .unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut server = Self {
            bin,
            dir,
            port: free_port(),
            run_as,
            postmaster: None,
        };
        let initdb = server
            .command("initdb")
            .arg("--pgdata")
            .arg(server.data())
            .args(["--username=postgres", "--auth=trust", "--no-locale"])
            .args(["--encoding=UTF8", "--no-instructions"])
            .output();
        match initdb {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                eprintln!(
                    "SKIPPED: initdb cannot run here: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                return None;
            }
            Err(error) => {
                eprintln!("SKIPPED: initdb cannot run here: {error}");
                return None;
            }
        }
        let settings = format!(
            "\n# roster test settings\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             max_connections = 50\n\
             shared_buffers = 16MB\n",
            server.port,
            server.dir.path().display()
        );
        let conf = server.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&settings);
        text.push_str(extra_settings);
        std::fs::write(&conf, text).unwrap();
        if let Some(hba) = hba {
            std::fs::write(server.data().join("pg_hba.conf"), hba).unwrap();
        }
        for (name, content) in files {
            let path = server.data().join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if let Some((uid, gid)) = server.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }
        if let Err(why) = server.try_start(Duration::from_secs(30)) {
            eprintln!("SKIPPED: the private PostgreSQL server does not start here: {why}");
            return None;
        }
        Some(server)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server as `how` says; the server stays down until
    /// [`Self::start_again`].
    pub fn stop(&mut self, how: Stop) {
        self.halt(match how {
            Stop::Fast => libc::SIGINT,
            Stop::Immediate => libc::SIGQUIT,
        });
    }

    /// Starts the stopped server again and waits until it accepts
    /// connections (after crash recovery, if any).
    pub fn start_again(&mut self) {
        if let Err(why) = self.try_start(Duration::from_secs(60)) {
            panic!("the private PostgreSQL server did not start again: {why}");
        }
    }

    /// Stops the server as `how` says and starts it again at once.
    pub fn restart(&mut self, how: Stop) {
        self.stop(how);
        self.start_again();
    }

    /// SIGKILL of the postmaster alone: its backends finish what they are
    /// doing and exit when they notice, and the next start recovers from
    /// the WAL. The server stays down until [`Self::start_again`].
    pub fn kill9(&mut self) {
        self.halt(libc::SIGKILL);
    }

    /// Sends `sig` to the postmaster and waits for it to exit.
    fn halt(&mut self, sig: i32) {
        if let Some(mut postmaster) = self.postmaster.take() {
            signal(postmaster.id(), sig);
            postmaster.wait().unwrap();
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command for one of the server binaries, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = match self.run_as {
            Some((uid, gid)) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(path);
                command
            }
            None => Command::new(path),
        };
        command
            .current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        command
    }

    /// Spawns the postmaster (our child: setpriv execs it) and waits until
    /// it accepts connections. After a SIGKILL the old backends may still
    /// hold the shared memory for a moment; the postmaster then refuses to
    /// start, and is started again until `timeout`.
    fn try_start(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        'spawn: loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .map_err(|e| e.to_string())?;
            let mut postmaster = self
                .command("postgres")
                .arg("-D")
                .arg(self.data())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| e.to_string())?;
            loop {
                if let Some(status) = postmaster.try_wait().map_err(|e| e.to_string())? {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "postgres exited ({status}); its log:\n{}",
                            self.log()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue 'spawn;
                }
                if self.accepts_connections() {
                    self.postmaster = Some(postmaster);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    postmaster.kill().ok();
                    postmaster.wait().ok();
                    return Err(format!(
                        "not ready in {timeout:?}; its log:\n{}",
                        self.log()
                    ));
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    fn accepts_connections(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Immediate: nothing of this cluster is needed any more.
        self.stop(Stop::Immediate);
    }
}

/// The newest installed PostgreSQL's server binaries: Debian's layout
/// (`/usr/lib/postgresql/VERSION/bin`), else where `pg_config` says.
fn server_binaries() -> Option<PathBuf> {
    let complete = |bin: &PathBuf| {
        ["initdb", "postgres", "pg_isready"]
            .iter()
            .all(|program| bin.join(program).exists())
    };
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        let output = Command::new("pg_config").arg("--bindir").output().ok()?;
        let bin = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
        (output.status.success() && complete(&bin)).then_some(bin)
    })
}

/// The uid and gid of the OS user `name`.
fn os_user(name: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| {
        let output = Command::new("id").args([flag, name]).output().ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8(output.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// How long most COMMITs wait inside Postgres in the history tests (see
/// [`slow_commits`]), so that faults land in some of them.
const COMMIT_PAUSE_MS: std::ops::Range<u32> = 5..25;

/// Log filter for the server: info, plus the use cases' debug line that
/// says a retried request_id was replayed. Each such line is a write whose
/// earlier attempt committed although its caller never heard so: here, a
/// commit whose answer a fault cut off.
const LOG_FILTER: [&str; 2] = [
    "--log-filter",
    "info,roster::users=debug,roster::leaderboard=debug",
];

fn replays(server: &ServerProcess) -> usize {
    server
        .log()
        .matches("request_id seen before; replaying the first result")
        .count()
}

/// A write that must reach the database: CreateUser with a request_id.
async fn create(
    channel: &Channel,
    name: &str,
    timeout: Duration,
) -> Result<pb::User, tonic::Status> {
    let mut request = tonic::Request::new(pb::CreateUserRequest {
        name: name.into(),
        password: PASSWORD.into(),
        request_id: format!("{name}-create"),
    });
    request.set_timeout(timeout);
    UserServiceClient::new(channel.clone())
        .create_user(request)
        .await
        .map(|r| r.into_inner().user.unwrap())
}

/// A read that must reach the database: GetUser of a name nobody has (no
/// cache can answer it).
async fn read_unknown(channel: &Channel, name: &str, timeout: Duration) -> tonic::Status {
    let mut request = tonic::Request::new(pb::GetUserRequest { name: name.into() });
    request.set_timeout(timeout);
    match UserServiceClient::new(channel.clone())
        .get_user(request)
        .await
    {
        Ok(found) => panic!("{name} exists: {found:?}"),
        Err(status) => status,
    }
}

/// Probes Roster while Postgres is away: a write and a read that both need
/// the database, given longer than Roster's 5 s wait for a connection.
/// Returns each answer as "code reason".
fn probe_outage(channel: &Channel, tag: String) -> JoinHandle<Vec<String>> {
    let channel = channel.clone();
    tokio::spawn(async move {
        let timeout = Duration::from_secs(15);
        let (probe, nobody) = (format!("{tag}-probe"), format!("{tag}-nobody"));
        let (written, read) = tokio::join!(
            create(&channel, &probe, timeout),
            read_unknown(&channel, &nobody, timeout),
        );
        let written = match written {
            Ok(_) => "Ok".to_owned(),
            Err(status) => format!("{:?} {}", status.code(), reason(&status)),
        };
        let read = match read.code() {
            Code::NotFound => "NotFound".to_owned(),
            code => format!("{code:?} {}", reason(&read)),
        };
        vec![written, read]
    })
}

async fn serving(channel: &Channel) -> bool {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "roster.v1.UserService".into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// Waits until a new user can be created (Roster has recovered); returns
/// how long that took.
async fn recovered(channel: &Channel, name: &str, within: Duration) -> Duration {
    let began = Instant::now();
    loop {
        match create(channel, name, Duration::from_secs(10)).await {
            Ok(_) => return began.elapsed(),
            Err(status) => {
                assert_ne!(status.code(), Code::Internal, "{status:?}");
                assert!(
                    began.elapsed() < within,
                    "roster did not recover within {within:?} after Postgres came back: \
                     {status:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The common checks on a finished history; `server_log` is Roster's, for
/// the causes of any INTERNAL answer.
async fn check(what: &str, history: &History, database_url: &str, server_log: &str) -> Verdict {
    let db = sea_orm::Database::connect(database_url).await.unwrap();
    let verdict = history.check(&db).await;
    db.close().await.ok();
    verdict.assert_clean(what);
    assert!(
        history.forbidden.is_empty(),
        "{what}: {} INTERNAL answers; every code: {:?}; roster logged:\n{}",
        history.forbidden.len(),
        history.codes,
        server_log
            .lines()
            .filter(|line| line.contains("\"ERROR\""))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(verdict.acknowledged > 0, "{what}: nothing was acknowledged");
    verdict
}

fn workload(prefix: &str, duration: Duration, call_timeout: Duration, seed: u64) -> Workload {
    Workload {
        prefix: prefix.into(),
        clients: 8,
        users: 4,
        duration,
        call_timeout,
        settle: Duration::from_secs(20),
        seed,
    }
}

/// Roster reaches Postgres through a proxy that is cut again and again
/// under the history workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_cut_mid_commit_lose_no_acknowledged_write_and_apply_none_twice() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let proxy = Proxy::start(database.host_port()).await;
    let redis = RedisServer::start();
    let mut server =
        ServerProcess::start(&database.url_via(&proxy.addr()), &redis.url(), &LOG_FILTER).await;
    let channel = server.channel();
    let db = sea_orm::Database::connect(database.url()).await.unwrap();
    slow_commits(&db, COMMIT_PAUSE_MS).await;
    db.close().await.ok();

    // Cuts every 30-300 ms, each lasting 10-150 ms, for `cutting`; with 32
    // writers at work and every COMMIT taking a while, many land between a
    // COMMIT and its answer.
    let cutting = Duration::from_millis(6000 * trials(1) as u64);
    let load = tokio::spawn({
        let channel = channel.clone();
        let workload = workload(
            "cut",
            cutting + Duration::from_millis(500),
            Duration::from_secs(8),
            11,
        );
        async move { history::run(&workload, &[channel]).await }
    });
    let mut rng = StdRng::seed_from_u64(1109);
    let began = Instant::now();
    let mut cuts = 0;
    while began.elapsed() < cutting {
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..300))).await;
        proxy.cut().await;
        cuts += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..150))).await;
        proxy.restore();
    }
    let history = load.await.unwrap();
    let back = recovered(&channel, "cut-after", Duration::from_secs(20)).await;
    let replayed = replays(&server);
    assert!(server.terminate(), "clean exit");
    let log = server.log();

    // Against the database directly, not through the proxy.
    let verdict = check("connections cut", &history, &database.url(), &log).await;
    assert!(
        history.count("Unavailable DATABASE_UNAVAILABLE") > 0,
        "the cuts reached no call: {:?}",
        history.codes
    );
    eprintln!(
        "postgres connections cut: {cuts} cuts over {cutting:?}; {} acknowledged, {} refused, \
         {} unknown, {} reads, longest call {:?}; {replayed} retried writes found their first \
         attempt committed; a write succeeded {back:?} after the last cut; codes {:?}",
        verdict.acknowledged,
        verdict.refused,
        verdict.unknown,
        verdict.reads,
        verdict.longest,
        history.codes
    );
    drop(proxy);
    database.drop_database().await;
}

/// Postgres is stopped (fast shutdown) under the history workload: once for
/// longer than Roster waits for a connection, then (long form) restarted
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_loses_nothing_answers_unavailable_and_roster_recovers_by_itself()
 {
    let Some(mut postgres) = PrivatePostgres::start() else {
        return;
    };
    let restarts = trials(1);
    let redis = RedisServer::start();
    let mut server = ServerProcess::start(&postgres.url(), &redis.url(), &LOG_FILTER).await;
    let channel = server.channel();
    let db = sea_orm::Database::connect(postgres.url()).await.unwrap();
    slow_commits(&db, COMMIT_PAUSE_MS).await;
    db.close().await.ok();

    // The first outage outlasts Roster's 5 s wait for a connection, so
    // calls get their answer while Postgres is still down; later ones are
    // short, as a restart usually is.
    let first_outage = Duration::from_millis(7000);
    let load = tokio::spawn({
        let channel = channel.clone();
        let duration = Duration::from_millis(1000 + 8300 + 2500 * (restarts as u64 - 1) + 1000);
        let workload = workload("restart", duration, Duration::from_secs(8), 21);
        async move { history::run(&workload, &[channel]).await }
    });
    let mut rng = StdRng::seed_from_u64(2109);
    let mut answers = Vec::new();
    let mut recoveries = Vec::new();
    for trial in 0..restarts {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1000))).await;
        let began = Instant::now();
        if trial == 0 {
            postgres.stop(Stop::Fast);
            let probe = probe_outage(&channel, "restart-0".into());
            tokio::time::sleep(Duration::from_secs(1)).await;
            let unhealthy = eventually(first_outage - Duration::from_millis(1100), || async {
                !serving(&channel).await
            })
            .await;
            tokio::time::sleep(first_outage.saturating_sub(began.elapsed())).await;
            postgres.start_again();
            assert!(unhealthy, "health is NOT_SERVING while Postgres is down");
            let probed = probe.await.unwrap();
            assert!(
                probed
                    .iter()
                    .all(|code| code == "Unavailable DATABASE_UNAVAILABLE"),
                "while Postgres is down, calls that need it answer UNAVAILABLE: {probed:?}"
            );
            answers.extend(probed);
        } else {
            // A plain restart, as for a configuration change or an upgrade.
            postgres.restart(Stop::Fast);
        }
        let down = began.elapsed();
        let back = recovered(
            &channel,
            &format!("restart-{trial}-after"),
            Duration::from_secs(20),
        )
        .await;
        recoveries.push((down, back));
    }
    assert!(
        eventually(Duration::from_secs(10), || serving(&channel)).await,
        "health is SERVING again"
    );
    let history = load.await.unwrap();
    let replayed = replays(&server);
    assert!(server.terminate(), "clean exit");
    let log = server.log();

    let verdict = check("postgres restarted", &history, &postgres.url(), &log).await;
    assert!(
        history.count("Unavailable DATABASE_UNAVAILABLE") > 0,
        "no call saw Postgres down: {:?}",
        history.codes
    );
    assert!(
        answers.iter().all(|code| !code.starts_with("Internal")),
        "{answers:?}"
    );
    eprintln!(
        "postgres restarted (fast) {restarts} times: {} acknowledged, {} refused, {} unknown, \
         {} reads, longest call {:?}; {replayed} retried writes found their first attempt \
         committed; (down for, writes succeeded again after) {recoveries:?}; probes while down \
         {answers:?}; codes {:?}",
        verdict.acknowledged,
        verdict.refused,
        verdict.unknown,
        verdict.reads,
        verdict.longest,
        history.codes
    );
}

/// A way to bring a [`PrivatePostgres`] down.
type Crash = fn(&mut PrivatePostgres);

/// Postgres crashes under the history workload (an immediate shutdown, then
/// a SIGKILL of the postmaster) and recovers from its WAL at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_mid_run_immediate_stop_or_kill_9_loses_no_acknowledged_write() {
    let Some(mut postgres) = PrivatePostgres::start() else {
        return;
    };
    let trials = trials(1);
    let redis = RedisServer::start();
    let mut server = ServerProcess::start(&postgres.url(), &redis.url(), &LOG_FILTER).await;
    let channel = server.channel();
    let db = sea_orm::Database::connect(postgres.url()).await.unwrap();
    slow_commits(&db, COMMIT_PAUSE_MS).await;
    db.close().await.ok();

    // Each trial: an immediate stop, then a SIGKILL of the postmaster, each
    // followed by a start after a short pause (crash recovery included).
    let load = tokio::spawn({
        let channel = channel.clone();
        let duration = Duration::from_millis(1000 + 6000 * trials as u64);
        let workload = workload("crash", duration, Duration::from_secs(8), 31);
        async move { history::run(&workload, &[channel]).await }
    });
    let mut rng = StdRng::seed_from_u64(3109);
    let mut answers = Vec::new();
    let mut recoveries = Vec::new();
    let crashes: [(&str, Crash); 2] = [
        ("immediate", |postgres| postgres.stop(Stop::Immediate)),
        ("kill-9", PrivatePostgres::kill9),
    ];
    for trial in 0..trials {
        for (how, crash) in crashes {
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1000))).await;
            let began = Instant::now();
            crash(&mut postgres);
            let probe = probe_outage(&channel, format!("crash-{trial}-{how}"));
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..800))).await;
            postgres.start_again();
            let down = began.elapsed();
            answers.extend(probe.await.unwrap());
            let back = recovered(
                &channel,
                &format!("crash-{trial}-{how}-after"),
                Duration::from_secs(20),
            )
            .await;
            recoveries.push((how, down, back));
        }
    }
    let history = load.await.unwrap();
    let replayed = replays(&server);
    assert!(server.terminate(), "clean exit");
    let log = server.log();

    let verdict = check("postgres crashed", &history, &postgres.url(), &log).await;
    assert!(
        answers.iter().all(|code| !code.starts_with("Internal")),
        "{answers:?}"
    );
    let pg_log = postgres.log();
    eprintln!(
        "postgres crashed {trials} times each way: {} acknowledged, {} refused, {} unknown, \
         {} reads, longest call {:?}; {replayed} retried writes found their first attempt \
         committed; (crash, down for, writes succeeded again after) {recoveries:?}; probes \
         {answers:?}; \
         crash recoveries in the Postgres log: {}; codes {:?}",
        verdict.acknowledged,
        verdict.refused,
        verdict.unknown,
        verdict.reads,
        verdict.longest,
        pg_log
            .matches("database system was not properly shut down")
            .count(),
        history.codes
    );
}

/// Makes the COMMIT of every write with a request_id wait inside Postgres
/// (a deferred constraint trigger on the idempotency records, which runs
/// at COMMIT, before the commit record is written): `pause_ms` (a range of
/// milliseconds) for most, a whole second for those whose request_id
/// starts with `slow-`. A fault that lands during such a wait lands
/// mid-COMMIT: a cut link leaves the COMMIT to complete unseen (the backend
/// notices the client is gone only when it answers), a shutdown aborts it.
/// As on a slow disk, the other writers wait too (the outbox counter's row
/// lock is held until COMMIT).
async fn slow_commits(db: &DatabaseConnection, pause_ms: std::ops::Range<u32>) {
    db.execute_unprepared(
        "CREATE FUNCTION roster_test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.request_id LIKE 'slow-%' THEN PERFORM pg_sleep(1); \
           ELSE PERFORM pg_sleep((TG_ARGV[0]::float \
             + random() * (TG_ARGV[1]::float - TG_ARGV[0]::float)) / 1000); \
           END IF; \
           RETURN NULL; \
         END $$",
    )
    .await
    .unwrap();
    for table in ["user_requests", "record_game_requests"] {
        db.execute_unprepared(&format!(
            "CREATE CONSTRAINT TRIGGER roster_test_slow_commit AFTER INSERT ON {table} \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
             EXECUTE FUNCTION roster_test_slow_commit('{}', '{}')",
            pause_ms.start, pause_ms.end
        ))
        .await
        .unwrap();
    }
}

/// Whether `sql` (a count) is above zero, asked directly (not through the
/// proxy).
async fn any(db: &DatabaseConnection, sql: &str) -> bool {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap() > 0
}

/// Runs `call`, a write whose request_id is `request_id` (`slow-...`),
/// cuts the link to Postgres while its COMMIT is in flight, keeps it cut
/// until that COMMIT has landed (so not even a notification of it gets
/// through), restores it, and returns the call's answer.
async fn cut_mid_commit<T: Send + 'static>(
    proxy: &Proxy,
    db: &DatabaseConnection,
    table: &str,
    request_id: &str,
    call: impl Future<Output = Result<T, tonic::Status>> + Send + 'static,
) -> Result<T, tonic::Status> {
    let call = tokio::spawn(call);
    let sleeping = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'";
    assert!(
        eventually(Duration::from_secs(10), || any(db, sleeping)).await,
        "the write reached its COMMIT"
    );
    proxy.cut().await;
    let committed = format!("SELECT count(*) FROM {table} WHERE request_id = '{request_id}'");
    assert!(
        eventually(Duration::from_secs(10), || any(db, &committed)).await,
        "the COMMIT landed although its connection was cut"
    );
    proxy.restore();
    call.await.unwrap()
}

async fn game(channel: &Channel, name: &str, request_id: &str) -> Result<i64, tonic::Status> {
    LeaderboardServiceClient::new(channel.clone())
        .record_game(pb::RecordGameRequest {
            name: name.into(),
            outcome: GameOutcome::Win.into(),
            score: 5,
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().stats.unwrap().games_played)
}

async fn games(channel: &Channel, name: &str) -> i64 {
    LeaderboardServiceClient::new(channel.clone())
        .get_user_stats(pb::GetUserStatsRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .games_played
}

async fn get(channel: &Channel, name: &str) -> Result<pb::User, tonic::Status> {
    UserServiceClient::new(channel.clone())
        .get_user(pb::GetUserRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

async fn change_password(channel: &Channel, name: &str) -> Result<pb::User, tonic::Status> {
    UserServiceClient::new(channel.clone())
        .change_password(pb::ChangePasswordRequest {
            name: name.into(),
            current_password: PASSWORD.into(),
            new_password: "another fine passphrase".into(),
            request_id: "slow-password".into(),
        })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

async fn delete(channel: &Channel, name: &str) -> Result<(), tonic::Status> {
    UserServiceClient::new(channel.clone())
        .delete_user(pb::DeleteUserRequest {
            name: name.into(),
            request_id: "slow-delete".into(),
        })
        .await
        .map(|_| ())
}

/// A write whose COMMIT landed while its connection was cut is answered
/// UNAVAILABLE; its retry (same request_id) is answered from the first
/// call's record. The read after that answer must see the write, like the
/// read after any other acknowledged write: the retry must bring the
/// caches up to date as the first call would have, not leave it to a
/// delivery round. Rounds run only every minute here, so that nothing
/// else does it in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_commit_answer_was_cut_off_is_in_the_first_read_after_its_retry() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let proxy = Proxy::start(database.host_port()).await;
    let redis = RedisServer::start();
    let server = ServerProcess::start(
        &database.url_via(&proxy.addr()),
        &redis.url(),
        &[
            "--cache-sync-interval",
            "60s",
            "--cache-staleness-bound",
            "120s",
        ],
    )
    .await;
    let channel = server.channel();
    let db = sea_orm::Database::connect(database.url()).await.unwrap();
    slow_commits(&db, 0..0).await;
    let name = "in-doubt";
    create(&channel, name, Duration::from_secs(10))
        .await
        .unwrap();

    // RecordGame.
    assert_eq!(game(&channel, name, "first-game").await.unwrap(), 1);
    assert_eq!(games(&channel, name).await, 1);
    let answer = cut_mid_commit(&proxy, &db, "record_game_requests", "slow-game", {
        let channel = channel.clone();
        async move { game(&channel, name, "slow-game").await }
    })
    .await;
    assert_eq!(answer.unwrap_err().code(), Code::Unavailable);
    assert_eq!(
        game(&channel, name, "slow-game").await.unwrap(),
        2,
        "replayed"
    );
    assert_eq!(
        games(&channel, name).await,
        2,
        "the read after the retry's answer"
    );

    // ChangePassword.
    let before = get(&channel, name).await.unwrap();
    let answer = cut_mid_commit(&proxy, &db, "user_requests", "slow-password", {
        let channel = channel.clone();
        async move { change_password(&channel, name).await }
    })
    .await;
    assert_eq!(answer.unwrap_err().code(), Code::Unavailable);
    let changed = change_password(&channel, name).await.unwrap();
    assert_ne!(changed.update_time, before.update_time, "replayed");
    assert_eq!(
        get(&channel, name).await.unwrap(),
        changed,
        "the read after the retry's answer"
    );

    // DeleteUser.
    get(&channel, name).await.unwrap();
    let answer = cut_mid_commit(&proxy, &db, "user_requests", "slow-delete", {
        let channel = channel.clone();
        async move { delete(&channel, name).await }
    })
    .await;
    assert_eq!(answer.unwrap_err().code(), Code::Unavailable);
    delete(&channel, name).await.unwrap();
    let read = get(&channel, name).await;
    assert_eq!(
        read.map_err(|status| status.code()),
        Err(Code::NotFound),
        "the read after the retry's answer"
    );

    db.close().await.ok();
    drop(server);
    drop(proxy);
    database.drop_database().await;
}
