//! Types that are valid by construction: parse once at the edge, trust afterwards. No I/O.

mod change;
mod leaderboard;
mod page;
mod password;
mod request_id;
mod user;
mod user_name;

pub use change::{Change, Committed};
pub use leaderboard::{
    BoardEntry, BoardPage, BoardPosition, Outcome, PageToken, Score, Stats, StatsOverflow,
    window_start,
};
pub use page::{PageSize, UserCursor};
pub use password::{PASSWORD_RULE_VERSION, Password};
pub use request_id::{RequestId, UserMethod};
pub use user::User;
pub use user_name::{NameKey, UserName};

/// A rule that a value breaks, before we know which request field held it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Stable SCREAMING_SNAKE_CASE identifier of the rule, e.g. `NAME_TOO_LONG`.
    pub reason: &'static str,
    /// A short human-readable explanation; never echoes secrets.
    pub description: String,
}

impl Invalid {
    pub(crate) fn new(reason: &'static str, description: impl Into<String>) -> Self {
        Self {
            reason,
            description: description.into(),
        }
    }

    /// Attaches the request field that held the offending value.
    pub fn on(self, field: &'static str) -> FieldViolation {
        FieldViolation {
            field,
            reason: self.reason,
            description: self.description,
        }
    }
}

/// A rule broken by one field of a request (becomes a google.rpc.BadRequest violation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field, e.g. `name`.
    pub field: &'static str,
    /// Stable SCREAMING_SNAKE_CASE identifier of the rule.
    pub reason: &'static str,
    /// A short human-readable explanation.
    pub description: String,
}
