//! Credentials for the services behind Roster (Postgres, Redis): secrets read
//! from files (the container `*_FILE` convention), the TLS client
//! configuration for `rediss://`, and URLs with their passwords hidden for
//! logs. Everything here is read once, at start.

use std::{path::Path, sync::Arc};

use rustls::{ClientConfig, RootCertStore};
use secrecy::SecretString;
use url::Url;

use crate::{cache::RedisCredentials, config::Config};

/// What stands in for a password in logged URLs.
const HIDDEN: &str = "***";

/// The backends' credentials, read from the files the configuration names.
#[derive(Clone, Default)]
pub struct BackendCredentials {
    /// The Postgres password from `--database-password-file`.
    pub database_password: Option<SecretString>,
    /// How Roster signs in to Redis and checks it.
    pub redis: RedisCredentials,
}

impl BackendCredentials {
    /// Reads the secret files and the Redis TLS files that `config` names;
    /// an error (refusing to start) names the file and the problem, never a
    /// secret.
    pub fn load(config: &Config) -> Result<Self, String> {
        let database_password = config
            .database_password_file
            .as_deref()
            .map(read_secret_file)
            .transpose()?;
        let redis = if config.redis_url.is_empty() {
            RedisCredentials::default()
        } else {
            redis_credentials(config)?
        };
        Ok(Self {
            database_password,
            redis,
        })
    }
}

fn redis_credentials(config: &Config) -> Result<RedisCredentials, String> {
    let url = Url::parse(&config.redis_url)
        .map_err(|error| format!("REDIS_URL is not a valid URL: {error}"))?;
    if config.redis_username.is_some() && !url.username().is_empty() {
        return Err("REDIS_URL names a user and so does --redis-username \
                    (ROSTER_REDIS_USERNAME); give it once"
            .into());
    }
    let password = config
        .redis_password_file
        .as_deref()
        .map(read_secret_file)
        .transpose()?;
    if password.is_some() && url.password().is_some() {
        return Err(
            "REDIS_URL carries a password and so does --redis-password-file \
                    (REDIS_PASSWORD_FILE); give it once, preferably in the file"
                .into(),
        );
    }
    let wants_tls = config.redis_ca_file.is_some() || config.redis_client_cert.is_some();
    let tls_scheme = url.scheme().starts_with("rediss") || url.scheme().starts_with("valkeys");
    if wants_tls && !tls_scheme {
        // Refused rather than ignored: a CA file on a plaintext URL would
        // look like a verified connection and be none.
        return Err(format!(
            "--redis-ca-file and --redis-client-cert need a TLS URL (rediss://...); \
             REDIS_URL is {}",
            redact_url(&config.redis_url)
        ));
    }
    let tls = if wants_tls {
        Some(Arc::new(redis_tls(
            config.redis_ca_file.as_deref(),
            config
                .redis_client_cert
                .as_deref()
                .zip(config.redis_client_key.as_deref()),
        )?))
    } else {
        None
    };
    Ok(RedisCredentials {
        username: config.redis_username.clone(),
        password,
        tls,
    })
}

/// Reads a secret from `path`: the whole file, less trailing line breaks
/// (editors and `echo` add one). An empty secret is an error, as is a file
/// that cannot be read; the message names the file, never its content.
pub fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read secret file {}: {error}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(SecretString::from(secret))
}

/// The TLS client configuration for Redis: the servers it trusts (the PEM
/// bundle `ca_file` only, when given; else the system's roots) and, for
/// mTLS, the client certificate chain and key. TLS 1.2 and 1.3 only.
pub fn redis_tls(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let roots = match ca_file {
        Some(path) => crate::pem::roots(path)?,
        None => {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(format!(
                    "no system CA certificates to verify Redis with ({:?}); \
                     give --redis-ca-file",
                    native.errors
                ));
            }
            roots
        }
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(crate::pem::chain(cert)?, crate::pem::key(key)?)
            .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display())),
    }
}

/// `url` fit for a log line: a password in it is replaced by `***`. A URL
/// that does not parse is shown by its scheme only, since where a password
/// would be in it is unknown.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot have a password, and this one has one.
                let _ = parsed.set_password(Some(HIDDEN));
            }
            parsed.to_string()
        }
        Err(_) => match url.split_once(':') {
            Some((scheme, _))
                if scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                format!("{scheme}:<not a valid URL>")
            }
            _ => "<not a valid URL>".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn redact_url_hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact_url("postgres://roster:s3cr%40t@db:5432/roster?sslmode=verify-full"),
            "postgres://roster:***@db:5432/roster?sslmode=verify-full"
        );
        assert_eq!(
            redact_url("rediss://:hunter2@cache:6380"),
            "rediss://:***@cache:6380"
        );
        assert_eq!(
            redact_url("rediss://roster@cache:6380"),
            "rediss://roster@cache:6380"
        );
        assert_eq!(redact_url("sqlite://roster.db"), "sqlite://roster.db");
    }

    #[test]
    fn redact_url_shows_only_the_scheme_of_a_url_that_does_not_parse() {
        let shown = redact_url("postgres://roster:hunter2@[db:5432/x");
        assert_eq!(shown, "postgres:<not a valid URL>");
        assert!(!redact_url("hunter2@@ not a url").contains("hunter2"));
    }

    #[test]
    fn a_secret_file_loses_its_trailing_line_break_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, " pass word \r\n").unwrap();
        assert_eq!(
            read_secret_file(&path).unwrap().expose_secret(),
            " pass word "
        );
        std::fs::write(&path, "\n").unwrap();
        let error = read_secret_file(&path).unwrap_err();
        assert!(error.contains("is empty"), "{error}");
        let error = read_secret_file(&dir.path().join("missing")).unwrap_err();
        assert!(error.contains("missing"), "{error}");
    }
}
