//! The audit trail: one structured event per call that changes or reveals
//! account data (CreateUser, ChangePassword, DeleteUser, ListUsers,
//! VerifyPassword's outcome), per access denial, and per refused TLS
//! handshake, all on the tracing target `roster::audit`. Each event carries
//! the caller's identity (or `anonymous`), the peer address, the method, the
//! user the call was about (its canonical name key), the outcome and the
//! request id; never a password or a hash. Route it with the log filter
//! (`RUST_LOG=info,roster::audit=info`, or `roster::audit=off` to drop it)
//! and, with `--log-format json`, by the `target` field.

use std::net::SocketAddr;

use crate::{access::Caller, error::Error};

/// The tracing target of every audit event.
pub const TARGET: &str = "roster::audit";

/// A call's outcome as the audit trail records it: `ok`, or the error's
/// stable reason (e.g. `USER_ALREADY_EXISTS`).
pub fn outcome<T>(result: &Result<T, Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(error) => error.reason(),
    }
}

/// Records one call.
pub fn call(
    caller: Option<&Caller>,
    method: &str,
    user: Option<&str>,
    outcome: &str,
    request_id: Option<&str>,
) {
    let identity = caller
        .and_then(|c| c.identity.as_ref())
        .map_or("anonymous", |id| id.as_str());
    let peer = caller.and_then(|c| c.peer).map(|p| p.to_string());
    tracing::info!(
        target: TARGET,
        event = "call",
        caller = identity,
        peer = peer.as_deref().unwrap_or(""),
        method,
        user = user.unwrap_or(""),
        outcome,
        request_id = request_id.unwrap_or(""),
        "audit"
    );
}

/// Records a call the access policy or a quota refused.
pub fn denied(caller: &Caller, method: &str, error: &Error) {
    let identity = caller
        .identity
        .as_ref()
        .map_or("anonymous", |id| id.as_str());
    let peer = caller.peer.map(|p| p.to_string());
    tracing::info!(
        target: TARGET,
        event = "denied",
        caller = identity,
        peer = peer.as_deref().unwrap_or(""),
        method,
        outcome = error.reason(),
        "audit"
    );
}

/// Records a TLS handshake refused (no, or an untrusted, client certificate).
pub fn handshake_refused(peer: SocketAddr, error: &std::io::Error) {
    tracing::info!(
        target: TARGET,
        event = "tls_refused",
        peer = %peer,
        outcome = %error,
        "audit"
    );
}
