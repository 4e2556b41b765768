//! User names: PRECIS UsernameCaseMapped (RFC 8265) plus Roster's own limits.

use std::fmt;

use precis_core::{DerivedPropertyValue, Error as PrecisError, profile::PrecisFastInvocation};
use precis_profiles::UsernameCaseMapped;
use unicode_normalization::UnicodeNormalization;
use unicode_security::MixedScript;

use super::Invalid;

/// A user name that passed every rule: the display form as registered and its canonical key.
#[derive(Clone, PartialEq, Eq)]
pub struct UserName {
    display: String,
    key: NameKey,
}

/// The canonical key of a user name: width-folded, lower-cased, NFC. Uniqueness,
/// look-ups, cache keys and logs all use it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey(String);

impl UserName {
    /// Names longer than this many bytes, as sent, are refused before any other work.
    pub const MAX_BYTES: usize = 256;
    /// Canonical names may have at most this many code points.
    pub const MAX_CODE_POINTS: usize = 64;

    /// Checks `raw` against every name rule and computes its canonical key.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.len() > Self::MAX_BYTES {
            return Err(too_long());
        }
        if let Some(name) = Self::parse_printable_ascii(raw) {
            return name;
        }
        Self::parse_unicode(raw)
    }

    /// The common case, without the Unicode tables: for printable ASCII
    /// (U+0021..U+007E) every rule of [`parse_unicode`](Self::parse_unicode)
    /// reduces to lower-casing and the length limit. These code points are
    /// all PVALID in the IdentifierClass (ASCII7), width mapping and NFC leave
    /// them alone, and they are Latin or Common, so one script. A property
    /// test checks that both paths agree. `None` when `raw` holds anything else.
    fn parse_printable_ascii(raw: &str) -> Option<Result<Self, Invalid>> {
        if raw.is_empty() || !raw.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
            return None;
        }
        if raw.len() > Self::MAX_CODE_POINTS {
            return Some(Err(too_long()));
        }
        Some(Ok(Self {
            display: raw.to_owned(),
            key: NameKey(raw.to_ascii_lowercase()),
        }))
    }

    fn parse_unicode(raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(Invalid::new("NAME_EMPTY", "name is required"));
        }
        for c in raw.chars() {
            if let Some(problem) = forbidden_character(c) {
                return Err(problem);
            }
        }
        let key = canonicalize(raw)?;
        // RFC 8265 section 5: the profile must be idempotent on its own output.
        if canonicalize(&key)? != key {
            return Err(Invalid::new(
                "NAME_UNSTABLE",
                "name does not have a stable canonical form",
            ));
        }
        // The name as shown (NFC) must be a name with the same key too: NFC
        // can compose what PRECIS refuses (a Greek capital with a combining
        // ypogegrammeni becomes a titlecase letter with prosgegrammeni,
        // U+1FFC, which is DISALLOWED), and a display name that cannot be
        // typed back would not find its own user.
        let display: String = raw.nfc().collect();
        if display != raw && canonicalize(&display)? != key {
            return Err(Invalid::new(
                "NAME_UNSTABLE",
                "name does not have a stable canonical form",
            ));
        }
        if key.chars().count() > Self::MAX_CODE_POINTS {
            return Err(too_long());
        }
        if !key.as_str().is_single_script() {
            return Err(Invalid::new(
                "NAME_MIXED_SCRIPT",
                "name mixes letters from different scripts",
            ));
        }
        Ok(Self {
            display,
            key: NameKey(key),
        })
    }

    /// The name as registered (NFC), case preserved.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The canonical key.
    pub fn key(&self) -> &NameKey {
        &self.key
    }
}

impl NameKey {
    /// The canonical key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds a key read back from storage, which only ever holds canonical keys.
    pub fn from_stored(key: String) -> Self {
        Self(key)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserName({:?})", self.display)
    }
}

impl fmt::Debug for NameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for NameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn too_long() -> Invalid {
    Invalid::new(
        "NAME_TOO_LONG",
        format!(
            "name must be at most {} characters ({} bytes)",
            UserName::MAX_CODE_POINTS,
            UserName::MAX_BYTES
        ),
    )
}

/// The characters refused with a specific reason; PRECIS catches the rest.
fn forbidden_character(c: char) -> Option<Invalid> {
    if c.is_whitespace() {
        Some(Invalid::new(
            "NAME_WHITESPACE",
            "name must not contain whitespace",
        ))
    } else if c.is_control() {
        Some(Invalid::new(
            "NAME_CONTROL_CHARACTER",
            format!(
                "name must not contain control characters (found U+{:04X})",
                c as u32
            ),
        ))
    } else if is_bidi_control(c) {
        Some(Invalid::new(
            "NAME_BIDI_CONTROL",
            format!(
                "name must not contain bidi controls (found U+{:04X})",
                c as u32
            ),
        ))
    } else {
        None
    }
}

