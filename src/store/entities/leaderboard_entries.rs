//! The `leaderboard_entries` table: one row per ranked user. Ranks are not
//! stored; they are the position in (score DESC, seq ASC) order.

use sea_orm::entity::prelude::*;

/// A user's place-defining values on the board.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "leaderboard_entries")]
pub struct Model {
    /// The user; also the foreign key to `users` (ON DELETE CASCADE).
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// The user's best score.
    pub score: i64,
    /// When the user reached `score`, as a number from `leaderboard_sequence`
    /// (lower is earlier); UNIQUE.
    #[sea_orm(unique)]
    pub seq: i64,
}

/// Board rows belong to a user.
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
