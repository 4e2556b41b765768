//! The board in Redis: a sorted set of ranked users plus each user's stats,
//! kept exact by forward-only Lua updates, and answered from only while
//! Redis is known to hold every committed game (the process's
//! [`Freshness`](crate::cache::Freshness) gate, kept by the delivery
//! rounds); and this process's copy of it. Shares the user cache's
//! connection and its fail-open rules.
//!
//! The rooms: `layout.rs` (keys, member encoding, parsing), `scripts/`
//! (the Lua, one file per script) and `scripts.rs`, `rebuild.rs` (one
//! replica rebuilds at a time, under a lease), `copy.rs` (this process's
//! copy and its sync with Redis), `mirror.rs` (the copy's data structure).
//!
//! Exactness: updates can reach Redis out of order, so the update script
//! only moves a user's entry forward (higher seq) and only replaces stats
//! with a higher games_played; applying the same updates in any order gives
//! the same set. A RecordGame applies its game before answering; if that
//! fails, the change is still in the database's outbox and the next delivery
//! round (on any replica that reaches Redis) applies it, with the current
//! values from the database. Until then this process's gate is closed, so
//! its board reads go to the database; other replicas' reads are stale for
//! at most the staleness bound. A missing ready marker (Redis restarted,
//! flushed, lost the board) is noticed by the delivery round, which
//! rebuilds the board under a lease.
//!
//! Redis must not evict these keys (use `noeviction` or a `volatile-*`
//! policy: they have no TTL); a lost key is noticed only through the ready
//! marker.

mod copy;
mod layout;
mod mirror;
mod rebuild;
mod scripts;

use std::sync::Arc;

use fred::{
    prelude::Error as RedisError,
    types::{Key, Value},
};
use tokio::sync::Notify;
use uuid::Uuid;

pub use rebuild::Rebuild;

use self::{
    copy::Copy,
    layout::{LOG_LENGTH, decode_stats, entry_args, page_of, write_keys},
    scripts::{AROUND, PAGE, REMOVE, STATS, UPDATE},
};
use super::{Freshness, Redis, Script, keys::BoardKeys};
use crate::domain::{BoardPage, BoardPosition, NameKey, PageSize, Stats};

/// A user's stats as the board cache knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedStats {
    /// Redis may not hold every committed game (or failed): ask the database.
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
    /// Redis may not hold every committed game (or failed): ask the database.
    Unknown,
    /// The set is complete and the user is not on it.
    Unranked,
    /// The window.
    Window(BoardPage),
}

/// The board cache. Cheap to clone; never used when Redis is disabled.
#[derive(Clone)]
pub struct BoardCache {
    redis: Option<Redis>,
    freshness: Arc<Freshness>,
    /// Wakes the delivery loop: the board looked missing (a rebuild may be due).
    attention: Arc<Notify>,
    copy: Arc<Copy>,
    copy_enabled: bool,
}

impl BoardCache {
    /// The board cache over the shared Redis connection (if any), answering
    /// only while `freshness` is open, with this process's copy of the board
    /// when `copy_enabled`. `attention` is notified when the board looks
    /// missing.
    pub fn new(
        redis: Option<Redis>,
        freshness: Arc<Freshness>,
        attention: Arc<Notify>,
        copy_enabled: bool,
    ) -> Self {
        Self {
            copy: Arc::new(Copy::new(redis.clone())),
            redis,
            freshness,
            attention,
            copy_enabled,
        }
    }

    /// Whether Redis is configured at all.
    pub fn is_enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// How many ranked users this process's copy of the board holds, once
    /// one is loaded (whether it is current is checked on every read).
    pub fn copy_len(&self) -> Option<u64> {
        self.copy.len()
    }

