//! The board in Redis: a sorted set of ranked users plus each user's stats,
//! kept exact by forward-only Lua updates and trusted only while it is known
//! complete. Shares the user cache's connection and its fail-open rules.
//!
//! Layout (one hash tag, so a Redis Cluster keeps every key in one slot):
//! - `roster:v1:board:{lb}:set`: ZSET, score = best score (integers up to
//!   2^53 - 1 are exact doubles), member = 16-digit `(2^53 - 1) - seq`, then the
//!   user id, then the name. Equal scores sort by member, so under ZREVRANGE and
//!   ZREVRANK the user who reached the score first (lower seq) ranks higher.
//! - `roster:v1:board:{lb}:members`: HASH name key -> current member.
//! - `roster:v1:board:{lb}:stats`: HASH name key -> 20-digit games_played,
//!   then the encoded `roster.v1.UserStats` (without rank).
//! - `roster:v1:board:{lb}:ready`: present only once a rebuild has loaded the
//!   whole board; every read checks it atomically with the data it reads.
//! - `roster:v1:board:{lb}:building`: the token of the rebuild in progress; a
//!   rebuild marks the set ready only if its token is still there, so a flush,
//!   a restart or another rebuild meanwhile makes it start over.
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
//! Limitation (several replicas): trust is per process. If replica A fails to
//! apply an update while replica B still reaches Redis, B keeps reading the set
//! until A's rebuild deletes the ready marker. Concurrent rebuilds by two
//! replicas are not coordinated either (a `SET NX` lease would be needed), so
//! for exact reads across replicas run one writer replica or add that lease.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use fred::{
    prelude::{Error as RedisError, EventInterface, KeysInterface},
    types::{Key, Value},
};
use prost::{Message, bytes::Bytes};
use tokio::sync::Notify;
use uuid::Uuid;

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

/// The largest tie-break number the member encoding holds.
const MAX_SEQ: i64 = Score::MAX;
const SEQ_DIGITS: usize = 16;
const UUID_CHARS: usize = 36;

/// Applies entries (4 arguments each: name key, member, score, stats value)
/// forward-only; returns {ready, 0-based rank of the last entry's member}.
static UPDATE: Script = Script::new(
    r"
for i = 1, #ARGV, 4 do
  local key, member = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', KEYS[2], key)
  if (not old) or tonumber(string.sub(old, 1, 16)) > tonumber(string.sub(member, 1, 16)) then
    if old then redis.call('ZREM', KEYS[1], old) end
    redis.call('ZADD', KEYS[1], ARGV[i + 2], member)
    redis.call('HSET', KEYS[2], key, member)
  end
  local value = ARGV[i + 3]
  local current = redis.call('HGET', KEYS[3], key)
  if (not current) or tonumber(string.sub(current, 1, 20)) < tonumber(string.sub(value, 1, 20)) then
    redis.call('HSET', KEYS[3], key, value)
  end
end
local ready = redis.call('EXISTS', KEYS[4])
local rank = -1
if #ARGV >= 4 then
  local member = redis.call('HGET', KEYS[2], ARGV[#ARGV - 3])
  rank = redis.call('ZREVRANK', KEYS[1], member) or -1
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
if not member then return {1, -1} end
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

/// Marks the set ready if the rebuild token in KEYS[2] is still ARGV[1].
static FINISH: Script = Script::new(
    r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], 1)
return 1
",
);

/// Removes one user (name key in ARGV[1]) from the set and both hashes.
static REMOVE: Script = Script::new(
    r"
local member = redis.call('HGET', KEYS[2], ARGV[1])
if member then redis.call('ZREM', KEYS[1], member) end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
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

/// A rebuild in progress: the trust generation it started from and its token.
#[derive(Debug)]
pub struct Rebuild {
    generation: u64,
    token: String,
}

/// Trust in the set, as one atomic word: bit 0 = trusted, the rest = how many
/// times trust was withdrawn. A rebuild may restore trust only if nothing
/// withdrew it since the rebuild began.
struct Trust {
    word: AtomicU64,
    rebuild: Notify,
}

/// The board cache. Cheap to clone; never trusted when Redis is disabled.
#[derive(Clone)]
pub struct BoardCache {
    redis: Option<Redis>,
    trust: Arc<Trust>,
}

impl BoardCache {
    /// The board cache over the shared Redis connection (if any). Every (re)connection
    /// withdraws trust and asks for a rebuild: Redis may have lost or kept
    /// stale data while we were away.
    pub fn new(redis: Option<Redis>) -> Self {
        let board = Self {
            redis,
            trust: Arc::new(Trust {
                word: AtomicU64::new(0),
                rebuild: Notify::new(),
            }),
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

    /// Waits until a rebuild is asked for.
    pub async fn rebuild_requested(&self) {
        self.trust.rebuild.notified().await;
    }

    /// Applies a committed game: moves the user's entry forward if `position`
    /// is newer and stores `stats` if newer. Returns the user's 1-based rank
    /// when the set is trusted and the update landed; otherwise withdraws
    /// trust (the set may now miss this update) and returns `None`.
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
        let result: Result<Value, _> = UPDATE
            .eval(client, keys(), entry_args(key.as_str(), stats, position))
            .await;
        match result.map(Value::into_array) {
            Ok(reply) => {
                let ready = reply.first().and_then(Value::as_i64) == Some(1);
                let index = reply.get(1).and_then(Value::as_i64);
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

    /// Removes a user's entry and stats (for a deleted user). Failures
    /// withdraw trust, as for any update.
    pub async fn remove(&self, key: &NameKey) {
        let Some(client) = self.connected() else {
            if self.is_enabled() {
                self.distrust();
            }
            return;
        };
        let result: Result<Value, _> = REMOVE
            .eval(client, keys(), vec![Value::from(key.as_str())])
            .await;
        if let Err(error) = result {
            self.warn("redis board removal failed", Some(&error));
            self.distrust();
        }
    }

    /// Starts a rebuild: notes the trust generation, empties the set (ready
    /// marker first) and records a fresh rebuild token. Pass the result to
    /// [`finish_rebuild`](Self::finish_rebuild).
    pub async fn begin_rebuild(&self) -> Result<Rebuild, RedisError> {
        let client = self.require_client()?;
        let generation = self.trust.word.load(Ordering::Acquire) >> 1;
        let token = Uuid::now_v7().to_string();
        let _: i64 = client
            .del(vec![
                Key::from(READY_KEY),
                Key::from(SET_KEY),
                Key::from(MEMBERS_KEY),
                Key::from(STATS_KEY),
            ])
            .await?;
        let _: () = client
            .set(BUILDING_KEY, token.as_str(), None, None, false)
            .await?;
        Ok(Rebuild { generation, token })
    }

    /// Loads a batch of ranked users (forward-only, like live updates).
    pub async fn load<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, Stats, BoardPosition)>,
    ) -> Result<(), RedisError> {
        let client = self.require_client()?;
        let mut args = Vec::new();
        for (key, stats, position) in rows {
            args.extend(entry_args(key, &stats, position));
        }
        if args.is_empty() {
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
        let untrusted = rebuild.generation << 1;
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
        let id = member.get(SEQ_DIGITS..SEQ_DIGITS + UUID_CHARS)?;
        let name = member.get(SEQ_DIGITS + UUID_CHARS..)?;
        entries.push(BoardEntry {
            rank,
            user_id: Uuid::parse_str(id).ok()?,
            name: name.to_owned(),
            // Scores are integers up to 2^53 - 1, exact in a double, and
            // Redis writes them without a fraction.
            score: score.parse().ok()?,
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
