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
    /// The method needs a caller identity and the call has none.
    #[error("caller identity required")]
    Unauthenticated,
    /// The caller's identity may not call the method.
    #[error("method not allowed for this caller")]
    PermissionDenied,
    /// The caller used up its quota of calls that hash a password.
    #[error("caller quota exceeded")]
    CallerQuotaExceeded {
        /// When the caller's bucket has room again.
        retry_after: std::time::Duration,
    },
    /// More calls are in flight than `--max-concurrent-calls` allows: the
    /// call was shed before any work was done.
    #[error("server overloaded")]
    ServerOverloaded {
        /// A hint of when to try again.
        retry_after: std::time::Duration,
    },
    /// The request message is larger than the server accepts (refused by
    /// the decoder before decoding).
    #[error("request too large")]
    RequestTooLarge {
        /// The largest message accepted, in bytes.
        limit: usize,
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

    /// The stable reason callers see in google.rpc.ErrorInfo (and the
    /// audit trail records).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(violations) => {
                violations.first().map_or("INVALID_ARGUMENT", |v| v.reason)
            }
            Error::UserAlreadyExists => "USER_ALREADY_EXISTS",
            Error::UserNotFound => "USER_NOT_FOUND",
            Error::StatsOverflow(_) => "STATS_OVERFLOW",
            Error::DatabaseUnavailable(_) => "DATABASE_UNAVAILABLE",
            Error::StorageFull(_) => "STORAGE_FULL",
            Error::StorageFailed(_) => "STORAGE_UNAVAILABLE",
            Error::TooManyAttempts { .. } => "TOO_MANY_FAILED_ATTEMPTS",
            Error::InvalidCredentials => "INVALID_CREDENTIALS",
            Error::ConcurrentUpdate => "CONCURRENT_UPDATE",
            Error::HashingSaturated { .. } => "HASHING_CAPACITY_EXHAUSTED",
            Error::Unauthenticated => "IDENTITY_REQUIRED",
            Error::PermissionDenied => "METHOD_NOT_ALLOWED",
            Error::CallerQuotaExceeded { .. } => "CALLER_QUOTA_EXCEEDED",
            Error::ServerOverloaded { .. } => "SERVER_OVERLOADED",
            Error::RequestTooLarge { .. } => "REQUEST_TOO_LARGE",
            Error::Internal(_) => "INTERNAL",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let mut details = ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, []);
        let (code, message) = match &error {
            Error::InvalidArgument(violations) => {
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
                (Code::InvalidArgument, message)
            }
            Error::UserAlreadyExists => (
                Code::AlreadyExists,
                "a user with this name already exists".to_owned(),
            ),
            Error::UserNotFound => (Code::NotFound, "no user with this name".to_owned()),
            Error::StatsOverflow(_) => (
                Code::FailedPrecondition,
                "the game would overflow the user's statistics; nothing was recorded".to_owned(),
            ),
            Error::DatabaseUnavailable(_) => (
                Code::Unavailable,
                "the database is unavailable; retry later".to_owned(),
            ),
            // gRPC's own definition of RESOURCE_EXHAUSTED names "the entire
            // file system is out of space".
            Error::StorageFull(_) => (
                Code::ResourceExhausted,
                "the database's storage is full; nothing was written".to_owned(),
            ),
            Error::StorageFailed(_) => (
                Code::Unavailable,
                "the database's storage is failing; the write may not have been stored, \
                 retry with the same request_id"
                    .to_owned(),
            ),
            Error::TooManyAttempts { retry_after } => {
                details.set_retry_info(Some(*retry_after));
                (
                    Code::ResourceExhausted,
                    "too many failed attempts; retry later".to_owned(),
                )
            }
            Error::InvalidCredentials => {
                (Code::Unauthenticated, "invalid name or password".to_owned())
            }
            Error::ConcurrentUpdate => (
                Code::Aborted,
                "the user changed concurrently; retry".to_owned(),
            ),
            Error::HashingSaturated { retry_after } => {
                details.set_retry_info(Some(*retry_after));
                (
                    Code::ResourceExhausted,
                    "the server is busy hashing passwords; retry later".to_owned(),
                )
            }
            Error::Unauthenticated => (
                Code::Unauthenticated,
                "this method needs a caller identity (a client certificate, a mesh identity \
                 or a bearer token)"
                    .to_owned(),
            ),
            Error::PermissionDenied => (
                Code::PermissionDenied,
                "the caller may not call this method".to_owned(),
            ),
            Error::CallerQuotaExceeded { retry_after } => {
                details.set_retry_info(Some(*retry_after));
                (
                    Code::ResourceExhausted,
                    "this caller's quota of password checks and changes is used up; retry later"
                        .to_owned(),
                )
            }
            // RESOURCE_EXHAUSTED, as tonic's own load shedding answers and
            // as gRPC's status table has it for a server out of a resource;
            // the RetryInfo and reason say it is the server, not the caller.
            Error::ServerOverloaded { retry_after } => {
                details.set_retry_info(Some(*retry_after));
                (
                    Code::ResourceExhausted,
                    "the server has too many calls in flight; retry later".to_owned(),
                )
            }
            // gRPC's status code table: a message larger than the receiver
            // allows is RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE).
            Error::RequestTooLarge { limit } => (
                Code::ResourceExhausted,
                format!("the request message is larger than the {limit} bytes accepted"),
            ),
            Error::Internal(_) => (Code::Internal, "internal error".to_owned()),
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
