//! Password hashing with argon2id, off the async runtime, at most N hashes at once.

use std::{fmt, sync::Arc};

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, Version};
use password_hash::{SaltString, rand_core::OsRng};
use tokio::{sync::Semaphore, time::Instant};

use crate::{domain::Password, error::Error, telemetry::spawn_blocking_with_tracing};

/// argon2id cost parameters (defaults: OWASP's m=19456 KiB, t=2, p=1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashPolicy {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for HashPolicy {
    fn default() -> Self {
        Self {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

/// An argon2id PHC string (algorithm, version, parameters, salt, tag).
/// Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// The PHC string, for storage.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Hashes passwords on tokio's blocking pool. A semaphore keeps at most
/// `concurrency` hashes in flight (one per core by default); the excess
/// waits, but never past the call's deadline.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
}

impl PasswordHasher {
    /// Builds a hasher; fails if the parameters are outside argon2's limits.
    pub fn new(policy: HashPolicy, concurrency: usize) -> Result<Self, argon2::Error> {
        let params = Params::new(
            policy.memory_kib,
            policy.iterations,
            policy.parallelism,
            None,
        )?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    /// Hashes `password` with a fresh 128-bit salt. Waits for a hashing slot
    /// until `deadline` at most, then fails with `HashingSaturated`.
    pub async fn hash(
        &self,
        password: Password,
        deadline: Option<Instant>,
    ) -> Result<PasswordHash, Error> {
        let acquire = Arc::clone(&self.permits).acquire_owned();
        let permit = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire)
                .await
                .map_err(|_| Error::HashingSaturated)?,
            None => acquire.await,
        }
        .map_err(Error::internal)?;
        let hasher = self.clone();
        // The permit moves into the blocking task: if the caller goes away the
        // hash still finishes, and the slot stays taken until it does.
        spawn_blocking_with_tracing(move || {
            let _permit = permit;
            hasher.hash_blocking(&password)
        })
        .await
        .map_err(Error::internal)?
    }

    /// Hashes on the current thread; for the async path use [`Self::hash`].
    pub fn hash_blocking(&self, password: &Password) -> Result<PasswordHash, Error> {
        let salt = SaltString::generate(&mut OsRng);
        let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
            .hash_password(password.expose().as_bytes(), &salt)
            .map_err(Error::internal)?
            .to_string();
        Ok(PasswordHash(phc))
    }
}
