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

/// The call's deadline from its `grpc-timeout` header, if the client set one.
/// Parsed here because tonic enforces the header but does not expose it.
pub(crate) fn deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
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
