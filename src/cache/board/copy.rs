//! This process's copy of the board: loaded from Redis, kept current by
//! following the change log, and used by a read only when a sync with Redis
//! that began after the read arrived shows the copy holds everything Redis
//! held then. Concurrent reads share one sync (one MGET of the generation
//! and log position), which is what makes the copy cheap.
//!
//! A copy loads by noting the generation and log position, then scanning
//! the set: changes made during the scan come after that position, so the
//! syncs that follow apply them (applying twice is harmless under the
//! forward-only rules). A new generation, a gap in the log, or Redis slow or
//! down sends reads to the Redis scripts while the copy loads again.

use std::{
    sync::{
        Arc, Mutex, OnceLock, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use fred::{
    prelude::{ClientLike, Error as RedisError, KeysInterface},
    types::Value,
};
use tokio::sync::Notify;

use super::{
    layout::{LoggedChange, as_u64, board_entry, log_entry},
    mirror::Mirror,
    scripts::{SCAN, SYNC},
};
use crate::{
    cache::{Redis, keys::BoardKeys},
    domain::NameKey,
};

/// Log entries read per sync script call.
const SYNC_BATCH: u64 = 1_000;
/// Sync script calls one sync may make to catch up before giving up.
const SYNC_CALLS: usize = 4;
/// Users read per scan script call while loading the copy.
const SCAN_BATCH: u64 = 1_000;
/// How often the copy syncs while no read asks it to, so that it stays
/// within the log and notices a new generation early.
const IDLE_SYNC: Duration = Duration::from_millis(100);

/// One sync of the copy with Redis, and the reads that wait for it.
#[derive(Default)]
struct Round {
    /// Where Redis stood (generation, log position) if the copy covers it;
    /// set once the sync is over (`None` inside when it failed).
    found: OnceLock<Option<(Arc<str>, u64)>>,
    done: Notify,
}

impl Round {
    fn finish(&self, found: Option<(Arc<str>, u64)>) {
        // Set only once: a round finished by its sync keeps its answer.
        let _ = self.found.set(found);
        self.done.notify_waiters();
    }
}

/// Finishes a round (with nothing found) if its sync is dropped midway, so
/// no read waits for it forever.
struct Finishing(Arc<Round>);

impl Drop for Finishing {
    fn drop(&mut self) {
        self.0.finish(None);
    }
}

/// Finishes the next round (with nothing found) when the sync loop stops:
/// reads that join it from then on go to Redis at once.
struct Closing<'a>(&'a Copy);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.next_round().finish(None);
    }
}

/// This process's copy of the board and what keeps it current.
pub(super) struct Copy {
    redis: Option<Redis>,
    board: RwLock<Option<Mirror>>,
    /// The round that begins next. A read joins it, so the sync that
    /// answers the read begins after the read arrived; each round's reads
    /// are woken once, when it is over.
    next: Mutex<Arc<Round>>,
    /// A read is waiting for a sync: the flag says whether the sync loop was
    /// already told, so a batch of reads wakes it once.
    wanted: Notify,
    wanted_flag: AtomicBool,
    /// The copy must be loaded again (new generation, gap in the log).
    reload: Notify,
    reloading: AtomicBool,
    /// Redis's log position at the last sync (for the lag metric).
    seen: AtomicU64,
}

impl Copy {
    pub(super) fn new(redis: Option<Redis>) -> Self {
        Self {
            redis,
            board: RwLock::new(None),
            next: Mutex::new(Arc::default()),
            wanted: Notify::new(),
            wanted_flag: AtomicBool::new(false),
            reload: Notify::new(),
            reloading: AtomicBool::new(false),
            seen: AtomicU64::new(0),
        }
    }

