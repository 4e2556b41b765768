//! The board in Redis: a sorted set of ranked users plus each user's stats,
//! kept exact by forward-only Lua updates and trusted only while it is known
//! complete; and this process's copy of it, which answers reads once a sync
//! with Redis made after the read arrived shows it is current. Shares the
//! user cache's connection and its fail-open rules.
//!
//! Layout (one hash tag, so a Redis Cluster keeps every key in one slot):
//! - `roster:v1:board:{lb}:set`: ZSET, score = best score (integers up to
//!   2^53 - 1 are exact doubles), member = 16-digit `(2^53 - 1) - seq`, then the
//!   user id, then the name. Equal scores sort by member, so under ZREVRANGE and
//!   ZREVRANK the user who reached the score first (lower seq) ranks higher.
//! - `roster:v1:board:{lb}:members`: HASH name key -> current member.
//! - `roster:v1:board:{lb}:stats`: HASH name key -> 20-digit games_played,
//!   then the encoded `roster.v1.UserStats` (without rank).
//! - `roster:v1:board:{lb}:ready`: the token of the rebuild that loaded the
//!   whole board (the board's generation); present only once it has. Every
//!   read checks it atomically with the data it reads.
//! - `roster:v1:board:{lb}:building`: the token of the rebuild in progress; a
//!   rebuild marks the set ready only if its token is still there, so a flush,
//!   a restart or another rebuild meanwhile makes it start over.
//! - `roster:v1:board:{lb}:version` and `roster:v1:board:{lb}:log`: a counter
//!   and a STREAM of every live change to the board (entry `N-0` is change N:
//!   fields k, m, s, v as in an update, or only k for a removal), trimmed to
//!   about 10,000 entries. Each replica's copy follows it.
//!
//! Redis must not evict these keys (use `noeviction` or a `volatile-*` policy:
//! they have no TTL); a lost key is only noticed through the ready marker.
//!
//! Exactness: updates can reach Redis out of order, so the update script only
//! moves a user's entry forward (higher seq) and only replaces stats with a
//! higher games_played; applying the same updates in any order gives the same
//! set. When an update cannot be applied (Redis down, timeout, or the ready
//! marker missing) this process stops trusting the set and reads the database
//! until a rebuild has finished; every reconnect also triggers a rebuild.
//!
//! The copy (see `board/mirror.rs`): loaded by scanning the set after noting
//! the generation and log position, then kept current from the log. A read
//! uses it only when a sync that began after the read arrived found Redis at
//! the copy's generation and at most at its log position: every game
//! acknowledged before the read (by any replica) reached Redis before that
//! sync, so the copy reflects it. Concurrent reads share one sync (one MGET
//! of the generation and log position for all of them), which is what makes
//! the copy cheap. Anything
//! else (a new generation, a gap in the log, Redis slow or down) sends the
//! read to the Redis scripts, and from there to the database.
//!
//! Limitation (several replicas): trust is per process. If replica A fails to
//! apply an update while replica B still reaches Redis, B keeps reading the set
//! until A's rebuild deletes the ready marker. Concurrent rebuilds by two
//! replicas are not coordinated either (a `SET NX` lease would be needed), so
//! for exact reads across replicas run one writer replica or add that lease.

mod mirror;

