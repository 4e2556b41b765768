//! The `user_requests` table: idempotency records of CreateUser,
//! ChangePassword and DeleteUser.

use sea_orm::entity::prelude::*;

/// The first result of a user RPC called with a request_id.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "user_requests")]
pub struct Model {
    /// `domain::UserMethod::as_str`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub method: String,
    /// The caller's idempotency key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub request_id: String,
    /// The canonical name the first call was about.
    pub name_key: String,
    /// The first call's answer: an encoded `roster.v1.User`, or empty for
    /// DeleteUser. Never a password or hash.
    pub result: Vec<u8>,
    /// When the first call committed; records older than the retention are pruned.
    pub create_time: ChronoDateTimeUtc,
}

/// No relations: DeleteUser's record outlives the user.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
