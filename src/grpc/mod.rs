//! Thin gRPC adapters: take the request apart, parse it into domain types,
//! call one use case, encode the answer.

mod leaderboard_service;
pub mod parse;
mod user_service;

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    domain::{FieldViolation, Invalid},
    error::Error,
};

pub use leaderboard_service::LeaderboardServiceImpl;
pub use user_service::UserServiceImpl;

/// One audited call: who made it and which method (see `crate::audit`).
pub(crate) struct Audited {
    caller: Option<crate::access::Caller>,
    method: &'static str,
}

impl Audited {
    /// The caller the access layer identified for `request`.
    pub(crate) fn of<T>(request: &tonic::Request<T>, method: &'static str) -> Self {
        Self {
            caller: request.extensions().get::<crate::access::Caller>().cloned(),
            method,
        }
    }

    /// Records the outcome; `user` is the user the call was about, once
    /// known (a request that did not parse has none).
    pub(crate) fn record(
        &self,
        user: Option<&crate::domain::NameKey>,
        request_id: Option<&crate::domain::RequestId>,
        outcome: &str,
    ) {
        crate::audit::call(
            self.caller.as_ref(),
            self.method,
            user.map(crate::domain::NameKey::as_str),
            outcome,
            request_id.map(crate::domain::RequestId::as_str),
        );
    }

    /// Records a request that did not parse, and hands its error back.
    pub(crate) fn refused(&self, error: Error) -> Error {
        self.record(None, None, error.reason());
        error
    }
}

/// The call's deadline from its `grpc-timeout` header, if the client set one.
pub(crate) fn deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    Instant::now().checked_add(grpc_timeout(request.metadata().as_ref())?)
}

/// The `grpc-timeout` header's value: at most 8 digits and a unit (the gRPC
/// HTTP/2 protocol); `None` when absent or malformed.
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Names the field of each parse result and collects every violation, so a
/// caller learns about all bad fields in one round trip.
pub(crate) struct Fields(Vec<FieldViolation>);

impl Fields {
    pub(crate) fn new() -> Self {
        Self(Vec::new())
    }

    /// Records `result`'s violation under `field`, if any, and passes the value on.
    pub(crate) fn check<T>(
        &mut self,
        field: &'static str,
        result: Result<T, Invalid>,
    ) -> Option<T> {
        result
            .map_err(|invalid| self.0.push(invalid.on(field)))
            .ok()
    }

    /// A request with one field to check: its value, or `INVALID_ARGUMENT`.
    pub(crate) fn one<T>(field: &'static str, result: Result<T, Invalid>) -> Result<T, Error> {
        let mut fields = Self::new();
        let value = fields.check(field, result);
        fields.finish(value)
    }

    /// The parsed values, or `INVALID_ARGUMENT` with every violation recorded.
    pub(crate) fn finish<T>(self, parsed: Option<T>) -> Result<T, Error> {
        match parsed {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(Error::InvalidArgument(self.0)),
        }
    }
}