use std::{
    sync::{
        Arc, Mutex, OnceLock, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use fred::{
    prelude::{ClientLike, Error as RedisError, EventInterface, KeysInterface},
    types::{Key, Value},
};
use prost::{Message, bytes::Bytes};
use tokio::sync::Notify;
use uuid::Uuid;

use self::mirror::{Entry, Mirror};
use super::{Redis, Script};
use crate::{
    domain::{BoardEntry, BoardPage, BoardPosition, NameKey, PageSize, Score, Stats},
    proto::{roster::v1 as pb, stats_from_wire, stats_to_wire},
};

const SET_KEY: &str = "roster:v1:board:{lb}:set";
const MEMBERS_KEY: &str = "roster:v1:board:{lb}:members";
const STATS_KEY: &str = "roster:v1:board:{lb}:stats";
/// Present while the set holds the whole board (see the module docs).
pub const READY_KEY: &str = "roster:v1:board:{lb}:ready";
const BUILDING_KEY: &str = "roster:v1:board:{lb}:building";
const VERSION_KEY: &str = "roster:v1:board:{lb}:version";
const LOG_KEY: &str = "roster:v1:board:{lb}:log";

/// The largest tie-break number the member encoding holds.
const MAX_SEQ: i64 = Score::MAX;
const SEQ_DIGITS: usize = 16;
const UUID_CHARS: usize = 36;

/// Changes the log keeps (at least; Redis trims in whole nodes). A copy
/// that falls further behind than this is loaded again.
const LOG_LENGTH: &str = "10000";
/// Log entries read per sync script call.
const SYNC_BATCH: u64 = 1_000;
/// Sync script calls one sync may make to catch up before giving up.
const SYNC_CALLS: usize = 4;
/// Users read per scan script call while loading the copy.
const SCAN_BATCH: u64 = 1_000;
/// How often the copy syncs while no read asks it to, so that it stays
/// within the log and notices a new generation early.
const IDLE_SYNC: Duration = Duration::from_millis(100);

/// Applies entries (4 arguments each after the first two: name key, member,
/// score, stats value) forward-only. ARGV[1] = "1" logs every change (live
/// updates; a rebuild's load is not logged, copies load the finished set).
/// An entry for a user whose name holds a tombstone with the same id (a
/// deleted user's late update) changes nothing. Returns {ready, 0-based
/// rank of the last entry's member}, the rank -2 when that entry met a
/// tombstone.
static UPDATE: Script = Script::new(
    r"
local log = ARGV[1] == '1'
for i = 3, #ARGV, 4 do
  local key, member, score, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local old = redis.call('HGET', KEYS[2], key)
  local tombstone = old and string.sub(old, 1, 1) == '~'
  if not (tombstone and string.sub(old, 2) == string.sub(member, 17, 52)) then
    if tombstone then old = nil end
    local changed = false
    if (not old) or tonumber(string.sub(old, 1, 16)) > tonumber(string.sub(member, 1, 16)) then
      if old then redis.call('ZREM', KEYS[1], old) end
      redis.call('ZADD', KEYS[1], score, member)
      redis.call('HSET', KEYS[2], key, member)
      changed = true
    end
    local current = redis.call('HGET', KEYS[3], key)
    if (not current) or tonumber(string.sub(current, 1, 20)) < tonumber(string.sub(value, 1, 20)) then
      redis.call('HSET', KEYS[3], key, value)
      changed = true
    end
    if log and changed then
      local version = redis.call('INCR', KEYS[5])
      redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[2], string.format('%d-0', version),
                 'k', key, 'm', member, 's', score, 'v', value)
    end
  end
end
local ready = redis.call('EXISTS', KEYS[4])
local rank = -1
if #ARGV >= 6 then
  local member = redis.call('HGET', KEYS[2], ARGV[#ARGV - 3])
  if member and string.sub(member, 1, 1) == '~' then
    rank = -2
  elseif member then
    rank = redis.call('ZREVRANK', KEYS[1], member) or -1
  end
end
return {ready, rank}
",
);

/// {0} when not ready; {1} when the user has no stats; {1, value, rank}.
static STATS: Script = Script::new(
    r"
if redis.call('EXISTS', KEYS[4]) == 0 then return {0} end
local value = redis.call('HGET', KEYS[3], ARGV[1])
if not value then return {1} end
local member = redis.call('HGET', KEYS[2], ARGV[1])
local rank = member and redis.call('ZREVRANK', KEYS[1], member)
if not rank then return {0} end
return {1, value, rank}
",
);

/// {0} when not ready; {1, total, "member\nscore\nmember\nscore..."}. The
/// range comes back as one string: one reply frame instead of two per entry,
/// which is cheaper for Redis to build and for us to parse. Members cannot
/// hold a newline (names refuse control characters).
static PAGE: Script = Script::new(
    r"
if redis.call('EXISTS', KEYS[2]) == 0 then return {0} end
return {1, redis.call('ZCARD', KEYS[1]),
        table.concat(redis.call('ZREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES'), '\n')}
",
);

/// {0} when not ready; {1, -1} when the user is unranked;
/// {1, start, total, "member\nscore\n..."} (see PAGE). The window rule is
/// `domain::window_start`'s: centred, then clamped to the board.
static AROUND: Script = Script::new(
    r"
if redis.call('EXISTS', KEYS[3]) == 0 then return {0} end
local member = redis.call('HGET', KEYS[2], ARGV[1])
if (not member) or string.sub(member, 1, 1) == '~' then return {1, -1} end
local index = redis.call('ZREVRANK', KEYS[1], member)
if not index then return {0} end
local total = redis.call('ZCARD', KEYS[1])
local size = tonumber(ARGV[2])
local start = index - math.floor((size - 1) / 2)
if start > total - size then start = total - size end
if start < 0 then start = 0 end
return {1, start, total,
        table.concat(redis.call('ZREVRANGE', KEYS[1], start, start + size - 1, 'WITHSCORES'), '\n')}
",
);

/// Marks the set ready, with the rebuild's token as its generation, if the
/// rebuild token in KEYS[2] is still ARGV[1].
static FINISH: Script = Script::new(
    r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1])
return 1
",
);

/// Removes one user (name key in ARGV[1]) from the set and both hashes, and
/// logs the removal (ARGV[3]: log length). ARGV[2], when not empty, is the
/// tombstone left under the name: `~` and the deleted user's id, so that a
/// game of theirs that reaches Redis after the removal cannot bring them
/// back (see UPDATE).
static REMOVE: Script = Script::new(
    r"
local member = redis.call('HGET', KEYS[2], ARGV[1])
local ranked = member and string.sub(member, 1, 1) ~= '~'
if ranked then redis.call('ZREM', KEYS[1], member) end
local removed = redis.call('HDEL', KEYS[3], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
elseif ranked then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
if ranked or removed > 0 then
  local version = redis.call('INCR', KEYS[5])
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], string.format('%d-0', version), 'k', ARGV[1])
end
return 1
",
);

