//! SeaORM entities, one per table.

pub mod cache_outbox;
pub mod leaderboard_entries;
pub mod leaderboard_sequence;
pub mod record_game_requests;
pub mod user_requests;
pub mod user_stats;
pub mod users;