/// Explicit directional formatting characters (Unicode Bidi_Control=Yes).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn canonicalize(raw: &str) -> Result<String, Invalid> {
    UsernameCaseMapped::enforce(raw)
        .map(|key| key.into_owned())
        .map_err(|error| match error {
            PrecisError::BadCodepoint(info) => {
                let reason = match info.property {
                    DerivedPropertyValue::Unassigned => "NAME_UNASSIGNED_CHARACTER",
                    _ => "NAME_DISALLOWED_CHARACTER",
                };
                Invalid::new(reason, format!("name must not contain U+{:04X}", info.cp))
            }
            PrecisError::Invalid => Invalid::new("NAME_EMPTY", "name is required"),
            PrecisError::Unexpected(_) => Invalid::new(
                "NAME_DISALLOWED_CHARACTER",
                "name contains a character that is not allowed",
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> String {
        UserName::parse(raw)
            .map(|n| n.key().as_str().to_owned())
            .unwrap()
    }

    fn reason(raw: &str) -> &'static str {
        UserName::parse(raw).unwrap_err().reason
    }

    #[test]
    fn case_and_width_variants_share_one_key() {
        assert_eq!(key("Alice"), "alice");
        assert_eq!(key("ALICE"), "alice");
        assert_eq!(key("ＡＬＩＣＥ"), "alice");
        assert_eq!(key("ａｌｉｃｅ"), "alice");
    }

    #[test]
    fn composed_and_decomposed_spellings_share_one_key() {
        assert_eq!(key("Jos\u{e9}"), key("Jose\u{301}"));
    }

    #[test]
    fn display_form_keeps_case_and_is_nfc() {
        let name = UserName::parse("Jose\u{301}").unwrap();
        assert_eq!(name.display(), "Jos\u{e9}");
        assert_eq!(UserName::parse("Alice").unwrap().display(), "Alice");
    }

    #[test]
    fn refuses_what_the_rules_refuse() {
        assert_eq!(reason(""), "NAME_EMPTY");
        assert_eq!(reason("a b"), "NAME_WHITESPACE");
        assert_eq!(reason("a\u{0}b"), "NAME_CONTROL_CHARACTER");
        assert_eq!(reason("a\u{202E}b"), "NAME_BIDI_CONTROL");
        assert_eq!(reason("a\u{200B}b"), "NAME_DISALLOWED_CHARACTER");
        assert_eq!(reason("a\u{AD}b"), "NAME_DISALLOWED_CHARACTER");
        assert_eq!(reason("a\u{0378}b"), "NAME_UNASSIGNED_CHARACTER");
        assert_eq!(reason("p\u{0430}ypal"), "NAME_MIXED_SCRIPT");
        assert_eq!(reason(&"a".repeat(65)), "NAME_TOO_LONG");
        assert_eq!(reason(&"a".repeat(1 << 20)), "NAME_TOO_LONG");
    }

    proptest::proptest! {
        #[test]
        fn the_ascii_fast_path_agrees_with_the_full_rules(raw in "[\\x20-\\x7e]{0,70}") {
            let full = UserName::parse_unicode(&raw);
            match UserName::parse_printable_ascii(&raw) {
                Some(fast) => proptest::prop_assert_eq!(
                    fast.map(|n| (n.display, n.key)).map_err(|e| e.reason),
                    full.map(|n| (n.display, n.key)).map_err(|e| e.reason)
                ),
                // Only names the fast path cannot judge fall through.
                None => proptest::prop_assert!(raw.is_empty() || raw.contains(' ')),
            }
        }
    }

    #[test]
    fn a_name_whose_display_form_is_not_a_name_is_refused() {
        // Found by the `user_name` fuzz target (AFL): Omega, combining marks,
        // then a combining ypogegrammeni. Each code point is allowed, but NFC
        // composes Omega and the ypogegrammeni into U+1FFC (a titlecase
        // letter, DISALLOWED), so the display form could not be sent back.
        let raw = "\u{3A9}\u{31F}\u{354}\u{345}\u{3B1}\u{3B2}";
        assert_eq!(reason(raw), "NAME_DISALLOWED_CHARACTER");
        assert_eq!(
            reason("\u{1FFC}\u{3B1}\u{3B2}"),
            "NAME_DISALLOWED_CHARACTER"
        );
        // Lower case composes to U+1FF3, which is allowed: the same name.
        let lower = UserName::parse("\u{3C9}\u{345}\u{3B1}\u{3B2}").unwrap();
        assert_eq!(lower.display(), "\u{1FF3}\u{3B1}\u{3B2}");
        assert_eq!(UserName::parse(lower.display()).unwrap().key(), lower.key());
    }

    #[test]
    fn accepts_the_limits_and_single_scripts() {
        assert_eq!(key(&"a".repeat(64)).len(), 64);
        assert_eq!(key("x"), "x");
        assert_eq!(key("иван"), "иван");
        assert_eq!(key("user_42.test-x"), "user_42.test-x");
        assert_eq!(key("山田たろう"), "山田たろう");
    }
}