/// Where a copy stands against Redis. ARGV: the copy's generation, its log
/// position, the first log id it lacks, and how many entries to return.
/// {0} when not ready; {1} when the generation is not the copy's; {2,
/// version} when the copy is current; {2, version, entries} with the log
/// entries after the copy's position otherwise.
static SYNC: Script = Script::new(
    r"
local generation = redis.call('GET', KEYS[1])
if not generation then return {0} end
if generation ~= ARGV[1] then return {1} end
local version = redis.call('GET', KEYS[2]) or '0'
if tonumber(version) <= tonumber(ARGV[2]) then return {2, version} end
return {2, version, redis.call('XRANGE', KEYS[3], ARGV[3], '+', 'COUNT', ARGV[4])}
",
);

/// One step of a scan of the whole board, for loading a copy: ARGV =
/// {HSCAN cursor, count}; returns {next cursor, key, member, score, value, ...}.
static SCAN: Script = Script::new(
    r"
local reply = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = reply[2]
local out = {reply[1]}
for i = 1, #fields, 2 do
  local key, member = fields[i], fields[i + 1]
  local score = redis.call('ZSCORE', KEYS[2], member)
  local value = redis.call('HGET', KEYS[3], key)
  if score and value then
    out[#out + 1] = key
    out[#out + 1] = member
    out[#out + 1] = score
    out[#out + 1] = value
  end
end
return out
",
);

/// A user's stats as the board cache knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedStats {
    /// The set is not trusted (or Redis failed): ask the database.
    Unknown,
    /// The set is complete and the user is not on it: no games yet (or no
    /// such user).
    Unranked,
    /// The stats and the 1-based rank.
    Ranked(Stats, u64),
}

/// The window around a user as the board cache knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedWindow {
    /// The set is not trusted (or Redis failed): ask the database.
    Unknown,
    /// The set is complete and the user is not on it.
    Unranked,
    /// The window.
    Window(BoardPage),
}

/// A rebuild in progress: how many times trust had been withdrawn when it
/// began, and its token (the board's generation once it finishes).
#[derive(Debug)]
pub struct Rebuild {
    withdrawals: u64,
    token: String,
}

/// Trust in the set, as one atomic word: bit 0 = trusted, the rest = how many
/// times trust was withdrawn. A rebuild may restore trust only if nothing
/// withdrew it since the rebuild began.
struct Trust {
    word: AtomicU64,
    rebuild: Notify,
}

/// One sync of the copy with Redis, and the reads that wait for it.
#[derive(Default)]
struct Round {
    /// Where Redis stood (generation, log position) if the copy covers it;
    /// set once the sync is over (`None` inside when it failed).
    found: OnceLock<Option<(Arc<str>, u64)>>,
    done: Notify,
}

impl Round {
    fn finish(&self, found: Option<(Arc<str>, u64)>) {
        // Set only once: a round finished by its sync keeps its answer.
        let _ = self.found.set(found);
        self.done.notify_waiters();
    }
}

/// Finishes a round (with nothing found) if its sync is dropped midway, so
/// no read waits for it forever.
struct Finishing(Arc<Round>);

impl Drop for Finishing {
    fn drop(&mut self) {
        self.0.finish(None);
    }
}

/// Finishes the next round (with nothing found) when the sync loop stops:
/// reads that join it from then on go to Redis at once.
struct Closing<'a>(&'a Copy);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.next_round().finish(None);
    }
}

/// This process's copy of the board and what keeps it current.
struct Copy {
    board: RwLock<Option<Mirror>>,
    /// The round that begins next. A read joins it, so the sync that
    /// answers the read begins after the read arrived; each round's reads
    /// are woken once, when it is over.
    next: Mutex<Arc<Round>>,
    /// A read is waiting for a sync: the flag says whether the sync loop was
    /// already told, so a batch of reads wakes it once.
    wanted: Notify,
    wanted_flag: AtomicBool,
    /// The copy must be loaded again (new generation, gap in the log).
    reload: Notify,
    reloading: AtomicBool,
}

impl Copy {
    fn new() -> Self {
        Self {
            board: RwLock::new(None),
            next: Mutex::new(Arc::default()),
            wanted: Notify::new(),
            wanted_flag: AtomicBool::new(false),
            reload: Notify::new(),
            reloading: AtomicBool::new(false),
        }
    }

