//! Stats and the board: game outcomes, scores, idempotency keys, paging, the
//! ranking order and the arithmetic of recording a game. No I/O.

use std::cmp::Ordering;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Invalid, PageSize};

/// The result of one game for the user who played it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The user won.
    Win,
    /// The user lost.
    Loss,
    /// Neither won nor lost.
    Draw,
}

impl Outcome {
    /// Parses the wire enum `roster.v1.GameOutcome`; unset and unknown values are refused.
    pub fn parse(raw: i32) -> Result<Self, Invalid> {
        match raw {
            1 => Ok(Self::Win),
            2 => Ok(Self::Loss),
            3 => Ok(Self::Draw),
            0 => Err(Invalid::new("OUTCOME_REQUIRED", "outcome is required")),
            _ => Err(Invalid::new(
                "OUTCOME_UNKNOWN",
                "outcome is not a known value",
            )),
        }
    }
}

/// A game's score: an integer in `0..=Score::MAX`, exact in a double (Redis scores).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score(i64);

impl Score {
    /// 2^53 - 1: the largest integer every double represents exactly.
    pub const MAX: i64 = (1 << 53) - 1;

    /// Accepts `0..=MAX`.
    pub fn parse(raw: i64) -> Result<Self, Invalid> {
        if (0..=Self::MAX).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(Invalid::new(
                "SCORE_OUT_OF_RANGE",
                format!("score must be between 0 and {}", Self::MAX),
            ))
        }
    }

    /// The score.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Board page sizes: the shared [`PageSize`] with the board's default and cap.
impl PageSize {
    /// Larger board requests are lowered to this.
    pub const BOARD_MAX: u32 = 100;
    /// ListLeaderboard's default.
    pub const DEFAULT_PAGE: u32 = 10;
    /// ListLeaderboardAroundUser's default.
    pub const DEFAULT_WINDOW: u32 = 11;

    /// A page size for ListLeaderboard: 0 means 10, above 100 means 100.
    pub fn parse_page(raw: i32) -> Result<Self, Invalid> {
        Self::parse(raw, Self::DEFAULT_PAGE, Self::BOARD_MAX)
    }

    /// A window size for ListLeaderboardAroundUser: 0 means 11, above 100 means 100.
    pub fn parse_window(raw: i32) -> Result<Self, Invalid> {
        Self::parse(raw, Self::DEFAULT_WINDOW, Self::BOARD_MAX)
    }
}

/// Where the next page starts: an opaque token bound to one page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    page_size: u32,
    offset: u64,
}

impl PageToken {
    const VERSION: &'static str = "lb1";

    /// The token of the page that starts at 0-based `offset` with `page_size`.
    pub fn new(page_size: PageSize, offset: u64) -> Self {
        Self {
            page_size: page_size.get(),
            offset,
        }
    }

    /// The opaque form callers see.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}:{}:{}",
            Self::VERSION,
            self.page_size,
            self.offset
        ))
    }

    /// The 0-based offset a token sent with `page_size` addresses: 0 for an
    /// empty token. A token Roster did not issue, or one issued for another
    /// page size, is refused.
    pub fn decode(raw: &str, page_size: PageSize) -> Result<u64, Invalid> {
        if raw.is_empty() {
            return Ok(0);
        }
        let token = Self::parse(raw).ok_or_else(|| {
            Invalid::new(
                "PAGE_TOKEN_INVALID",
                "page_token is not a token Roster issued",
            )
        })?;
        if token.page_size != page_size.get() {
            return Err(Invalid::new(
                "PAGE_TOKEN_PAGE_SIZE_MISMATCH",
                "page_token must be sent with the page_size of the request that returned it",
            ));
        }
        Ok(token.offset)
    }

    fn parse(raw: &str) -> Option<Self> {
        // Bounded: a real token is a few dozen bytes.
        if raw.len() > 64 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let mut parts = text.split(':');
        let (version, size, offset) = (parts.next()?, parts.next()?, parts.next()?);
        if version != Self::VERSION || parts.next().is_some() {
            return None;
        }
        let page_size: u32 = size.parse().ok()?;
        let offset: u64 = offset.parse().ok()?;
        // Offsets are whole pages; anything else was not issued by us.
        if page_size == 0
            || page_size > PageSize::BOARD_MAX
            || !offset.is_multiple_of(u64::from(page_size))
        {
            return None;
        }
        // Nor is an offset that no board reaches: a board counts its entries
        // in a signed 64-bit integer (as SQL's OFFSET does), and so does the
        // next page's offset. Such an offset made the database read panic.
        let next = offset.checked_add(u64::from(page_size))?;
        i64::try_from(next).ok()?;
        let token = Self { page_size, offset };
        // Only the one spelling Roster writes: no sign, no leading zeros.
        (token.encode() == raw).then_some(token)
    }
}

/// What places a user on the board: best score, then when it was reached.
/// Orders the board itself: `a < b` means `a` ranks higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BoardPosition {
    /// The user's best score.
    pub score: i64,
    /// When the user reached `score` (from a monotonic sequence, never a
    /// clock): lower is earlier and wins a tie.
    pub seq: i64,
}

