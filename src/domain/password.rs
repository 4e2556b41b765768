//! Passwords, password rule v1: 8 or more code points, at most 1024 bytes, any
//! Unicode, normalized to NFC before hashing.

use std::fmt;

use secrecy::{ExposeSecret, SecretString, zeroize::Zeroize};
use unicode_normalization::UnicodeNormalization;

use super::Invalid;

/// The version of the password rules below; bump it when they change.
pub const PASSWORD_RULE_VERSION: u32 = 1;

/// A password that passed rule v1, held in NFC form and wiped from memory on drop.
/// Its `Debug` output is redacted.
pub struct Password(SecretString);

impl Password {
    /// Shortest password, in code points after NFC normalization.
    pub const MIN_CODE_POINTS: usize = 8;
    /// Longest password in bytes as sent, checked before normalizing or hashing.
    pub const MAX_BYTES: usize = 1024;

    /// Checks `raw` against rule v1 and normalizes it to NFC. `raw` is wiped.
    pub fn parse(mut raw: String) -> Result<Self, Invalid> {
        let result = Self::check(&raw);
        raw.zeroize();
        result
    }

    fn check(raw: &str) -> Result<Self, Invalid> {
        if raw.len() > Self::MAX_BYTES {
            return Err(Invalid::new(
                "PASSWORD_TOO_LONG",
                format!("password must be at most {} bytes", Self::MAX_BYTES),
            ));
        }
        let normalized: String = raw.nfc().collect();
        if normalized.chars().count() < Self::MIN_CODE_POINTS {
            return Err(Invalid::new(
                "PASSWORD_TOO_SHORT",
                format!(
                    "password must be at least {} characters",
                    Self::MIN_CODE_POINTS
                ),
            ));
        }
        Ok(Self(SecretString::from(normalized)))
    }

    /// The NFC-normalized password, for hashing and verifying only.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(raw: &str) -> &'static str {
        Password::parse(raw.to_owned()).unwrap_err().reason
    }

    #[test]
    fn counts_code_points_not_bytes() {
        assert_eq!(reason("1234567"), "PASSWORD_TOO_SHORT");
        assert_eq!(reason(""), "PASSWORD_TOO_SHORT");
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("пароль12".into()).is_ok());
        assert!(Password::parse("🔑🔑🔑🔑🔑🔑🔑🔑".into()).is_ok());
    }

    #[test]
    fn refuses_over_1024_bytes_before_anything_else() {
        assert!(Password::parse("a".repeat(1024)).is_ok());
        assert_eq!(reason(&"a".repeat(1025)), "PASSWORD_TOO_LONG");
        assert_eq!(reason(&"é".repeat(513)), "PASSWORD_TOO_LONG");
    }

    #[test]
    fn normalizes_to_nfc() {
        let composed = Password::parse("caf\u{e9}-1234".into()).unwrap();
        let decomposed = Password::parse("cafe\u{301}-1234".into()).unwrap();
        assert_eq!(composed.expose(), decomposed.expose());
    }

    #[test]
    fn debug_output_is_redacted() {
        let password = Password::parse("hunter2-secret".into()).unwrap();
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