    fn next_round(&self) -> std::sync::MutexGuard<'_, Arc<Round>> {
        self.next.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Mirror>> {
        self.board.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Mirror>> {
        self.board.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the load loop for a fresh copy, once until it has tried.
    fn request_reload(&self) {
        if !self.reloading.swap(true, Ordering::AcqRel) {
            self.reload.notify_one();
        }
    }
}

/// The board cache. Cheap to clone; never trusted when Redis is disabled.
#[derive(Clone)]
pub struct BoardCache {
    redis: Option<Redis>,
    trust: Arc<Trust>,
    copy: Arc<Copy>,
    copy_enabled: bool,
}

impl BoardCache {
    /// The board cache over the shared Redis connection (if any), with this
    /// process's copy of the board when `copy_enabled`. Every (re)connection
    /// withdraws trust and asks for a rebuild: Redis may have lost or kept
    /// stale data while we were away.
    pub fn new(redis: Option<Redis>, copy_enabled: bool) -> Self {
        let board = Self {
            redis,
            trust: Arc::new(Trust {
                word: AtomicU64::new(0),
                rebuild: Notify::new(),
            }),
            copy: Arc::new(Copy::new()),
            copy_enabled,
        };
        if let Some(client) = board.redis.as_ref().map(Redis::client) {
            let trust = Arc::clone(&board.trust);
            client.on_reconnect(move |_| {
                withdraw(&trust);
                async { Ok(()) }
            });
        }
        board
    }

    /// Whether Redis is configured at all.
    pub fn is_enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// Whether reads may use the set now.
    pub fn is_trusted(&self) -> bool {
        self.trust.word.load(Ordering::Acquire) & 1 == 1
    }

    /// Stops trusting the set and asks for a rebuild.
    pub fn distrust(&self) {
        withdraw(&self.trust);
    }

    /// How many ranked users this process's copy of the board holds, once
    /// one is loaded (whether it is current is checked on every read).
    pub fn copy_len(&self) -> Option<u64> {
        self.copy.read().as_ref().map(Mirror::len)
    }

    /// Waits until a rebuild is asked for.
    pub async fn rebuild_requested(&self) {
        self.trust.rebuild.notified().await;
    }

    /// Applies a committed game: moves the user's entry forward if `position`
    /// is newer and stores `stats` if newer. Returns the user's 1-based rank
    /// when the set is trusted and the update landed; `None` when the user
    /// was deleted meanwhile; otherwise withdraws trust (the set may now miss
    /// this update) and returns `None`.
    pub async fn record(
        &self,
        key: &NameKey,
        stats: &Stats,
        position: BoardPosition,
    ) -> Option<u64> {
        let Some(client) = self.connected() else {
            if self.is_enabled() {
                self.distrust();
            }
            return None;
        };
        let mut args = update_header(true);
        args.extend(entry_args(key.as_str(), stats, position));
        let result: Result<Value, _> = UPDATE.eval(client, keys(), args).await;
        match result.map(Value::into_array) {
            Ok(reply) => {
                let ready = reply.first().and_then(Value::as_i64) == Some(1);
                let index = reply.get(1).and_then(Value::as_i64);
                if index == Some(-2) {
                    // The user was deleted after this game committed: the
                    // tombstone kept the game off the board, which is right.
                    return None;
                }
                match index.and_then(|i| u64::try_from(i).ok()) {
                    Some(index) if ready => self.is_trusted().then_some(index + 1),
                    _ => {
                        self.distrust();
                        None
                    }
                }
            }
            Err(error) => {
                self.warn(
                    "redis board update failed; reading the board from the database",
                    Some(&error),
                );
                self.distrust();
                None
            }
        }
    }

    /// The user's stats and rank from the set, when it is trusted.
    pub async fn stats(&self, key: &NameKey) -> CachedStats {
        let Some(client) = self.trusted_client() else {
            return CachedStats::Unknown;
        };
        if let Some(found) = self
            .read_copy(Some(key), |copy| copy.stats(key.as_str()))
            .await
        {
            return match found {
                Some((stats, rank)) => CachedStats::Ranked(stats, rank),
                None => CachedStats::Unranked,
            };
        }
        let reply = match self
            .eval_read(client, &STATS, keys(), vec![key.as_str().into()])
            .await
        {
            Some(reply) => reply,
            None => return CachedStats::Unknown,
        };
        match reply.as_slice() {
            [ready] if ready.as_i64() == Some(1) => CachedStats::Unranked,
            [_, value, rank] => {
                let stats = value.as_bytes().and_then(decode_stats);
                let rank = rank.as_i64().and_then(|r| u64::try_from(r).ok());
                match stats.zip(rank) {
                    Some((stats, index)) => CachedStats::Ranked(stats, index + 1),
                    None => {
                        self.warn("undecodable board stats; reading the database", None);
                        CachedStats::Unknown
                    }
                }
            }
            _ => {
                self.distrust();
                CachedStats::Unknown
            }
        }
    }

    /// Up to `limit` entries from 0-based `offset`, when the set is trusted.
    pub async fn page(&self, offset: u64, limit: u64) -> Option<BoardPage> {
        let client = self.trusted_client()?;
        if let Some(page) = self.read_copy(None, |copy| copy.page(offset, limit)).await {
            return Some(page);
        }
        let stop = offset.saturating_add(limit).saturating_sub(1);
        let args = vec![offset.to_string().into(), stop.to_string().into()];
        let reply = self
            .eval_read(
                client,
                &PAGE,
                vec![Key::from(SET_KEY), Key::from(READY_KEY)],
                args,
            )
            .await?;
        match reply.as_slice() {
            [_, total, range] => {
                let total = total.as_i64().and_then(|t| u64::try_from(t).ok());
                let page = total.and_then(|total| page_of(offset, total, range));
                if page.is_none() {
                    self.distrust();
                }
                page
            }
            _ => {
                self.distrust();
                None
            }
        }
    }

    /// The `size`-entry window around the user, when the set is trusted.
    pub async fn around(&self, key: &NameKey, size: PageSize) -> CachedWindow {
        let Some(client) = self.trusted_client() else {
            return CachedWindow::Unknown;
        };
        if let Some(found) = self
            .read_copy(Some(key), |copy| copy.window(key.as_str(), size))
            .await
        {
            return match found {
                Some(page) => CachedWindow::Window(page),
                None => CachedWindow::Unranked,
            };
        }
        let keys = vec![
            Key::from(SET_KEY),
            Key::from(MEMBERS_KEY),
            Key::from(READY_KEY),
        ];
        let args = vec![key.as_str().into(), size.get().to_string().into()];
        let Some(reply) = self.eval_read(client, &AROUND, keys, args).await else {
            return CachedWindow::Unknown;
        };
        match reply.as_slice() {
            [_, unranked] if unranked.as_i64() == Some(-1) => CachedWindow::Unranked,
            [_, start, total, range] => {
                let start = start.as_i64().and_then(|s| u64::try_from(s).ok());
                let total = total.as_i64().and_then(|t| u64::try_from(t).ok());
                match start.zip(total).and_then(|(s, t)| page_of(s, t, range)) {
                    Some(page) => CachedWindow::Window(page),
                    None => {
                        self.distrust();
                        CachedWindow::Unknown
                    }
                }
            }
            _ => {
                self.distrust();
                CachedWindow::Unknown
            }
        }
    }

    /// Removes a user's entry and stats. With the id of a user just
    /// deleted, leaves a tombstone so that a late update of theirs cannot
    /// bring them back. Failures withdraw trust, as for any update.
    pub async fn remove(&self, key: &NameKey, deleted: Option<Uuid>) {
        let Some(client) = self.connected() else {
            if self.is_enabled() {
                self.distrust();
            }
            return;
        };
        let result: Result<Value, _> = REMOVE
            .eval(
                client,
                keys(),
                vec![
                    Value::from(key.as_str()),
                    Value::from(deleted.map(|id| format!("~{id}")).unwrap_or_default()),
                    Value::from(LOG_LENGTH),
                ],
            )
            .await;
        if let Err(error) = result {
            self.warn("redis board removal failed", Some(&error));
            self.distrust();
        }
    }

    /// Starts a rebuild: notes how often trust was withdrawn, empties the set (ready
    /// marker first) and records a fresh rebuild token. Pass the result to
    /// [`finish_rebuild`](Self::finish_rebuild).
    pub async fn begin_rebuild(&self) -> Result<Rebuild, RedisError> {
        let client = self.require_client()?;
        let withdrawals = self.trust.word.load(Ordering::Acquire) >> 1;
        let token = Uuid::now_v7().to_string();
        let _: i64 = client
            .del(vec![
                Key::from(READY_KEY),
                Key::from(SET_KEY),
                Key::from(MEMBERS_KEY),
                Key::from(STATS_KEY),
                Key::from(VERSION_KEY),
                Key::from(LOG_KEY),
            ])
            .await?;
        let _: () = client
            .set(BUILDING_KEY, token.as_str(), None, None, false)
            .await?;
        Ok(Rebuild { withdrawals, token })
    }

    /// Loads a batch of ranked users (forward-only, like live updates).
    pub async fn load<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, Stats, BoardPosition)>,
    ) -> Result<(), RedisError> {
        let client = self.require_client()?;
        let mut args = update_header(false);
        for (key, stats, position) in rows {
            args.extend(entry_args(key, &stats, position));
        }
        if args.len() == 2 {
            return Ok(());
        }
        let _: Value = UPDATE.eval(client, keys(), args).await?;
        Ok(())
    }