impl Ord for BoardPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .cmp(&self.score)
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for BoardPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One position on the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardEntry {
    /// 1-based, unique and gapless.
    pub rank: u64,
    /// The user's id.
    pub user_id: Uuid,
    /// The user's name as registered.
    pub name: String,
    /// The user's best score.
    pub score: i64,
}

/// One page of the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardPage {
    /// The entries, by rank.
    pub entries: Vec<BoardEntry>,
    /// The number of ranked users.
    pub total: u64,
}

/// The 0-based offset of the `size`-entry window around the user at 0-based
/// position `index` on a board of `total` entries: centred where possible
/// (`(size - 1) / 2` entries above), shifted to stay within the board.
pub fn window_start(index: u64, total: u64, size: PageSize) -> u64 {
    let size = u64::from(size.get());
    let above = (size - 1) / 2;
    index.saturating_sub(above).min(total.saturating_sub(size))
}

/// A user's statistics; all zeros (and no `update_time`) before the first game.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The user's id.
    pub user_id: Uuid,
    /// The user's name as registered.
    pub name: String,
    /// wins + losses + draws.
    pub games_played: i64,
    /// Games won.
    pub wins: i64,
    /// Games lost.
    pub losses: i64,
    /// Games drawn.
    pub draws: i64,
    /// Highest score of any game.
    pub best_score: i64,
    /// Sum of every game's score.
    pub total_score: i64,
    /// When the last game was recorded.
    pub update_time: Option<DateTime<Utc>>,
}

/// Recording the game would overflow a 64-bit counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("recording the game would overflow the user's statistics")]
pub struct StatsOverflow;

impl Stats {
    /// The statistics of a user who has not played.
    pub fn none(user_id: Uuid, name: String) -> Self {
        Self {
            user_id,
            name,
            games_played: 0,
            wins: 0,
            losses: 0,
            draws: 0,
            best_score: 0,
            total_score: 0,
            update_time: None,
        }
    }

    /// Whether the user has a place on the board.
    pub fn is_ranked(&self) -> bool {
        self.games_played > 0
    }

