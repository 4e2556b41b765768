//! The `users` table.

use sea_orm::entity::prelude::*;

/// One registered user. `password_hash` is an argon2id PHC string: read it only
/// to verify a password, and never log a `Model`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// UUIDv7, server-assigned.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Display name as registered (NFC).
    pub name: String,
    /// Canonical name key; UNIQUE.
    #[sea_orm(unique)]
    pub name_key: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Creation time.
    pub create_time: ChronoDateTimeUtc,
    /// Last change.
    pub update_time: ChronoDateTimeUtc,
}

/// No relations yet.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// The public columns of a user: what every read that is not a password check selects.
#[derive(Debug, Clone, DerivePartialModel)]
#[sea_orm(entity = "Entity")]
pub struct PublicUser {
    /// See [`Model::id`].
    pub id: Uuid,
    /// See [`Model::name`].
    pub name: String,
    /// See [`Model::name_key`].
    pub name_key: String,
    /// See [`Model::create_time`].
    pub create_time: ChronoDateTimeUtc,
    /// See [`Model::update_time`].
    pub update_time: ChronoDateTimeUtc,
}

impl From<PublicUser> for crate::domain::User {
    fn from(row: PublicUser) -> Self {
        Self {
            id: row.id,
            name: row.name,
            create_time: row.create_time,
            update_time: row.update_time,
        }
    }
}
