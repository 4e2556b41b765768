//! Stats and board queries: recording a game in one transaction, ranks counted
//! on read, board pages, the snapshot that rebuilds Redis, idempotency records.

use chrono::{DateTime, SubsecRound, Utc};
use prost::Message;
use sea_orm::{
    AccessMode, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, FromQueryResult, IsolationLevel, JoinType,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, RelationTrait, SqlErr, Statement,
    TransactionTrait, sea_query::OnConflict,
};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    Store, classify,
    entities::{leaderboard_entries as board, record_game_requests as requests, user_stats, users},
    outbox,
    write::WriteHealth,
};
use crate::{
    domain::{
        BoardEntry, BoardPage, BoardPosition, Change, NameKey, Outcome, PageSize, RequestId, Score,
        Stats, User, window_start,
    },
    error::Error,
    proto::{roster::v1 as pb, stats_from_wire, stats_to_wire},
};

/// What RecordGame did.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// The game was counted: the stats after it and the user's board position.
    New {
        /// The stats after the game.
        stats: Stats,
        /// The user's (possibly unchanged) place-defining values.
        position: BoardPosition,
        /// The cache-outbox number of the change.
        seq: u64,
    },
    /// The request_id was seen before: the first call's stats; nothing counted.
    Replayed(Stats),
}

/// One ranked user, everything Redis needs to hold for them.
#[derive(Debug, Clone, FromQueryResult)]
pub struct SnapshotRow {
    /// The user's id.
    pub user_id: Uuid,
    /// Display name.
    pub name: String,
    /// Canonical name key.
    pub name_key: String,
    /// See [`Stats`].
    pub games_played: i64,
    /// See [`Stats`].
    pub wins: i64,
    /// See [`Stats`].
    pub losses: i64,
    /// See [`Stats`].
    pub draws: i64,
    /// See [`Stats`].
    pub best_score: i64,
    /// See [`Stats`].
    pub total_score: i64,
    /// See [`Stats`].
    pub update_time: DateTime<Utc>,
    /// Board score (= best_score).
    pub score: i64,
    /// Tie-break sequence.
    pub seq: i64,
}

impl SnapshotRow {
    /// The row's stats.
    pub fn stats(&self) -> Stats {
        Stats {
            user_id: self.user_id,
            name: self.name.clone(),
            games_played: self.games_played,
            wins: self.wins,
            losses: self.losses,
            draws: self.draws,
            best_score: self.best_score,
            total_score: self.total_score,
            update_time: Some(self.update_time),
        }
    }

    /// The row's board position.
    pub fn position(&self) -> BoardPosition {
        BoardPosition {
            score: self.score,
            seq: self.seq,
        }
    }
}

/// A consistent, rank-ordered read of the whole board; see
/// [`Store::board_snapshot`].
pub struct BoardSnapshot {
    txn: DatabaseTransaction,
    after: Option<BoardPosition>,
}

impl BoardSnapshot {
    /// The next up to `limit` ranked users in board order (best first); empty
    /// once every user was read.
    pub async fn next_page(&mut self, limit: u64) -> Result<Vec<SnapshotRow>, Error> {
        let mut query = snapshot_query()
            .order_by_desc(board::Column::Score)
            .order_by_asc(board::Column::Seq)
            .limit(limit);
        if let Some(after) = self.after {
            query = query.filter(behind(after));
        }
        let rows = query
            .into_model::<SnapshotRow>()
            .all(&self.txn)
            .await
            .map_err(classify)?;
        if let Some(last) = rows.last() {
            self.after = Some(last.position());
        }
        Ok(rows)
    }

    /// Ends the read transaction.
    pub async fn close(self) -> Result<(), Error> {
        self.txn.commit().await.map_err(classify)
    }
}