    /// The statistics after one more game, and whether the board position
    /// moves (the first game, or a new best score). Never wraps.
    pub fn record(
        &self,
        outcome: Outcome,
        score: Score,
        now: DateTime<Utc>,
    ) -> Result<(Self, bool), StatsOverflow> {
        let bump = |value: i64| value.checked_add(1).ok_or(StatsOverflow);
        let mut next = self.clone();
        next.games_played = bump(self.games_played)?;
        match outcome {
            Outcome::Win => next.wins = bump(self.wins)?,
            Outcome::Loss => next.losses = bump(self.losses)?,
            Outcome::Draw => next.draws = bump(self.draws)?,
        }
        next.total_score = self
            .total_score
            .checked_add(score.get())
            .ok_or(StatsOverflow)?;
        let moves = !self.is_ranked() || score.get() > self.best_score;
        next.best_score = self.best_score.max(score.get());
        next.update_time = Some(now);
        Ok((next, moves))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn position(score: i64, seq: i64) -> BoardPosition {
        BoardPosition { score, seq }
    }

    #[test]
    fn a_higher_score_ranks_higher_whatever_the_sequence() {
        assert!(position(10, 99) < position(9, 1));
    }

    #[test]
    fn on_equal_scores_whoever_reached_the_score_first_ranks_higher() {
        assert!(position(10, 3) < position(10, 4));
        let mut board = vec![
            position(5, 7),
            position(10, 4),
            position(10, 3),
            position(5, 2),
        ];
        board.sort();
        assert_eq!(
            board,
            vec![
                position(10, 3),
                position(10, 4),
                position(5, 2),
                position(5, 7)
            ]
        );
    }

    #[test]
    fn equalling_ones_best_score_does_not_move_the_user() {
        let stats = Stats::none(Uuid::nil(), "a".into());
        let now = Utc::now();
        let (first, moved) = stats.record(Outcome::Win, Score(0), now).unwrap();
        assert!(moved, "the first game places the user, even with score 0");
        let (second, moved) = first.record(Outcome::Loss, Score(0), now).unwrap();
        assert!(!moved);
        let (_, moved) = second.record(Outcome::Draw, Score(1), now).unwrap();
        assert!(moved);
    }

    #[test]
    fn recording_adds_one_game_and_the_score() {
        let stats = Stats::none(Uuid::nil(), "a".into());
        let now = Utc::now();
        let (s, _) = stats.record(Outcome::Win, Score(30), now).unwrap();
        let (s, _) = s.record(Outcome::Loss, Score(50), now).unwrap();
        let (s, _) = s.record(Outcome::Draw, Score(20), now).unwrap();
        assert_eq!(
            (
                s.games_played,
                s.wins,
                s.losses,
                s.draws,
                s.best_score,
                s.total_score
            ),
            (3, 1, 1, 1, 50, 100)
        );
        assert_eq!(s.update_time, Some(now));
    }

    #[test]
    fn recording_refuses_to_overflow_the_total() {
        let mut stats = Stats::none(Uuid::nil(), "a".into());
        stats.games_played = 1;
        stats.total_score = i64::MAX - 1;
        assert_eq!(
            stats.record(Outcome::Win, Score(2), Utc::now()),
            Err(StatsOverflow)
        );
    }

    #[test]
    fn scores_are_limited_to_integers_exact_in_a_double() {
        assert!(Score::parse(0).is_ok());
        assert!(Score::parse(Score::MAX).is_ok());
        assert_eq!(Score::MAX as f64 as i64, Score::MAX);
        assert!(Score::parse(Score::MAX + 1).is_err());
        assert!(Score::parse(-1).is_err());
    }

    #[test]
    fn outcome_must_be_set_and_known() {
        assert_eq!(Outcome::parse(1), Ok(Outcome::Win));
        assert_eq!(Outcome::parse(0).unwrap_err().reason, "OUTCOME_REQUIRED");
        assert_eq!(Outcome::parse(9).unwrap_err().reason, "OUTCOME_UNKNOWN");
    }

    #[test]
    fn page_sizes_default_and_are_capped_and_negative_is_refused() {
        assert_eq!(PageSize::parse_page(0).unwrap().get(), 10);
        assert_eq!(PageSize::parse_window(0).unwrap().get(), 11);
        assert_eq!(PageSize::parse_page(101).unwrap().get(), 100);
        assert_eq!(PageSize::parse_page(1).unwrap().get(), 1);
        assert!(PageSize::parse_page(-1).is_err());
    }

    #[test]
    fn a_token_is_valid_only_with_the_page_size_it_was_issued_for() {
        let ten = PageSize::parse_page(10).unwrap();
        let token = PageToken::new(ten, 20).encode();
        assert_eq!(PageToken::decode(&token, ten), Ok(20));
        let five = PageSize::parse_page(5).unwrap();
        assert_eq!(
            PageToken::decode(&token, five).unwrap_err().reason,
            "PAGE_TOKEN_PAGE_SIZE_MISMATCH"
        );
        for forged in ["garbage", "bGIxOjEwOjM", &"A".repeat(100)] {
            assert_eq!(
                PageToken::decode(forged, ten).unwrap_err().reason,
                "PAGE_TOKEN_INVALID",
                "{forged}"
            );
        }
    }

    #[test]
    fn tokens_roster_never_issues_are_refused() {
        let size = |raw| PageSize::parse_page(raw).unwrap();
        let forge = |text: &str| URL_SAFE_NO_PAD.encode(text);
        for (raw, text) in [
            (5, "lb1:5:18446744073709551615"),
            (1, "lb1:1:9223372036854775807"),
            (2, "lb1:2:9223372036854775808"),
            (2, "lb1:2:+2"),
            (2, "lb1:2:02"),
            (2, "lb1:02:2"),
            (2, "lb1:+2:2"),
        ] {
            assert_eq!(
                PageToken::decode(&forge(text), size(raw))
                    .unwrap_err()
                    .reason,
                "PAGE_TOKEN_INVALID",
                "{text}"
            );
        }
        // The last offset whose next page still has a signed 64-bit offset.
        let last = (i64::MAX as u64 - 2) / 2 * 2;
        let token = PageToken::new(size(2), last).encode();
        assert_eq!(PageToken::decode(&token, size(2)), Ok(last));
    }

    #[test]
    fn the_window_is_centred_and_clamped_at_both_ends() {
        let eleven = PageSize::parse_window(11).unwrap();
        assert_eq!(window_start(0, 100, eleven), 0);
        assert_eq!(window_start(50, 100, eleven), 45);
        assert_eq!(window_start(99, 100, eleven), 89);
        assert_eq!(
            window_start(3, 5, eleven),
            0,
            "board smaller than the window"
        );
        let ten = PageSize::parse_window(10).unwrap();
        assert_eq!(window_start(50, 100, ten), 46, "one more below than above");
    }

    proptest! {
        #[test]
        fn the_window_always_contains_the_user_and_stays_on_the_board(
            total in 1u64..500, index_seed in 0u64..500, size in 1i32..=100
        ) {
            let index = index_seed % total;
            let size = PageSize::parse_window(size).unwrap();
            let start = window_start(index, total, size);
            let end = (start + u64::from(size.get())).min(total);
            prop_assert!(start <= index && index < end);
            prop_assert_eq!(end - start, u64::from(size.get()).min(total));
        }

        #[test]
        fn sorting_positions_matches_a_brute_force_rank_count(
            positions in proptest::collection::vec((0i64..5, 0i64..1000), 0..30)
        ) {
            let mut board: Vec<BoardPosition> = positions
                .iter()
                .enumerate()
                .map(|(i, &(score, seq))| position(score, seq * 100 + i as i64))
                .collect();
            board.sort();
            for (index, p) in board.iter().enumerate() {
                let better = board
                    .iter()
                    .filter(|q| q.score > p.score || (q.score == p.score && q.seq < p.seq))
                    .count();
                prop_assert_eq!(better, index);
            }
        }
    }
}