    /// Applies a committed game (outbox number `seq`) before RecordGame
    /// answers: moves the user's entry forward if `position` is newer and
    /// stores `stats` if newer. Returns the user's 1-based rank when Redis
    /// holds every committed game; `None` when the user was deleted
    /// meanwhile, when the board is being rebuilt, or when the update
    /// failed (then this process's gate closes until a delivery round has
    /// applied the game from the outbox).
    pub async fn record(
        &self,
        key: &NameKey,
        stats: &Stats,
        position: BoardPosition,
        seq: u64,
    ) -> Option<u64> {
        let Some((client, keys)) = self.connected() else {
            self.freshness.withdraw();
            return None;
        };
        let mut args = vec![
            Value::from("live"),
            Value::from(LOG_LENGTH),
            Value::from(seq.to_string()),
        ];
        args.extend(entry_args(key.as_str(), stats, position));
        let result: Result<Value, _> = UPDATE.eval(client, write_keys(keys), args).await;
        match result.map(Value::into_array) {
            Ok(reply) => {
                let ready = reply.first().and_then(Value::as_i64) == Some(1);
                if !ready {
                    self.attention.notify_one();
                    return None;
                }
                // -2: the user was deleted after this game committed; the
                // tombstone kept the game off the board, which is right.
                let index = reply.get(1).and_then(Value::as_i64)?;
                let index = u64::try_from(index).ok()?;
                self.freshness.is_fresh().then_some(index + 1)
            }
            Err(error) => {
                self.warn(
                    "redis board update failed; board reads use the database until it is delivered",
                    Some(&error),
                );
                self.freshness.withdraw();
                None
            }
        }
    }

    /// Removes a deleted user's entry and stats (outbox number `seq`),
    /// leaving a tombstone so that a late update of theirs cannot bring them
    /// back. A failure closes this process's gate until a delivery round has
    /// removed them from the outbox.
    pub async fn remove(&self, key: &NameKey, deleted: Uuid, seq: u64) {
        if let Err(error) = self.remove_deleted(key, deleted, seq).await {
            self.warn(
                "redis board removal failed; it will be delivered",
                Some(&error),
            );
            self.freshness.withdraw();
        }
    }

    /// Removes a deleted user from the board (see [`Self::remove`]); `seq`
    /// 0 marks nothing delivered (a delivery round does that itself).
    pub async fn remove_deleted(
        &self,
        key: &NameKey,
        deleted: Uuid,
        seq: u64,
    ) -> Result<(), RedisError> {
        let (client, keys) = self.require_client()?;
        let args = vec![
            Value::from(key.as_str()),
            Value::from(deleted.to_string()),
            Value::from(LOG_LENGTH),
            Value::from(seq.to_string()),
        ];
        let _: Value = REMOVE.eval(client, write_keys(keys), args).await?;
        Ok(())
    }

