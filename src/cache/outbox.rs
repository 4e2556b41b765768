//! The Redis side of outbox delivery: how far Redis has taken in the
//! database's cache outbox (`delivered`: every change numbered up to it is
//! in Redis; numbers applied early wait in `ahead`, a ZSET; both named in
//! `cache/keys.rs`), and the operations a delivery round needs. The round
//! itself is `crate::delivery`.
//!
//! Both keys share the board's hash tag, so the board's update and removal
//! scripts mark their outbox number in the same call, and a Redis Cluster
//! keeps them in one slot. They live as long as Redis keeps its data; a
//! Redis that lost writes (restart, failover to a replica that lagged, an
//! old snapshot) shows a `delivered` that went back or is gone, and the
//! round delivers again from there (or flushes, when the outbox no longer
//! goes back that far).

use fred::{
    prelude::{ClientLike, Error as RedisError, KeysInterface},
    types::{Key, Value},
};
use tokio_stream::StreamExt;

use super::{Redis, Script, keys::BoardKeys};
use crate::domain::NameKey;

/// The most `ahead` numbers one round reads (the rest are delivered again).
const AHEAD_READ: usize = 10_000;
/// Keys deleted per command when flushing.
const FLUSH_BATCH: usize = 500;

static MARK: Script = Script::new(concat!(
    include_str!("scripts/mark.lua"),
    include_str!("scripts/mark_only.lua")
));
static ADVANCE: Script = Script::new(include_str!("scripts/advance.lua"));
static RESTART: Script = Script::new(include_str!("scripts/restart.lua"));
static STATE: Script = Script::new(include_str!("scripts/state.lua"));

/// Where Redis stands, as one delivery round reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisState {
    /// `delivered`, or `None` when the key is missing (a new or emptied Redis).
    pub delivered: Option<u64>,
    /// Whether the board is ready (complete).
    pub board_ready: bool,
    /// Whether a board rebuild holds its lease.
    pub board_building: bool,
    /// Numbers above `delivered` whose changes are in Redis already.
    pub ahead: Vec<u64>,
}

/// The delivery operations on Redis. Cheap to clone.
#[derive(Clone)]
pub struct OutboxCache {
    redis: Redis,
}

impl OutboxCache {
    /// The operations over `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn client(&self) -> Result<&fred::clients::Client, RedisError> {
        self.redis
            .connected()
            .ok_or_else(|| RedisError::new(fred::error::ErrorKind::IO, "redis is not connected"))
    }

    fn keys(&self) -> &BoardKeys {
        &self.redis.keys().board
    }

    /// The keys of the scripts that move `delivered`, in their order.
    fn marks(&self) -> Vec<Key> {
        vec![self.keys().delivered.clone(), self.keys().ahead.clone()]
    }

    /// Reads `delivered`, the board's markers and the `ahead` numbers.
    pub async fn state(&self) -> Result<RedisState, RedisError> {
        let board = self.keys();
        let keys = vec![
            board.delivered.clone(),
            board.ahead.clone(),
            board.ready.clone(),
            board.building.clone(),
        ];
        let reply: Value = STATE
            .eval(
                self.client()?,
                keys,
                vec![Value::from(AHEAD_READ.to_string())],
            )
            .await?;
        let reply = reply.into_array();
        let number = |value: &Value| value.as_bytes_str().and_then(|s| s.parse::<u64>().ok());
        let malformed = || RedisError::new(fred::error::ErrorKind::Parse, "unexpected state reply");
        let [delivered, ready, building, ahead @ ..] = reply.as_slice() else {
            return Err(malformed());
        };
        let delivered = match delivered.as_bytes_str() {
            Some(text) if text.is_empty() => None,
            Some(_) => Some(number(delivered).ok_or_else(malformed)?),
            None => return Err(malformed()),
        };
        Ok(RedisState {
            delivered,
            board_ready: ready.as_i64() == Some(1),
            board_building: building.as_i64() == Some(1),
            ahead: ahead.iter().filter_map(number).collect(),
        })
    }

    /// Deletes the cached users (and their fill leases) of `keys`.
    pub async fn forget_users(&self, keys: &[&NameKey]) -> Result<(), RedisError> {
        let client = self.client()?;
        let names = self.redis.keys();
        // One DEL per name: in Redis Cluster the names live in different
        // slots, but a name's value and lease share one (its hash tag).
        for key in keys {
            let _: i64 = Box::pin(client.del(vec![names.user(key), names.user_lease(key)])).await?;
        }
        Ok(())
    }

    /// Moves `delivered` from `from` to `to` (and past numbers waiting in
    /// `ahead`). `false` when Redis lost data since the round read `from`.
    pub async fn advance(&self, from: u64, to: u64) -> Result<bool, RedisError> {
        let args = vec![Value::from(from.to_string()), Value::from(to.to_string())];
        let moved: i64 = ADVANCE.eval(self.client()?, self.marks(), args).await?;
        Ok(moved >= 0)
    }

    /// Marks one outbox number as delivered (a writer's own change, applied
    /// right after its commit).
    pub async fn mark(&self, seq: u64) -> Result<(), RedisError> {
        let _: i64 = MARK
            .eval(
                self.client()?,
                self.marks(),
                vec![Value::from(seq.to_string())],
            )
            .await?;
        Ok(())
    }

    /// Deletes every cached user and fill lease under this deployment's
    /// prefix (another deployment's, sharing this Redis, are left alone):
    /// what a Redis that went back further than the outbox reaches (or never
    /// held `delivered`) may hold cannot be told apart from what is current.
    /// Returns how many keys went.
    pub async fn flush_users(&self) -> Result<u64, RedisError> {
        let client = self.client()?;
        let mut flushed = 0;
        for pattern in self.redis.keys().user_patterns() {
            let mut keys: Vec<Key> = Vec::new();
            let clustered = client.is_clustered();
            let mut stream: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = _> + Send>> =
                if clustered {
                    Box::pin(client.scan_cluster_buffered(pattern, Some(1000), None))
                } else {
                    Box::pin(client.scan_buffered(pattern, Some(1000), None))
                };
            while let Some(key) = stream.next().await {
                keys.push(key?);
                if keys.len() >= FLUSH_BATCH {
                    flushed += delete(client, std::mem::take(&mut keys), clustered).await?;
                }
            }
            flushed += delete(client, keys, clustered).await?;
        }
        Ok(flushed)
    }

    /// Sets `delivered` to `head` after a flush, if it still holds what the
    /// round saw (`None`: missing). `false` when it changed meanwhile.
    pub async fn restart(&self, seen: Option<u64>, head: u64) -> Result<bool, RedisError> {
        let args = vec![
            Value::from(seen.map(|seen| seen.to_string()).unwrap_or_default()),
            Value::from(head.to_string()),
        ];
        let restarted: i64 = RESTART.eval(self.client()?, self.marks(), args).await?;
        Ok(restarted == 1)
    }

    /// Deletes the board's ready marker, so that a rebuild follows.
    pub async fn drop_board(&self) -> Result<(), RedisError> {
        let _: i64 = self.client()?.del(&self.keys().ready).await?;
        Ok(())
    }
}

async fn delete(
    client: &fred::clients::Client,
    keys: Vec<Key>,
    clustered: bool,
) -> Result<u64, RedisError> {
    if keys.is_empty() {
        return Ok(0);
    }
    if clustered {
        let mut deleted = 0;
        for key in keys {
            let count: u64 = client.del(key).await?;
            deleted += count;
        }
        Ok(deleted)
    } else {
        client.del(keys).await
    }
}
