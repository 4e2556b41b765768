//! `roster.v1.LeaderboardService`.

use tonic::{Request, Response, Status};

use super::Fields;
use crate::{
    domain::{Outcome, PageSize, PageToken, RequestId, Score, UserName},
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
        let request = request.into_inner();
        let mut fields = Fields::new();
        let name = fields.check("name", UserName::parse(&request.name));
        let outcome = fields.check("outcome", Outcome::parse(request.outcome));
        let score = fields.check("score", Score::parse(request.score));
        let request_id = fields.check("request_id", RequestId::parse(&request.request_id));
        let (((name, outcome), score), request_id) =
            fields.finish(name.zip(outcome).zip(score).zip(request_id))?;
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
        let name = Fields::one("name", UserName::parse(&request.into_inner().name))?;
        let ranked = self.leaderboard.stats(name).await?;
        Ok(Response::new(pb::GetUserStatsResponse {
            stats: wire(&ranked),
        }))
    }

    async fn list_leaderboard(
        &self,
        request: Request<pb::ListLeaderboardRequest>,
    ) -> Result<Response<pb::ListLeaderboardResponse>, Status> {
        let request = request.into_inner();
        let mut fields = Fields::new();
        let size = fields.check("page_size", PageSize::parse_page(request.page_size));
        // A token can only be checked against a valid page size.
        let offset = size.and_then(|size| {
            fields.check("page_token", PageToken::decode(&request.page_token, size))
        });
        let (size, offset) = fields.finish(size.zip(offset))?;
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
        let request = request.into_inner();
        let mut fields = Fields::new();
        let name = fields.check("name", UserName::parse(&request.name));
        let size = fields.check("page_size", PageSize::parse_window(request.page_size));
        let (name, size) = fields.finish(name.zip(size))?;
        let entries = self.leaderboard.around(name, size).await?;
        Ok(Response::new(pb::ListLeaderboardAroundUserResponse {
            entries: entries.into_iter().map(Into::into).collect(),
        }))
    }
}
