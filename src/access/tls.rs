//! TLS and mTLS for the gRPC listener (rustls, TLS 1.2 and 1.3 only): the
//! server certificate and key from PEM files, optionally client
//! certificates verified against a CA bundle (required or optional). The
//! files are read again when they change (checked every few seconds) or on
//! SIGHUP: new connections use the new certificate, connections already open
//! (and their calls in flight) keep theirs. A file that does not load leaves
//! the last good configuration in place.
//!
//! Built on tokio-rustls rather than tonic's `ServerTlsConfig`, whose
//! configuration is fixed when the server starts (no rotation).

use std::{fmt, path::PathBuf, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{
    DistinguishedName, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, UnixTime},
    server::{
        ClientHello, ResolvesServerCert, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// Whether a client certificate is required or only verified when sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// Connections without a valid client certificate are refused.
    Required,
    /// A client certificate is verified if sent; callers without one fall
    /// back to the other identities (mesh header, bearer token) or none.
    Optional,
}

/// Where the TLS material is.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA bundle for client certificates (PEM); `None`: no client auth.
    pub client_ca: Option<PathBuf>,
    /// Required or optional, when `client_ca` is set.
    pub client_auth: ClientAuth,
}

/// The listener's TLS: an acceptor whose certificate and client verifier
/// can be replaced while it runs.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    reloader: Arc<Reloader>,
}

struct Reloader {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    cert: Arc<SwappableCert>,
    verifier: Arc<SwappableVerifier>,
}

impl Tls {
    /// Loads the files; fails (refusing to start) if they do not load.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (key, verifier) = load(&files, &provider)?;
        let cert = Arc::new(SwappableCert(ArcSwap::from_pointee(key)));
        let verifier = Arc::new(SwappableVerifier(ArcSwap::from_pointee(verifier)));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::clone(&verifier) as Arc<dyn ClientCertVerifier>)
            .with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec()];
        let reloader = Arc::new(Reloader {
            files,
            provider,
            cert,
            verifier,
        });
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            reloader,
        })
    }

    /// Reads the files again and, if they load, uses them for new
    /// connections. Returns whether anything changed.
    pub fn reload(&self) -> Result<(), String> {
        self.reloader.reload()
    }

    /// Reloads whenever the files change or SIGHUP arrives, for as long as
    /// it runs.
    pub async fn watch(self) {
        let files = &self.reloader.files;
        let watched = [
            Some(&files.cert),
            Some(&files.key),
            files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let mut trigger = super::Reload::new(watched);
        loop {
            if trigger.wait().await {
                match self.reload() {
                    Ok(()) => tracing::info!(
                        "TLS certificate, key and client CA reloaded; new connections use them"
                    ),
                    Err(error) => tracing::error!(
                        %error,
                        "TLS files did not load; keeping the previous ones"
                    ),
                }
            }
        }
    }

    /// Runs the TLS handshake of an accepted connection from `peer`; a
    /// refused handshake is audited. The caller bounds how long it may take
    /// (`--handshake-timeout`, src/connections.rs).
    pub async fn handshake(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        match self.acceptor.accept(stream).await {
            Ok(tls) => Some(tls),
            Err(error) => {
                crate::audit::handshake_refused(peer, &error);
                None
            }
        }
    }
}

impl Reloader {
    fn reload(&self) -> Result<(), String> {
        let (key, verifier) = load(&self.files, &self.provider)?;
        self.cert.0.store(Arc::new(key));
        self.verifier.0.store(Arc::new(verifier));
        Ok(())
    }
}

fn load(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
) -> Result<(CertifiedKey, Arc<dyn ClientCertVerifier>), String> {
    let chain = crate::pem::chain(&files.cert)?;
    let key = crate::pem::key(&files.key)?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    let verifier = match &files.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(path) => {
            let roots = crate::pem::roots(path)?;
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
            let builder = match files.client_auth {
                ClientAuth::Required => builder,
                ClientAuth::Optional => builder.allow_unauthenticated(),
            };
            builder
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
    };
    Ok((key, verifier))
}

/// The server certificate, replaceable while the listener runs.
#[derive(Debug)]
struct SwappableCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The client certificate verifier, replaceable while the listener runs.
/// Sends no CA hints to clients (the hints would have to outlive a reload);
/// clients with one certificate, the usual case, do not need them.
struct SwappableVerifier(ArcSwap<Arc<dyn ClientCertVerifier>>);

impl fmt::Debug for SwappableVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwappableVerifier")
    }
}

impl ClientCertVerifier for SwappableVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.load().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.load().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().supported_verify_schemes()
    }
}