impl Store {
    /// Adds one game to `user`'s stats and moves their board entry when the
    /// game sets a new best, in one transaction on the writer. On SQLite the
    /// single writer connection serializes these transactions; on Postgres the
    /// stats row is locked (`SELECT ... FOR UPDATE`), and the sequence row's
    /// lock hands out tie-break numbers in commit order.
    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    pub async fn record_game(
        &self,
        key: &NameKey,
        user: &User,
        outcome: Outcome,
        score: Score,
        request_id: Option<&RequestId>,
        now: DateTime<Utc>,
    ) -> Result<Recorded, Error> {
        let game = Game {
            key: key.clone(),
            user: user.clone(),
            outcome,
            score,
            request_id: request_id.cloned(),
            now: now.trunc_subsecs(6),
        };
        if let Some(games) = &self.games {
            return games.record(game).await;
        }
        self.observed(self.record_one(game)).await
    }

    /// RecordGame on Postgres: one transaction per game.
    async fn record_one(&self, game: Game) -> Result<Recorded, Error> {
        let user = &game.user;
        let txn = self.health.begin(&self.writer).await.map_err(classify)?;
        let mut recorded = match record_in(&txn, &game, Replays::LookUp).await {
            Ok(recorded) => recorded,
            Err(RecordError::Duplicate(error)) => {
                // Postgres: a concurrent call with the same key committed
                // first (our insert waited for it). Undo ours, replay theirs.
                txn.rollback().await.map_err(classify)?;
                let request_id = game
                    .request_id
                    .as_ref()
                    .ok_or_else(|| classify(error.clone()))?;
                return match find_request(&self.writer, user.id, request_id).await? {
                    Some(stats) => Ok(Recorded::Replayed(stats)),
                    None => Err(classify(error)),
                };
            }
            Err(RecordError::Other(error)) => return Err(error),
        };
        if let Recorded::New { seq, .. } = &mut recorded {
            *seq = outbox::append_one(&txn, &Change::Stats(game.key.clone()), game.now).await?;
        }
        txn.commit().await.map_err(classify)?;
        Ok(recorded)
    }

    /// `user`'s stats (zeros before the first game) and board position;
    /// `UserNotFound` when the user no longer exists.
    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    pub async fn find_stats(&self, user: &User) -> Result<(Stats, Option<BoardPosition>), Error> {
        let txn = self.reader.begin().await.map_err(classify)?;
        // `user` may come from the cache, up to the staleness bound old: if
        // it has since been deleted, "no stats row" means gone, not "no
        // games" (the history checker saw a deleted user answered with 0
        // games).
        if users::Entity::find_by_id(user.id)
            .one(&txn)
            .await
            .map_err(classify)?
            .is_none()
        {
            return Err(Error::UserNotFound);
        }
        let stats = user_stats::Entity::find_by_id(user.id)
            .one(&txn)
            .await
            .map_err(classify)?
            .map_or_else(
                || Stats::none(user.id, user.name.clone()),
                |row| stats_of(user, row),
            );
        let position = find_position(&txn, user.id).await?;
        txn.commit().await.map_err(classify)?;
        Ok((stats, position))
    }

    /// The 1-based rank of `position`: one more than the entries ahead of it.
    #[tracing::instrument(skip_all)]
    pub async fn rank_of(&self, position: BoardPosition) -> Result<u64, Error> {
        Ok(count_ahead(&self.reader, position).await? + 1)
    }

    /// Up to `limit` board entries from 0-based `offset`, and the board's size,
    /// read in one transaction.
    #[tracing::instrument(skip_all)]
    pub async fn board_page(&self, offset: u64, limit: u64) -> Result<BoardPage, Error> {
        let txn = self.reader.begin().await.map_err(classify)?;
        let total = board::Entity::find().count(&txn).await.map_err(classify)?;
        let entries = page_rows(&txn, offset, limit).await?;
        txn.commit().await.map_err(classify)?;
        Ok(BoardPage { entries, total })
    }

    /// The `size`-entry window around `position` (see [`window_start`]), read
    /// in one transaction.
    #[tracing::instrument(skip_all)]
    pub async fn board_window(
        &self,
        position: BoardPosition,
        size: PageSize,
    ) -> Result<BoardPage, Error> {
        let txn = self.reader.begin().await.map_err(classify)?;
        let total = board::Entity::find().count(&txn).await.map_err(classify)?;
        let index = count_ahead(&txn, position).await?;
        let start = window_start(index, total, size);
        let entries = page_rows(&txn, start, u64::from(size.get())).await?;
        txn.commit().await.map_err(classify)?;
        Ok(BoardPage { entries, total })
    }

