//! This process's copy of the Redis board: the same entries under the same
//! forward-only rules, in an order-statistic tree, so a rank, a page or a
//! window costs microseconds instead of a Redis script. Pure data: when the
//! copy may answer a read is decided in `copy.rs`.

use std::{collections::HashMap, sync::Arc};

use uuid::Uuid;

use crate::domain::{BoardEntry, BoardPage, BoardPosition, PageSize, Stats, window_start};

/// One user's entry as the Redis board holds it: the sorted-set member
/// (position, id, name) and the stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Best score and the sequence number of when it was reached.
    pub position: BoardPosition,
    /// The user's id, as listed on the board.
    pub user_id: Uuid,
    /// The user's display name, as listed on the board.
    pub name: String,
    /// The user's stats (rank not included).
    pub stats: Stats,
}

/// What a board listing shows of one user.
#[derive(Debug, Clone)]
struct Listed {
    user_id: Uuid,
    name: String,
}

/// A user's current entry; position and stats move forward independently,
/// as the two Redis hashes do.
#[derive(Debug, Clone)]
struct Slot {
    user_id: Uuid,
    position: BoardPosition,
    stats: Stats,
}

/// The board as of one Redis board generation (the token of the
/// rebuild that made it) and one point of its change log (`applied`).
pub(crate) struct Mirror {
    generation: Arc<str>,
    applied: u64,
    // indexset's B-tree keeps a Fenwick index over its nodes, so rank and
    // select are O(log n): the same operations Redis's skiplist offers.
    order: indexset::BTreeMap<BoardPosition, Listed>,
    users: HashMap<String, Slot>,
}

impl Mirror {
    /// An empty copy of `generation` whose log position is `applied`.
    pub(crate) fn new(generation: Arc<str>, applied: u64) -> Self {
        Self {
            generation,
            applied,
            order: indexset::BTreeMap::new(),
            users: HashMap::new(),
        }
    }

    /// The board generation this copy belongs to.
    pub(crate) fn generation(&self) -> &Arc<str> {
        &self.generation
    }

    /// The last change-log entry applied.
    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    /// Whether this copy includes everything Redis held at log position
    /// `version` of `generation`.
    pub(crate) fn covers(&self, generation: &str, version: u64) -> bool {
        *self.generation == *generation && self.applied >= version
    }

    /// Records that log entries up to `version` are applied.
    pub(crate) fn advance_to(&mut self, version: u64) {
        self.applied = self.applied.max(version);
    }

    /// Merges one entry exactly as the Redis update script does
    /// (`scripts/update.lua`): the position only moves to a later sequence
    /// number, the stats only to a higher games_played; when another user
    /// holds the name, the later of the two takes both.
    pub(crate) fn apply(&mut self, key: &str, entry: Entry) {
        let listed = Listed {
            user_id: entry.user_id,
            name: entry.name,
        };
        let Some(slot) = self.users.get_mut(key) else {
            self.order.insert(entry.position, listed);
            self.users.insert(
                key.to_owned(),
                Slot {
                    user_id: entry.user_id,
                    position: entry.position,
                    stats: entry.stats,
                },
            );
            return;
        };
        if slot.user_id != entry.user_id {
            if entry.position.seq > slot.position.seq {
                self.order.remove(&slot.position);
                self.order.insert(entry.position, listed);
                *slot = Slot {
                    user_id: entry.user_id,
                    position: entry.position,
                    stats: entry.stats,
                };
            }
            return;
        }
        if entry.position.seq > slot.position.seq {
            self.order.remove(&slot.position);
            self.order.insert(entry.position, listed);
            slot.position = entry.position;
        }
        if entry.stats.games_played > slot.stats.games_played {
            slot.stats = entry.stats;
        }
    }

    /// Removes a user's entry (a deleted user).
    pub(crate) fn remove(&mut self, key: &str) {
        if let Some(slot) = self.users.remove(key) {
            self.order.remove(&slot.position);
        }
    }

    /// The number of ranked users.
    pub(crate) fn len(&self) -> u64 {
        self.order.len() as u64
    }

    /// The user's stats and 1-based rank; `None` when not on the board.
    pub(crate) fn stats(&self, key: &str) -> Option<(Stats, u64)> {
        let slot = self.users.get(key)?;
        let rank = self.order.rank(&slot.position) as u64 + 1;
        Some((slot.stats.clone(), rank))
    }

