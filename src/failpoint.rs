//! Test-only failpoints, compiled only with the `failpoints` feature (the
//! integration tests enable it): pause a code path at a named point for one
//! user key, count how often a point is passed, or switch a guard off.
//! Keyed by user so tests running in parallel do not disturb each other.
//!
//! Hand-written rather than tikv's `fail` crate, for two reasons the tests
//! depend on: `fail`'s `pause` blocks the OS thread, and here the points sit
//! on async request paths, where blocking one of the runtime's few worker
//! threads stalls unrelated calls (the race tests need the rest of the server
//! to keep serving while one request waits at the point); and `fail`'s
//! configuration is one process-wide table keyed by point name, so two tests
//! of the one integration-test binary running in parallel cannot arm the same
//! point for different users. Faults that `fail` would return (errors from
//! storage or Redis) are injected for real by the fault tests instead: a full
//! file system, a read-only one, a cut connection, a frozen Redis.
#![allow(missing_docs)]

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, LazyLock, Mutex},
};

use tokio::sync::Notify;

/// A one-shot pause: the code path signals `reached`, then waits for `resume`.
#[derive(Default)]
pub struct Pause {
    pub reached: Notify,
    pub resume: Notify,
}

/// A failpoint name and the user key it applies to.
type Point = (&'static str, String);

static PAUSES: LazyLock<Mutex<HashMap<Point, Arc<Pause>>>> = LazyLock::new(Mutex::default);
static COUNTS: LazyLock<Mutex<HashMap<Point, usize>>> = LazyLock::new(Mutex::default);
static UNGUARDED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

/// Pauses the next pass through `point` for `key`.
pub fn arm(point: &'static str, key: &str) -> Arc<Pause> {
    let pause = Arc::new(Pause::default());
    PAUSES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((point, key.to_owned()), Arc::clone(&pause));
    pause
}

/// Called by the code path: counts the pass, and pauses if armed.
pub async fn hit(point: &'static str, key: &str) {
    *COUNTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((point, key.to_owned()))
        .or_default() += 1;
    let pause = PAUSES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(point, key.to_owned()));
    if let Some(pause) = pause {
        pause.reached.notify_one();
        pause.resume.notified().await;
    }
}

/// How many times `point` was passed for `key`.
pub fn count(point: &'static str, key: &str) -> usize {
    COUNTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(point, key.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// Turns the cache-fill guard off (or back on) for `key`.
pub fn set_unguarded(key: &str, unguarded: bool) {
    let mut keys = UNGUARDED.lock().unwrap_or_else(|e| e.into_inner());
    if unguarded {
        keys.insert(key.to_owned());
    } else {
        keys.remove(key);
    }
}

/// Whether the cache-fill guard is off for `key`.
pub fn is_unguarded(key: &str) -> bool {
    UNGUARDED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(key)
}
