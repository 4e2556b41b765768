//! A real Redis Sentinel failover to a replica that lagged: a primary (P),
//! a replica (R) whose replication link runs through a proxy the test holds
//! back, and one Sentinel (quorum 1) that promotes R when P is killed.
//! Roster finds the primary through the Sentinel (a `redis-sentinel://`
//! URL). The writes acknowledged while replication was held back reached P
//! only, so R holds cached users they made stale; after the failover no read
//! may serve them, and Roster must use the promoted R (not only the
//! database) again. Also the history checker across the same failover, with
//! two Roster processes.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use prost::Message;
use roster::{cache::Keys, domain::UserName, proto::roster::v1 as pb};
use tempfile::TempDir;
use tonic::Code;

use crate::{
    helpers::{PASSWORD, RedisServer, free_port, spawn_with, test_config},
    history::{self, Workload},
    rig::{Proxy, ServerProcess},
};

/// The name the Sentinel monitors the primary under.
const SERVICE: &str = "mymaster";
/// Sentinel's down-after-milliseconds: how long P must be silent.
const DOWN_AFTER_MS: u64 = 500;
/// The server's default staleness bound.
const BOUND: Duration = Duration::from_secs(1);

/// A redis-server (the replica, or the Sentinel) run from a config file in
/// its own temp dir, killed on drop.
struct Daemon {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl Daemon {
    /// Starts `redis-server` with `config` (plus port, bind and dir) and
    /// waits until it accepts connections.
    fn start(config: &str, sentinel: bool) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis.conf");
        std::fs::write(
            &file,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n{config}",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut command = Command::new("redis-server");
        command.arg(&file);
        if sentinel {
            command.arg("--sentinel");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed to run the tests (see README)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A RESP reply, as far as these tests read them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    Error(String),
    Array(Vec<Reply>),
}

impl Reply {
    fn text(&self) -> String {
        match self {
            Reply::Bytes(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Reply::Int(n) => n.to_string(),
            other => format!("{other:?}"),
        }
    }

    /// A flat field/value array (what SENTINEL REPLICAS lists per replica)
    /// as pairs.
    fn fields(&self) -> Vec<(String, String)> {
        match self {
            Reply::Array(items) => items
                .chunks(2)
                .filter_map(|pair| match pair {
                    [field, value] => Some((field.text(), value.text())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    let number = || -> std::io::Result<i64> {
        rest.parse()
            .map_err(|_| std::io::Error::other(format!("bad reply line {line:?}")))
    };
    Ok(match kind {
        "+" => Reply::Bytes(rest.as_bytes().to_vec()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Nil,
            Ok(len) => {
                let mut bytes = vec![0; len + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(len);
                Reply::Bytes(bytes)
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Nil,
            Ok(len) => Reply::Array(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<Result<_, _>>()?,
            ),
        },
        _ => return Err(std::io::Error::other(format!("bad reply line {line:?}"))),
    })
}

fn encode(args: &[String]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n{arg}\r\n", arg.len()).bytes());
    }
    out
}

/// One command to the redis-server (or Sentinel) on `port`, on a new
/// connection, off the async runtime. `Err` when it cannot be reached.
async fn call(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(&encode(&args))?;
        read_reply(&mut BufReader::new(stream))
    })
    .await
    .unwrap()
}

/// Watches one redis-server with MONITOR and notes, in order, when Roster
/// read a cached user from it (a plain GET of a user key: Roster sends one
/// only through an open freshness gate) and when it deleted one (DEL).
/// Reconnects when dropped (the Sentinel kills normal clients, MONITOR
/// included, when it promotes a replica).
struct Monitor {
    events: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    fn start(port: u16) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, watching) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let events = Arc::clone(&events);
            let stop = Arc::clone(&stop);
            move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
                        watch(stream, &events, &stop, &ready);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        watching
            .recv_timeout(Duration::from_secs(5))
            .expect("MONITOR started");
        Self {
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// When Roster first read a cached user.
    fn first_cached_read(&self) -> Option<Instant> {
        self.first("\"get\" \"roster:v1:user:")
    }

    /// When Roster first deleted the cached `key`.
    fn deleted(&self, key: &str) -> Option<Instant> {
        self.first(&format!("\"del\" \"{key}\""))
    }

    fn first(&self, command: &str) -> Option<Instant> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .find(|(_, line)| line.contains(command))
            .map(|(at, _)| *at)
    }
}

/// Reads one MONITOR connection until it closes or `stop` is set.
fn watch(
    mut stream: TcpStream,
    events: &Mutex<Vec<(Instant, String)>>,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<()>,
) {
    let started = stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .and_then(|()| stream.write_all(&encode(&["MONITOR".into()])));
    if started.is_err() {
        return;
    }
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with(b"\n") => {
                let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
                if text.starts_with("+ok") {
                    ready.send(()).ok();
                } else if (text.contains("\"get\" \"roster:v1:user:")
                    || text.contains("\"del\" \"roster:v1:user:"))
                    && !text.contains(" lua]")
                {
                    events.lock().unwrap().push((Instant::now(), text));
                }
                line.clear();
            }
            // A partial line, or a read timeout: keep reading.
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// The replica and the Sentinel around a primary, with the replication link
/// through a proxy.
struct Failover {
    primary: u16,
    proxy: Proxy,
    replica: Daemon,
    sentinel: Daemon,
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

impl Failover {
    /// Starts R (replicating `primary` through a proxy) and a Sentinel that
    /// monitors `primary`, and waits until the Sentinel knows R as a healthy
    /// replica it may promote.
    async fn start(primary: &RedisServer) -> Self {
        let primary_port = port_of(&primary.addr());
        let proxy = Proxy::start(primary.addr()).await;
        // R reports its own port to P (REPLCONF listening-port) and P sees it
        // come from 127.0.0.1, so P's INFO names R by its real address, not
        // the proxy's; the announce setting only makes that explicit.
        let replica = Daemon::start(
            &format!(
                "save \"\"\nappendonly no\nreplicaof 127.0.0.1 {}\nreplica-announce-ip 127.0.0.1\n",
                proxy.port
            ),
            false,
        );
        let linked = crate::helpers::eventually(Duration::from_secs(10), || async {
            call(replica.port, &["INFO", "replication"])
                .await
                .is_ok_and(|info| info.text().contains("master_link_status:up"))
        })
        .await;
        assert!(linked, "the replica did not sync with the primary");
        // failover-timeout stays long: after that long, Sentinel "fixes" a
        // replica whose master address (here the proxy) differs from the
        // primary's, and would re-point R at P directly, around the proxy.
        let sentinel = Daemon::start(
            &format!(
                "sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {SERVICE} 60000\n"
            ),
            true,
        );
        let failover = Self {
            primary: primary_port,
            proxy,
            replica,
            sentinel,
        };
        let known = crate::helpers::eventually(Duration::from_secs(10), || async {
            let Ok(Reply::Array(replicas)) =
                call(failover.sentinel.port, &["SENTINEL", "REPLICAS", SERVICE]).await
            else {
                return false;
            };
            replicas.iter().any(|replica| {
                let fields = replica.fields();
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(f, _)| f == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                field("ip") == "127.0.0.1"
                    && field("port") == failover.replica.port.to_string()
                    && field("flags") == "slave"
                    && field("master-link-status") == "ok"
                    && !field("runid").is_empty()
            })
        })
        .await;
        assert!(known, "the Sentinel did not discover the replica");
        failover
    }

    /// The URL Roster uses: the Sentinel, which names the primary.
    fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SERVICE}",
            self.sentinel.port
        )
    }

    /// Waits until R has everything P has (WAIT 1 on P).
    async fn replicated(&self) {
        let acked = call(self.primary, &["WAIT", "1", "5000"]).await.unwrap();
        assert_eq!(acked, Reply::Int(1), "the replica acknowledged P's writes");
    }

    /// The port the Sentinel names as the primary now.
    async fn primary_named(&self) -> Option<u16> {
        match call(
            self.sentinel.port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE],
        )
        .await
        {
            Ok(Reply::Array(addr)) => addr.get(1).and_then(|port| port.text().parse().ok()),
            _ => None,
        }
    }

    /// Whether the Sentinel has promoted R (and R says it is a primary).
    async fn promoted(&self) -> bool {
        if self.primary_named().await != Some(self.replica.port) {
            return false;
        }
        match call(self.replica.port, &["ROLE"]).await {
            Ok(Reply::Array(role)) => role.first().map(Reply::text).as_deref() == Some("master"),
            _ => false,
        }
    }

    /// A key's value on `port` (P or R), `None` when missing.
    async fn get(port: u16, key: &str) -> Option<Vec<u8>> {
        match call(port, &["GET", key]).await.unwrap() {
            Reply::Bytes(bytes) => Some(bytes),
            _ => None,
        }
    }
}

fn key(name: &str) -> String {
    Keys::default().user(UserName::parse(name).unwrap().key())
}

const DELIVERED: &str = "roster:v1:outbox:{lb}:delivered";

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(2));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sentinel_failover_to_a_replica_that_lagged_no_read_serves_a_lost_invalidation() {
    let primary = RedisServer::start();
    let failover = Failover::start(&primary).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("roster.db"), &failover.url());
    // A staleness bound longer than the failover takes: the gate then stays
    // open through the outage by time alone, and only the reconnect to R
    // closes it (`Redis::close_on_reconnect`). With the default 1 s bound it
    // would have expired by itself before R is promoted.
    config.cache_staleness_bound = Duration::from_secs(30);
    // The app owns P (its Redis, as Sentinel names it); the test kills it.
    let mut app = spawn_with(config, dir, primary).await;

    let (deleted, changed, kept) = ("failover-deleted", "failover-changed", "failover-kept");
    let mut users = Vec::new();
    for name in [deleted, changed, kept] {
        app.create_user(name).await;
        users.push(app.get_user(name).await.unwrap());
    }
    // Roster reached P through the Sentinel: the users are cached there,
    // and, once replicated, on R.
    for name in [deleted, changed, kept] {
        let cached = crate::helpers::eventually(Duration::from_secs(5), || async {
            app.get_user(name).await.unwrap();
            Failover::get(failover.primary, &key(name)).await.is_some()
        })
        .await;
        assert!(cached, "{name} is cached in P");
    }
    failover.replicated().await;
    for name in [deleted, changed, kept] {
        assert!(
            Failover::get(failover.replica.port, &key(name))
                .await
                .is_some(),
            "{name} is cached in R"
        );
    }

    // Replication held back: what Roster now does to P never reaches R.
    failover.proxy.hold();
    app.delete_user(deleted).await;
    let new = app
        .client
        .clone()
        .change_password(pb::ChangePasswordRequest {
            name: changed.into(),
            current_password: PASSWORD.into(),
            new_password: "a brand new passphrase".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let old = &users[1];
    assert_ne!(new.update_time, old.update_time);
    for name in [deleted, changed] {
        assert!(
            Failover::get(failover.primary, &key(name)).await.is_none(),
            "the writer's invalidation of {name} reached P"
        );
    }
    let stale_in_r = Failover::get(failover.replica.port, &key(changed))
        .await
        .expect("R still caches the changed user");
    assert_eq!(
        pb::User::decode(stale_in_r.as_slice()).unwrap().update_time,
        old.update_time,
        "R holds the old update_time"
    );
    assert!(
        Failover::get(failover.replica.port, &key(deleted))
            .await
            .is_some(),
        "R still caches the deleted user"
    );
    let delivered = |port| async move {
        Failover::get(port, DELIVERED)
            .await
            .and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok())
    };
    let (in_p, in_r) = (
        delivered(failover.primary).await,
        delivered(failover.replica.port).await,
    );
    assert!(
        in_r.is_some() && in_r < in_p,
        "R's delivered {in_r:?} lags P's {in_p:?}"
    );

    // Kill P; the Sentinel promotes R, which lacks both invalidations.
    let monitor = Monitor::start(failover.replica.port);
    let killed = Instant::now();
    app.redis.stop();

    let mut first_ok: Option<Duration> = None;
    let mut promoted: Option<Duration> = None;
    let (mut reads, mut failed, mut slowest) = (0usize, Vec::new(), Duration::ZERO);
    let mut stale = Vec::new();
    loop {
        for (name, expected) in [
            (deleted, None),
            (changed, Some(&new)),
            (kept, Some(&users[2])),
        ] {
            let began = Instant::now();
            let answer = app
                .client
                .clone()
                .get_user(timed(pb::GetUserRequest { name: name.into() }))
                .await
                .map(|r| r.into_inner().user.unwrap());
            slowest = slowest.max(began.elapsed());
            reads += 1;
            let at = killed.elapsed();
            match (answer, expected) {
                (Err(status), None) if status.code() == Code::NotFound => {}
                (Ok(user), Some(expected)) if &user == expected => {}
                (Err(status), _) if status.code() != Code::NotFound => {
                    failed.push(format!("{name} at {at:?}: {status}"));
                    continue;
                }
                (answer, _) => stale.push(format!("{name} at {at:?}: {answer:?}")),
            }
            first_ok.get_or_insert(at);
        }
        if promoted.is_none() && failover.promoted().await {
            promoted = Some(killed.elapsed());
        }
        // Go on reading for 2 s after Roster serves from R's cache again.
        if monitor
            .first_cached_read()
            .is_some_and(|at| at.elapsed() > Duration::from_secs(2))
        {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "Roster never served cached answers from the promoted replica \
             (promoted after {promoted:?}; stale reads {stale:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cache_back = monitor.first_cached_read().unwrap();
    let redelivered = [deleted, changed]
        .map(|name| monitor.deleted(&key(name)))
        .into_iter()
        .max()
        .flatten();
    eprintln!(
        "sentinel failover (P killed, R promoted lacking 2 invalidations): first successful \
         read {first_ok:?} after the kill; Sentinel promoted R after {promoted:?}; Roster \
         deleted R's stale entries after {:?} and served cached answers from R again after \
         {:?}; {reads} reads, {} failed, slowest {slowest:?}; stale reads: {}",
        redelivered.map(|at| at.duration_since(killed)),
        cache_back.duration_since(killed),
        failed.len(),
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "stale reads after the failover: {stale:#?}"
    );
    assert!(failed.is_empty(), "failed reads: {failed:#?}");
    assert!(
        redelivered.is_some_and(|at| at <= cache_back),
        "Roster deletes the entries R lacks invalidations for before it serves R's cache \
         (deleted at {redelivered:?}, first cached read at {cache_back:?})"
    );
    // R now holds no stale entry (the changed user was read again, and
    // cached afresh).
    assert_eq!(
        Failover::get(failover.replica.port, &key(deleted)).await,
        None
    );
    if let Some(entry) = Failover::get(failover.replica.port, &key(changed)).await {
        assert_eq!(pb::User::decode(entry.as_slice()).unwrap(), new);
    }
    drop(monitor);
    drop(app.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_across_a_sentinel_failover_to_a_replica_that_lagged_is_clean() {
    let mut primary = RedisServer::start();
    let failover = Failover::start(&primary).await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("roster.db").display());
    let a = ServerProcess::start(&db, &failover.url(), &[]).await;
    let b = ServerProcess::start(&db, &failover.url(), &[]).await;
    let monitor = Monitor::start(failover.replica.port);
    let started = Instant::now();
    let load = tokio::spawn({
        let replicas = [a.channel(), b.channel()];
        let workload = Workload {
            prefix: "sentinel".into(),
            duration: Duration::from_secs(9),
            call_timeout: Duration::from_secs(2),
            settle: Duration::from_secs(10),
            ..Workload::default()
        };
        async move { history::run(&workload, &replicas).await }
    });
    // Users cached and replicated, then replication held back while the
    // clients go on writing, then P killed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    failover.replicated().await;
    failover.proxy.hold();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    primary.stop();
    let promoted =
        crate::helpers::eventually(Duration::from_secs(10), || failover.promoted()).await;
    assert!(promoted, "the Sentinel promoted the replica");
    let promoted = killed.elapsed();
    let history = load.await.unwrap();
    let ended = started + Duration::from_secs(9);

    // Checked against the staleness bound, not strictly: the two replicas
    // reconnect at different moments (each on its own reconnect backoff),
    // and what the one still cut off acknowledges meanwhile reaches R by
    // the other's delivery rounds, within the bound (as in `partition`).
    let database = sea_orm::Database::connect(&db).await.unwrap();
    let verdict = history.check_within(&database, BOUND).await;
    verdict.assert_clean("sentinel failover to a replica that lagged");
    assert!(history.forbidden.is_empty(), "{:?}", history.codes);
    let log = a.log() + &b.log();
    assert!(
        log.contains("redis went back in time"),
        "the promoted replica's older delivered mark is noticed"
    );
    let cache_back = monitor
        .first_cached_read()
        .filter(|at| *at < ended)
        .map(|at| at.duration_since(killed));
    assert!(
        cache_back.is_some(),
        "the replicas served cached answers from the promoted replica before the run ended"
    );
    eprintln!(
        "sentinel failover under load, two replicas: R promoted {promoted:?} after the kill, \
         cached answers from R again after {cache_back:?}; {} acknowledged, {} unknown, {} reads, \
         lost 0, stale (beyond {BOUND:?}) 0, longest call {:?}",
        verdict.acknowledged, verdict.unknown, verdict.reads, verdict.longest
    );
}
