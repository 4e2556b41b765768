//! Roster's one error type and its one exhaustive mapping to gRPC status codes.

use std::{error::Error as StdError, fmt};

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::FieldViolation;

/// The `domain` of every google.rpc.ErrorInfo Roster returns.
pub const ERROR_DOMAIN: &str = "roster";

/// Anything a use case can fail with. Callers see a stable code, reason and a
/// short message; the logs get the whole cause chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request broke one or more field rules.
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// A user with the same canonical name exists.
    #[error("user already exists")]
    UserAlreadyExists,
    /// No user has that canonical name.
    #[error("user not found")]
    UserNotFound,
    /// Recording a game would overflow a user's 64-bit statistics.
    #[error("statistics would overflow")]
    StatsOverflow(#[from] crate::domain::StatsOverflow),
    /// The database could not be reached, or stayed busy past its timeout.
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] sea_orm::DbErr),
    /// The database's storage is full (SQLITE_FULL, Postgres 53100): the
    /// write was rolled back.
    #[error("database storage full")]
    StorageFull(#[source] sea_orm::DbErr),
    /// The database's storage failed (I/O error, read-only, cannot open,
    /// corrupt): the write may or may not have been stored.
    #[error("database storage failing")]
    StorageFailed(#[source] sea_orm::DbErr),
    /// Too many consecutive failed password checks for this account.
    #[error("too many failed attempts")]
    TooManyAttempts {
        /// How long the caller must wait.
        retry_after: std::time::Duration,
    },
    /// ChangePassword's current password is wrong (or the user is unknown).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A concurrent write changed the record this call was updating.
    #[error("concurrent update")]
    ConcurrentUpdate,
    /// No password-hashing slot would free up before the call's deadline.
    #[error("password hashing capacity exhausted")]
    HashingSaturated {
        /// When a slot is expected to be free.
        retry_after: std::time::Duration,
    },
    /// A fault on our side; details go to the log only.
    #[error("internal error")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

impl Error {
    /// Wraps an unexpected fault.
    pub fn internal(error: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::Internal(error.into())
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let (code, message, details) = match &error {
            Error::InvalidArgument(violations) => {
                let reason = violations.first().map_or("INVALID_ARGUMENT", |v| v.reason);
                let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, []);
                details.set_bad_request(
                    violations
                        .iter()
                        .map(|v| {
                            let mut violation =
                                tonic_types::FieldViolation::new(v.field, v.description.clone());
                            violation.reason = v.reason.to_owned();
                            violation
                        })
                        .collect::<Vec<_>>(),
                );
                let message = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                (Code::InvalidArgument, message, details)
            }
            Error::UserAlreadyExists => (
                Code::AlreadyExists,
                "a user with this name already exists".to_owned(),
                info("USER_ALREADY_EXISTS"),
            ),
            Error::UserNotFound => (
                Code::NotFound,
                "no user with this name".to_owned(),
                info("USER_NOT_FOUND"),
            ),
            Error::StatsOverflow(_) => (
                Code::FailedPrecondition,
                "the game would overflow the user's statistics; nothing was recorded".to_owned(),
                info("STATS_OVERFLOW"),
            ),
            Error::DatabaseUnavailable(_) => (
                Code::Unavailable,
                "the database is unavailable; retry later".to_owned(),
                info("DATABASE_UNAVAILABLE"),
            ),
            // gRPC's own definition of RESOURCE_EXHAUSTED names "the entire
            // file system is out of space".
            Error::StorageFull(_) => (
                Code::ResourceExhausted,
                "the database's storage is full; nothing was written".to_owned(),
                info("STORAGE_FULL"),
            ),
            Error::StorageFailed(_) => (
                Code::Unavailable,
                "the database's storage is failing; the write may not have been stored, \
                 retry with the same request_id"
                    .to_owned(),
                info("STORAGE_UNAVAILABLE"),
            ),
            Error::TooManyAttempts { retry_after } => {
                let mut details = info("TOO_MANY_FAILED_ATTEMPTS");
                details.set_retry_info(Some(*retry_after));
                (
                    Code::ResourceExhausted,
                    "too many failed attempts; retry later".to_owned(),
                    details,
                )
            }
            Error::InvalidCredentials => (
                Code::Unauthenticated,
                "invalid name or password".to_owned(),
                info("INVALID_CREDENTIALS"),
            ),
            Error::ConcurrentUpdate => (
                Code::Aborted,
                "the user changed concurrently; retry".to_owned(),
                info("CONCURRENT_UPDATE"),
            ),
            Error::HashingSaturated { retry_after } => {
                let mut details = info("HASHING_CAPACITY_EXHAUSTED");
                details.set_retry_info(Some(*retry_after));
                (
                    Code::ResourceExhausted,
                    "the server is busy hashing passwords; retry later".to_owned(),
                    details,
                )
            }
            Error::Internal(_) => (
                Code::Internal,
                "internal error".to_owned(),
                info("INTERNAL"),
            ),
        };
        match &error {
            Error::Internal(_) | Error::DatabaseUnavailable(_) => {
                tracing::error!(error = %Chain(&error), "request failed");
            }
            // The store logs storage episodes once, not once per call.
            _ => tracing::debug!(error = %Chain(&error), "request refused"),
        }
        tonic::Status::with_error_details(code, message, details)
    }
}

fn info(reason: &str) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, [])
}

/// Displays an error followed by every `source()` in its chain.
pub struct Chain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
