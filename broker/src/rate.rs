//! Requests per user: a token bucket for each user, plain data with time passed in. A user may
//! burst to twice the rate, then is held to it; a refused request learns how long to wait.

use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    /// Requests per second; 0 means no limit.
    rate: f64,
    burst: f64,
    buckets: HashMap<i64, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        let rate = f64::from(per_second);
        RateLimiter {
            rate,
            burst: (2.0 * rate).max(1.0),
            buckets: HashMap::new(),
        }
    }

    /// Takes one request's token for `user` at `now`; when none is left, the whole seconds to
    /// wait for one.
    pub fn take(&mut self, user: i64, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let (tokens, since) = self.buckets.entry(user).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*since).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *since = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_per_user() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(5);
        for _ in 0..10 {
            assert!(r.take(1, t0).is_ok());
        }
        assert_eq!(r.take(1, t0), Err(1), "the burst is spent");
        assert!(r.take(2, t0).is_ok(), "another user has their own bucket");
        assert!(
            r.take(1, t0 + Duration::from_millis(200)).is_ok(),
            "one more after 1/5 s"
        );
        assert!(r.take(1, t0 + Duration::from_millis(200)).is_err());
        let mut free = RateLimiter::new(0);
        assert!((0..100_000).all(|_| free.take(1, t0).is_ok()));
    }
}
