//! A registered user's public fields.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A registered user as callers see it: public fields only, never the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Server-assigned UUIDv7; immutable.
    pub id: Uuid,
    /// The name as registered (NFC), case preserved.
    pub name: String,
    /// When the user was created (microsecond precision, as every backend stores it).
    pub create_time: DateTime<Utc>,
    /// When the user last changed.
    pub update_time: DateTime<Utc>,
}
