//! Password hashing with argon2id, off the async runtime, at most N hashes at once.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use argon2::{Algorithm, Argon2, Block, Params, PasswordVerifier as _, Version};
use password_hash::{Output, ParamsString, SaltString, rand_core::OsRng};
use tokio::{sync::Semaphore, time::Instant};

use crate::{domain::Password, error::Error};

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

    /// Wraps a PHC string read back from storage.
    pub fn from_stored(phc: String) -> Self {
        Self(phc)
    }
}

/// A stored PHC string parsed exactly as [`PasswordHasher::verify`] parses it
/// before it hashes anything: the PHC syntax, then, for argon2id v19 hashes
/// with a salt and a tag (checked here, in pooled memory), the cost
/// parameters and the salt. `Err` where verify would fail with `INTERNAL`
/// before hashing. No hashing, so it costs microseconds.
///
/// Stored strings only ever come from the database, never from callers; this
/// is public so that the fuzz targets (`fuzz/`) and property tests can feed it
/// arbitrary strings.
pub fn parse_stored(phc: &str) -> Result<(argon2::PasswordHash<'_>, Option<PooledCheck>), Error> {
    let parsed = parse_phc(phc)?;
    let pooled = PooledCheck::of(&parsed)?;
    Ok((parsed, pooled))
}

/// The PHC syntax of a stored hash. A lane count above argon2's maximum is
/// refused before argon2 sees it: argon2 0.5 checks `m >= 8 * p` in 32-bit
/// arithmetic, which overflows for `p >= 2^29` (a panic where overflow
/// checks are on, as in debug builds). Every `p` counts: the PHC parser
/// accepts a parameter twice, and argon2 takes the last.
fn parse_phc(phc: &str) -> Result<argon2::PasswordHash<'_>, Error> {
    let parsed = argon2::PasswordHash::new(phc).map_err(Error::internal)?;
    let too_many = parsed.params.iter().any(|(name, value)| {
        name.as_str() == "p"
            && value
                .decimal()
                .is_ok_and(|lanes| lanes > Params::MAX_P_COST)
    });
    if too_many {
        return Err(Error::internal(
            "stored hash has more lanes than argon2 allows",
        ));
    }
    Ok(parsed)
}

/// What checking a password against a stored argon2id v19 hash runs with.
/// Any other stored hash goes to the argon2 crate's own verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PooledCheck {
    /// The cost parameters, with the tag's length as output length.
    pub params: Params,
    salt: [u8; 64],
    salt_len: usize,
    /// The stored tag.
    pub expected: Output,
}

impl PooledCheck {
    /// `None` when `stored` is not argon2id v19 with a salt and a tag.
    fn of(stored: &argon2::PasswordHash<'_>) -> Result<Option<Self>, Error> {
        let pooled = stored.algorithm == Algorithm::Argon2id.ident()
            && stored.version == Some(Version::V0x13.into());
        let (true, Some(salt), Some(expected)) = (pooled, stored.salt, stored.hash) else {
            return Ok(None);
        };
        let params = Params::try_from(stored).map_err(Error::internal)?;
        let mut buffer = [0u8; 64];
        let salt_len = salt.decode_b64(&mut buffer).map_err(Error::internal)?.len();
        Ok(Some(Self {
            params,
            salt: buffer,
            salt_len,
            expected,
        }))
    }

    /// The raw (decoded) salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt[..self.salt_len]
    }
}

/// The outcome of a password check.
#[derive(Debug)]
pub struct Verdict {
    /// Whether the password matched.
    pub valid: bool,
    /// A new hash under the current policy, when the password matched a hash
    /// made with weaker parameters (store it in place of the old one).
    pub upgraded: Option<PasswordHash>,
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Hashes passwords on its own low-priority threads. A semaphore keeps at most
/// `concurrency` hashes in flight (one per core by default); the excess
/// waits in line, but a call whose deadline would pass before its turn and
/// its own hash are over is refused at once (RESOURCE_EXHAUSTED with a
/// retry delay), instead of waiting its deadline out.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    slots: usize,
    /// Calls waiting for a slot now.
    waiting: Arc<AtomicUsize>,
    /// How long one hash takes, a moving average in microseconds.
    hash_micros: Arc<AtomicU64>,
    /// A hash of a random password under the current policy: unknown users
    /// are checked against it so that they cost what a real user costs.
    dummy: PasswordHash,
    memory: Arc<MemoryPool>,
    threads: Arc<HashThreads>,
    metrics: crate::metrics::Metrics,
}

