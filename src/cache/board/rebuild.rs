//! Rebuilding the Redis board from the database, by one replica at a time:
//! a rebuild holds a lease (`building`, a token with a TTL it renews), every
//! load it sends is fenced by that token, and only the lease holder may mark
//! the board ready. Another replica that finds the board missing while a
//! lease is held waits for it, reading the database meanwhile.

use std::time::Duration;

use fred::{prelude::Error as RedisError, types::Value};
use uuid::Uuid;

use super::{
    BoardCache,
    layout::{LOG_LENGTH, entry_args, write_keys},
    scripts::{BEGIN, FINISH, RENEW, UPDATE},
};
use crate::domain::{BoardPosition, Stats};

/// How long a rebuild lease lives unless renewed: a replica that dies
/// mid-rebuild holds up the others this long at most.
const LEASE: Duration = Duration::from_secs(30);

/// A rebuild this replica owns; its token becomes the board's generation.
#[derive(Debug)]
pub struct Rebuild {
    token: String,
}

fn lease_ms() -> Value {
    Value::from(LEASE.as_millis().to_string())
}

impl BoardCache {
    /// Takes the rebuild lease and empties the board (ready marker first);
    /// `None` when another replica holds the lease.
    pub async fn begin_rebuild(&self) -> Result<Option<Rebuild>, RedisError> {
        let (client, keys) = self.require_client()?;
        let token = Uuid::now_v7().to_string();
        let keys = vec![
            keys.building.clone(),
            keys.ready.clone(),
            keys.set.clone(),
            keys.members.clone(),
            keys.stats.clone(),
            keys.version.clone(),
            keys.log.clone(),
        ];
        let taken: i64 = BEGIN
            .eval(client, keys, vec![Value::from(token.as_str()), lease_ms()])
            .await?;
        Ok((taken == 1).then_some(Rebuild { token }))
    }

    /// Loads a batch of ranked users (forward-only, like live updates).
    /// `false` when the lease was lost (expired, or the board was flushed):
    /// the caller must stop.
    pub async fn load<'a>(
        &self,
        rebuild: &Rebuild,
        rows: impl IntoIterator<Item = (&'a str, Stats, BoardPosition)>,
    ) -> Result<bool, RedisError> {
        let (client, keys) = self.require_client()?;
        let mut args = vec![
            Value::from(format!("load:{}", rebuild.token)),
            Value::from(LOG_LENGTH),
            Value::from("0"),
        ];
        for (key, stats, position) in rows {
            args.extend(entry_args(key, &stats, position));
        }
        let reply: Value = UPDATE.eval(client, write_keys(keys), args).await?;
        Ok(reply.into_array().first().and_then(Value::as_i64) != Some(-1))
    }

    /// Extends the lease; `false` when it was lost.
    pub async fn renew(&self, rebuild: &Rebuild) -> Result<bool, RedisError> {
        let (client, keys) = self.require_client()?;
        let renewed: i64 = RENEW
            .eval(
                client,
                vec![keys.building.clone()],
                vec![Value::from(rebuild.token.as_str()), lease_ms()],
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Marks the board complete, with the rebuild's token as its generation;
    /// `false` when the lease was lost meanwhile (the board is left for the
    /// next rebuild).
    pub async fn finish_rebuild(&self, rebuild: Rebuild) -> Result<bool, RedisError> {
        let (client, keys) = self.require_client()?;
        let finished: i64 = FINISH
            .eval(
                client,
                vec![keys.ready.clone(), keys.building.clone()],
                vec![Value::from(rebuild.token)],
            )
            .await?;
        Ok(finished == 1)
    }
}
