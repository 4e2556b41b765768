//! The stats and leaderboard use cases: recording games, reading stats and
//! ranks, paging the board, and keeping the Redis copy of the board exact.

use std::time::Duration;

use chrono::Utc;

use crate::{
    cache::board::{BoardCache, CachedStats, CachedWindow},
    domain::{
        BoardEntry, BoardPage, Outcome, PageSize, PageToken, RequestId, Score, Stats, User,
        UserName,
    },
    error::Error,
    store::{Recorded, Store},
    users::Users,
};

/// How long RecordGame idempotency records are kept, at least.
pub const REQUEST_RETENTION: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// How often expired idempotency records are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Ranked users read from the database per snapshot query during a rebuild.
const SNAPSHOT_PAGE: u64 = 2_000;
/// Ranked users sent to Redis per script call during a rebuild.
const LOAD_BATCH: usize = 250;

/// A user's stats with their current 1-based rank (0 = no game yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankedStats {
    /// The stats.
    pub stats: Stats,
    /// The rank; 0 when the user has not played.
    pub rank: u64,
}

/// One page of ListLeaderboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderboardPage {
    /// The entries and the board's size.
    pub page: BoardPage,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageToken>,
}

/// Records games and reads the board over the store, Redis and the users.
#[derive(Clone)]
pub struct Leaderboard {
    store: Store,
    board: BoardCache,
    users: Users,
}

impl Leaderboard {
    /// Wires the use cases to their dependencies.
    pub fn new(store: Store, board: BoardCache, users: Users) -> Self {
        Self {
            store,
            board,
            users,
        }
    }

    /// The board cache these use cases read through.
    pub fn board(&self) -> &BoardCache {
        &self.board
    }

