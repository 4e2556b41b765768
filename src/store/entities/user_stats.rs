//! The `user_stats` table: one row per user who has played.

use sea_orm::entity::prelude::*;

/// A user's statistics over every recorded game.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_stats")]
pub struct Model {
    /// The user; also the foreign key to `users` (ON DELETE CASCADE).
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// wins + losses + draws.
    pub games_played: i64,
    /// Games won.
    pub wins: i64,
    /// Games lost.
    pub losses: i64,
    /// Games drawn.
    pub draws: i64,
    /// Highest score of any game.
    pub best_score: i64,
    /// Sum of every game's score.
    pub total_score: i64,
    /// When the last game was recorded.
    pub update_time: ChronoDateTimeUtc,
}

/// Stats belong to a user.
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