    fn next_round(&self) -> std::sync::MutexGuard<'_, Arc<Round>> {
        self.next.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn board(&self) -> std::sync::RwLockReadGuard<'_, Option<Mirror>> {
        self.board.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Mirror>> {
        self.board.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the load loop for a fresh copy, once until it has tried.
    fn request_reload(&self) {
        if !self.reloading.swap(true, Ordering::AcqRel) {
            self.reload.notify_one();
        }
    }

    /// Runs `read` on this process's copy if a sync that began after this
    /// call shows the copy is current; `None` sends the caller to Redis.
    /// `key` is the user the read is about, if any (for test failpoints).
    pub(super) async fn read<R>(
        &self,
        key: Option<&NameKey>,
        read: impl FnOnce(&Mirror) -> R,
    ) -> Option<R> {
        let copy = self;
        if copy.board().is_none() {
            return None;
        }
        #[cfg(feature = "failpoints")]
        if let Some(key) = key
            && crate::failpoint::is_unguarded(key.as_str())
        {
            // Tests show what a read without its sync would return.
            let board = copy.board();
            return board.as_ref().map(read);
        }
        #[cfg(not(feature = "failpoints"))]
        let _ = key;
        let round = Arc::clone(&copy.next_round());
        if !copy.wanted_flag.swap(true, Ordering::SeqCst) {
            copy.wanted.notify_one();
        }
        let done = round.done.notified();
        tokio::pin!(done);
        // Registered before looking, so the wake-up cannot be missed.
        done.as_mut().enable();
        if round.found.get().is_none() {
            done.await;
        }
        let (generation, version) = round.found.get()?.clone()?;
        let answer = {
            let board = copy.board();
            let mirror = board.as_ref()?;
            mirror.covers(&generation, version).then(|| read(mirror))?
        };
        #[cfg(feature = "failpoints")]
        if let Some(key) = key {
            crate::failpoint::hit("board-copy-read", key.as_str()).await;
        }
        Some(answer)
    }

    /// Keeps this process's copy of the board loaded and current, for as
    /// long as it runs; reads use Redis itself while it is not running (and
    /// always, when the copy is switched off).
    pub(super) async fn keep(&self) {
        if self.redis.is_some() {
            tokio::join!(self.sync_loop(), self.load_loop());
        }
    }

    /// Syncs whenever a read asks (one sync answers every read that joined
    /// its round) and every [`IDLE_SYNC`] otherwise.
    async fn sync_loop(&self) {
        let _closing = Closing(self);
        loop {
            tokio::select! {
                () = self.wanted.notified() => {}
                () = tokio::time::sleep(IDLE_SYNC) => {}
            }
            // Let the reads that are ready to run join the round first, so
            // that this sync answers as many of them as it can.
            tokio::task::yield_now().await;
            // Cleared before the round begins: a read that sets it again
            // joins the next round, and its notification asks for it.
            self.wanted_flag.store(false, Ordering::SeqCst);
            let round = std::mem::take(&mut *self.next_round());
            let finishing = Finishing(round);
            let found = self.sync().await;
            finishing.0.finish(found);
        }
    }

    /// Brings the copy up to Redis's log; returns where Redis stood if the
    /// copy now covers it.
    async fn sync(&self) -> Option<(Arc<str>, u64)> {
        // Quietly: the calls that fall back to Redis report its absence.
        let redis = self.redis.as_ref()?;
        let (client, keys) = (redis.client(), &redis.keys().board);
        if !client.is_connected() {
            return None;
        }
        // The common case, the copy already current, costs one MGET: the
        // generation and log position are read together, and a rebuild
        // deletes both at once, so a matching generation means the version
        // is that generation's. Anything else goes through the script.
        let (generation, applied) = self.copy_position()?;
        let found = generation_and_version(client, keys).await;
        if let Ok(Some((_, version))) = &found {
            self.seen.store(*version, Ordering::Relaxed);
        }
        match found {
            Ok(Some((current, version))) if *current == *generation && version == applied => {
                return Some((generation, version));
            }
            Ok(_) => {}
            Err(error) => {
                self.warn("redis board sync failed; reading the set", Some(&error));
                return None;
            }
        }
        for _ in 0..SYNC_CALLS {
            let (generation, applied) = self.copy_position()?;
            let args = vec![
                Value::from(&*generation),
                Value::from(applied.to_string()),
                Value::from(format!("{}-0", applied.saturating_add(1))),
                Value::from(SYNC_BATCH.to_string()),
            ];
            let keys = vec![keys.ready.clone(), keys.version.clone(), keys.log.clone()];
            let reply: Vec<Value> = match SYNC.eval::<Value, _, _>(client, keys, args).await {
                Ok(reply) => reply.into_array(),
                Err(error) => {
                    self.warn("redis board sync failed; reading the set", Some(&error));
                    return None;
                }
            };
            match (
                reply.first().and_then(Value::as_i64),
                &reply[1.min(reply.len())..],
            ) {
                (Some(2), [version]) => {
                    let version = as_u64(version)?;
                    if version < applied {
                        // The log went back within one generation: never
                        // happens unless someone edited Redis; start over.
                        self.request_reload();
                        return None;
                    }
                    return Some((generation, version));
                }
                (Some(2), [version, log]) => {
                    let version = as_u64(version)?;
                    if !self.apply_log(&generation, applied, log) {
                        return None;
                    }
                    let covered = self.board().as_ref().map(Mirror::applied);
                    if covered >= Some(version) {
                        return Some((generation, version));
                    }
                }
                // Another generation than the copy's: load it.
                (Some(1), _) => {
                    self.request_reload();
                    return None;
                }
                // Not ready (a rebuild is under way), or a reply we do not know.
                _ => return None,
            }
        }
        None
    }

    /// How many ranked users the copy holds, once one is loaded.
    pub(super) fn len(&self) -> Option<u64> {
        self.board().as_ref().map(Mirror::len)
    }

    /// The copy's size, and how far behind Redis's log it was at the last
    /// sync; `None` without a copy.
    pub(super) fn stats(&self) -> Option<(u64, u64)> {
        let seen = self.seen.load(Ordering::Relaxed);
        self.board()
            .as_ref()
            .map(|m| (m.len(), seen.saturating_sub(m.applied())))
    }

    /// The copy's generation and log position; `None` (after asking for a
    /// load) when there is no copy.
    fn copy_position(&self) -> Option<(Arc<str>, u64)> {
        let position = self
            .board()
            .as_ref()
            .map(|m| (Arc::clone(m.generation()), m.applied()));
        if position.is_none() {
            self.request_reload();
        }
        position
    }

    /// Applies log entries that follow `applied` to the copy of `generation`.
    /// `false` when they cannot be (the copy changed meanwhile, or the log
    /// has a gap or an unreadable entry, which also asks for a reload).
    fn apply_log(&self, generation: &str, applied: u64, log: &Value) -> bool {
        let mut board = self.write();
        let Some(mirror) = board.as_mut().filter(|m| m.covers(generation, applied)) else {
            return false;
        };
        if mirror.applied() != applied {
            // Another sync got further meanwhile; the caller asks again.
            return true;
        }
        let entries: &[Value] = match log {
            Value::Array(entries) => entries,
            _ => &[],
        };
        if entries.is_empty() {
            // Behind, yet nothing after our position: trimmed away.
            self.request_reload();
            return false;
        }
        let mut next = applied.saturating_add(1);
        for entry in entries {
            match log_entry(entry) {
                Some((id, change)) if id == next => {
                    match change {
                        LoggedChange::Update(key, entry) => mirror.apply(&key, entry),
                        LoggedChange::Remove(key) => mirror.remove(&key),
                    }
                    mirror.advance_to(id);
                    next = next.saturating_add(1);
                }
                _ => {
                    drop(board);
                    self.warn("board log has a gap; loading the board again", None);
                    self.request_reload();
                    return false;
                }
            }
        }
        true
    }

    /// Loads a fresh copy whenever a sync asks for one.
    async fn load_loop(&self) {
        loop {
            self.reload.notified().await;
            let began = std::time::Instant::now();
            match self.load_copy().await {
                Ok(Some(mirror)) => {
                    if let Some(redis) = &self.redis {
                        redis.metrics().board_copy_loads.inc();
                    }
                    tracing::info!(
                        users = mirror.len(),
                        took = ?began.elapsed(),
                        "board copy loaded; board reads use it"
                    );
                    *self.write() = Some(mirror);
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, "loading the board copy failed"),
            }
            // The next sync asks again if this did not do.
            self.reloading.store(false, Ordering::Release);
        }
    }

    /// Notes the generation and log position, then scans the whole set:
    /// changes made during the scan are after that position, so the syncs
    /// that follow apply them (the merge rules make applying twice
    /// harmless). `None` while the set is not ready.
    async fn load_copy(&self) -> Result<Option<Mirror>, RedisError> {
        let (client, keys) = self.require_client()?;
        let Some((generation, version)) = generation_and_version(client, keys).await? else {
            return Ok(None);
        };
        let mut mirror = Mirror::new(generation.into(), version);
        let mut cursor = String::from("0");
        loop {
            let keys = vec![keys.members.clone(), keys.set.clone(), keys.stats.clone()];
            let args = vec![
                Value::from(cursor.as_str()),
                Value::from(SCAN_BATCH.to_string()),
            ];
            let reply: Value = SCAN.eval(client, keys, args).await?;
            let mut items = reply.into_array().into_iter();
            cursor = items
                .next()
                .and_then(|c| c.as_bytes_str().map(|c| c.to_string()))
                .unwrap_or_default();
            let items: Vec<Value> = items.collect();
            for item in items.chunks_exact(4) {
                let parsed = item[0]
                    .as_bytes_str()
                    .zip(board_entry(&item[1], &item[2], &item[3]));
                match parsed {
                    Some((key, entry)) => mirror.apply(&key, entry),
                    None => {
                        self.warn("unreadable board entry; copy not loaded", None);
                        return Ok(None);
                    }
                }
            }
            if cursor == "0" || cursor.is_empty() {
                return Ok(Some(mirror));
            }
        }
    }

    /// The client, when connected, and the board's keys.
    fn connected(&self) -> Option<(&fred::clients::Client, &BoardKeys)> {
        let redis = self.redis.as_ref()?;
        Some((redis.connected()?, &redis.keys().board))
    }

    fn warn(&self, what: &str, error: Option<&RedisError>) {
        if let Some(redis) = &self.redis {
            redis.warn(what, error);
        }
    }

    fn require_client(&self) -> Result<(&fred::clients::Client, &BoardKeys), RedisError> {
        self.connected()
            .ok_or_else(|| RedisError::new(fred::error::ErrorKind::IO, "redis is not connected"))
    }
}

/// The board's generation and change-log position, read together (one
/// MGET; a rebuild deletes both at once); `None` while the set is not ready.
async fn generation_and_version(
    client: &fred::clients::Client,
    keys: &BoardKeys,
) -> Result<Option<(String, u64)>, RedisError> {
    let keys = vec![keys.ready.clone(), keys.version.clone()];
    let found: Vec<Option<String>> = Box::pin(client.mget(keys)).await?;
    Ok(match found.as_slice() {
        [Some(generation), version] => version
            .as_deref()
            .unwrap_or("0")
            .parse()
            .ok()
            .map(|version| (generation.clone(), version)),
        _ => None,
    })
}