    /// Marks the set complete and trusts it again, unless Redis lost the
    /// rebuild (flush, restart, another rebuild) or trust was withdrawn since
    /// it began; then the caller must rebuild again. Returns whether the set
    /// is trusted now.
    pub async fn finish_rebuild(&self, rebuild: Rebuild) -> Result<bool, RedisError> {
        let client = self.require_client()?;
        let finished: i64 = FINISH
            .eval(
                client,
                vec![Key::from(READY_KEY), Key::from(BUILDING_KEY)],
                vec![Value::from(rebuild.token)],
            )
            .await?;
        if finished != 1 {
            return Ok(false);
        }
        let untrusted = rebuild.withdrawals << 1;
        Ok(self
            .trust
            .word
            .compare_exchange(
                untrusted,
                untrusted | 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok())
    }

    /// Runs `read` on this process's copy if a sync that began after this
    /// call shows the copy is current; `None` sends the caller to Redis.
    /// `key` is the user the read is about, if any (for test failpoints).
    async fn read_copy<R>(
        &self,
        key: Option<&NameKey>,
        read: impl FnOnce(&Mirror) -> R,
    ) -> Option<R> {
        let copy = &self.copy;
        if copy.read().is_none() {
            return None;
        }
        #[cfg(feature = "failpoints")]
        if let Some(key) = key
            && crate::failpoint::is_unguarded(key.as_str())
        {
            // Tests show what a read without its sync would return.
            let board = copy.read();
            return board.as_ref().map(read);
        }
        #[cfg(not(feature = "failpoints"))]
        let _ = key;
        let round = Arc::clone(&copy.next_round());
        if !copy.wanted_flag.swap(true, Ordering::SeqCst) {
            copy.wanted.notify_one();
        }
        let done = round.done.notified();
        tokio::pin!(done);
        // Registered before looking, so the wake-up cannot be missed.
        done.as_mut().enable();
        if round.found.get().is_none() {
            done.await;
        }
        let (generation, version) = round.found.get()?.clone()?;
        let answer = {
            let board = copy.read();
            let mirror = board.as_ref()?;
            mirror.covers(&generation, version).then(|| read(mirror))?
        };
        #[cfg(feature = "failpoints")]
        if let Some(key) = key {
            crate::failpoint::hit("board-copy-read", key.as_str()).await;
        }
        Some(answer)
    }

    /// Keeps this process's copy of the board loaded and current, for as
    /// long as it runs; reads use Redis itself while it is not running (and
    /// always, when the copy is switched off).
    pub async fn keep_copy(&self) {
        if self.is_enabled() && self.copy_enabled {
            tokio::join!(self.sync_loop(), self.load_loop());
        }
    }

    /// Syncs whenever a read asks (one sync answers every read that joined
    /// its round) and every [`IDLE_SYNC`] otherwise.
    async fn sync_loop(&self) {
        let _closing = Closing(&self.copy);
        loop {
            tokio::select! {
                () = self.copy.wanted.notified() => {}
                () = tokio::time::sleep(IDLE_SYNC) => {}
            }
            // Let the reads that are ready to run join the round first, so
            // that this sync answers as many of them as it can.
            tokio::task::yield_now().await;
            // Cleared before the round begins: a read that sets it again
            // joins the next round, and its notification asks for it.
            self.copy.wanted_flag.store(false, Ordering::SeqCst);
            let round = std::mem::take(&mut *self.copy.next_round());
            let finishing = Finishing(round);
            let found = self.sync().await;
            finishing.0.finish(found);
        }
    }

    /// Brings the copy up to Redis's log; returns where Redis stood if the
    /// copy now covers it.
    async fn sync(&self) -> Option<(Arc<str>, u64)> {
        // Quietly: the calls that fall back to Redis report its absence.
        let client = self.redis.as_ref().map(Redis::client)?;
        if !client.is_connected() {
            return None;
        }
        // The common case, the copy already current, costs one MGET: the
        // generation and log position are read together, and a rebuild
        // deletes both at once, so a matching generation means the version
        // is that generation's. Anything else goes through the script.
        let (generation, applied) = self.copy_position()?;
        match generation_and_version(client).await {
            Ok(Some((current, version))) if *current == *generation && version == applied => {
                return Some((generation, version));
            }
            Ok(_) => {}
            Err(error) => {
                self.warn("redis board sync failed; reading the set", Some(&error));
                return None;
            }
        }
        for _ in 0..SYNC_CALLS {
            let (generation, applied) = self.copy_position()?;
            let args = vec![
                Value::from(&*generation),
                Value::from(applied.to_string()),
                Value::from(format!("{}-0", applied.saturating_add(1))),
                Value::from(SYNC_BATCH.to_string()),
            ];
            let keys = vec![
                Key::from(READY_KEY),
                Key::from(VERSION_KEY),
                Key::from(LOG_KEY),
            ];
            let reply: Vec<Value> = match SYNC.eval::<Value, _, _>(client, keys, args).await {
                Ok(reply) => reply.into_array(),
                Err(error) => {
                    self.warn("redis board sync failed; reading the set", Some(&error));
                    return None;
                }
            };
            match (
                reply.first().and_then(Value::as_i64),
                &reply[1.min(reply.len())..],
            ) {
                (Some(2), [version]) => {
                    let version = as_u64(version)?;
                    if version < applied {
                        // The log went back within one generation: never
                        // happens unless someone edited Redis; start over.
                        self.copy.request_reload();
                        return None;
                    }
                    return Some((generation, version));
                }
                (Some(2), [version, log]) => {
                    let version = as_u64(version)?;
                    if !self.apply_log(&generation, applied, log) {
                        return None;
                    }
                    let covered = self.copy.read().as_ref().map(Mirror::applied);
                    if covered >= Some(version) {
                        return Some((generation, version));
                    }
                }
                // Another generation than the copy's: load it.
                (Some(1), _) => {
                    self.copy.request_reload();
                    return None;
                }
                // Not ready (a rebuild is under way), or a reply we do not know.
                _ => return None,
            }
        }
        None
    }

    /// The copy's generation and log position; `None` (after asking for a
    /// load) when there is no copy.
    fn copy_position(&self) -> Option<(Arc<str>, u64)> {
        let position = self
            .copy
            .read()
            .as_ref()
            .map(|m| (Arc::clone(m.generation()), m.applied()));
        if position.is_none() {
            self.copy.request_reload();
        }
        position
    }

    /// Applies log entries that follow `applied` to the copy of `generation`.
    /// `false` when they cannot be (the copy changed meanwhile, or the log
    /// has a gap or an unreadable entry, which also asks for a reload).
    fn apply_log(&self, generation: &str, applied: u64, log: &Value) -> bool {
        let mut board = self.copy.write();
        let Some(mirror) = board.as_mut().filter(|m| m.covers(generation, applied)) else {
            return false;
        };
        if mirror.applied() != applied {
            // Another sync got further meanwhile; the caller asks again.
            return true;
        }
        let entries: &[Value] = match log {
            Value::Array(entries) => entries,
            _ => &[],
        };
        if entries.is_empty() {
            // Behind, yet nothing after our position: trimmed away.
            self.copy.request_reload();
            return false;
        }
        let mut next = applied.saturating_add(1);
        for entry in entries {
            match log_entry(entry) {
                Some((id, change)) if id == next => {
                    match change {
                        Change::Update(key, entry) => mirror.apply(&key, entry),
                        Change::Remove(key) => mirror.remove(&key),
                    }
                    mirror.advance_to(id);
                    next = next.saturating_add(1);
                }
                _ => {
                    drop(board);
                    self.warn("board log has a gap; loading the board again", None);
                    self.copy.request_reload();
                    return false;
                }
            }
        }
        true
    }

    /// Loads a fresh copy whenever a sync asks for one.
    async fn load_loop(&self) {
        loop {
            self.copy.reload.notified().await;
            let began = std::time::Instant::now();
            match self.load_copy().await {
                Ok(Some(mirror)) => {
                    tracing::info!(
                        users = mirror.len(),
                        took = ?began.elapsed(),
                        "board copy loaded; board reads use it"
                    );
                    *self.copy.write() = Some(mirror);
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, "loading the board copy failed"),
            }
            // The next sync asks again if this did not do.
            self.copy.reloading.store(false, Ordering::Release);
        }
    }

    /// Notes the generation and log position, then scans the whole set:
    /// changes made during the scan are after that position, so the syncs
    /// that follow apply them (the merge rules make applying twice
    /// harmless). `None` while the set is not ready.
    async fn load_copy(&self) -> Result<Option<Mirror>, RedisError> {
        let client = self.require_client()?;
        let Some((generation, version)) = generation_and_version(client).await? else {
            return Ok(None);
        };
        let mut mirror = Mirror::new(generation.into(), version);
        let mut cursor = String::from("0");
        loop {
            let keys = vec![
                Key::from(MEMBERS_KEY),
                Key::from(SET_KEY),
                Key::from(STATS_KEY),
            ];
            let args = vec![
                Value::from(cursor.as_str()),
                Value::from(SCAN_BATCH.to_string()),
            ];
            let reply: Value = SCAN.eval(client, keys, args).await?;
            let mut items = reply.into_array().into_iter();
            cursor = items
                .next()
                .and_then(|c| c.as_bytes_str().map(|c| c.to_string()))
                .unwrap_or_default();
            let items: Vec<Value> = items.collect();
            for item in items.chunks_exact(4) {
                let parsed = item[0]
                    .as_bytes_str()
                    .zip(board_entry(&item[1], &item[2], &item[3]));
                match parsed {
                    Some((key, entry)) => mirror.apply(&key, entry),
                    None => {
                        self.warn("unreadable board entry; copy not loaded", None);
                        return Ok(None);
                    }
                }
            }
            if cursor == "0" || cursor.is_empty() {
                return Ok(Some(mirror));
            }
        }
    }

    fn connected(&self) -> Option<&fred::clients::Client> {
        self.redis.as_ref().and_then(Redis::connected)
    }

    fn warn(&self, what: &str, error: Option<&RedisError>) {
        if let Some(redis) = &self.redis {
            redis.warn(what, error);
        }
    }

    fn require_client(&self) -> Result<&fred::clients::Client, RedisError> {
        self.connected()
            .ok_or_else(|| RedisError::new(fred::error::ErrorKind::IO, "redis is not connected"))
    }

    fn trusted_client(&self) -> Option<&fred::clients::Client> {
        if self.is_trusted() {
            self.connected()
        } else {
            None
        }
    }

    /// Runs a read script; `None` (and trust withdrawn) on an error or when
    /// the ready marker is missing.
    async fn eval_read(
        &self,
        client: &fred::clients::Client,
        script: &'static Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> Option<Vec<Value>> {
        let result: Result<Value, _> = script.eval(client, keys, args).await;
        match result {
            Ok(reply) => {
                let reply = reply.into_array();
                if reply.first().and_then(Value::as_i64) == Some(1) {
                    Some(reply)
                } else {
                    // Redis lost the set (restart, eviction, another
                    // replica's rebuild): read the database until rebuilt.
                    self.distrust();
                    None
                }
            }
            Err(error) => {
                self.warn(
                    "redis board read failed; reading the database",
                    Some(&error),
                );
                None
            }
        }
    }
}

fn withdraw(trust: &Trust) {
    // Add one generation and clear the trusted bit.
    let _ = trust
        .word
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            Some(((word >> 1).wrapping_add(1)) << 1)
        });
    trust.rebuild.notify_one();
}

