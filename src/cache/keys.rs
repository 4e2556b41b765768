//! Every key Roster uses in Redis, each under the deployment's key prefix
//! (`--redis-key-prefix`), so deployments that share a Redis never read,
//! write or flush each other's keys.
//!
//! A key is the prefix, a kind (`user:`, `user-lease:`, `throttle:`,
//! `board:`, `outbox:`), then a Redis Cluster hash tag: the user's name key
//! (`{ada}`) or, for the board and the outbox marks, `{lb}` (one slot for
//! all of them, so their scripts can touch them together). The prefix holds
//! no brace, so the key's first `{` is always the tag's.

use std::{fmt, str::FromStr};

use fred::types::Key;

use crate::domain::NameKey;

const USER: &str = "user:";
const USER_LEASE: &str = "user-lease:";
const THROTTLE: &str = "throttle:";
const BOARD: &str = "board:";
const OUTBOX: &str = "outbox:";
/// The board's and the outbox marks' hash tag.
const BOARD_TAG: &str = "{lb}";

/// A Redis key prefix that passed every rule: 1 to [`Self::MAX_BYTES`]
/// bytes of printable ASCII (no spaces or control characters) with no `{`
/// or `}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// The prefix when none is set (the one Roster always used).
    pub const DEFAULT: &'static str = "roster:v1:";
    /// Every key carries the prefix, in Redis's memory and on the wire; a
    /// longer one is more likely a mistake than a need.
    pub const MAX_BYTES: usize = 64;

    /// Checks `raw` against the prefix rules.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err(format!(
                "the Redis key prefix must not be empty (the default is {:?})",
                Self::DEFAULT
            ));
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(format!(
                "the Redis key prefix may have at most {} bytes, got {}",
                Self::MAX_BYTES,
                raw.len()
            ));
        }
        // Printable ASCII only: the prefix then reads the same in redis-cli,
        // logs and manifests, and a stray space or newline from a template
        // cannot make a key that nobody can type.
        if let Some(c) = raw.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the Redis key prefix may hold only printable ASCII without spaces, \
                 found {c:?} in {raw:?}"
            ));
        }
        // Redis Cluster hashes a key by the text between its first `{` and the
        // next `}`: a brace in the prefix would take over every key's tag,
        // and the board's keys would no longer share one slot.
        if raw.contains(['{', '}']) {
            return Err(format!(
                "the Redis key prefix must not contain '{{' or '}}' (Roster's keys carry \
                 their Redis Cluster hash tag after it), got {raw:?}"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl FromStr for KeyPrefix {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The board's keys and the outbox marks: one hash tag (`{lb}`), so a Redis
/// Cluster keeps them in one slot. What each holds is in
/// `cache/board/layout.rs` and `cache/outbox.rs`.
#[derive(Debug, Clone)]
pub(crate) struct BoardKeys {
    pub(crate) set: Key,
    pub(crate) members: Key,
    pub(crate) stats: Key,
    pub(crate) ready: Key,
    pub(crate) building: Key,
    pub(crate) version: Key,
    pub(crate) log: Key,
    pub(crate) delivered: Key,
    pub(crate) ahead: Key,
}

/// Every key Roster uses in Redis, under one prefix. The fixed keys are
/// built once (a clone of one is a reference count, not a copy).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: KeyPrefix,
    pub(crate) board: BoardKeys,
}

impl Keys {
    /// The keys under `prefix`.
    pub fn new(prefix: KeyPrefix) -> Self {
        let fixed = |kind: &str, name: &str| Key::from(format!("{prefix}{kind}{BOARD_TAG}:{name}"));
        let board = BoardKeys {
            set: fixed(BOARD, "set"),
            members: fixed(BOARD, "members"),
            stats: fixed(BOARD, "stats"),
            ready: fixed(BOARD, "ready"),
            building: fixed(BOARD, "building"),
            version: fixed(BOARD, "version"),
            log: fixed(BOARD, "log"),
            delivered: fixed(OUTBOX, "delivered"),
            ahead: fixed(OUTBOX, "ahead"),
        };
        Self { prefix, board }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    /// The key caching the user with canonical name `name`. The name is the
    /// hash tag, so the value and its lease share a Redis Cluster slot.
    pub fn user(&self, name: &NameKey) -> String {
        self.tagged(USER, name)
    }

    /// The companion key holding the current fill lease for `name`.
    pub fn user_lease(&self, name: &NameKey) -> String {
        self.tagged(USER_LEASE, name)
    }

    /// The key of an account's failed password checks.
    pub fn throttle(&self, name: &NameKey) -> String {
        self.tagged(THROTTLE, name)
    }

    /// The board's ready marker (present while the board is complete).
    pub fn board_ready(&self) -> &Key {
        &self.board.ready
    }

    /// SCAN patterns that match this prefix's cached users and their fill
    /// leases, and no other key.
    pub fn user_patterns(&self) -> [String; 2] {
        // The pattern runs to the tag's `{`, the key's first: a key that
        // matches has this prefix and kind exactly before it. Another
        // prefix could only match if it ended where this one does with a
        // kind that is a suffix of ours, and no kind is a suffix of another
        // (a test checks). Glob characters in the prefix match themselves.
        let prefix = escape_glob(self.prefix.as_str());
        [USER, USER_LEASE].map(|kind| format!("{prefix}{kind}{{*"))
    }

    fn tagged(&self, kind: &str, name: &NameKey) -> String {
        format!("{}{kind}{{{name}}}", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(KeyPrefix::default())
    }
}

/// `text` as a Redis glob pattern that matches exactly it.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserName;

    fn prefix(raw: &str) -> KeyPrefix {
        KeyPrefix::parse(raw).unwrap()
    }

    #[test]
    fn the_default_prefix_passes_the_rules_and_keeps_the_keys_roster_always_used() {
        assert_eq!(
            KeyPrefix::parse(KeyPrefix::DEFAULT),
            Ok(KeyPrefix::default())
        );
        let keys = Keys::default();
        let ada = UserName::parse("Ada").unwrap();
        assert_eq!(keys.user(ada.key()), "roster:v1:user:{ada}");
        assert_eq!(keys.user_lease(ada.key()), "roster:v1:user-lease:{ada}");
        assert_eq!(keys.throttle(ada.key()), "roster:v1:throttle:{ada}");
        let board = &keys.board;
        let fixed = [
            (&board.set, "roster:v1:board:{lb}:set"),
            (&board.members, "roster:v1:board:{lb}:members"),
            (&board.stats, "roster:v1:board:{lb}:stats"),
            (&board.ready, "roster:v1:board:{lb}:ready"),
            (&board.building, "roster:v1:board:{lb}:building"),
            (&board.version, "roster:v1:board:{lb}:version"),
            (&board.log, "roster:v1:board:{lb}:log"),
            (&board.delivered, "roster:v1:outbox:{lb}:delivered"),
            (&board.ahead, "roster:v1:outbox:{lb}:ahead"),
        ];
        for (key, expected) in fixed {
            assert_eq!(key.as_str(), Some(expected));
        }
        assert_eq!(
            keys.user_patterns(),
            ["roster:v1:user:{*", "roster:v1:user-lease:{*"]
        );
    }

    #[test]
    fn every_key_starts_with_the_prefix_and_keeps_its_hash_tag() {
        let keys = Keys::new(prefix("staging/roster:"));
        let ada = UserName::parse("ada").unwrap();
        let board = &keys.board;
        let fixed = [
            &board.set,
            &board.members,
            &board.stats,
            &board.ready,
            &board.building,
            &board.version,
            &board.log,
            &board.delivered,
            &board.ahead,
        ];
        for key in fixed {
            assert_eq!(key.cluster_hash(), board.set.cluster_hash(), "one slot");
            let key = key.as_str().unwrap();
            assert!(key.starts_with("staging/roster:"), "{key}");
            assert_eq!(hash_tag(key), "lb", "{key}");
        }
        for key in [
            keys.user(ada.key()),
            keys.user_lease(ada.key()),
            keys.throttle(ada.key()),
        ] {
            assert!(key.starts_with("staging/roster:"), "{key}");
            assert_eq!(hash_tag(&key), "ada", "{key}");
        }
    }

    /// The text Redis Cluster hashes: between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        &key[open + 1..close]
    }

    #[test]
    fn a_prefix_that_is_empty_too_long_spaced_or_braced_is_refused_with_the_reason() {
        let refused = [
            ("", "must not be empty"),
            (&"r".repeat(KeyPrefix::MAX_BYTES + 1), "at most 64 bytes"),
            ("roster v1:", "printable ASCII"),
            ("roster:\n", "printable ASCII"),
            ("roster:\t", "printable ASCII"),
            ("rostér:", "printable ASCII"),
            ("roster:{a}:", "must not contain '{' or '}'"),
            ("roster}:", "must not contain '{' or '}'"),
        ];
        for (raw, reason) in refused {
            let error = KeyPrefix::parse(raw).unwrap_err();
            assert!(error.contains(reason), "{raw:?}: {error}");
        }
        for accepted in ["r", "roster:v2:", "team-a/roster.prod:", "x*?[]\\"] {
            assert_eq!(prefix(accepted).as_str(), accepted);
        }
        assert!(KeyPrefix::parse(&"r".repeat(KeyPrefix::MAX_BYTES)).is_ok());
    }

    #[test]
    fn glob_characters_in_the_prefix_match_only_themselves_in_the_scan_patterns() {
        let keys = Keys::new(prefix("a*b?[c]\\:"));
        assert_eq!(
            keys.user_patterns(),
            [r"a\*b\?\[c\]\\:user:{*", r"a\*b\?\[c\]\\:user-lease:{*"]
        );
    }

    #[test]
    fn no_key_kind_is_a_suffix_of_another_so_no_prefix_scans_another_prefixs_keys() {
        let kinds = [USER, USER_LEASE, THROTTLE, BOARD, OUTBOX];
        for a in kinds {
            for b in kinds {
                assert!(a == b || !a.ends_with(b), "{a} ends with {b}");
            }
        }
    }
}
