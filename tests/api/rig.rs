//! The fault rig: Roster as a real child process (to kill -9 it, or to run it
//! as another user), a TCP proxy that can cut or hold back a link, small
//! file systems that fill up or turn read-only under the server, and Redis
//! controls (freeze, snapshot, restart from a snapshot). Every fault is
//! injected for real; nothing is mocked.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{Mutex, watch},
    task::JoinHandle,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::free_port;

/// How many trials the fault tests run: a short form in CI, the long form
/// with `ROSTER_FAULT_TRIALS` (see README).
pub fn trials(short: usize) -> usize {
    std::env::var("ROSTER_FAULT_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(short)
}

/// Whether this process may mount file systems (root); the tests that need
/// it say why they skip otherwise.
pub fn can_mount() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(dir.path())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        Command::new("umount").arg(dir.path()).status().ok();
    } else {
        eprintln!("SKIPPED: mounting a file system is not permitted here (needs root)");
    }
    mounted
}

/// A mounted file system that the test can fill or break, unmounted on drop.
pub struct Mount {
    dir: tempfile::TempDir,
    image: Option<PathBuf>,
}

impl Mount {
    /// A tmpfs of `size` (e.g. "4m"): fills up like a real disk.
    pub fn tmpfs(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Self { dir, image: None }
    }

    /// An ext4 file system on a loop device, mounted `errors=remount-ro`:
    /// an error makes it read-only under its users, as a failing disk does.
    pub fn ext4(size_mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = std::env::temp_dir().join(format!("roster-ext4-{}.img", uuid::Uuid::now_v7()));
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(size_mib << 20).unwrap();
        drop(file);
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .status()
            .unwrap();
        assert!(made.success(), "mkfs.ext4");
        let mounted = Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&image)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "mount ext4 image");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        Self {
            dir,
            image: Some(image),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with a filler file until a write fails; returns
    /// the filler's path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5a_u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let small = vec![0x5a_u8; 512];
        while file.write_all(&small).is_ok() {}
        file.sync_all().ok();
        filler
    }

    /// Makes the (ext4) file system fail: the kernel remounts it read-only
    /// at once, as after an I/O error; files stay readable.
    pub fn break_to_read_only(&self) {
        let device = std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .find(|line| line.split(' ').nth(1) == Some(self.path().to_str().unwrap()))
            .and_then(|line| line.split(' ').next().map(str::to_owned))
            .expect("the ext4 image is mounted");
        let name = device.trim_start_matches("/dev/");
        std::fs::write(
            format!("/sys/fs/ext4/{name}/trigger_fs_error"),
            "roster test\n",
        )
        .expect("ext4's trigger_fs_error");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status()
            .ok();
        if let Some(image) = &self.image {
            std::fs::remove_file(image).ok();
        }
    }
}

/// Roster as a child process of the test (the binary cargo built).
pub struct ServerProcess {
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
    log: PathBuf,
    run_as: Option<u32>,
    /// The child's open-file limit (soft and hard), when lowered.
    open_files: Option<u64>,
    child: Option<Child>,
    _logs: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts Roster on a free port with `database_url` and `redis_url`,
    /// plus `extra` flags, and waits until it serves.
    pub async fn start(database_url: &str, redis_url: &str, extra: &[&str]) -> Self {
        Self::start_as(database_url, redis_url, extra, None).await
    }

    /// As [`Self::start`], run as user id `uid` (a non-root process, whose
    /// file permissions apply).
    pub async fn start_as(
        database_url: &str,
        redis_url: &str,
        extra: &[&str],
        uid: Option<u32>,
    ) -> Self {
        Self::start_with(database_url, redis_url, extra, uid, &[]).await
    }

    /// As [`Self::start_as`], with extra environment variables.
    pub async fn start_with(
        database_url: &str,
        redis_url: &str,
        extra: &[&str],
        uid: Option<u32>,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_full(database_url, redis_url, extra, uid, env, None).await
    }