fn keys() -> Vec<Key> {
    vec![
        Key::from(SET_KEY),
        Key::from(MEMBERS_KEY),
        Key::from(STATS_KEY),
        Key::from(READY_KEY),
        Key::from(VERSION_KEY),
        Key::from(LOG_KEY),
    ]
}

/// UPDATE's first two arguments: whether to log, and the log's length.
fn update_header(log: bool) -> Vec<Value> {
    vec![
        Value::from(if log { "1" } else { "0" }),
        Value::from(LOG_LENGTH),
    ]
}

/// The member encoding the board order for equal scores (see the module docs).
fn member(position: BoardPosition, user_id: Uuid, name: &str) -> String {
    let inverted = MAX_SEQ.saturating_sub(position.seq).max(0);
    format!("{inverted:0SEQ_DIGITS$}{user_id}{name}")
}

fn entry_args(key: &str, stats: &Stats, position: BoardPosition) -> Vec<Value> {
    let mut value = format!("{:020}", stats.games_played.max(0)).into_bytes();
    value.extend(stats_to_wire(stats, 0).encode_to_vec());
    vec![
        Value::from(key),
        Value::from(member(position, stats.user_id, &stats.name)),
        Value::from(position.score.to_string()),
        Value::Bytes(Bytes::from(value)),
    ]
}

