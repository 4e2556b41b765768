//! Passwords, password rule v1: 8 or more code points, at most 1024 bytes, any
//! Unicode, normalized to NFC before hashing; new passwords must also not be
//! common or the user's own name.

use std::{collections::HashSet, fmt, sync::LazyLock};

use secrecy::{ExposeSecret, SecretString, zeroize::Zeroize};
use unicode_normalization::UnicodeNormalization;

use super::{Invalid, UserName};

/// The 100,000 most common passwords of the SecLists "10 million password list"
/// (MIT), one per line, shipped inside the binary so the check needs no network.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

static COMMON: LazyLock<HashSet<String>> = LazyLock::new(|| {
    COMMON_PASSWORDS
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .map(str::to_lowercase)
        .collect()
});

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
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        Self::parse_with(raw, Self::check_length)
    }

    /// A password to set (CreateUser, ChangePassword): rule v1, and neither a
    /// common password nor the user's own name, compared without regard to case.
    pub fn parse_new(raw: String, name: Option<&UserName>) -> Result<Self, Invalid> {
        let password = Self::parse(raw)?;
        let folded = password.expose().to_lowercase();
        if COMMON.contains(&folded) {
            return Err(Invalid::new(
                "PASSWORD_TOO_COMMON",
                "password is too common; choose another",
            ));
        }
        if name.is_some_and(|name| {
            folded == name.key().as_str() || folded == name.display().to_lowercase()
        }) {
            return Err(Invalid::new(
                "PASSWORD_IS_NAME",
                "password must not be the user's name",
            ));
        }
        Ok(password)
    }

    /// A password to check against a stored hash: only the byte cap applies, so
    /// a password set under older rules can still be verified.
    pub fn parse_candidate(raw: String) -> Result<Self, Invalid> {
        Self::parse_with(raw, |normalized| {
            if normalized.is_empty() {
                Err(Invalid::new("PASSWORD_EMPTY", "password is required"))
            } else {
                Ok(())
            }
        })
    }

    fn parse_with(
        mut raw: String,
        check: impl FnOnce(&str) -> Result<(), Invalid>,
    ) -> Result<Self, Invalid> {
        let result = if raw.len() > Self::MAX_BYTES {
            Err(Invalid::new(
                "PASSWORD_TOO_LONG",
                format!("password must be at most {} bytes", Self::MAX_BYTES),
            ))
        } else {
            let normalized: String = raw.nfc().collect();
            check(&normalized).map(|()| Self(SecretString::from(normalized)))
        };
        raw.zeroize();
        result
    }

    fn check_length(normalized: &str) -> Result<(), Invalid> {
        if normalized.chars().count() < Self::MIN_CODE_POINTS {
            return Err(Invalid::new(
                "PASSWORD_TOO_SHORT",
                format!(
                    "password must be at least {} characters",
                    Self::MIN_CODE_POINTS
                ),
            ));
        }
        Ok(())
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
    fn new_passwords_must_not_be_common_or_the_name() {
        let name = UserName::parse("Mallory-1999").unwrap();
        let new = |raw: &str| Password::parse_new(raw.into(), Some(&name)).map(drop);
        assert_eq!(new("password").unwrap_err().reason, "PASSWORD_TOO_COMMON");
        assert_eq!(new("PassWord").unwrap_err().reason, "PASSWORD_TOO_COMMON");
        assert_eq!(new("iloveyou").unwrap_err().reason, "PASSWORD_TOO_COMMON");
        assert_eq!(new("MALLORY-1999").unwrap_err().reason, "PASSWORD_IS_NAME");
        assert!(new("correct horse battery staple").is_ok());
        assert!(COMMON.len() >= 10_000);
    }

    #[test]
    fn candidates_only_need_to_be_non_empty_and_within_the_byte_cap() {
        assert!(Password::parse_candidate("short".into()).is_ok());
        assert_eq!(
            Password::parse_candidate(String::new()).unwrap_err().reason,
            "PASSWORD_EMPTY"
        );
        assert_eq!(
            Password::parse_candidate("a".repeat(1025))
                .unwrap_err()
                .reason,
            "PASSWORD_TOO_LONG"
        );
    }

    #[test]
    fn debug_output_is_redacted() {
        let password = Password::parse("hunter2-secret".into()).unwrap();
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