    /// Opens a consistent read of the whole board, in board order (one read
    /// transaction: a snapshot on SQLite's WAL, REPEATABLE READ on Postgres),
    /// so a user who moves while it is read is seen exactly once.
    #[tracing::instrument(skip_all)]
    pub async fn board_snapshot(&self) -> Result<BoardSnapshot, Error> {
        let txn = match self.reader.get_database_backend() {
            DbBackend::Postgres => {
                self.reader
                    .begin_with_config(
                        Some(IsolationLevel::RepeatableRead),
                        Some(AccessMode::ReadOnly),
                    )
                    .await
            }
            _ => self.reader.begin().await,
        }
        .map_err(classify)?;
        Ok(BoardSnapshot { txn, after: None })
    }

    /// Deletes idempotency records created before `before`; returns how many.
    #[tracing::instrument(skip_all)]
    pub async fn prune_record_game_requests(&self, before: DateTime<Utc>) -> Result<u64, Error> {
        self.prune::<requests::Entity>(requests::Column::CreateTime, before)
            .await
    }

    /// The current board entries and stats of the ranked users among
    /// `keys` (users without games, or gone, are simply absent).
    #[tracing::instrument(skip_all, level = "debug")]
    pub async fn ranked(&self, keys: &[NameKey]) -> Result<Vec<SnapshotRow>, Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        snapshot_query()
            .filter(users::Column::NameKey.is_in(keys.iter().map(NameKey::as_str)))
            .into_model::<SnapshotRow>()
            .all(&self.reader)
            .await
            .map_err(classify)
    }
}

/// Every ranked user's stats, names and board entry (see [`SnapshotRow`]).
fn snapshot_query() -> sea_orm::Select<user_stats::Entity> {
    user_stats::Entity::find()
        .select_only()
        .columns([
            user_stats::Column::UserId,
            user_stats::Column::GamesPlayed,
            user_stats::Column::Wins,
            user_stats::Column::Losses,
            user_stats::Column::Draws,
            user_stats::Column::BestScore,
            user_stats::Column::TotalScore,
            user_stats::Column::UpdateTime,
        ])
        .columns([users::Column::Name, users::Column::NameKey])
        .columns([board::Column::Score, board::Column::Seq])
        .join(JoinType::InnerJoin, user_stats::Relation::User.def())
        .join(JoinType::InnerJoin, board::Relation::User.def().rev())
}

/// How many entries rank ahead of `position`.
async fn count_ahead(db: &impl ConnectionTrait, position: BoardPosition) -> Result<u64, Error> {
    board::Entity::find()
        .filter(ahead_of(position))
        .count(db)
        .await
        .map_err(classify)
}

/// Board rows ranked above `position`: a higher score, or the same score
/// reached earlier (lower seq).
fn ahead_of(position: BoardPosition) -> Condition {
    Condition::any()
        .add(board::Column::Score.gt(position.score))
        .add(
            Condition::all()
                .add(board::Column::Score.eq(position.score))
                .add(board::Column::Seq.lt(position.seq)),
        )
}

/// Board rows ranked below `position` (the complement of [`ahead_of`],
/// without the position itself).
fn behind(position: BoardPosition) -> Condition {
    Condition::any()
        .add(board::Column::Score.lt(position.score))
        .add(
            Condition::all()
                .add(board::Column::Score.eq(position.score))
                .add(board::Column::Seq.gt(position.seq)),
        )
}

/// Up to `limit` entries from 0-based `offset`, in board order.
async fn page_rows(
    db: &impl ConnectionTrait,
    offset: u64,
    limit: u64,
) -> Result<Vec<BoardEntry>, Error> {
    let rows: Vec<(Uuid, i64, String)> = board::Entity::find()
        .select_only()
        .column(board::Column::UserId)
        .column(board::Column::Score)
        .column(users::Column::Name)
        .join(JoinType::InnerJoin, board::Relation::User.def())
        .order_by_desc(board::Column::Score)
        .order_by_asc(board::Column::Seq)
        .offset(offset)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await
        .map_err(classify)?;
    Ok(rows
        .into_iter()
        .zip(offset + 1..)
        .map(|((user_id, score, name), rank)| BoardEntry {
            rank,
            user_id,
            name,
            score,
        })
        .collect())
}

