//! The `record_game_requests` table: RecordGame's idempotency records.

use sea_orm::entity::prelude::*;

/// The first result of a RecordGame call with a request_id.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "record_game_requests")]
pub struct Model {
    /// The user; also the foreign key to `users` (ON DELETE CASCADE).
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// The caller's idempotency key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    /// The stats the first call produced, as an encoded `roster.v1.UserStats`
    /// without rank (ranks are computed on read).
    pub result: Vec<u8>,
    /// When the first call committed; records older than the retention are pruned.
    pub create_time: ChronoDateTimeUtc,
}

/// Idempotency records belong to a user.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The owner.
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::UserId",
        to = "super::users::Column::Id",
        on_delete = "Cascade"
    )]
    User,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::User.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
