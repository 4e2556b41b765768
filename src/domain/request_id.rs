//! Idempotency keys of the write RPCs. No I/O.

use super::Invalid;

/// A caller-chosen idempotency key (AIP-155): 1 to 64 bytes, no control
/// characters. A retry that carries the key of a call that completed gets
/// that call's result instead of running again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// The longest accepted key, in bytes.
    pub const MAX_BYTES: usize = 64;

    /// `None` for an empty key (no idempotency), else the checked key.
    pub fn parse(raw: &str) -> Result<Option<Self>, Invalid> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(Invalid::new(
                "REQUEST_ID_TOO_LONG",
                format!("request_id must be at most {} bytes", Self::MAX_BYTES),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(Invalid::new(
                "REQUEST_ID_INVALID_CHARACTER",
                "request_id must not contain control characters",
            ));
        }
        Ok(Some(Self(raw.to_owned())))
    }

    /// The violation for a key that an earlier call used for another user.
    pub fn reused() -> Invalid {
        Invalid::new(
            "REQUEST_ID_REUSED",
            "request_id was already used for a call about another user",
        )
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The write RPC an idempotency key belongs to: keys are scoped per method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserMethod {
    /// CreateUser.
    CreateUser,
    /// ChangePassword.
    ChangePassword,
    /// DeleteUser.
    DeleteUser,
}

impl UserMethod {
    /// The name stored with the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateUser => "CreateUser",
            Self::ChangePassword => "ChangePassword",
            Self::DeleteUser => "DeleteUser",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_optional_and_at_most_64_bytes() {
        assert_eq!(RequestId::parse("").unwrap(), None);
        assert!(RequestId::parse(&"x".repeat(64)).unwrap().is_some());
        assert!(RequestId::parse(&"x".repeat(65)).is_err());
        assert!(RequestId::parse("a\u{0}b").is_err());
    }
}