/// The stats after the game, written, and the user's board position.
async fn apply_game(
    txn: &DatabaseTransaction,
    user: &User,
    outcome: Outcome,
    score: Score,
    now: DateTime<Utc>,
) -> Result<(Stats, BoardPosition), Error> {
    let backend = txn.get_database_backend();
    if backend == DbBackend::Postgres {
        // Give the row lock below something to lock on a user's first game,
        // so concurrent first games queue instead of racing to insert.
        user_stats::Entity::insert(zero_stats(user.id, now))
            .on_conflict_do_nothing()
            .exec(txn)
            .await
            .map_err(classify)?;
    }
    let existing = user_stats::Entity::find_by_id(user.id)
        .lock_exclusive()
        .one(txn)
        .await
        .map_err(classify)?;
    let before = existing.as_ref().map_or_else(
        || Stats::none(user.id, user.name.clone()),
        |row| stats_of(user, row.clone()),
    );
    let (after, moves) = before.record(outcome, score, now)?;
    let row = user_stats::ActiveModel {
        user_id: Set(user.id),
        games_played: Set(after.games_played),
        wins: Set(after.wins),
        losses: Set(after.losses),
        draws: Set(after.draws),
        best_score: Set(after.best_score),
        total_score: Set(after.total_score),
        update_time: Set(now),
    };
    // No RETURNING in writes (see write.rs).
    if existing.is_some() {
        user_stats::Entity::update(row)
            .exec(txn)
            .await
            .map(drop)
            .map_err(classify)?;
    } else {
        user_stats::Entity::insert(row)
            .exec_without_returning(txn)
            .await
            .map(drop)
            .map_err(classify)?;
    }

    let position = if moves {
        let seq = next_seq(txn).await?;
        let entry = board::ActiveModel {
            user_id: Set(user.id),
            score: Set(after.best_score),
            seq: Set(seq),
        };
        board::Entity::insert(entry)
            .on_conflict(
                OnConflict::column(board::Column::UserId)
                    .update_columns([board::Column::Score, board::Column::Seq])
                    .to_owned(),
            )
            .exec(txn)
            .await
            .map_err(classify)?;
        BoardPosition {
            score: after.best_score,
            seq,
        }
    } else {
        find_position(txn, user.id)
            .await?
            .ok_or_else(|| Error::internal("a user with games has no board entry"))?
    };
    Ok((after, position))
}

/// The next tie-break number: atomic, and on Postgres the row lock orders the
/// numbers as the transactions commit.
async fn next_seq(txn: &DatabaseTransaction) -> Result<i64, Error> {
    let backend = txn.get_database_backend();
    // Read to the end (query_all), never stopped after the first row (see write.rs).
    let rows = txn
        .query_all_raw(Statement::from_string(
            backend,
            "UPDATE leaderboard_sequence SET last_value = last_value + 1 \
             WHERE id = 1 RETURNING last_value",
        ))
        .await
        .map_err(classify)?;
    rows.first()
        .ok_or_else(|| Error::internal("leaderboard_sequence has no row"))?
        .try_get("", "last_value")
        .map_err(classify)
}

async fn find_position(
    db: &impl ConnectionTrait,
    user_id: Uuid,
) -> Result<Option<BoardPosition>, Error> {
    Ok(board::Entity::find_by_id(user_id)
        .one(db)
        .await
        .map_err(classify)?
        .map(|row| BoardPosition {
            score: row.score,
            seq: row.seq,
        }))
}