    /// As [`Self::start_with`], with the child's open-file limit (soft and
    /// hard, so that the server cannot raise it) set to `open_files`.
    pub async fn start_with_open_files(
        database_url: &str,
        redis_url: &str,
        env: &[(&str, &str)],
        open_files: u64,
    ) -> Self {
        Self::start_full(database_url, redis_url, &[], None, env, Some(open_files)).await
    }

    async fn start_full(
        database_url: &str,
        redis_url: &str,
        extra: &[&str],
        uid: Option<u32>,
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Self {
        let port = free_port();
        let logs = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            logs.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut args: Vec<String> = [
            "--listen-addr",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            database_url,
            "--redis-url",
            redis_url,
            "--health-interval",
            "200ms",
            "--drain-deadline",
            "2s",
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut server = Self {
            args,
            env: std::iter::once(("RUST_LOG".to_owned(), "info".to_owned()))
                .chain(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
                .collect(),
            port,
            log: logs.path().join("roster.log"),
            run_as: uid,
            open_files,
            child: None,
            _logs: logs,
        };
        server.spawn();
        server.wait_serving(Duration::from_secs(30)).await;
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let binary = env!("CARGO_BIN_EXE_roster");
        let mut command = match self.run_as {
            Some(uid) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        if let Some(limit) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit(2) is async-signal-safe, as code between
            // fork and exec must be; nothing is allocated.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        self.child = Some(command.spawn().expect("spawn roster"));
    }

    /// The gRPC address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A channel that reconnects by itself after a restart.
    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr()))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until health answers SERVING.
    pub async fn wait_serving(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect(self.addr()).is_ok() {
                let mut health = HealthClient::new(self.channel());
                let answer = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if answer.is_ok_and(|a| a.into_inner().status == ServingStatus::Serving as i32) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "roster did not start serving; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL: the process dies at once, mid-whatever.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// SIGTERM, then waits for the process to exit; returns whether it
    /// exited with status 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        signal(child.id(), libc::SIGTERM);
        child.wait().is_ok_and(|status| status.success())
    }

    /// Starts the process again with the same arguments and waits for it.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_serving(Duration::from_secs(30)).await;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).unwrap();
    // SAFETY: kill(2) with a pid of a child this test started.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal})");
}

/// Forwards loopback TCP to `upstream` until cut (connections dropped, new
/// ones refused) or held back (bytes stop flowing, connections stay open).
pub struct Proxy {
    /// The proxy's port.
    pub port: u16,
    open: Arc<AtomicBool>,
    flowing: watch::Sender<bool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy in front of `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let (flowing, _) = watch::channel(true);
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let open = Arc::clone(&open);
            let connections = Arc::clone(&connections);
            let flowing = flowing.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the far side is "down"
                    }
                    let upstream = upstream.clone();
                    let flowing = flowing.subscribe();
                    connections.lock().await.push(tokio::spawn(async move {
                        if let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await {
                            inbound.set_nodelay(true).ok();
                            outbound.set_nodelay(true).ok();
                            let (ri, wi) = inbound.into_split();
                            let (ro, wo) = outbound.into_split();
                            tokio::join!(pump(ri, wo, flowing.clone()), pump(ro, wi, flowing));
                        }
                    }));
                }
            }
        });
        Self {
            port,
            open,
            flowing,
            connections,
            accept,
        }
    }

    /// The `host:port` to connect to instead of the upstream.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub async fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().await.drain(..) {
            connection.abort();
        }
    }

    /// Accepts and forwards again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.flowing.send_replace(true);
    }

    /// Stops forwarding bytes (in both directions) without closing anything.
    pub fn hold(&self) {
        self.flowing.send_replace(false);
    }

    /// Forwards what was held back, and everything after it.
    #[allow(dead_code)] // for replication held back under a failover
    pub fn release(&self) {
        self.flowing.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut connections) = self.connections.try_lock() {
            for connection in connections.drain(..) {
                connection.abort();
            }
        }
    }
}

/// Copies `from` to `to` while `flowing` says so.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if flowing.wait_for(|flowing| *flowing).await.is_err() {
            break;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    to.shutdown().await.ok();
}
