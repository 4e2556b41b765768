//! Whether this process may answer from Redis: only while a delivery round
//! that began less than the staleness bound ago found that Redis holds every
//! change committed before it began (see `crate::delivery`), and nothing
//! since made that doubtful (a failed invalidation, a reconnect).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// The process-wide gate in front of every cached answer. Cheap to check:
/// two atomic loads and a clock read.
#[derive(Debug)]
pub struct Freshness {
    /// Bit 0: the last round succeeded and nothing withdrew trust since;
    /// the other bits: how many times trust was withdrawn.
    word: AtomicU64,
    /// When the last successful round began, in ms since `epoch`.
    since_ms: AtomicU64,
    epoch: Instant,
    bound_ms: u64,
}

/// A delivery round in progress: when it began and how many withdrawals
/// had happened by then.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    withdrawals: u64,
    began_ms: u64,
}

impl Freshness {
    /// A gate that lets cached answers through for `bound` after the start
    /// of the last successful round. Starts closed.
    pub fn new(bound: Duration) -> Self {
        Self {
            word: AtomicU64::new(0),
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            bound_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether cached answers may be served now.
    pub fn is_fresh(&self) -> bool {
        if self.word.load(Ordering::Acquire) & 1 == 0 {
            return false;
        }
        let since = self.since_ms.load(Ordering::Acquire);
        self.now_ms().saturating_sub(since) < self.bound_ms
    }

    /// Closes the gate until a round that begins after this call succeeds:
    /// Redis may now lack a change this process committed, or may have lost
    /// data (a reconnect).
    pub fn withdraw(&self) {
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                Some(((word >> 1).wrapping_add(1)) << 1)
            });
    }

    /// Notes the start of a round; call it before reading the database's
    /// outbox head.
    pub fn begin_round(&self) -> Round {
        Round {
            withdrawals: self.word.load(Ordering::Acquire) >> 1,
            began_ms: self.now_ms(),
        }
    }

    /// Opens the gate for `bound` from the round's start, unless trust was
    /// withdrawn since it began. Returns whether the gate is open.
    pub fn finish_round(&self, round: Round) -> bool {
        self.since_ms.fetch_max(round.began_ms, Ordering::AcqRel);
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                (word >> 1 == round.withdrawals).then_some(word | 1)
            })
            .is_ok()
    }

    /// How long ago the last successful round began (for metrics and logs).
    pub fn age(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.since_ms.load(Ordering::Acquire)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_after_a_round_and_closes_on_a_withdrawal() {
        let gate = Freshness::new(Duration::from_secs(60));
        assert!(!gate.is_fresh(), "closed until the first round");
        let round = gate.begin_round();
        assert!(gate.finish_round(round));
        assert!(gate.is_fresh());
        gate.withdraw();
        assert!(!gate.is_fresh());
    }

    #[test]
    fn a_round_that_began_before_a_withdrawal_does_not_reopen_the_gate() {
        let gate = Freshness::new(Duration::from_secs(60));
        let round = gate.begin_round();
        gate.withdraw();
        assert!(!gate.finish_round(round));
        assert!(!gate.is_fresh());
        let next = gate.begin_round();
        assert!(gate.finish_round(next));
        assert!(gate.is_fresh());
    }

    #[test]
    fn the_gate_closes_by_itself_once_the_last_round_is_older_than_the_bound() {
        let gate = Freshness::new(Duration::from_millis(30));
        let round = gate.begin_round();
        assert!(gate.finish_round(round));
        assert!(gate.is_fresh());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!gate.is_fresh());
    }
}
