//! Stats and the board: `user_stats`, `leaderboard_entries`, the tie-break
//! sequence `leaderboard_sequence`, and `record_game_requests` (idempotency).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One row per user who has played; no row means zero games.
        manager
            .create_table(
                Table::create()
                    .table(UserStats::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(UserStats::UserId)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(big(UserStats::GamesPlayed))
                    .col(big(UserStats::Wins))
                    .col(big(UserStats::Losses))
                    .col(big(UserStats::Draws))
                    .col(big(UserStats::BestScore))
                    .col(big(UserStats::TotalScore))
                    .col(
                        ColumnDef::new(UserStats::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_user_stats_user")
                            .from(UserStats::Table, UserStats::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // One row per ranked user. `seq` comes from `leaderboard_sequence`
        // when the user first reaches `score`: lower means earlier, so it
        // breaks ties. Ranks are never stored.
        manager
            .create_table(
                Table::create()
                    .table(LeaderboardEntries::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(LeaderboardEntries::UserId)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(big(LeaderboardEntries::Score))
                    .col(
                        ColumnDef::new(LeaderboardEntries::Seq)
                            .big_integer()
                            .not_null()
                            .unique_key(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_leaderboard_entries_user")
                            .from(LeaderboardEntries::Table, LeaderboardEntries::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Serves the board order (score DESC, seq ASC) and rank counting.
        manager
            .create_index(
                Index::create()
                    .name("idx_leaderboard_entries_order")
                    .table(LeaderboardEntries::Table)
                    .col((LeaderboardEntries::Score, IndexOrder::Desc))
                    .col((LeaderboardEntries::Seq, IndexOrder::Asc))
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // A single-row counter: `UPDATE ... SET last_value = last_value + 1
        // RETURNING last_value` is atomic on SQLite and Postgres, and its row
        // lock orders the numbers as the transactions commit.
        manager
            .create_table(
                Table::create()
                    .table(LeaderboardSequence::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(LeaderboardSequence::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(big(LeaderboardSequence::LastValue))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(LeaderboardSequence::Table)
                    .columns([LeaderboardSequence::Id, LeaderboardSequence::LastValue])
                    .values_panic([1.into(), 0.into()])
                    .to_owned(),
            )
            .await?;
        // RecordGame's idempotency records: the first call's result per
        // (user, request_id), kept at least 24 hours.
        manager
            .create_table(
                Table::create()
                    .table(RecordGameRequests::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(RecordGameRequests::UserId).uuid().not_null())
                    .col(
                        ColumnDef::new(RecordGameRequests::RequestId)
                            .string()
                            .not_null(),
                    )
                    .col(ColumnDef::new(RecordGameRequests::Result).blob().not_null())
                    .col(
                        ColumnDef::new(RecordGameRequests::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(RecordGameRequests::UserId)
                            .col(RecordGameRequests::RequestId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_record_game_requests_user")
                            .from(RecordGameRequests::Table, RecordGameRequests::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Serves the pruning of expired records.
        manager
            .create_index(
                Index::create()
                    .name("idx_record_game_requests_create_time")
                    .table(RecordGameRequests::Table)
                    .col(RecordGameRequests::CreateTime)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            RecordGameRequests::Table.into_iden(),
            LeaderboardSequence::Table.into_iden(),
            LeaderboardEntries::Table.into_iden(),
            UserStats::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// A NOT NULL BIGINT column.
fn big(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).big_integer().not_null().to_owned()
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum UserStats {
    Table,
    UserId,
    GamesPlayed,
    Wins,
    Losses,
    Draws,
    BestScore,
    TotalScore,
    UpdateTime,
}

#[derive(DeriveIden)]
enum LeaderboardEntries {
    Table,
    UserId,
    Score,
    Seq,
}

#[derive(DeriveIden)]
enum LeaderboardSequence {
    Table,
    Id,
    LastValue,
}

#[derive(DeriveIden)]
enum RecordGameRequests {
    Table,
    UserId,
    RequestId,
    Result,
    CreateTime,
}
