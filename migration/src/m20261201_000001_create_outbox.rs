//! What the caches must learn, recorded with the write that caused it:
//! `cache_outbox` (one row per committed change, numbered in commit order by
//! `cache_outbox_sequence`), and `user_requests` (the first result of a
//! CreateUser, ChangePassword or DeleteUser call with a request_id).

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One row per committed write, written in the write's transaction.
        // Any replica that reaches Redis delivers the rows (deletes cached
        // users, updates the board) and records how far it got in Redis, so
        // an invalidation survives a writer that is cut off from Redis, and a
        // reader can tell whether Redis has every committed change.
        manager
            .create_table(
                Table::create()
                    .table(CacheOutbox::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(CacheOutbox::Seq)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(CacheOutbox::Kind).small_integer().not_null())
                    .col(ColumnDef::new(CacheOutbox::NameKey).string().not_null())
                    .col(ColumnDef::new(CacheOutbox::UserId).uuid().null())
                    .col(
                        ColumnDef::new(CacheOutbox::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // A single-row counter, as `leaderboard_sequence`: its row lock hands
        // out outbox numbers in commit order on Postgres (a SEQUENCE would
        // not: number 9 could commit after number 10, and a reader that saw
        // 10 would skip 9 for good).
        manager
            .create_table(
                Table::create()
                    .table(CacheOutboxSequence::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(CacheOutboxSequence::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(CacheOutboxSequence::LastValue)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(CacheOutboxSequence::Table)
                    .columns([CacheOutboxSequence::Id, CacheOutboxSequence::LastValue])
                    .values_panic([1.into(), 0.into()])
                    .to_owned(),
            )
            .await?;
        // Idempotency records of the user RPCs, kept at least 24 hours. No
        // foreign key: DeleteUser's record must outlive the user.
        manager
            .create_table(
                Table::create()
                    .table(UserRequests::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(UserRequests::Method).string().not_null())
                    .col(ColumnDef::new(UserRequests::RequestId).string().not_null())
                    .col(ColumnDef::new(UserRequests::NameKey).string().not_null())
                    .col(ColumnDef::new(UserRequests::Result).blob().not_null())
                    .col(
                        ColumnDef::new(UserRequests::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(UserRequests::Method)
                            .col(UserRequests::RequestId),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, table, column) in [
            (
                "idx_user_requests_create_time",
                UserRequests::Table.into_iden(),
                UserRequests::CreateTime.into_iden(),
            ),
            (
                "idx_cache_outbox_create_time",
                CacheOutbox::Table.into_iden(),
                CacheOutbox::CreateTime.into_iden(),
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(table)
                        .col(column)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }
        if manager.get_database_backend() == DbBackend::Postgres {
            // Push on Postgres: every transaction that adds outbox rows wakes
            // the listening replicas once, at commit (NOTIFY is
            // transactional, and equal payloads in one transaction fold).
            let db = manager.get_connection();
            db.execute_unprepared(
                "CREATE OR REPLACE FUNCTION roster_cache_outbox_notify() RETURNS trigger \
                 LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('roster_cache_outbox', ''); \
                 RETURN NULL; END $$",
            )
            .await?;
            db.execute_unprepared(
                "CREATE TRIGGER cache_outbox_notify AFTER INSERT ON cache_outbox \
                 FOR EACH STATEMENT EXECUTE FUNCTION roster_cache_outbox_notify()",
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS roster_cache_outbox_notify() CASCADE")
                .await?;
        }
        for table in [
            UserRequests::Table.into_iden(),
            CacheOutboxSequence::Table.into_iden(),
            CacheOutbox::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum CacheOutbox {
    Table,
    Seq,
    Kind,
    NameKey,
    UserId,
    CreateTime,
}

#[derive(DeriveIden)]
enum CacheOutboxSequence {
    Table,
    Id,
    LastValue,
}

#[derive(DeriveIden)]
enum UserRequests {
    Table,
    Method,
    RequestId,
    NameKey,
    Result,
    CreateTime,
}