    /// Applies the database's current values of some ranked users, as live
    /// changes (logged for the copies), for a delivery round.
    pub async fn apply<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, Stats, BoardPosition)>,
    ) -> Result<(), RedisError> {
        let (client, keys) = self.require_client()?;
        let mut args = vec![
            Value::from("live"),
            Value::from(LOG_LENGTH),
            Value::from("0"),
        ];
        for (key, stats, position) in rows {
            args.extend(entry_args(key, &stats, position));
        }
        if args.len() == 3 {
            return Ok(());
        }
        let _: Value = UPDATE.eval(client, write_keys(keys), args).await?;
        Ok(())
    }

    /// The user's stats and rank from the board, when Redis holds every
    /// committed game.
    pub async fn stats(&self, key: &NameKey) -> CachedStats {
        let Some((client, keys)) = self.fresh_client() else {
            return CachedStats::Unknown;
        };
        if self.copy_enabled
            && let Some(found) = self
                .copy
                .read(Some(key), |copy| copy.stats(key.as_str()))
                .await
        {
            self.count("copy");
            return match found {
                Some((stats, rank)) => CachedStats::Ranked(stats, rank),
                None => CachedStats::Unranked,
            };
        }
        self.count("script");
        let keys = vec![
            keys.set.clone(),
            keys.members.clone(),
            keys.stats.clone(),
            keys.ready.clone(),
        ];
        let Some(reply) = self
            .eval_read(client, &STATS, keys, vec![key.as_str().into()])
            .await
        else {
            return CachedStats::Unknown;
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
            _ => CachedStats::Unknown,
        }
    }

    /// Up to `limit` entries from 0-based `offset`, when Redis holds every
    /// committed game.
    pub async fn page(&self, offset: u64, limit: u64) -> Option<BoardPage> {
        let (client, keys) = self.fresh_client()?;
        if self.copy_enabled
            && let Some(page) = self.copy.read(None, |copy| copy.page(offset, limit)).await
        {
            self.count("copy");
            return Some(page);
        }
        self.count("script");
        let stop = offset.saturating_add(limit).saturating_sub(1);
        let args = vec![offset.to_string().into(), stop.to_string().into()];
        let reply = self
            .eval_read(
                client,
                &PAGE,
                vec![keys.set.clone(), keys.ready.clone()],
                args,
            )
            .await?;
        match reply.as_slice() {
            [_, total, range] => {
                let total = total.as_i64().and_then(|t| u64::try_from(t).ok());
                total.and_then(|total| page_of(offset, total, range))
            }
            _ => None,
        }
    }

    /// The `size`-entry window around the user, when Redis holds every
    /// committed game.
    pub async fn around(&self, key: &NameKey, size: PageSize) -> CachedWindow {
        let Some((client, keys)) = self.fresh_client() else {
            return CachedWindow::Unknown;
        };
        if self.copy_enabled
            && let Some(found) = self
                .copy
                .read(Some(key), |copy| copy.window(key.as_str(), size))
                .await
        {
            self.count("copy");
            return match found {
                Some(page) => CachedWindow::Window(page),
                None => CachedWindow::Unranked,
            };
        }
        self.count("script");
        let keys = vec![keys.set.clone(), keys.members.clone(), keys.ready.clone()];
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
                    None => CachedWindow::Unknown,
                }
            }
            _ => CachedWindow::Unknown,
        }
    }

    /// Keeps this process's copy of the board loaded and current, for as
    /// long as it runs; reads use Redis itself while it is not running (and
    /// always, when the copy is switched off).
    pub async fn keep_copy(&self) {
        if self.copy_enabled {
            self.copy.keep().await;
        }
    }

    /// Counts one board read answered by `source` (copy, script, database).
    pub fn count(&self, source: &'static str) {
        if let Some(redis) = &self.redis {
            redis.metrics().board_read(source);
        }
    }

    /// The copy's size and how many log entries it was behind Redis at its
    /// last sync; `None` without a copy.
    pub fn copy_stats(&self) -> Option<(u64, u64)> {
        self.copy.stats()
    }

    /// The client, when connected, and the board's keys.
    fn connected(&self) -> Option<(&fred::clients::Client, &BoardKeys)> {
        let redis = self.redis.as_ref()?;
        Some((redis.connected()?, &redis.keys().board))
    }

    fn warn(&self, what: &str, error: Option<&RedisError>) {
        if let Some(redis) = &self.redis {
            redis.warn(what, error);
        }
    }

    fn require_client(&self) -> Result<(&fred::clients::Client, &BoardKeys), RedisError> {
        self.connected()
            .ok_or_else(|| RedisError::new(fred::error::ErrorKind::IO, "redis is not connected"))
    }

    /// The client and the board's keys, when reads may use Redis:
    /// connected, and Redis known to hold every committed change.
    fn fresh_client(&self) -> Option<(&fred::clients::Client, &BoardKeys)> {
        if self.freshness.is_fresh() {
            self.connected()
        } else {
            None
        }
    }

    /// Runs a read script; `None` on an error or when the ready marker is
    /// missing (then the delivery loop is told: a rebuild may be due).
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
                    self.attention.notify_one();
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