async fn find_request(
    db: &impl ConnectionTrait,
    user_id: Uuid,
    request_id: &RequestId,
) -> Result<Option<Stats>, Error> {
    let Some(row) = requests::Entity::find_by_id((user_id, request_id.as_str().to_owned()))
        .one(db)
        .await
        .map_err(classify)?
    else {
        return Ok(None);
    };
    let stats = pb::UserStats::decode(row.result.as_slice())
        .ok()
        .and_then(stats_from_wire)
        .ok_or_else(|| Error::internal("undecodable record_game_requests.result"))?;
    Ok(Some(stats))
}

fn zero_stats(user_id: Uuid, now: DateTime<Utc>) -> user_stats::ActiveModel {
    user_stats::ActiveModel {
        user_id: Set(user_id),
        games_played: Set(0),
        wins: Set(0),
        losses: Set(0),
        draws: Set(0),
        best_score: Set(0),
        total_score: Set(0),
        update_time: Set(now),
    }
}

fn stats_of(user: &User, row: user_stats::Model) -> Stats {
    if row.games_played == 0 {
        // Postgres's placeholder row before a first game commits.
        return Stats::none(user.id, user.name.clone());
    }
    Stats {
        user_id: user.id,
        name: user.name.clone(),
        games_played: row.games_played,
        wins: row.wins,
        losses: row.losses,
        draws: row.draws,
        best_score: row.best_score,
        total_score: row.total_score,
        update_time: Some(row.update_time),
    }
}

/// One game to record.
struct Game {
    key: NameKey,
    user: User,
    outcome: Outcome,
    score: Score,
    request_id: Option<RequestId>,
    now: DateTime<Utc>,
}

enum RecordError {
    /// The request id was inserted concurrently (Postgres only).
    Duplicate(DbErr),
    Other(Error),
}

impl From<Error> for RecordError {
    fn from(error: Error) -> Self {
        Self::Other(error)
    }
}

/// How [`record_in`] finds out that a game's request_id was seen before.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replays {
    /// Look the request_id up first, and replay the first call's result.
    LookUp,
    /// Skip the look-up: a request_id seen before fails the insert of its
    /// record (a unique key), and the caller must then undo the game.
    FailOnInsert,
}

/// Records `game` inside an open transaction (or savepoint); commits nothing.
async fn record_in(
    txn: &DatabaseTransaction,
    game: &Game,
    replays: Replays,
) -> Result<Recorded, RecordError> {
    if replays == Replays::LookUp
        && let Some(request_id) = &game.request_id
        && let Some(stats) = find_request(txn, game.user.id, request_id).await?
    {
        return Ok(Recorded::Replayed(stats));
    }
    let (stats, position) = apply_game(txn, &game.user, game.outcome, game.score, game.now).await?;
    if let Some(request_id) = &game.request_id {
        let row = requests::ActiveModel {
            user_id: Set(game.user.id),
            request_id: Set(request_id.as_str().to_owned()),
            result: Set(stats_to_wire(&stats, 0).encode_to_vec()),
            create_time: Set(game.now),
        };
        if let Err(error) = requests::Entity::insert(row).exec(txn).await {
            return Err(
                if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
                    RecordError::Duplicate(error)
                } else {
                    RecordError::Other(classify(error))
                },
            );
        }
    }
    // The outbox number is assigned when the game's transaction appends
    // its change, just before the commit.
    Ok(Recorded::New {
        stats,
        position,
        seq: 0,
    })
}

/// The most games one SQLite commit carries.
const MAX_GROUP: usize = 128;

/// Group commit for SQLite's single writer: games queue here, and one task
/// records every game waiting at that moment in one transaction (each in its
/// own savepoint, so one failure undoes only its game) and commits once. A
/// game is answered only after that commit, so nothing acknowledged is lost,
/// while one fsync serves many games.
#[derive(Clone)]
pub(crate) struct GameQueue {
    jobs: mpsc::Sender<(Game, oneshot::Sender<Result<Recorded, Error>>)>,
}

impl GameQueue {
    /// Starts the group-commit task on `writer`.
    pub(crate) fn start(writer: DatabaseConnection, health: Arc<WriteHealth>) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(group_commit(writer, health, queue));
        Self { jobs }
    }

    async fn record(&self, game: Game) -> Result<Recorded, Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((game, reply))
            .await
            .map_err(|_| Error::internal("the game writer stopped"))?;
        answer
            .await
            .map_err(|_| Error::internal("the game writer dropped a game"))?
    }
}

