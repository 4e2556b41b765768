//! Delivery of the cache outbox: what keeps every replica's cached answers
//! (users, stats, the board) from going stale, whichever replica wrote and
//! whether or not that replica could reach Redis.
//!
//! Each write appends what it changed to the database's outbox in its own
//! transaction, and applies it to Redis itself right after the commit (the
//! fast path). Independently, every replica runs the loop below: a round
//! notes the time, reads the outbox head from the database, reads how far
//! Redis has taken the outbox (`delivered`), and delivers what lies between
//! (deleting cached users, taking the board's values from the database),
//! then moves `delivered` on. A round that finds Redis holding everything
//! up to the head opens this process's freshness gate for the staleness
//! bound, counted from the round's start. Cached answers are served only
//! through that gate, so an answer is never more than the bound behind a
//! committed write, and usually exact (the writer's fast path).
//!
//! Why not the alternatives (also in the README): refusing to acknowledge a
//! write until Redis has it makes every write fail while Redis is away,
//! although the database, the source of truth, took it; checking a
//! database-side cache epoch on every read costs a database round trip per
//! cached read, which is the cost the cache exists to avoid.
//!
//! The same round notices a Redis that lost writes (restart, failover to a
//! lagging replica, an old snapshot): `delivered` went back, so the changes
//! since are delivered again; or it is gone, or older than the outbox keeps,
//! so every cached user is flushed and the board rebuilt. A reconnect to
//! Redis closes the gate at once (see `Redis::close_on_reconnect`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use tokio::sync::Notify;

use crate::{
    cache::{Freshness, board::BoardCache, outbox::OutboxCache},
    domain::{Change, Committed, NameKey},
    error::Chain,
    leaderboard::REQUEST_RETENTION,
    metrics::{Metrics, Outcome},
    store::{OUTBOX_RETENTION, Store},
    telemetry::LogThrottle,
};

/// Outbox rows read per batch.
const BATCH: u64 = 1_000;
/// Batches one round may deliver before it gives the loop back.
const MAX_BATCHES: usize = 50;
/// How often old outbox rows and idempotency records are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Ranked users read from the database per snapshot query during a rebuild.
const SNAPSHOT_PAGE: u64 = 2_000;
/// Ranked users sent to Redis per script call during a rebuild.
const LOAD_BATCH: usize = 250;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The delivery loop of one process. See the module docs.
pub struct Delivery {
    store: Store,
    board: BoardCache,
    outbox: Option<OutboxCache>,
    freshness: Arc<Freshness>,
    attention: Arc<Notify>,
    interval: Duration,
    rebuilding: Arc<AtomicBool>,
    warnings: LogThrottle,
    metrics: Metrics,
}

