//! `roster.v1.UserService`.

use tonic::{Request, Response, Status};

use super::{Fields, deadline};
use crate::{
    domain::{Password, UserName},
    error::Error,
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
        let deadline = deadline(&request);
        let request = request.into_inner();
        let mut fields = Fields::new();
        let name = fields.check("name", UserName::parse(&request.name));
        let password = fields.check("password", Password::parse(request.password));
        let (name, password) = fields.finish(name.zip(password))?;
        let user = self.users.create(name, password, deadline).await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some((&user).into()),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let name = UserName::parse(&request.into_inner().name)
            .map_err(|invalid| Error::InvalidArgument(vec![invalid.on("name")]))?;
        let user = self.users.get(name).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some((&user).into()),
        }))
    }
}
