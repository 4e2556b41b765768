//! Paging: page sizes and opaque page tokens.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::{Invalid, NameKey, UserName};

/// A page size: 0 means the default, larger than the maximum is lowered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    /// Parses a request's page_size; negative values are refused.
    pub fn parse(raw: i32, default: u32, max: u32) -> Result<Self, Invalid> {
        match u32::try_from(raw) {
            Err(_) => Err(Invalid::new(
                "PAGE_SIZE_NEGATIVE",
                "page_size must not be negative",
            )),
            Ok(0) => Ok(Self(default)),
            Ok(size) => Ok(Self(size.min(max))),
        }
    }

    /// The number of items per page.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Where the next page of ListUsers starts: after this canonical name. Sent to
/// callers as an opaque token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCursor(NameKey);

const USER_CURSOR_PREFIX: &str = "users/v1/";

impl UserCursor {
    /// The cursor after `key`.
    pub fn after(key: NameKey) -> Self {
        Self(key)
    }

    /// Parses a page_token; the empty token is the first page (`None`).
    pub fn parse(token: &str) -> Result<Option<Self>, Invalid> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || Invalid::new("PAGE_TOKEN_INVALID", "page_token is not a token we issued");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let key = text.strip_prefix(USER_CURSOR_PREFIX).ok_or_else(invalid)?;
        // Only canonical names are valid positions.
        let name = UserName::parse(key).map_err(|_| invalid())?;
        if name.key().as_str() != key {
            return Err(invalid());
        }
        Ok(Some(Self(name.key().clone())))
    }

    /// The opaque token for this cursor.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{USER_CURSOR_PREFIX}{}", self.0))
    }

    /// The canonical name the next page starts after.
    pub fn key(&self) -> &NameKey {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_cap_and_refuse_negatives() {
        assert_eq!(PageSize::parse(0, 50, 1000).unwrap().get(), 50);
        assert_eq!(PageSize::parse(7, 50, 1000).unwrap().get(), 7);
        assert_eq!(PageSize::parse(5000, 50, 1000).unwrap().get(), 1000);
        assert_eq!(
            PageSize::parse(-1, 50, 1000).unwrap_err().reason,
            "PAGE_SIZE_NEGATIVE"
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let key = UserName::parse("Zoë").unwrap().key().clone();
        let token = UserCursor::after(key.clone()).encode();
        assert_eq!(UserCursor::parse(&token).unwrap().unwrap().key(), &key);
        assert_eq!(UserCursor::parse("").unwrap(), None);
        for bad in [
            "!!",
            "dXNlcnMvdjEv",
            "Zm9v",
            &URL_SAFE_NO_PAD.encode("users/v1/ALICE"),
        ] {
            assert_eq!(
                UserCursor::parse(bad).unwrap_err().reason,
                "PAGE_TOKEN_INVALID"
            );
        }
    }
}
