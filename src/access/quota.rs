//! Per-caller quotas on the calls that hash a password (CreateUser,
//! VerifyPassword, ChangePassword): a token bucket per caller identity, or
//! per peer address for callers without one, so one noisy caller cannot
//! take the hashing capacity from the others. Complements the per-account
//! throttle of failed password checks. The buckets are governor's.

use std::{num::NonZeroU32, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

/// The methods a caller quota applies to.
pub const HASHING_METHODS: [&str; 3] = [
    "roster.v1.UserService/CreateUser",
    "roster.v1.UserService/VerifyPassword",
    "roster.v1.UserService/ChangePassword",
];

/// Buckets per caller; `None` inside when quotas are off.
pub struct CallerQuota {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl CallerQuota {
    /// `per_second` calls per caller on average, `burst` at once; 0 turns
    /// quotas off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one call from `caller`'s bucket; `Err(wait)` when it is empty.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&caller.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets buckets that are full again (bounds memory).
    pub fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_that_empties_its_bucket_waits_while_others_do_not() {
        let quota = CallerQuota::new(1, 3);
        for _ in 0..3 {
            assert!(quota.check("noisy").is_ok());
        }
        let wait = quota.check("noisy").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(quota.check("quiet").is_ok());
        assert!(CallerQuota::new(0, 0).check("anyone").is_ok());
    }
}