/// The board's generation and change-log position, read together (one
/// MGET; a rebuild deletes both at once); `None` while the set is not ready.
async fn generation_and_version(
    client: &fred::clients::Client,
) -> Result<Option<(String, u64)>, RedisError> {
    let keys = vec![Key::from(READY_KEY), Key::from(VERSION_KEY)];
    let found: Vec<Option<String>> = Box::pin(client.mget(keys)).await?;
    Ok(match found.as_slice() {
        [Some(generation), version] => version
            .as_deref()
            .unwrap_or("0")
            .parse()
            .ok()
            .map(|version| (generation.clone(), version)),
        _ => None,
    })
}

/// One change from the board's log.
enum Change {
    Update(String, Entry),
    Remove(String),
}

/// A log entry `[id, [field, value, ...]]` as its change number and change.
fn log_entry(entry: &Value) -> Option<(u64, Change)> {
    let Value::Array(entry) = entry else {
        return None;
    };
    let [id, Value::Array(fields)] = entry.as_slice() else {
        return None;
    };
    let id: u64 = id.as_bytes_str()?.strip_suffix("-0")?.parse().ok()?;
    let field = |name: &str| {
        fields
            .chunks_exact(2)
            .find(|pair| pair[0].as_bytes_str().as_deref() == Some(name))
            .map(|pair| &pair[1])
    };
    let key = field("k")?.as_bytes_str()?.to_string();
    let change = match (field("m"), field("s"), field("v")) {
        (Some(member), Some(score), Some(value)) => {
            Change::Update(key, board_entry(member, score, value)?)
        }
        (None, None, None) => Change::Remove(key),
        _ => return None,
    };
    Some((id, change))
}

