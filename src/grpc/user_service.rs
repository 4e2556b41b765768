//! `roster.v1.UserService`.

use tonic::{Request, Response, Status};

use super::{Audited, deadline, parse};
use crate::{
    audit,
    proto::roster::v1::{self as pb, user_service_server::UserService},
    users::Users,
};

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
        let audited = Audited::of(&request, "CreateUser");
        let deadline = deadline(&request);
        let (name, password, request_id) =
            parse::create_user(request.into_inner()).map_err(|e| audited.refused(e))?;
        let key = name.key().clone();
        let result = self
            .users
            .create(name, password, request_id.clone(), deadline)
            .await;
        audited.record(Some(&key), request_id.as_ref(), audit::outcome(&result));
        let user = result?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some((&user).into()),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let name = parse::get_user(request.into_inner())?;
        let user = self.users.get(name).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some((&user).into()),
        }))
    }

    async fn verify_password(
        &self,
        request: Request<pb::VerifyPasswordRequest>,
    ) -> Result<Response<pb::VerifyPasswordResponse>, Status> {
        let audited = Audited::of(&request, "VerifyPassword");
        let deadline = deadline(&request);
        let (name, password) =
            parse::verify_password(request.into_inner()).map_err(|e| audited.refused(e))?;
        let key = name.key().clone();
        let result = self.users.verify_password(name, password, deadline).await;
        let outcome = match &result {
            Ok(Some(_)) => "valid",
            Ok(None) => "invalid",
            Err(error) => error.reason(),
        };
        audited.record(Some(&key), None, outcome);
        let user = result?;
        Ok(Response::new(pb::VerifyPasswordResponse {
            valid: user.is_some(),
            user: user.as_ref().map(Into::into),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let audited = Audited::of(&request, "ChangePassword");
        let deadline = deadline(&request);
        let (name, current, new, request_id) =
            parse::change_password(request.into_inner()).map_err(|e| audited.refused(e))?;
        let key = name.key().clone();
        let result = self
            .users
            .change_password(name, current, new, request_id.clone(), deadline)
            .await;
        audited.record(Some(&key), request_id.as_ref(), audit::outcome(&result));
        let user = result?;
        Ok(Response::new(pb::ChangePasswordResponse {
            user: Some((&user).into()),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let audited = Audited::of(&request, "DeleteUser");
        let (name, request_id) =
            parse::delete_user(request.into_inner()).map_err(|e| audited.refused(e))?;
        let key = name.key().clone();
        let result = self.users.delete(name, request_id.clone()).await;
        audited.record(Some(&key), request_id.as_ref(), audit::outcome(&result));
        result?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let audited = Audited::of(&request, "ListUsers");
        let (size, cursor) =
            parse::list_users(request.into_inner()).map_err(|e| audited.refused(e))?;
        let result = self.users.list(size, cursor).await;
        audited.record(None, None, audit::outcome(&result));
        let (users, next) = result?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(Into::into).collect(),
            next_page_token: next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }
}
