//! How the board is laid out in Redis: what each key holds (the names are
//! built in `cache/keys.rs`), the sorted-set member
//! that encodes the board order, the stats value, and the parsing of what
//! the scripts and the change log return. Pure data, no I/O.
//!
//! Layout (one hash tag, so a Redis Cluster keeps every key in one slot;
//! every name starts with the deployment's key prefix, by default
//! `roster:v1:`, see `cache/keys.rs`):
//! - `<prefix>board:{lb}:set`: ZSET, score = best score (integers up to
//!   2^53 - 1 are exact doubles), member = 16-digit `(2^53 - 1) - seq`, then
//!   the user id, then the name. Equal scores sort by member, so under
//!   ZREVRANGE and ZREVRANK the user who reached the score first (lower seq)
//!   ranks higher.
//! - `<prefix>board:{lb}:members`: HASH name key -> current member, or a
//!   tombstone (`~` and the id of the user deleted under that name).
//! - `<prefix>board:{lb}:stats`: HASH name key -> 20-digit games_played,
//!   then the encoded `roster.v1.UserStats` (without rank).
//! - `<prefix>board:{lb}:ready`: the token of the rebuild that loaded the
//!   whole board (the board's generation); present only once it has.
//! - `<prefix>board:{lb}:building`: the rebuild lease: the token of the one
//!   rebuild in progress, with a TTL that the rebuild keeps renewing.
//! - `<prefix>board:{lb}:version` and `<prefix>board:{lb}:log`: a counter
//!   and a STREAM of every live change to the board (entry `N-0` is change
//!   N: fields k, m, s, v as in an update, or only k for a removal), trimmed
//!   to about 10,000 entries. Each replica's copy follows it.

use fred::types::{Key, Value};
use prost::{Message, bytes::Bytes};
use uuid::Uuid;

use super::mirror::Entry;
use crate::{
    cache::keys::BoardKeys,
    domain::{BoardEntry, BoardPage, BoardPosition, Score, Stats},
    proto::{roster::v1 as pb, stats_from_wire, stats_to_wire},
};

/// The largest tie-break number the member encoding holds.
const MAX_SEQ: i64 = Score::MAX;
const SEQ_DIGITS: usize = 16;
const UUID_CHARS: usize = 36;

/// Changes the log keeps (at least; Redis trims in whole nodes). A copy
/// that falls further behind than this is loaded again.
pub(super) const LOG_LENGTH: &str = "10000";

/// The keys of the update and removal scripts, in their order.
pub(super) fn write_keys(keys: &BoardKeys) -> Vec<Key> {
    vec![
        keys.set.clone(),
        keys.members.clone(),
        keys.stats.clone(),
        keys.ready.clone(),
        keys.version.clone(),
        keys.log.clone(),
        keys.delivered.clone(),
        keys.ahead.clone(),
        keys.building.clone(),
    ]
}

/// The member encoding the board order for equal scores (see the module docs).
pub(super) fn member(position: BoardPosition, user_id: Uuid, name: &str) -> String {
    let inverted = MAX_SEQ.saturating_sub(position.seq).max(0);
    format!("{inverted:0SEQ_DIGITS$}{user_id}{name}")
}

/// The four update-script arguments of one entry.
pub(super) fn entry_args(key: &str, stats: &Stats, position: BoardPosition) -> [Value; 4] {
    let mut value = format!("{:020}", stats.games_played.max(0)).into_bytes();
    value.extend(stats_to_wire(stats, 0).encode_to_vec());
    [
        Value::from(key),
        Value::from(member(position, stats.user_id, &stats.name)),
        Value::from(position.score.to_string()),
        Value::Bytes(Bytes::from(value)),
    ]
}

/// One change from the board's log.
pub(super) enum LoggedChange {
    Update(String, Entry),
    Remove(String),
}