/// The threads that hash, one per slot, at the lowest CPU priority (nice 19,
/// SCHED_BATCH). Measured with the benchmark's storm (200 CreateUser calls in
/// flight): at the default priority the hashes took the cores from the
/// runtime and GetUser's p99 more than doubled; at the lowest they use only
/// what request handling leaves, which on an idle server is everything.
/// Hand-written (a channel and a few threads) because the pools on crates.io
/// do not set a thread's priority.
struct HashThreads {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl HashThreads {
    fn start(count: usize) -> Result<Self, Error> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..count {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("roster-hash-{index}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    loop {
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            // Every hasher is gone: the thread ends.
                            Err(_) => return,
                        }
                    }
                })
                .map_err(Error::internal)?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on a hashing thread, in the caller's tracing span.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let span = tracing::Span::current();
        self.jobs
            .send(Box::new(move || {
                let _ = reply.send(span.in_scope(work));
            }))
            .map_err(|_| Error::internal("the hashing threads stopped"))?;
        answer
            .await
            .map_err(|_| Error::internal("a hashing thread dropped its work"))
    }
}

fn lower_this_threads_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let lowered = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
    );
    if let Err(error) = lowered {
        tracing::warn!(?error, "cannot lower the hashing threads' CPU priority");
    }
}

/// argon2 working memory (19 MiB at the default policy), reused between
/// hashes: a fresh allocation per hash costs page faults and zeroing, about 8%
/// of CreateUser's CPU under load (measured with perf). Holds at most as many
/// buffers as hashes ever ran at once (the semaphore bounds that). The blocks
/// hold argon2's internal state, never the password itself.
#[derive(Default)]
struct MemoryPool(Mutex<Vec<Vec<Block>>>);

impl MemoryPool {
    fn with<T>(&self, blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
        let pooled = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut buffer = pooled
            .filter(|buffer| buffer.len() == blocks)
            .unwrap_or_else(|| vec![Block::default(); blocks]);
        let result = work(&mut buffer);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(buffer);
        result
    }
}

impl PasswordHasher {
    /// Builds a hasher (hashing one dummy password); fails if the parameters
    /// are outside argon2's limits.
    pub fn new(policy: HashPolicy, concurrency: usize) -> Result<Self, Error> {
        let params = Params::new(
            policy.memory_kib,
            policy.iterations,
            policy.parallelism,
            None,
        )
        .map_err(Error::internal)?;
        let slots = concurrency.max(1);
        let mut hasher = Self {
            params,
            permits: Arc::new(Semaphore::new(slots)),
            slots,
            waiting: Arc::default(),
            hash_micros: Arc::default(),
            dummy: PasswordHash(String::new()),
            memory: Arc::default(),
            threads: Arc::new(HashThreads::start(slots)?),
            metrics: crate::metrics::Metrics::default(),
        };
        let random = SaltString::generate(&mut OsRng);
        let began = std::time::Instant::now();
        hasher.dummy = hasher
            .hash_bytes(random.as_str().as_bytes())
            .map_err(Error::internal)?;
        hasher.note_hash_time(began.elapsed());
        Ok(hasher)
    }

    /// Hashes `password` with a fresh 128-bit salt. Waits for a hashing slot
    /// until `deadline` at most, then fails with `HashingSaturated`.
    pub async fn hash(
        &self,
        password: Password,
        deadline: Option<Instant>,
    ) -> Result<PasswordHash, Error> {
        self.off_runtime(deadline, move |hasher| hasher.hash_blocking(&password))
            .await
    }

