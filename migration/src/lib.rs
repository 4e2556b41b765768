//! Roster's schema, one file per migration, applied in order at start-up.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_create_users;
mod m20261126_000001_create_leaderboard;
mod m20261201_000001_create_outbox;

/// Every migration Roster has ever shipped, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_users::Migration),
            Box::new(m20261126_000001_create_leaderboard::Migration),
            Box::new(m20261201_000001_create_outbox::Migration),
        ]
    }
}