type Job = (Game, oneshot::Sender<Result<Recorded, Error>>);

async fn group_commit(
    writer: DatabaseConnection,
    health: Arc<WriteHealth>,
    mut queue: mpsc::Receiver<Job>,
) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let games: Vec<&Game> = group.iter().map(|(game, _)| game).collect();
        let results = match commit_group(&writer, &health, &games).await {
            Ok(results) => {
                health.observe(&Ok::<(), Error>(()));
                results
            }
            Err(error) => {
                let results = (0..games.len()).map(|_| Err(replicate(&error))).collect();
                health.observe(&Err::<(), _>(error));
                results
            }
        };
        for ((_, reply), result) in group.into_iter().zip(results) {
            // The caller may have gone away (deadline); the game still counts.
            reply.send(result).ok();
        }
    }
}

/// Commits a group: each game's own result, or one error for the whole
/// group when nothing of it was committed.
async fn commit_group(
    writer: &DatabaseConnection,
    health: &WriteHealth,
    games: &[&Game],
) -> Result<Vec<Result<Recorded, Error>>, Error> {
    // Games rarely fail (an overflow, a user deleted meanwhile) and are
    // rarely retries, so first try the whole group without savepoints and
    // without looking request ids up: three statements fewer per game. If
    // one game fails (a retry fails its request record's insert), nothing of
    // this attempt is kept and the group runs again with a savepoint and a
    // look-up per game, so a failure undoes only its game and a retry
    // replays the first call's result.
    match commit_all_or_nothing(writer, health, games).await? {
        Some(results) => Ok(results),
        None => commit_each_in_savepoint(writer, health, games).await,
    }
}

/// Whether an error is about the game itself (the others in its group can
/// still commit) rather than about the database (a full or failing disk, a
/// lost connection: SQLite may have rolled the whole transaction back, so
/// nothing of the group may be acknowledged).
fn is_the_games_own(error: &Error) -> bool {
    matches!(error, Error::StatsOverflow(_) | Error::UserNotFound)
}

/// Every game in one transaction. `Ok(None)` (rolled back) when a game
/// failed on its own account: the caller runs the group game by game.
async fn commit_all_or_nothing(
    writer: &DatabaseConnection,
    health: &WriteHealth,
    games: &[&Game],
) -> Result<Option<Vec<Result<Recorded, Error>>>, Error> {
    let txn = health.begin(writer).await.map_err(classify)?;
    let mut recorded = Vec::with_capacity(games.len());
    for game in games {
        match record_in(&txn, game, Replays::FailOnInsert).await {
            Ok(game) => recorded.push(game),
            Err(RecordError::Other(error)) if !is_the_games_own(&error) => return Err(error),
            Err(_) => {
                txn.rollback().await.map_err(classify)?;
                return Ok(None);
            }
        }
    }
    let mut results: Vec<Result<Recorded, Error>> = recorded.into_iter().map(Ok).collect();
    append_changes(&txn, games, &mut results).await?;
    txn.commit().await.map_err(classify)?;
    Ok(Some(results))
}

async fn commit_each_in_savepoint(
    writer: &DatabaseConnection,
    health: &WriteHealth,
    games: &[&Game],
) -> Result<Vec<Result<Recorded, Error>>, Error> {
    let txn = health.begin(writer).await.map_err(classify)?;
    let mut results = Vec::with_capacity(games.len());
    for game in games {
        let savepoint = txn.begin().await.map_err(classify)?;
        match record_in(&savepoint, game, Replays::LookUp).await {
            Ok(recorded) => {
                savepoint.commit().await.map_err(classify)?;
                results.push(Ok(recorded));
            }
            Err(error) => {
                let error = match error {
                    RecordError::Duplicate(error) => classify(error),
                    RecordError::Other(error) => error,
                };
                if !is_the_games_own(&error) {
                    return Err(error);
                }
                savepoint.rollback().await.map_err(classify)?;
                results.push(Err(error));
            }
        }
    }
    append_changes(&txn, games, &mut results).await?;
    txn.commit().await.map_err(classify)?;
    Ok(results)
}