    /// Checks `password` against `stored`, or against the dummy hash when
    /// there is no user, so both cases take the same time. A match on a hash
    /// weaker than the current policy comes with an upgraded hash.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<PasswordHash>,
        deadline: Option<Instant>,
    ) -> Result<Verdict, Error> {
        self.off_runtime(deadline, move |hasher| {
            let exists = stored.is_some();
            let stored = stored.unwrap_or_else(|| hasher.dummy.clone());
            let parsed = parse_phc(stored.as_phc())?;
            let matched = hasher.matches(password.expose().as_bytes(), &parsed)?;
            let valid = exists && matched;
            let upgraded = if valid && hasher.is_weaker(&parsed) {
                Some(hasher.hash_blocking(&password)?)
            } else {
                None
            };
            Ok(Verdict { valid, upgraded })
        })
        .await
    }

    /// Hashes on the current thread; for the async path use [`Self::hash`].
    pub fn hash_blocking(&self, password: &Password) -> Result<PasswordHash, Error> {
        self.hash_bytes(password.expose().as_bytes())
            .map_err(Error::internal)
    }

    fn hash_bytes(&self, bytes: &[u8]) -> Result<PasswordHash, password_hash::Error> {
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_buffer = [0u8; 64];
        let raw_salt = salt.as_salt().decode_b64(&mut salt_buffer)?;
        let output = self.argon2id(&self.params, bytes, raw_salt)?;
        let phc = password_hash::PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params)?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(PasswordHash(phc.to_string()))
    }

    /// argon2id of `bytes` with `params` and the raw `salt`, in pooled memory.
    fn argon2id(
        &self,
        params: &Params,
        bytes: &[u8],
        salt: &[u8],
    ) -> Result<Output, password_hash::Error> {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
        self.memory.with(params.block_count(), |blocks| {
            argon2.hash_password_into_with_memory(bytes, salt, &mut out, blocks)
        })?;
        Output::new(&out)
    }

    /// Whether `password` matches `stored`, compared in constant time.
    /// argon2id v19 hashes use pooled memory; anything else goes through the
    /// argon2 crate's own verifier.
    fn matches(&self, password: &[u8], stored: &argon2::PasswordHash<'_>) -> Result<bool, Error> {
        if let Some(pooled) = PooledCheck::of(stored)? {
            let actual = self
                .argon2id(&pooled.params, password, pooled.salt())
                .map_err(Error::internal)?;
            // Output's equality is constant-time.
            return Ok(actual == pooled.expected);
        }
        Ok(Argon2::default().verify_password(password, stored).is_ok())
    }

    /// True when `hash` is not argon2id or any cost is below the policy.
    fn is_weaker(&self, hash: &argon2::PasswordHash<'_>) -> bool {
        if hash.algorithm != Algorithm::Argon2id.ident() {
            return true;
        }
        match Params::try_from(hash) {
            Ok(params) => {
                params.m_cost() < self.params.m_cost()
                    || params.t_cost() < self.params.t_cost()
                    || params.p_cost() < self.params.p_cost()
            }
            Err(_) => true,
        }
    }

    /// Records the time calls wait for a slot in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Hashing slots: hashes that may run at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Slots in use now.
    pub fn busy(&self) -> usize {
        self.slots.saturating_sub(self.permits.available_permits())
    }

    /// Calls waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The moving average of one hash's duration.
    pub fn hash_time(&self) -> Duration {
        Duration::from_micros(self.hash_micros.load(Ordering::Relaxed))
    }

    fn note_hash_time(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // An exponential moving average (1/8 weight for the new value);
        // races between threads only lose a sample.
        let old = self.hash_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        };
        self.hash_micros.store(new.max(1), Ordering::Relaxed);
    }

    /// How long a call arriving now would wait for a slot: every hash ahead
    /// of it in line, `slots` at a time.
    fn expected_wait(&self) -> Duration {
        let free = self.permits.available_permits();
        let ahead = self.waiting().saturating_sub(free) + usize::from(free == 0);
        let rounds = u32::try_from(ahead.div_ceil(self.slots)).unwrap_or(u32::MAX);
        self.hash_time().saturating_mul(rounds)
    }

    /// Runs `work` on the blocking pool once a hashing slot is free. A call
    /// that could not get its turn and its hash done before `deadline` is
    /// refused at once, with the expected wait as its retry delay.
    async fn off_runtime<T, F>(&self, deadline: Option<Instant>, work: F) -> Result<T, Error>
    where
        F: FnOnce(&Self) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let wait = self.expected_wait();
        // Twice the average hash: a hash that starts just in time and takes
        // a little longer than usual must still finish before the deadline.
        let margin = self.hash_time().saturating_mul(2);
        if let Some(deadline) = deadline {
            let needed = wait.saturating_add(margin);
            if Instant::now() + needed > deadline {
                return Err(Error::HashingSaturated {
                    retry_after: wait.max(self.hash_time()),
                });
            }
        }
        let acquire = Arc::clone(&self.permits).acquire_owned();
        let queued = Instant::now();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let acquired = match deadline {
            // The turn must come early enough for the hash itself to finish.
            Some(deadline) => {
                let latest = deadline.checked_sub(margin).unwrap_or(deadline);
                tokio::time::timeout_at(latest, acquire).await.ok()
            }
            None => Some(acquire.await),
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .hash_queue_wait
            .observe(queued.elapsed().as_secs_f64());
        let permit = acquired
            .ok_or_else(|| Error::HashingSaturated {
                retry_after: self.expected_wait().max(self.hash_time()),
            })?
            .map_err(Error::internal)?;
        let hasher = self.clone();
        // The permit moves into the hashing thread's job: if the caller goes
        // away the work still finishes, and the slot stays taken until it does.
        self.threads
            .run(move || {
                let _permit = permit;
                let began = std::time::Instant::now();
                let result = work(&hasher);
                hasher.note_hash_time(began.elapsed());
                result
            })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_hashes_are_standard_phc_strings_that_the_argon2_crate_verifies() {
        let hasher = PasswordHasher::new(HashPolicy::default(), 1).unwrap();
        let password = Password::parse("correct horse battery staple".into()).unwrap();
        let first = hasher.hash_blocking(&password).unwrap();
        let second = hasher.hash_blocking(&password).unwrap();
        assert_ne!(first, second, "a fresh salt each time");
        for hash in [&first, &second] {
            assert!(hash.as_phc().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
            let parsed = argon2::PasswordHash::new(hash.as_phc()).unwrap();
            assert!(
                Argon2::default()
                    .verify_password(password.expose().as_bytes(), &parsed)
                    .is_ok()
            );
            assert!(
                hasher
                    .matches(password.expose().as_bytes(), &parsed)
                    .unwrap()
            );
            assert!(!hasher.matches(b"another password", &parsed).unwrap());
        }
    }

    #[test]
    fn a_stored_hash_with_too_many_lanes_is_refused_not_a_panic() {
        // Found by the stored-hash property test: argon2 0.5 overflowed on it.
        let salt = "c29tZXNhbHRzb21lc2FsdA";
        let tag = "CWOrkoo7oJBQ/iyh7uJ0LO2aLEfrHwTWllSAxT0zRno";
        for algorithm in ["argon2id", "argon2i"] {
            // The second: found by the `phc` fuzz target (AFL), a repeated
            // parameter whose last value argon2 takes.
            for params in ["m=8,t=1,p=4294967295", "m=8,t=1,p=1,p=4294967295"] {
                let phc = format!("${algorithm}$v=19${params}${salt}${tag}");
                assert!(
                    matches!(parse_stored(&phc), Err(Error::Internal(_))),
                    "{phc}"
                );
            }
        }
        let most = format!("$argon2id$v=19$m=134217720,t=1,p=16777215${salt}${tag}");
        assert!(
            parse_stored(&most).unwrap().1.is_some(),
            "argon2's maximum lanes"
        );
    }

    #[test]
    fn hashes_made_by_the_argon2_crate_verify_too() {
        use argon2::PasswordHasher as _;
        let hasher = PasswordHasher::new(HashPolicy::default(), 1).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        for algorithm in [Algorithm::Argon2id, Algorithm::Argon2i] {
            let phc = Argon2::new(
                algorithm,
                Version::V0x13,
                Params::new(8192, 1, 1, None).unwrap(),
            )
            .hash_password(b"legacy password", &salt)
            .unwrap();
            assert!(hasher.matches(b"legacy password", &phc).unwrap());
            assert!(!hasher.matches(b"wrong password", &phc).unwrap());
        }
    }
}