impl Delivery {
    /// A loop over `store` and Redis (`outbox`; `None` without Redis) that
    /// runs a round every `interval`, and at once when `attention` is
    /// notified.
    pub fn new(
        store: Store,
        board: BoardCache,
        outbox: Option<OutboxCache>,
        freshness: Arc<Freshness>,
        attention: Arc<Notify>,
        interval: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            metrics,
            store,
            board,
            outbox,
            freshness,
            attention,
            interval,
            rebuilding: Arc::new(AtomicBool::new(false)),
            warnings: LogThrottle::new(Duration::from_secs(10)),
        }
    }

    /// Runs for the life of the server.
    pub async fn run(self) {
        let Some(outbox) = self.outbox.clone() else {
            // Without Redis there is nothing to deliver; only prune.
            self.prune_forever().await;
            return;
        };
        tokio::join!(
            self.deliver_forever(&outbox),
            self.listen(),
            self.prune_forever()
        );
    }

    async fn deliver_forever(&self, outbox: &OutboxCache) {
        let mut last_seen = None;
        let mut fresh = false;
        loop {
            let round = self.freshness.begin_round();
            let result = self.round(outbox, &mut last_seen).await;
            let outcome = match &result {
                Ok(true) => "current",
                Ok(false) => "behind",
                Err(_) => "failed",
            };
            self.metrics
                .delivery_rounds
                .get_or_create(&Outcome::new(outcome))
                .inc();
            match result {
                Ok(true) => {
                    if self.freshness.finish_round(round) && !fresh {
                        tracing::info!("redis holds every committed change; cached answers in use");
                        fresh = true;
                    }
                }
                Ok(false) => {}
                Err(error) => {
                    if fresh {
                        tracing::warn!(error = %Chain(&*error), "cache delivery round failed; cached answers bypassed until one succeeds");
                        fresh = false;
                    } else if let Some(suppressed) = self.warnings.admit() {
                        tracing::debug!(error = %Chain(&*error), suppressed, "cache delivery round failed");
                    }
                }
            }
            if !self.freshness.is_fresh() {
                fresh = false;
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = self.attention.notified() => {}
            }
        }
    }

    /// One round; `Ok(true)` when Redis now holds every change up to the
    /// outbox head read at its start.
    async fn round(
        &self,
        outbox: &OutboxCache,
        last_seen: &mut Option<u64>,
    ) -> Result<bool, BoxError> {
        let head = self.store.outbox_head().await?;
        let state = outbox.state().await?;
        let pending = head.saturating_sub(state.delivered.unwrap_or(0));
        self.metrics
            .cache_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        if !state.board_ready && !state.board_building {
            self.start_rebuild();
        }
        let Some(mut delivered) = state.delivered else {
            return self.start_over(outbox, None, head).await;
        };
        if let Some(seen) = *last_seen
            && delivered < seen
        {
            tracing::warn!(
                was = seen,
                now = delivered,
                "redis went back in time (restart, failover or an old snapshot); \
                 delivering the changes since again"
            );
        }
        *last_seen = Some(delivered);
        let mut ahead = state.ahead;
        for _ in 0..MAX_BATCHES {
            if delivered >= head {
                return Ok(true);
            }
            let Some(batch) = self.store.outbox_after(delivered, BATCH).await? else {
                return self.start_over(outbox, Some(delivered), head).await;
            };
            let Some(last) = batch.last().map(|change| change.seq) else {
                return self.start_over(outbox, Some(delivered), head).await;
            };
            // Numbers a writer already applied need nothing more.
            let due: Vec<&Committed> = batch
                .iter()
                .filter(|change| ahead.binary_search(&change.seq).is_err())
                .collect();
            tracing::debug!(
                from = delivered,
                to = last,
                due = due.len(),
                "delivering outbox changes"
            );
            self.deliver(outbox, &due).await?;
            if !outbox.advance(delivered, last).await? {
                // Redis lost data meanwhile: the next round starts over.
                return Ok(false);
            }
            delivered = last;
            *last_seen = Some(delivered);
            ahead.retain(|seq| *seq > delivered);
        }
        Ok(delivered >= head)
    }

    /// Applies `changes` to Redis: cached users deleted, board entries
    /// taken from the database's current values, deleted users removed.
    async fn deliver(&self, outbox: &OutboxCache, changes: &[&Committed]) -> Result<(), BoxError> {
        let forget: Vec<&NameKey> = changes
            .iter()
            .filter(|c| matches!(c.change, Change::Account(_) | Change::Deleted(..)))
            .map(|c| c.change.key())
            .collect();
        outbox.forget_users(&forget).await?;
        for committed in changes {
            if let Change::Deleted(key, id) = &committed.change {
                self.board.remove_deleted(key, *id, 0).await?;
            }
        }
        let mut stats: Vec<NameKey> = changes
            .iter()
            .filter(|c| matches!(c.change, Change::Stats(_)))
            .map(|c| c.change.key().clone())
            .collect();
        stats.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        stats.dedup();
        for keys in stats.chunks(LOAD_BATCH) {
            let rows = self.store.ranked(keys).await?;
            self.board
                .apply(
                    rows.iter()
                        .map(|row| (row.name_key.as_str(), row.stats(), row.position())),
                )
                .await?;
        }
        Ok(())
    }

    /// Redis does not hold the outbox position (`seen`: missing, or older
    /// than the outbox keeps): flush every cached user, drop the board (a
    /// rebuild follows), and restart `delivered` at `head`, read before the
    /// flush. Changes committed after `head` are delivered by later rounds.
    async fn start_over(
        &self,
        outbox: &OutboxCache,
        seen: Option<u64>,
        head: u64,
    ) -> Result<bool, BoxError> {
        match seen {
            // A new or emptied Redis: the usual first start.
            None => tracing::info!(
                head,
                "redis holds no cache outbox position (new or emptied); flushing cached users \
                 and rebuilding the board"
            ),
            Some(delivered) => tracing::warn!(
                delivered,
                head,
                "redis is further behind than the cache outbox keeps; flushing cached users and \
                 rebuilding the board"
            ),
        }
        let flushed = outbox.flush_users().await?;
        outbox.drop_board().await?;
        let restarted = outbox.restart(seen, head).await?;
        tracing::info!(flushed, restarted, "redis cache flushed");
        self.start_rebuild();
        Ok(restarted)
    }

    /// Starts a board rebuild in the background unless one runs here; the
    /// lease in Redis keeps other replicas from running one at the same time.
    fn start_rebuild(&self) {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let (store, board, rebuilding, attention) = (
            self.store.clone(),
            self.board.clone(),
            Arc::clone(&self.rebuilding),
            Arc::clone(&self.attention),
        );
        tokio::spawn(async move {
            match rebuild(&store, &board).await {
                Ok(Some(users)) => {
                    tracing::info!(users, "leaderboard rebuilt in redis; reads use it again");
                }
                Ok(None) => {
                    tracing::debug!("another replica rebuilds the board, or lost its lease")
                }
                Err(error) => {
                    tracing::warn!(error = %Chain(&*error), "leaderboard rebuild failed; retrying");
                }
            }
            rebuilding.store(false, Ordering::Release);
            attention.notify_one();
        });
    }

    /// Wakes a round at every commit that adds outbox rows, where the
    /// database can push that (Postgres LISTEN/NOTIFY); the loop's interval
    /// covers a lost notification.
    async fn listen(&self) {
        loop {
            match self.store.outbox_listener().await {
                None => return,
                Some(Ok(mut listener)) => loop {
                    match listener.recv().await {
                        Ok(_) => self.attention.notify_one(),
                        Err(error) => {
                            tracing::debug!(%error, "outbox listener lost; reconnecting");
                            break;
                        }
                    }
                },
                Some(Err(error)) => {
                    tracing::debug!(error = %Chain(&error), "outbox listener unavailable");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn prune_forever(&self) {
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            prune.tick().await;
            let now = Utc::now();
            let results = [
                (
                    "cache outbox rows",
                    self.store.prune_outbox(now - OUTBOX_RETENTION).await,
                ),
                (
                    "user request ids",
                    self.store
                        .prune_user_requests(now - REQUEST_RETENTION)
                        .await,
                ),
                (
                    "RecordGame request ids",
                    self.store
                        .prune_record_game_requests(now - REQUEST_RETENTION)
                        .await,
                ),
            ];
            for (what, result) in results {
                match result {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "expired {what} pruned"),
                    Err(error) => {
                        tracing::warn!(error = %Chain(&error), "pruning {what} failed");
                    }
                }
            }
        }
    }
}

/// One rebuild: take the lease and empty the board, load a consistent
/// snapshot of the database taken after the emptying, mark it ready.
/// Updates committed after the snapshot reach Redis after the emptying
/// (fast path or delivery) and merge forward-only, so none is lost.
/// `Ok(None)` when another replica holds the lease, or this one lost it.
///
/// The snapshot is loaded best first, so Redis allocates neighbouring
/// entries of the sorted set next to each other: a window read then walks
/// memory that is mostly contiguous. Measured with roster-bench on 100k
/// users, this took ListLeaderboardAroundUser's ZREVRANGE from about 8 µs
/// to about 4 µs (loading in name order scattered the entries).
async fn rebuild(store: &Store, board: &BoardCache) -> Result<Option<usize>, BoxError> {
    let Some(rebuild) = board.begin_rebuild().await? else {
        return Ok(None);
    };
    let mut snapshot = store.board_snapshot().await?;
    let mut users = 0;
    loop {
        let rows = snapshot.next_page(SNAPSHOT_PAGE).await?;
        users += rows.len();
        for batch in rows.chunks(LOAD_BATCH) {
            let loaded = board
                .load(
                    &rebuild,
                    batch
                        .iter()
                        .map(|row| (row.name_key.as_str(), row.stats(), row.position())),
                )
                .await?;
            if !loaded {
                return Ok(None);
            }
        }
        if (rows.len() as u64) < SNAPSHOT_PAGE {
            break;
        }
        if !board.renew(&rebuild).await? {
            return Ok(None);
        }
    }
    snapshot.close().await?;
    Ok(board.finish_rebuild(rebuild).await?.then_some(users))
}
