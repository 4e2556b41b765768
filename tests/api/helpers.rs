//! Test harness: spawn Roster in-process on port 0 with its own SQLite file and
//! its own redis-server on a free port.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;
use fred::prelude::{Builder, Client as RedisClient, ClientLike, Config as RedisConfig};
use roster::{
    config::Config,
    proto::roster::v1::{self as pb, user_service_client::UserServiceClient},
    startup::Application,
};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// A password that passes every rule.
pub const PASSWORD: &str = "correct horse battery staple";

/// A private redis-server on a free loopback port, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers.
    pub fn start() -> Self {
        let port = free_port();
        let mut server = Self {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        server.restart();
        server
    }

    /// The `host:port` it listens on.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The URL Roster should use.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A handle on this server for another Roster to own: dropping it
    /// leaves the server running.
    pub fn share(&self) -> Self {
        Self {
            port: self.port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Kills the server (as an outage would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        std::fs::remove_file(self.dir.path().join("dump.rdb")).ok();
        self.launch();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        crate::rig::signal(pid, libc::SIGSTOP);
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        crate::rig::signal(pid, libc::SIGCONT);
    }

    /// Saves a snapshot (SAVE) and returns a copy of it.
    pub async fn snapshot(&self) -> Vec<u8> {
        let client = self.client().await;
        let _: () = client
            .custom(fred::cmd!("SAVE"), Vec::<String>::new())
            .await
            .unwrap();
        client.quit().await.ok();
        std::fs::read(self.dir.path().join("dump.rdb")).unwrap()
    }

    /// Kills the server and starts it again from `snapshot` (as a restore
    /// from an old backup, or a failover to a replica that lagged, would).
    pub fn restart_from(&mut self, snapshot: &[u8]) {
        self.stop();
        std::fs::write(self.dir.path().join("dump.rdb"), snapshot).unwrap();
        self.launch();
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed to run the tests (see README)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A fresh client to inspect what Roster stored.
    pub async fn client(&self) -> RedisClient {
        let client = Builder::from_config(RedisConfig::from_url(&self.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        client
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Roster running in this process.
pub struct TestApp {
    /// A connected client.
    pub client: UserServiceClient<Channel>,
    /// The channel under `client`, for other services (health, reflection).
    pub channel: Channel,
    /// The address the server listens on, for raw connections.
    pub addr: SocketAddr,
    /// Its private Redis.
    pub redis: RedisServer,
    /// Holds the SQLite file.
    pub dir: TempDir,
    /// What it was started with.
    pub config: Config,
    /// Where its metrics are served, with `--metrics-addr`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// The test configuration for a database file and a Redis URL.
pub fn test_config(db_path: &Path, redis_url: &str) -> Config {
    Config::parse_from([
        "roster",
        "--listen-addr",
        "127.0.0.1:0",
        "--database-url",
        &format!("sqlite://{}", db_path.display()),
        "--redis-url",
        redis_url,
        "--health-interval",
        "200ms",
        "--drain-deadline",
        "2s",
    ])
}

/// Spawns Roster with a fresh database and a fresh redis-server.
pub async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let config = test_config(&dir.path().join("roster.db"), &redis.url());
    spawn_with(config, dir, redis).await
}

/// Spawns Roster with `config`, keeping `dir` and `redis` alive alongside it.
pub async fn spawn_with(config: Config, dir: TempDir, redis: RedisServer) -> TestApp {
    let app = Application::build(config.clone())
        .await
        .expect("roster starts");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until(async {
            stopped.await.ok();
        })
        .await
        .expect("roster runs and stops cleanly");
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    TestApp {
        client: UserServiceClient::new(channel.clone()),
        channel,
        addr,
        redis,
        dir,
        config,
        metrics_addr,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    /// The SQLite file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("roster.db")
    }

    /// Shuts the server down cleanly and hands back its database and Redis.
    pub async fn stop(mut self) -> (TempDir, RedisServer) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let redis = std::mem::replace(
            &mut self.redis,
            RedisServer {
                port: 0,
                child: None,
                dir: tempfile::tempdir().unwrap(),
            },
        );
        (dir, redis)
    }

    /// Creates a user, panicking on failure.
    pub async fn create_user(&self, name: &str) -> pb::User {
        self.client
            .clone()
            .create_user(pb::CreateUserRequest {
                name: name.into(),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
    }

    /// Calls GetUser.
    pub async fn get_user(&self, name: &str) -> Result<pb::User, tonic::Status> {
        self.client
            .clone()
            .get_user(pb::GetUserRequest { name: name.into() })
            .await
            .map(|response| response.into_inner().user.unwrap())
    }

    /// Starts another Roster on this one's database and Redis, as a second
    /// replica behind a load balancer would run. The replica owns neither.
    pub async fn spawn_replica(&self) -> TestApp {
        self.spawn_replica_with(|_| {}).await
    }

    /// As [`Self::spawn_replica`], with `adjust` applied to the configuration
    /// (e.g. a Redis URL through a proxy).
    pub async fn spawn_replica_with(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.config.clone();
        adjust(&mut config);
        spawn_with(config, tempfile::tempdir().unwrap(), self.redis.share()).await
    }

    /// Calls DeleteUser, panicking on failure.
    pub async fn delete_user(&self, name: &str) {
        self.client
            .clone()
            .delete_user(pb::DeleteUserRequest {
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Opens the test's SQLite file directly, as another process would.
    pub async fn database(&self) -> sea_orm::DatabaseConnection {
        sea_orm::Database::connect(format!("sqlite://{}", self.db_path().display()))
            .await
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
    }
}

/// The reason in the status's google.rpc.ErrorInfo.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// The (field, reason) pairs in the status's google.rpc.BadRequest.
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| (v.field, v.reason))
                .collect()
        })
        .unwrap_or_default()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