/// Appends the outbox change of every game counted in this group (two
/// statements for the whole group) and gives each its number.
async fn append_changes(
    txn: &DatabaseTransaction,
    games: &[&Game],
    results: &mut [Result<Recorded, Error>],
) -> Result<(), Error> {
    let counted: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, result)| matches!(result, Ok(Recorded::New { .. })))
        .map(|(index, _)| index)
        .collect();
    let changes: Vec<Change> = counted
        .iter()
        .map(|&index| Change::Stats(games[index].key.clone()))
        .collect();
    let now = games.first().map_or_else(Utc::now, |game| game.now);
    let seqs = outbox::append(txn, &changes, now).await?;
    for (index, number) in counted.into_iter().zip(seqs) {
        if let Ok(Recorded::New { seq, .. }) = &mut results[index] {
            *seq = number;
        }
    }
    Ok(())
}

/// The same database error again, for every game of a group that failed.
fn replicate(error: &Error) -> Error {
    match error {
        Error::StorageFull(db) => Error::StorageFull(db.clone()),
        Error::StorageFailed(db) => Error::StorageFailed(db.clone()),
        Error::DatabaseUnavailable(db) => Error::DatabaseUnavailable(db.clone()),
        other => Error::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{credentials::PasswordHash, domain::UserName};

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (dir, Store::connect(&url, 4).await.unwrap())
    }

    async fn play(store: &Store, user: &User, score: i64) {
        let key = UserName::parse(&user.name).unwrap().key().clone();
        store
            .record_game(
                &key,
                user,
                Outcome::parse(1).unwrap(),
                Score::parse(score).unwrap(),
                None,
                Utc::now(),
            )
            .await
            .unwrap();
    }

    async fn read_all(snapshot: &mut BoardSnapshot, page: u64) -> Vec<(String, i64)> {
        let mut all = Vec::new();
        loop {
            let rows = snapshot.next_page(page).await.unwrap();
            let last = (rows.len() as u64) < page;
            all.extend(rows.into_iter().map(|r| (r.name, r.score)));
            if last {
                return all;
            }
        }
    }

    #[tokio::test]
    async fn the_snapshot_reads_every_ranked_user_once_in_board_order_despite_moves() {
        let (_dir, store) = store().await;
        let hash = PasswordHash::from_stored("not-a-real-hash".into());
        let mut users = Vec::new();
        // Ties on purpose: scores 0..4 for 14 users; one user never plays.
        for i in 0..15 {
            let name = UserName::parse(&format!("u{i}")).unwrap();
            let user = match store.insert_user(&name, &hash, Utc::now(), None).await {
                Ok(crate::store::Written::New { value, .. }) => value,
                other => panic!("{other:?}"),
            };
            if i < 14 {
                play(&store, &user, i % 5).await;
            }
            users.push(user);
        }
        let board = store.board_page(0, 100).await.unwrap().entries;
        let expected: Vec<_> = board.iter().map(|e| (e.name.clone(), e.score)).collect();
        assert_eq!(expected.len(), 14);

        // Pages of 3, with the first user read so far moving from the last
        // place to the first one in between: the snapshot still lists each
        // user once, as the board stood when it began.
        let mut snapshot = store.board_snapshot().await.unwrap();
        let mut read = snapshot
            .next_page(3)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.name, r.score))
            .collect::<Vec<_>>();
        let last_place = board.last().unwrap().name.clone();
        let mover = users.iter().find(|u| u.name == last_place).unwrap();
        play(&store, mover, 1_000).await;
        read.extend(read_all(&mut snapshot, 3).await);
        snapshot.close().await.unwrap();
        assert_eq!(read, expected);

        // A new snapshot sees the move.
        let mut snapshot = store.board_snapshot().await.unwrap();
        let after = read_all(&mut snapshot, 4).await;
        snapshot.close().await.unwrap();
        assert_eq!(after.first(), Some(&(last_place, 1_000)));
        assert_eq!(after.len(), 14);
    }
}
