//! The stats and leaderboard use cases: recording games, reading stats and
//! ranks, paging the board, and keeping the Redis copy of the board exact.

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

    /// Adds one game to the user's stats (one transaction, which also
    /// records the change in the cache outbox), then applies it to Redis
    /// before answering, so every later read reflects it. A retry with a
    /// known `request_id` replays the first call's stats.
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
            .record_game(
                name.key(),
                &user,
                outcome,
                score,
                request_id.as_ref(),
                Utc::now(),
            )
            .await?;
        match recorded {
            Recorded::New {
                stats,
                position,
                seq,
            } => {
                #[cfg(feature = "failpoints")]
                crate::failpoint::hit("record-before-board", name.key().as_str()).await;
                let rank = match self.board.record(name.key(), &stats, position, seq).await {
                    Some(rank) => rank,
                    None => self.store.rank_of(position).await?,
                };
                Ok(RankedStats { stats, rank })
            }
            Recorded::Replayed(stats) => {
                tracing::debug!("request_id seen before; replaying the first result");
                let rank = self.refresh(&name, &user).await?;
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
        if cached == CachedStats::Unranked {
            // The user comes from the database, never the cache: the board
            // said "no games" at a moment the user read must not precede.
            // A cached user may be as old as the staleness bound (say, one
            // since deleted and re-created under the same name, with games),
            // and with it the answer would pair a user and a game count
            // that never held together (found by the history checker).
            let user = self
                .store
                .find_user(name.key())
                .await?
                .ok_or(Error::UserNotFound)?;
            return Ok(RankedStats {
                stats: Stats::none(user.id, user.name),
                rank: 0,
            });
        }
        self.board.count("database");
        let user = self.users.get(name.clone()).await?;
        self.current(&name, &user).await
    }

    /// The page of `size` entries at 0-based `offset` (from a page token).
    #[tracing::instrument(skip_all)]
    pub async fn page(&self, size: PageSize, offset: u64) -> Result<LeaderboardPage, Error> {
        let limit = u64::from(size.get());
        let page = match self.board.page(offset, limit).await {
            Some(page) => page,
            None => {
                self.board.count("database");
                Box::pin(self.store.board_page(offset, limit)).await?
            }
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
        if cached == CachedWindow::Unknown {
            self.board.count("database");
        }
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

    /// For a replayed RecordGame: the first call committed, but its answer
    /// may have been lost before it reached Redis (a connection cut while
    /// its COMMIT was in flight), and no delivery round may have run since.
    /// So the board gets the database's current values for the user before
    /// the replay answers, as the first call would have done (the update
    /// only moves a user forward, so this is safe whatever Redis holds).
    /// Returns the user's current rank.
    async fn refresh(&self, name: &UserName, user: &User) -> Result<u64, Error> {
        let (stats, position) = self.store.find_stats(user).await?;
        let Some(position) = position else {
            return Ok(0);
        };
        match self.board.record(name.key(), &stats, position, 0).await {
            Some(rank) => Ok(rank),
            None => self.store.rank_of(position).await,
        }
    }

    /// Keeps this process's copy of the board current, for the life of
    /// the server (the Redis board itself is kept by `crate::delivery`).
    pub async fn maintain(self) {
        self.board.keep_copy().await;
    }
}