/// A board entry from its member, score and stats value in Redis.
fn board_entry(member: &Value, score: &Value, value: &Value) -> Option<Entry> {
    let member = member.as_bytes_str()?;
    let (seq, user_id, name) = parse_member(&member)?;
    Some(Entry {
        position: BoardPosition {
            score: parse_score(&score.as_bytes_str()?)?,
            seq,
        },
        user_id,
        name: name.to_owned(),
        stats: decode_stats(value.as_bytes()?)?,
    })
}

/// A member's sequence number, user id and name (see [`member`]).
fn parse_member(member: &str) -> Option<(i64, Uuid, &str)> {
    let inverted: i64 = member.get(..SEQ_DIGITS)?.parse().ok()?;
    let id = Uuid::parse_str(member.get(SEQ_DIGITS..SEQ_DIGITS + UUID_CHARS)?).ok()?;
    let name = member.get(SEQ_DIGITS + UUID_CHARS..)?;
    Some((MAX_SEQ - inverted, id, name))
}

/// A Redis score as the integer it holds. Scores are integers up to
/// 2^53 - 1, exact in a double; Redis may write a large one in exponent form.
fn parse_score(score: &str) -> Option<i64> {
    if let Ok(score) = score.parse() {
        return Some(score);
    }
    let score: f64 = score.parse().ok()?;
    let exact = score.fract() == 0.0 && (0.0..=MAX_SEQ as f64).contains(&score);
    #[allow(clippy::cast_possible_truncation)]
    exact.then_some(score as i64)
}

fn as_u64(value: &Value) -> Option<u64> {
    value.as_bytes_str()?.parse().ok()
}

fn decode_stats(value: &[u8]) -> Option<Stats> {
    let blob = value.get(20..)?;
    stats_from_wire(pb::UserStats::decode(blob).ok()?)
}

/// Entries from a WITHSCORES range that starts at 0-based `offset`.
fn page_of(offset: u64, total: u64, range: &Value) -> Option<BoardPage> {
    let range = range.as_bytes_str()?;
    let mut entries = Vec::new();
    if range.is_empty() {
        return Some(BoardPage { entries, total });
    }
    let mut fields = range.split('\n');
    let mut rank = offset;
    while let Some(member) = fields.next() {
        let score = fields.next()?;
        rank += 1;
        let (_, user_id, name) = parse_member(member)?;
        entries.push(BoardEntry {
            rank,
            user_id,
            name: name.to_owned(),
            score: parse_score(score)?,
        });
    }
    Some(BoardPage { entries, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_equal_scores_sort_descending_by_who_reached_the_score_first() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = member(BoardPosition { score: 5, seq: 7 }, b, "zed");
        let second = member(BoardPosition { score: 5, seq: 8 }, a, "amy");
        // ZREVRANGE lists equal scores in descending member order.
        assert!(first > second);
        assert_eq!(first.len(), SEQ_DIGITS + UUID_CHARS + 3);
    }

    #[test]
    fn the_member_prefix_has_a_fixed_width_for_every_sequence() {
        let id = Uuid::nil();
        for seq in [1, 9, 10, 1 << 40, MAX_SEQ] {
            let m = member(BoardPosition { score: 0, seq }, id, "x");
            assert_eq!(m.len(), SEQ_DIGITS + UUID_CHARS + 1, "seq {seq}");
        }
    }
}
