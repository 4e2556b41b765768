//! `roster.v1.UserService`.

use tonic::{Request, Response, Status};

use super::{Fields, deadline};
use crate::{
    domain::{PageSize, Password, RequestId, UserCursor, UserName},
    proto::roster::v1::{self as pb, user_service_server::UserService},
    users::Users,
};

/// ListUsers page size when the request leaves it at 0.
const LIST_USERS_DEFAULT: u32 = 50;
/// Larger ListUsers page sizes are lowered to this.
const LIST_USERS_MAX: u32 = 1000;

/// The gRPC face of [`Users`].
pub struct UserServiceImpl {
    users: Users,
}

impl UserServiceImpl {
    /// Serves `users` over gRPC.
    pub fn new(users: Users) -> Self {
        Self { users }
    }
}

#[tonic::async_trait]
impl UserService for UserServiceImpl {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        let mut fields = Fields::new();
        let name = fields.check("name", UserName::parse(&request.name));
        let password = fields.check(
            "password",
            Password::parse_new(request.password, name.as_ref()),
        );
        let request_id = fields.check("request_id", RequestId::parse(&request.request_id));
        let ((name, password), request_id) = fields.finish(name.zip(password).zip(request_id))?;
        let user = self
            .users
            .create(name, password, request_id, deadline)
            .await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some((&user).into()),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let name = Fields::one("name", UserName::parse(&request.into_inner().name))?;
        let user = self.users.get(name).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some((&user).into()),
        }))
    }

    async fn verify_password(
        &self,
        request: Request<pb::VerifyPasswordRequest>,
    ) -> Result<Response<pb::VerifyPasswordResponse>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
        let mut fields = Fields::new();
        let name = fields.check("name", UserName::parse(&request.name));
        let password = fields.check("password", Password::parse_candidate(request.password));
        let (name, password) = fields.finish(name.zip(password))?;
        let user = self.users.verify_password(name, password, deadline).await?;
        Ok(Response::new(pb::VerifyPasswordResponse {
            valid: user.is_some(),
            user: user.as_ref().map(Into::into),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let deadline = deadline(&request);
        let request = request.into_inner();
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
        let user = self
            .users
            .change_password(name, current, new, request_id, deadline)
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {
            user: Some((&user).into()),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let request = request.into_inner();
        let mut fields = Fields::new();
        let name = fields.check("name", UserName::parse(&request.name));
        let request_id = fields.check("request_id", RequestId::parse(&request.request_id));
        let (name, request_id) = fields.finish(name.zip(request_id))?;
        self.users.delete(name, request_id).await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let request = request.into_inner();
        let mut fields = Fields::new();
        let size = fields.check(
            "page_size",
            PageSize::parse(request.page_size, LIST_USERS_DEFAULT, LIST_USERS_MAX),
        );
        let cursor = fields.check("page_token", UserCursor::parse(&request.page_token));
        let (size, cursor) = fields.finish(size.zip(cursor))?;
        let (users, next) = self.users.list(size, cursor).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(Into::into).collect(),
            next_page_token: next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }
}
