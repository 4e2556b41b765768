//! PEM files for rustls: a certificate chain, a private key, a bundle of
//! trust roots; every error names the file. Shared by the server's TLS
//! (`access::tls`) and the Redis client's (`backends`).

use std::path::Path;

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The certificates in `path`, in order; at least one.
pub fn chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| describe(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| describe(path, e))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(chain)
}

/// The private key in `path`.
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| describe(path, e))
}

/// The certificates in `path` as trust roots; at least one.
pub fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| describe(path, e))? {
        roots
            .add(cert.map_err(|e| describe(path, e))?)
            .map_err(|e| describe(path, e))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate", path.display()));
    }
    Ok(roots)
}

fn describe(path: &Path, error: impl std::fmt::Display) -> String {
    format!("{}: {error}", path.display())
}