    /// Adds one game to the user's stats (one transaction), then applies it
    /// to Redis before answering, so every later read reflects it. A retry
    /// with a known `request_id` replays the first call's stats.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn record_game(
        &self,
        name: UserName,
        outcome: Outcome,
        score: Score,
        request_id: Option<RequestId>,
    ) -> Result<RankedStats, Error> {
        let user = self.users.get(name.clone()).await?;
        let recorded = self
            .store
            .record_game(&user, outcome, score, request_id.as_ref(), Utc::now())
            .await?;
        match recorded {
            Recorded::New { stats, position } => {
                #[cfg(feature = "failpoints")]
                crate::failpoint::hit("record-before-board", name.key().as_str()).await;
                let rank = match self.board.record(name.key(), &stats, position).await {
                    Some(rank) => rank,
                    None => self.store.rank_of(position).await?,
                };
                Ok(RankedStats { stats, rank })
            }
            Recorded::Replayed(stats) => {
                tracing::debug!("request_id seen before; replaying the first result");
                let rank = self.current(&name, &user).await?.rank;
                Ok(RankedStats { stats, rank })
            }
        }
    }

    /// The user's stats and current rank; zeros and rank 0 before the first game.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn stats(&self, name: UserName) -> Result<RankedStats, Error> {
        match self.board.stats(name.key()).await {
            CachedStats::Ranked(stats, rank) => Ok(RankedStats { stats, rank }),
            // The other paths read the database: boxed, so their large
            // futures are not moved around on every call (see `around`).
            cached => Box::pin(self.stats_uncached(name, cached)).await,
        }
    }

    async fn stats_uncached(
        &self,
        name: UserName,
        cached: CachedStats,
    ) -> Result<RankedStats, Error> {
        let user = self.users.get(name.clone()).await?;
        if cached == CachedStats::Unranked {
            return Ok(RankedStats {
                stats: Stats::none(user.id, user.name),
                rank: 0,
            });
        }
        self.current(&name, &user).await
    }

    /// The page of `size` entries at 0-based `offset` (from a page token).
    #[tracing::instrument(skip_all)]
    pub async fn page(&self, size: PageSize, offset: u64) -> Result<LeaderboardPage, Error> {
        let limit = u64::from(size.get());
        let page = match self.board.page(offset, limit).await {
            Some(page) => page,
            None => Box::pin(self.store.board_page(offset, limit)).await?,
        };
        let next_offset = offset.saturating_add(limit);
        let next = (next_offset < page.total).then(|| PageToken::new(size, next_offset));
        Ok(LeaderboardPage { page, next })
    }

    /// The window of `size` entries around the user; empty before their first game.
    #[tracing::instrument(skip_all, fields(user = %name.key()))]
    pub async fn around(&self, name: UserName, size: PageSize) -> Result<Vec<BoardEntry>, Error> {
        match self.board.around(name.key(), size).await {
            CachedWindow::Window(page) => Ok(page.entries),
            // The database paths are boxed: their futures (SQL drivers
            // included) are several KB, and inlined here they would make
            // every call's future that large, copied each time it is moved.
            cached => Box::pin(self.around_uncached(name, size, cached)).await,
        }
    }

    async fn around_uncached(
        &self,
        name: UserName,
        size: PageSize,
        cached: CachedWindow,
    ) -> Result<Vec<BoardEntry>, Error> {
        // Unknown users are NOT_FOUND; known ones may have no games.
        let user = self.users.get(name).await?;
        if cached == CachedWindow::Unranked {
            return Ok(Vec::new());
        }
        let (_, position) = self.store.find_stats(&user).await?;
        match position {
            Some(position) => Ok(self.store.board_window(position, size).await?.entries),
            None => Ok(Vec::new()),
        }
    }

    /// Stats and rank read from Redis when trusted, else from the database.
    async fn current(&self, name: &UserName, user: &User) -> Result<RankedStats, Error> {
        if let CachedStats::Ranked(stats, rank) = self.board.stats(name.key()).await {
            return Ok(RankedStats { stats, rank });
        }
        let (stats, position) = self.store.find_stats(user).await?;
        let rank = match position {
            Some(position) => self.store.rank_of(position).await?,
            None => 0,
        };
        Ok(RankedStats { stats, rank })
    }

    /// Runs for the life of the server: rebuilds the Redis board whenever it
    /// is missing or untrusted (at start, after a failed update, after a
    /// reconnect), keeps this process's copy of it current, and prunes
    /// expired idempotency records every hour.
    pub async fn maintain(self) {
        if self.board.is_enabled() {
            self.board.distrust();
        }
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rebuild_and_prune = async {
            loop {
                tokio::select! {
                    () = self.board.rebuild_requested() => self.rebuild_until_trusted().await,
                    _ = prune.tick() => self.prune().await,
                }
            }
        };
        tokio::join!(rebuild_and_prune, self.board.keep_copy());
    }

    async fn rebuild_until_trusted(&self) {
        let mut delay = Duration::from_millis(50);
        while !self.board.is_trusted() {
            match self.rebuild().await {
                Ok(Some(users)) => {
                    tracing::info!(users, "leaderboard rebuilt in redis; reads use it again");
                    return;
                }
                Ok(None) => tracing::debug!("board changed during the rebuild; again"),
                Err(error) => {
                    tracing::debug!(%error, "leaderboard rebuild failed; retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// One rebuild: empty the set, load a consistent snapshot of the
    /// database taken after the emptying, mark it ready. Updates committed
    /// after the snapshot reach Redis after the emptying and merge
    /// forward-only, so none is lost. `Ok(None)` when trust was withdrawn
    /// meanwhile.
    ///
    /// The snapshot is loaded best first, so Redis allocates neighbouring
    /// entries of the sorted set next to each other: a window read then walks
    /// memory that is mostly contiguous. Measured with roster-bench on 100k
    /// users, this took ListLeaderboardAroundUser's ZREVRANGE from about 8 µs
    /// to about 4 µs (loading in name order scattered the entries).
    async fn rebuild(&self) -> Result<Option<usize>, Box<dyn std::error::Error + Send + Sync>> {
        let rebuild = self.board.begin_rebuild().await?;
        let mut snapshot = self.store.board_snapshot().await?;
        let mut users = 0;
        loop {
            let rows = snapshot.next_page(SNAPSHOT_PAGE).await?;
            users += rows.len();
            for batch in rows.chunks(LOAD_BATCH) {
                self.board
                    .load(
                        batch
                            .iter()
                            .map(|row| (row.name_key.as_str(), row.stats(), row.position())),
                    )
                    .await?;
            }
            if (rows.len() as u64) < SNAPSHOT_PAGE {
                break;
            }
        }
        snapshot.close().await?;
        Ok(self.board.finish_rebuild(rebuild).await?.then_some(users))
    }

    async fn prune(&self) {
        let before = Utc::now() - REQUEST_RETENTION;
        match self.store.prune_record_game_requests(before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired RecordGame request ids pruned"),
            Err(error) => {
                tracing::warn!(error = %crate::error::Chain(&error), "pruning request ids failed")
            }
        }
    }
}