    /// Up to `limit` entries from 0-based `offset`.
    pub(crate) fn page(&self, offset: u64, limit: u64) -> BoardPage {
        let total = self.len();
        let start = offset.min(total);
        let end = offset.saturating_add(limit).min(total);
        // Both bounds are at most the tree's length, a usize.
        let range = usize::try_from(start).unwrap_or(usize::MAX)
            ..usize::try_from(end).unwrap_or(usize::MAX);
        let entries = self
            .order
            .range_idx(range)
            .zip(start + 1..)
            .map(|((position, listed), rank)| BoardEntry {
                rank,
                user_id: listed.user_id,
                name: listed.name.clone(),
                score: position.score,
            })
            .collect();
        BoardPage { entries, total }
    }

    /// The `size`-entry window around the user (see [`window_start`]);
    /// `None` when the user is not on the board.
    pub(crate) fn window(&self, key: &str, size: PageSize) -> Option<BoardPage> {
        let slot = self.users.get(key)?;
        let index = self.order.rank(&slot.position) as u64;
        let start = window_start(index, self.len(), size);
        Some(self.page(start, u64::from(size.get())))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(score: i64, seq: i64, games: i64, name: &str) -> Entry {
        let mut stats = Stats::none(Uuid::nil(), name.to_owned());
        stats.games_played = games;
        stats.best_score = score;
        Entry {
            position: BoardPosition { score, seq },
            user_id: Uuid::nil(),
            name: name.to_owned(),
            stats,
        }
    }

    fn names(page: &BoardPage) -> Vec<&str> {
        page.entries.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn ranks_follow_the_board_order_with_ties_to_whoever_came_first() {
        let mut mirror = Mirror::new("e".into(), 0);
        mirror.apply("a", entry(5, 3, 1, "a"));
        mirror.apply("b", entry(9, 4, 1, "b"));
        mirror.apply("c", entry(5, 2, 1, "c"));
        let page = mirror.page(0, 10);
        assert_eq!(names(&page), ["b", "c", "a"]);
        assert_eq!(page.total, 3);
        assert_eq!(mirror.stats("a").map(|(_, rank)| rank), Some(3));
        assert_eq!(mirror.stats("nobody"), None);
    }

    #[test]
    fn an_older_update_arriving_late_changes_nothing() {
        let mut mirror = Mirror::new("e".into(), 0);
        mirror.apply("a", entry(9, 7, 3, "a"));
        mirror.apply("a", entry(4, 5, 2, "a"));
        let (stats, rank) = mirror.stats("a").unwrap();
        assert_eq!((stats.games_played, stats.best_score, rank), (3, 9, 1));
        assert_eq!(mirror.page(0, 10).entries[0].score, 9);
        assert_eq!(mirror.len(), 1);
    }

    #[test]
    fn stats_and_position_move_forward_independently() {
        let mut mirror = Mirror::new("e".into(), 0);
        mirror.apply("a", entry(4, 5, 2, "a"));
        // A later game that did not move the position: same seq, more games.
        mirror.apply("a", entry(4, 5, 3, "a"));
        assert_eq!(mirror.stats("a").unwrap().0.games_played, 3);
    }

    #[test]
    fn a_later_user_under_the_same_name_takes_entry_and_stats() {
        let mut mirror = Mirror::new("e".into(), 0);
        let mut old = entry(9, 3, 40, "a");
        old.user_id = Uuid::from_u128(1);
        old.stats.user_id = old.user_id;
        let mut new = entry(2, 8, 1, "a");
        new.user_id = Uuid::from_u128(2);
        new.stats.user_id = new.user_id;
        mirror.apply("a", new.clone());
        // The deleted user's late update changes nothing.
        mirror.apply("a", old.clone());
        let (stats, _) = mirror.stats("a").unwrap();
        assert_eq!((stats.user_id, stats.games_played), (new.user_id, 1));
        // In the other order the later user still wins, stats included,
        // although the earlier one had played more games.
        let mut mirror = Mirror::new("e".into(), 0);
        mirror.apply("a", old);
        mirror.apply("a", new.clone());
        let (stats, _) = mirror.stats("a").unwrap();
        assert_eq!((stats.user_id, stats.games_played), (new.user_id, 1));
        assert_eq!(mirror.len(), 1);
    }

    #[test]
    fn pages_and_windows_stop_at_the_edges() {
        let mut mirror = Mirror::new("e".into(), 0);
        for (i, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            mirror.apply(name, entry(10 - i as i64, i as i64, 1, name));
        }
        assert_eq!(names(&mirror.page(3, 10)), ["d", "e"]);
        assert!(mirror.page(5, 10).entries.is_empty());
        assert!(mirror.page(u64::MAX, u64::MAX).entries.is_empty());
        let three = PageSize::parse_window(3).unwrap();
        assert_eq!(names(&mirror.window("a", three).unwrap()), ["a", "b", "c"]);
        assert_eq!(names(&mirror.window("e", three).unwrap()), ["c", "d", "e"]);
        assert_eq!(mirror.window("e", three).unwrap().entries[0].rank, 3);
        assert_eq!(mirror.window("zz", three), None);
        mirror.remove("c");
        assert_eq!(names(&mirror.window("b", three).unwrap()), ["a", "b", "d"]);
    }

    #[test]
    fn covers_needs_the_same_generation_and_enough_of_the_log() {
        let mut mirror = Mirror::new("one".into(), 4);
        assert!(mirror.covers("one", 4));
        assert!(!mirror.covers("one", 5));
        assert!(!mirror.covers("two", 1));
        mirror.advance_to(9);
        mirror.advance_to(6);
        assert_eq!(mirror.applied(), 9);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Apply {
            user: usize,
            score: i64,
            seq: i64,
            games: i64,
        },
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0usize..12, 0i64..4, 0i64..40, 1i64..6).prop_map(|(user, score, seq, games)| {
                Op::Apply { user, score, seq, games }
            }),
            1 => (0usize..12).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Every read agrees with a brute-force sort of what the same
        /// forward-only rules leave, whatever order updates arrive in.
        #[test]
        fn reads_agree_with_a_brute_force_sort(
            ops in proptest::collection::vec(op(), 0..80),
            size in 1i32..8,
        ) {
            let mut mirror = Mirror::new("e".into(), 0);
            let mut model: HashMap<String, (BoardPosition, i64)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Apply { user, score, seq, games } => {
                        let key = format!("u{user}");
                        // Sequence numbers are unique across users.
                        let seq = seq * 16 + user as i64;
                        mirror.apply(&key, entry(score, seq, games, &key));
                        let position = BoardPosition { score, seq };
                        let slot = model.entry(key).or_insert((position, games));
                        if seq > slot.0.seq {
                            slot.0 = position;
                        }
                        slot.1 = slot.1.max(games);
                    }
                    Op::Remove(user) => {
                        let key = format!("u{user}");
                        mirror.remove(&key);
                        model.remove(&key);
                    }
                }
            }
            let mut sorted: Vec<(&String, &(BoardPosition, i64))> = model.iter().collect();
            sorted.sort_by_key(|(_, (position, _))| *position);
            let expected: Vec<(String, i64)> = sorted
                .iter()
                .map(|(key, (position, _))| ((*key).clone(), position.score))
                .collect();
            let all = mirror.page(0, 1000);
            let listed: Vec<(String, i64)> =
                all.entries.iter().map(|e| (e.name.clone(), e.score)).collect();
            prop_assert_eq!(&listed, &expected);
            prop_assert_eq!(all.total, expected.len() as u64);
            let size = PageSize::parse_window(size).unwrap();
            for (index, (key, (_, games))) in sorted.iter().enumerate() {
                let (stats, rank) = mirror.stats(key).unwrap();
                prop_assert_eq!((stats.games_played, rank), (*games, index as u64 + 1));
                let window = mirror.window(key, size).unwrap();
                let start = window_start(index as u64, expected.len() as u64, size) as usize;
                let want: Vec<&str> = expected
                    .iter()
                    .skip(start)
                    .take(size.get() as usize)
                    .map(|(name, _)| name.as_str())
                    .collect();
                prop_assert_eq!(names(&window), want);
                prop_assert_eq!(window.entries[0].rank, start as u64 + 1);
            }
            for offset in 0..=expected.len() as u64 {
                let page = mirror.page(offset, 3);
                let ranks: Vec<u64> = page.entries.iter().map(|e| e.rank).collect();
                let want: Vec<u64> = (offset + 1..=(offset + 3).min(expected.len() as u64)).collect();
                prop_assert_eq!(ranks, want);
            }
        }
    }
}
