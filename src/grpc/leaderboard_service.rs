//! `roster.v1.LeaderboardService`.

use tonic::{Request, Response, Status};

use super::parse;
use crate::{
    leaderboard::{Leaderboard, RankedStats},
    proto::{
        roster::v1::{self as pb, leaderboard_service_server::LeaderboardService},
        stats_to_wire,
    },
};

/// The gRPC face of [`Leaderboard`].
pub struct LeaderboardServiceImpl {
    leaderboard: Leaderboard,
}

impl LeaderboardServiceImpl {
    /// Serves `leaderboard` over gRPC.
    pub fn new(leaderboard: Leaderboard) -> Self {
        Self { leaderboard }
    }
}

fn wire(ranked: &RankedStats) -> Option<pb::UserStats> {
    Some(stats_to_wire(&ranked.stats, ranked.rank))
}

#[tonic::async_trait]
impl LeaderboardService for LeaderboardServiceImpl {
    async fn record_game(
        &self,
        request: Request<pb::RecordGameRequest>,
    ) -> Result<Response<pb::RecordGameResponse>, Status> {
        let (name, outcome, score, request_id) = parse::record_game(request.into_inner())?;
        let ranked = self
            .leaderboard
            .record_game(name, outcome, score, request_id)
            .await?;
        Ok(Response::new(pb::RecordGameResponse {
            stats: wire(&ranked),
        }))
    }

    async fn get_user_stats(
        &self,
        request: Request<pb::GetUserStatsRequest>,
    ) -> Result<Response<pb::GetUserStatsResponse>, Status> {
        let name = parse::get_user_stats(request.into_inner())?;
        let ranked = self.leaderboard.stats(name).await?;
        Ok(Response::new(pb::GetUserStatsResponse {
            stats: wire(&ranked),
        }))
    }

    async fn list_leaderboard(
        &self,
        request: Request<pb::ListLeaderboardRequest>,
    ) -> Result<Response<pb::ListLeaderboardResponse>, Status> {
        let (size, offset) = parse::list_leaderboard(request.into_inner())?;
        let result = self.leaderboard.page(size, offset).await?;
        Ok(Response::new(pb::ListLeaderboardResponse {
            entries: result.page.entries.into_iter().map(Into::into).collect(),
            next_page_token: result.next.map(|t| t.encode()).unwrap_or_default(),
            total_size: i64::try_from(result.page.total).unwrap_or(i64::MAX),
        }))
    }

    async fn list_leaderboard_around_user(
        &self,
        request: Request<pb::ListLeaderboardAroundUserRequest>,
    ) -> Result<Response<pb::ListLeaderboardAroundUserResponse>, Status> {
        let (name, size) = parse::list_leaderboard_around_user(request.into_inner())?;
        let entries = self.leaderboard.around(name, size).await?;
        Ok(Response::new(pb::ListLeaderboardAroundUserResponse {
            entries: entries.into_iter().map(Into::into).collect(),
        }))
    }
}
