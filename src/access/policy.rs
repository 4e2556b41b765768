//! The access policy: which identities hold which roles, which roles may
//! call which RPC methods, which methods are public, and the bearer tokens.
//! Read from a TOML file, validated in full before it is used (unknown
//! methods or roles refuse it), and reloadable.
//!
//! TOML rather than YAML: it is what Rust projects configure with (Cargo),
//! its types are explicit (YAML's implicit typing turns `no` or `on` into
//! booleans), and `toml` with serde reports the line of a mistake.
//!
//! ```toml
//! # Methods anyone may call, identity or not (this is the default).
//! public = ["grpc.health.v1.Health/*", "grpc.reflection.*"]
//!
//! [roles]
//! reader = ["roster.v1.UserService/GetUser", "roster.v1.LeaderboardService/*"]
//! admin = ["*"]
//!
//! [[grant]]
//! identities = ["spiffe://prod/ns/games/*"]   # exact, or a prefix ending in *
//! roles = ["reader"]
//!
//! [[token]]
//! sha256 = "<64 hex digits: sha256 of the token>"  # never the token itself
//! identity = "batch-reports"
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;

use super::identity::{Identity, Tokens};

/// What the policy says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The call may proceed.
    Allow,
    /// The method needs an identity and the caller has none.
    Unauthenticated,
    /// The caller's roles do not include the method.
    Denied,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    public: Vec<Pattern>,
    /// Role name -> method patterns.
    roles: HashMap<String, Vec<Pattern>>,
    /// (identity pattern, role names).
    grants: Vec<(Pattern, Vec<String>)>,
    tokens: Tokens,
}

/// A name pattern: exact, or a prefix ending in `*` (`*` alone matches all).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
}

