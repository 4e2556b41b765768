//! Collapses concurrent cache misses for one key into one database read per
//! process. Hand-written (a few dozen lines on tokio's `OnceCell`) because the
//! crates that do this need `Clone` errors, and ours carry causes that are not.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
};

use tokio::sync::OnceCell;

/// In-flight computations by key.
pub struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Arc<OnceCell<Option<V>>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `work` unless a call for `key` is already running, in which case it
    /// waits for that call's value. If the leader fails, it gets its own error
    /// and each waiter runs `work` itself; if the leader is cancelled, one
    /// waiter takes over.
    pub async fn run<F, Fut, E>(&self, key: &K, work: F) -> Result<V, E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(flights.entry(key.clone()).or_default())
        };
        let mut failure = None;
        let shared = cell
            .get_or_init(|| async {
                match work().await {
                    Ok(value) => Some(value),
                    Err(error) => {
                        failure = Some(error);
                        None
                    }
                }
            })
            .await
            .clone();
        {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            if flights.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                flights.remove(key);
            }
        }
        match (shared, failure) {
            (Some(value), _) => Ok(value),
            (None, Some(error)) => Err(error),
            (None, None) => work().await,
        }
    }
}
