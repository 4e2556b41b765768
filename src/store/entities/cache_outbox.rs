//! The `cache_outbox` table: one row per committed change the caches must learn.

use sea_orm::entity::prelude::*;

/// One committed change (see `domain::Change`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cache_outbox")]
pub struct Model {
    /// Commit-ordered number from `cache_outbox_sequence`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    /// `domain::Change::kind`.
    pub kind: i16,
    /// The user's canonical name key.
    pub name_key: String,
    /// The deleted user's id, for deletions.
    pub user_id: Option<Uuid>,
    /// When the change committed; rows older than the retention are pruned.
    pub create_time: ChronoDateTimeUtc,
}

/// No relations: a row outlives the user it names.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