impl Pattern {
    fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        let prefix = text.strip_suffix('*').unwrap_or(text);
        (!text.is_empty() && !prefix.contains('*')).then(|| Self {
            text: text.to_owned(),
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self.text.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == self.text,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    public: Option<Vec<String>>,
    #[serde(default)]
    roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    grant: Vec<Grant>,
    #[serde(default)]
    token: Vec<Token>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    identities: Vec<String>,
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    sha256: String,
    identity: String,
}

/// The methods anyone may call when the policy does not say: health checks
/// and server reflection.
pub const DEFAULT_PUBLIC: [&str; 2] = ["grpc.health.v1.Health/*", "grpc.reflection.*"];

impl Policy {
    /// Parses and validates a policy. `methods` are every method the server
    /// serves (`package.Service/Method`): a method pattern that matches none
    /// of them, a role no one defined, or a malformed token hash refuses the
    /// whole policy, with every problem listed.
    pub fn parse(text: &str, methods: &[String]) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut problems = Vec::new();
        let mut method_patterns = |context: &str, patterns: &[String]| -> Vec<Pattern> {
            patterns
                .iter()
                .filter_map(|raw| match Pattern::new(raw) {
                    Some(pattern) if methods.iter().any(|m| pattern.matches(m)) => Some(pattern),
                    Some(_) => {
                        problems.push(format!("{context}: {raw:?} matches no method"));
                        None
                    }
                    None => {
                        problems.push(format!("{context}: {raw:?} is not a method pattern"));
                        None
                    }
                })
                .collect()
        };
        let public_raw: Vec<String> = file
            .public
            .unwrap_or_else(|| DEFAULT_PUBLIC.iter().map(|s| (*s).to_owned()).collect());
        let public = method_patterns("public", &public_raw);
        let roles: HashMap<String, Vec<Pattern>> = file
            .roles
            .iter()
            .map(|(role, patterns)| {
                (
                    role.clone(),
                    method_patterns(&format!("role {role:?}"), patterns),
                )
            })
            .collect();
        let mut grants = Vec::new();
        for (index, grant) in file.grant.iter().enumerate() {
            for role in &grant.roles {
                if !roles.contains_key(role) {
                    problems.push(format!("grant {}: unknown role {role:?}", index + 1));
                }
            }
            if grant.identities.is_empty() {
                problems.push(format!("grant {}: no identities", index + 1));
            }
            for identity in &grant.identities {
                match Pattern::new(identity) {
                    Some(pattern) => grants.push((pattern, grant.roles.clone())),
                    None => problems.push(format!(
                        "grant {}: {identity:?} is not an identity pattern",
                        index + 1
                    )),
                }
            }
        }
        let mut tokens = Vec::new();
        let mut seen = HashSet::new();
        for (index, token) in file.token.iter().enumerate() {
            let hash = hex::decode(token.sha256.trim())
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
            match (hash, Identity::parse(&token.identity)) {
                (Some(hash), Some(identity)) => {
                    if !seen.insert(hash) {
                        problems.push(format!("token {}: the same hash twice", index + 1));
                    }
                    tokens.push((hash, identity));
                }
                (None, _) => problems.push(format!(
                    "token {}: sha256 must be 64 hex digits (the hash of the token, never the token)",
                    index + 1
                )),
                (_, None) => problems.push(format!("token {}: empty or invalid identity", index + 1)),
            }
        }
        if problems.is_empty() {
            Ok(Self {
                public,
                roles,
                grants,
                tokens: Tokens::new(tokens),
            })
        } else {
            Err(problems.join("; "))
        }
    }

    /// What the policy says about `identity` calling `method`.
    pub fn decide(&self, method: &str, identity: Option<&Identity>) -> Decision {
        if self.public.iter().any(|p| p.matches(method)) {
            return Decision::Allow;
        }
        let Some(identity) = identity else {
            return Decision::Unauthenticated;
        };
        let allowed = self
            .grants
            .iter()
            .filter(|(pattern, _)| pattern.matches(identity.as_str()))
            .flat_map(|(_, roles)| roles)
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .any(|pattern| pattern.matches(method));
        if allowed {
            Decision::Allow
        } else {
            Decision::Denied
        }
    }

    /// The bearer tokens the policy configures.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// A one-line summary for the start-up log (never a token hash).
    pub fn summary(&self) -> String {
        format!(
            "{} roles, {} grants, {} tokens, {} public method patterns",
            self.roles.len(),
            self.grants.len(),
            self.tokens.len(),
            self.public.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods() -> Vec<String> {
        [
            "roster.v1.UserService/GetUser",
            "roster.v1.UserService/DeleteUser",
            "roster.v1.LeaderboardService/RecordGame",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    const POLICY: &str = r#"
[roles]
reader = ["roster.v1.UserService/GetUser"]
admin = ["*"]

[[grant]]
identities = ["spiffe://prod/ns/games/*"]
roles = ["reader"]

[[grant]]
identities = ["ops"]
roles = ["admin"]
"#;

    fn id(text: &str) -> Identity {
        Identity::parse(text).unwrap()
    }

    #[test]
    fn roles_grant_methods_to_identities_by_exact_name_or_prefix() {
        let policy = Policy::parse(POLICY, &methods()).unwrap();
        let games = id("spiffe://prod/ns/games/sa/matchmaker");
        assert_eq!(
            policy.decide("roster.v1.UserService/GetUser", Some(&games)),
            Decision::Allow
        );
        assert_eq!(
            policy.decide("roster.v1.UserService/DeleteUser", Some(&games)),
            Decision::Denied
        );
        assert_eq!(
            policy.decide("roster.v1.UserService/DeleteUser", Some(&id("ops"))),
            Decision::Allow
        );
        assert_eq!(
            policy.decide(
                "roster.v1.UserService/GetUser",
                Some(&id("spiffe://prod/ns/other/sa/x"))
            ),
            Decision::Denied
        );
        assert_eq!(
            policy.decide("roster.v1.UserService/GetUser", None),
            Decision::Unauthenticated
        );
        // Health and reflection are public by default.
        assert_eq!(
            policy.decide("grpc.health.v1.Health/Check", None),
            Decision::Allow
        );
    }

    #[test]
    fn unknown_methods_roles_and_bad_hashes_refuse_the_whole_policy() {
        let bad = r#"
public = ["grpc.health.v1.Health/*"]
[roles]
reader = ["roster.v1.UserService/GetUsr"]
[[grant]]
identities = ["x"]
roles = ["writer"]
[[token]]
sha256 = "correct horse battery staple"
identity = "t"
"#;
        let error = Policy::parse(bad, &methods()).unwrap_err();
        assert!(error.contains("GetUsr"), "{error}");
        assert!(error.contains("unknown role \"writer\""), "{error}");
        assert!(error.contains("64 hex digits"), "{error}");
        assert!(Policy::parse("[roles]\nx = [\"a*b\"]", &methods()).is_err());
        assert!(Policy::parse("unknown_key = 1", &methods()).is_err());
    }

    #[test]
    fn reflection_can_be_taken_out_of_the_public_methods() {
        let policy = Policy::parse("public = [\"grpc.health.v1.Health/*\"]", &methods()).unwrap();
        assert_eq!(
            policy.decide(
                "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None
            ),
            Decision::Unauthenticated
        );
    }
}
