//! Conversions between the leaderboard's domain types and their wire form.

use uuid::Uuid;

use super::{
    convert::{time, timestamp},
    roster::v1 as pb,
};
use crate::domain::{BoardEntry, Stats};

/// The wire form of `stats` with `rank` (0 = unranked).
pub fn stats_to_wire(stats: &Stats, rank: u64) -> pb::UserStats {
    pb::UserStats {
        user_id: stats.user_id.to_string(),
        name: stats.name.clone(),
        games_played: stats.games_played,
        wins: stats.wins,
        losses: stats.losses,
        draws: stats.draws,
        best_score: stats.best_score,
        total_score: stats.total_score,
        rank: i64::try_from(rank).unwrap_or(i64::MAX),
        update_time: stats.update_time.map(timestamp),
    }
}

/// Stats from their wire form (the rank is dropped: it is computed on read);
/// `None` when the user id is malformed.
pub fn stats_from_wire(stats: pb::UserStats) -> Option<Stats> {
    Some(Stats {
        user_id: Uuid::parse_str(&stats.user_id).ok()?,
        name: stats.name,
        games_played: stats.games_played,
        wins: stats.wins,
        losses: stats.losses,
        draws: stats.draws,
        best_score: stats.best_score,
        total_score: stats.total_score,
        update_time: time(stats.update_time),
    })
}

impl From<BoardEntry> for pb::LeaderboardEntry {
    fn from(entry: BoardEntry) -> Self {
        Self {
            rank: i64::try_from(entry.rank).unwrap_or(i64::MAX),
            user_id: entry.user_id.to_string(),
            name: entry.name,
            score: entry.score,
        }
    }
}
