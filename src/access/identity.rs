//! Who is calling: an identity taken from the first of these that applies,
//! in this order: the verified client certificate (SPIFFE URI SAN, else DNS
//! SAN, else subject CN); the mesh's forwarded identity (Envoy/Istio
//! `x-forwarded-client-cert`, Linkerd `l5d-client-id`), only when configured
//! to trust it; a bearer token matched against configured SHA-256 hashes.
//! No identity is "anonymous": it is `None`.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x509_parser::{extensions::GeneralName, prelude::FromDer as _, prelude::X509Certificate};

/// The longest identity kept, in bytes; longer ones are refused.
const MAX_BYTES: usize = 1024;

/// A caller's identity, e.g. `spiffe://prod/ns/games/sa/matchmaker`:
/// non-empty, at most 1 KiB, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity(String);

impl Identity {
    /// An identity, if `raw` is acceptable as one.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        (!raw.is_empty() && raw.len() <= MAX_BYTES && !raw.chars().any(char::is_control))
            .then(|| Self(raw.to_owned()))
    }

    /// The identity as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identity in a verified client certificate (DER): its SPIFFE URI
    /// SAN, else its first DNS SAN, else its subject CN.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let names: Vec<GeneralName<'_>> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| san.value.general_names.clone())
            .unwrap_or_default();
        let uri = names.iter().find_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        });
        let dns = names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(*dns),
            _ => None,
        });
        let cn = || {
            cert.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned)
        };
        match uri.or(dns) {
            Some(name) => Self::parse(name),
            None => cn().and_then(|cn| Self::parse(&cn)),
        }
    }

    /// The identity in an Envoy/Istio `x-forwarded-client-cert` header: the
    /// last element (the one the nearest proxy added), its `URI`, else its
    /// `DNS`, else its `Subject`.
    pub fn from_xfcc(header: &str) -> Option<Self> {
        let element = split_outside_quotes(header, ',').pop()?;
        let mut uri = None;
        let mut dns = None;
        let mut subject = None;
        for pair in split_outside_quotes(&element, ';') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            match key.trim().to_ascii_lowercase().as_str() {
                "uri" if uri.is_none() => uri = Some(value),
                "dns" if dns.is_none() => dns = Some(value),
                "subject" => subject = Some(value),
                _ => {}
            }
        }
        uri.or(dns)
            .or(subject)
            .and_then(|value| Self::parse(&value))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits at `separator` outside double quotes (XFCC quotes values that
/// hold `,`, `;` or `=`).
fn split_outside_quotes(text: &str, separator: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            current.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                current.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c == separator && !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

fn unquote(value: &str) -> String {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    inner.replace("\\\"", "\"").replace("\\\\", "\\")
}

/// Bearer tokens, kept as SHA-256 hashes (never the tokens themselves), each
/// naming an identity. A presented token is hashed and compared with every
/// configured hash in constant time.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<([u8; 32], Identity)>);

impl Tokens {
    /// Tokens from (hash, identity) pairs.
    pub fn new(tokens: Vec<([u8; 32], Identity)>) -> Self {
        Self(tokens)
    }

    /// The identity a presented token names, if any.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        // Every hash is compared, so the time taken does not tell which
        // (or whether one) matched.
        for (hash, identity) in &self.0 {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(identity.clone());
            }
        }
        found
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_refuse_empty_control_and_overlong_text() {
        assert!(Identity::parse("").is_none());
        assert!(Identity::parse("  ").is_none());
        assert!(Identity::parse("a\nb").is_none());
        assert!(Identity::parse(&"x".repeat(MAX_BYTES + 1)).is_none());
        assert_eq!(
            Identity::parse(" spiffe://a/b ").unwrap().as_str(),
            "spiffe://a/b"
        );
    }

    #[test]
    fn xfcc_takes_the_nearest_proxys_uri_then_dns_then_subject() {
        let header = "By=spiffe://mesh/ns/x/sa/roster;Hash=abc;URI=spiffe://mesh/ns/old/sa/a,\
                      By=spiffe://mesh/ns/x/sa/roster;Hash=def;Subject=\"CN=web,O=Acme\";\
                      URI=spiffe://mesh/ns/games/sa/matchmaker;DNS=web.games";
        assert_eq!(
            Identity::from_xfcc(header).unwrap().as_str(),
            "spiffe://mesh/ns/games/sa/matchmaker"
        );
        assert_eq!(
            Identity::from_xfcc("Hash=abc;DNS=api.internal")
                .unwrap()
                .as_str(),
            "api.internal"
        );
        assert_eq!(
            Identity::from_xfcc("Hash=abc;Subject=\"CN=svc,O=A;B\"")
                .unwrap()
                .as_str(),
            "CN=svc,O=A;B"
        );
        assert!(Identity::from_xfcc("Hash=abc").is_none());
        assert!(Identity::from_xfcc("").is_none());
    }

    #[test]
    fn a_token_is_matched_by_its_hash_only() {
        let hash: [u8; 32] = Sha256::digest(b"s3cret-token").into();
        let tokens = Tokens::new(vec![(hash, Identity::parse("batch").unwrap())]);
        assert_eq!(tokens.identify("s3cret-token").unwrap().as_str(), "batch");
        assert!(tokens.identify("s3cret-tokeN").is_none());
        assert!(tokens.identify("").is_none());
    }
}