/// A log entry `[id, [field, value, ...]]` as its change number and change.
pub(super) fn log_entry(entry: &Value) -> Option<(u64, LoggedChange)> {
    let Value::Array(entry) = entry else {
        return None;
    };
    let [id, Value::Array(fields)] = entry.as_slice() else {
        return None;
    };
    let id: u64 = id.as_bytes_str()?.strip_suffix("-0")?.parse().ok()?;
    let field = |name: &str| {
        fields
            .chunks_exact(2)
            .find(|pair| pair[0].as_bytes_str().as_deref() == Some(name))
            .map(|pair| &pair[1])
    };
    let key = field("k")?.as_bytes_str()?.to_string();
    let change = match (field("m"), field("s"), field("v")) {
        (Some(member), Some(score), Some(value)) => {
            LoggedChange::Update(key, board_entry(member, score, value)?)
        }
        (None, None, None) => LoggedChange::Remove(key),
        _ => return None,
    };
    Some((id, change))
}

/// A board entry from its member, score and stats value in Redis.
pub(super) fn board_entry(member: &Value, score: &Value, value: &Value) -> Option<Entry> {
    let member = member.as_bytes_str()?;
    let (seq, user_id, name) = parse_member(&member)?;
    Some(Entry {
        position: BoardPosition {
            score: parse_score(&score.as_bytes_str()?)?,
            seq,
        },
        user_id,
        name: name.to_owned(),
        stats: decode_stats(value.as_bytes()?)?,
    })
}

/// A member's sequence number, user id and name (see [`member`]).
fn parse_member(member: &str) -> Option<(i64, Uuid, &str)> {
    let inverted: i64 = member.get(..SEQ_DIGITS)?.parse().ok()?;
    let id = Uuid::parse_str(member.get(SEQ_DIGITS..SEQ_DIGITS + UUID_CHARS)?).ok()?;
    let name = member.get(SEQ_DIGITS + UUID_CHARS..)?;
    Some((MAX_SEQ - inverted, id, name))
}

/// A Redis score as the integer it holds. Scores are integers up to
/// 2^53 - 1, exact in a double; Redis may write a large one in exponent form.
fn parse_score(score: &str) -> Option<i64> {
    if let Ok(score) = score.parse() {
        return Some(score);
    }
    let score: f64 = score.parse().ok()?;
    let exact = score.fract() == 0.0 && (0.0..=MAX_SEQ as f64).contains(&score);
    #[allow(clippy::cast_possible_truncation)]
    exact.then_some(score as i64)
}

pub(super) fn as_u64(value: &Value) -> Option<u64> {
    value.as_bytes_str()?.parse().ok()
}

/// A stats value (see the module docs) as the stats it holds.
pub(super) fn decode_stats(value: &[u8]) -> Option<Stats> {
    let blob = value.get(20..)?;
    stats_from_wire(pb::UserStats::decode(blob).ok()?)
}

/// Entries from a WITHSCORES range that starts at 0-based `offset`.
pub(super) fn page_of(offset: u64, total: u64, range: &Value) -> Option<BoardPage> {
    let range = range.as_bytes_str()?;
    let mut entries = Vec::new();
    if range.is_empty() {
        return Some(BoardPage { entries, total });
    }
    let mut fields = range.split('\n');
    let mut rank = offset;
    while let Some(member) = fields.next() {
        let score = fields.next()?;
        rank += 1;
        let (_, user_id, name) = parse_member(member)?;
        entries.push(BoardEntry {
            rank,
            user_id,
            name: name.to_owned(),
            score: parse_score(score)?,
        });
    }
    Some(BoardPage { entries, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_of_equal_scores_sort_descending_by_who_reached_the_score_first() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = member(BoardPosition { score: 5, seq: 7 }, b, "zed");
        let second = member(BoardPosition { score: 5, seq: 8 }, a, "amy");
        // ZREVRANGE lists equal scores in descending member order.
        assert!(first > second);
        assert_eq!(first.len(), SEQ_DIGITS + UUID_CHARS + 3);
    }

    #[test]
    fn the_member_prefix_has_a_fixed_width_for_every_sequence() {
        let id = Uuid::nil();
        for seq in [1, 9, 10, 1 << 40, MAX_SEQ] {
            let m = member(BoardPosition { score: 0, seq }, id, "x");
            assert_eq!(m.len(), SEQ_DIGITS + UUID_CHARS + 1, "seq {seq}");
            assert_eq!(parse_member(&m), Some((seq, id, "x")));
        }
    }
}
