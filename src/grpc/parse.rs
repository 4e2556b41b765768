//! Every request message parsed into domain types, as the handlers do before
//! calling a use case: each field checked, every violation collected, or the
//! parsed values. No I/O, so the fuzz targets (`fuzz/`) and property tests
//! run exactly the handlers' parsing on arbitrary messages.

use super::Fields;
use crate::{
    domain::{Outcome, PageSize, PageToken, Password, RequestId, Score, UserCursor, UserName},
    error::Error,
    proto::roster::v1 as pb,
};

/// ListUsers page size when the request leaves it at 0.
pub const LIST_USERS_DEFAULT: u32 = 50;
/// Larger ListUsers page sizes are lowered to this.
pub const LIST_USERS_MAX: u32 = 1000;

/// CreateUser: the name, the new password and the optional idempotency key.
pub fn create_user(
    request: pb::CreateUserRequest,
) -> Result<(UserName, Password, Option<RequestId>), Error> {
    let mut fields = Fields::new();
    let name = fields.check("name", UserName::parse(&request.name));
    let password = fields.check(
        "password",
        Password::parse_new(request.password, name.as_ref()),
    );
    let request_id = fields.check("request_id", RequestId::parse(&request.request_id));
    let ((name, password), request_id) = fields.finish(name.zip(password).zip(request_id))?;
    Ok((name, password, request_id))
}

/// GetUser: the name.
pub fn get_user(request: pb::GetUserRequest) -> Result<UserName, Error> {
    Fields::one("name", UserName::parse(&request.name))
}

/// VerifyPassword: the name and the password to check.
pub fn verify_password(request: pb::VerifyPasswordRequest) -> Result<(UserName, Password), Error> {
    let mut fields = Fields::new();
    let name = fields.check("name", UserName::parse(&request.name));
    let password = fields.check("password", Password::parse_candidate(request.password));
    fields.finish(name.zip(password))
}

/// ChangePassword: the name, the current password, the new one and the
/// optional idempotency key.
pub fn change_password(
    request: pb::ChangePasswordRequest,
) -> Result<(UserName, Password, Password, Option<RequestId>), Error> {
    let mut fields = Fields::new();
    let name = fields.check("name", UserName::parse(&request.name));
    let current = fields.check(
        "current_password",
        Password::parse_candidate(request.current_password),
    );
    let new = fields.check(
        "new_password",
        Password::parse_new(request.new_password, name.as_ref()),
    );
    let request_id = fields.check("request_id", RequestId::parse(&request.request_id));
    let (((name, current), new), request_id) =
        fields.finish(name.zip(current).zip(new).zip(request_id))?;
    Ok((name, current, new, request_id))
}

/// DeleteUser: the name and the optional idempotency key.
pub fn delete_user(request: pb::DeleteUserRequest) -> Result<(UserName, Option<RequestId>), Error> {
    let mut fields = Fields::new();
    let name = fields.check("name", UserName::parse(&request.name));
    let request_id = fields.check("request_id", RequestId::parse(&request.request_id));
    fields.finish(name.zip(request_id))
}

/// ListUsers: the page size and where the page starts (`None`: the first page).
pub fn list_users(request: pb::ListUsersRequest) -> Result<(PageSize, Option<UserCursor>), Error> {
    let mut fields = Fields::new();
    let size = fields.check(
        "page_size",
        PageSize::parse(request.page_size, LIST_USERS_DEFAULT, LIST_USERS_MAX),
    );
    let cursor = fields.check("page_token", UserCursor::parse(&request.page_token));
    fields.finish(size.zip(cursor))
}

/// RecordGame: the name, the outcome, the score and the optional idempotency key.
pub fn record_game(
    request: pb::RecordGameRequest,
) -> Result<(UserName, Outcome, Score, Option<RequestId>), Error> {
    let mut fields = Fields::new();
    let name = fields.check("name", UserName::parse(&request.name));
    let outcome = fields.check("outcome", Outcome::parse(request.outcome));
    let score = fields.check("score", Score::parse(request.score));
    let request_id = fields.check("request_id", RequestId::parse(&request.request_id));
    let (((name, outcome), score), request_id) =
        fields.finish(name.zip(outcome).zip(score).zip(request_id))?;
    Ok((name, outcome, score, request_id))
}

/// GetUserStats: the name.
pub fn get_user_stats(request: pb::GetUserStatsRequest) -> Result<UserName, Error> {
    Fields::one("name", UserName::parse(&request.name))
}

/// ListLeaderboard: the page size and the 0-based offset its token addresses.
pub fn list_leaderboard(request: pb::ListLeaderboardRequest) -> Result<(PageSize, u64), Error> {
    let mut fields = Fields::new();
    let size = fields.check("page_size", PageSize::parse_page(request.page_size));
    // A token can only be checked against a valid page size.
    let offset = size
        .and_then(|size| fields.check("page_token", PageToken::decode(&request.page_token, size)));
    fields.finish(size.zip(offset))
}

/// ListLeaderboardAroundUser: the name and the window size.
pub fn list_leaderboard_around_user(
    request: pb::ListLeaderboardAroundUserRequest,
) -> Result<(UserName, PageSize), Error> {
    let mut fields = Fields::new();
    let name = fields.check("name", UserName::parse(&request.name));
    let size = fields.check("page_size", PageSize::parse_window(request.page_size));
    fields.finish(name.zip(size))
}
