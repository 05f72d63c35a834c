//! Retry delays shared by every client that reconnects or re-sends: the Hubble source and
//! the alert sinks.
//!
//! Hand-written rather than taken from a retry crate: the promise operators configure is "no
//! delay above `max`", and the crates' jitter adds up to a whole delay on top of the cap.

use std::time::Duration;

/// Capped exponential backoff with jitter: each delay is drawn from [d/2, d] where d doubles
/// from `initial` up to `max`, so many clients restarting together do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Fails unless `0 < initial <= max`.
    pub fn new(initial: Duration, max: Duration) -> Result<Backoff, String> {
        if initial.is_zero() || initial > max {
            return Err(format!(
                "backoff initial {initial:?} must be above zero and at most max {max:?}"
            ));
        }
        Ok(Backoff {
            initial,
            max,
            next: initial,
            rng: fastrand::Rng::new(),
        })
    }

    /// The delay before the next attempt.
    pub fn delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = self.next.checked_mul(2).unwrap_or(self.max).min(self.max);
        let half = ceiling / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.u64(0..=nanos))
    }

    /// Back to `initial`, after a stream delivered something.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jittered_bounds_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).unwrap();
        let ceilings = [100u64, 200, 400, 800, 1000, 1000, 1000];
        for ceiling in ceilings {
            let d = b.delay().as_millis() as u64;
            assert!(
                (ceiling / 2..=ceiling).contains(&d),
                "{d} not in [{}, {ceiling}]",
                ceiling / 2
            );
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_with_an_enormous_cap_does_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX).unwrap();
        for _ in 0..80 {
            b.delay();
        }
        assert!(b.delay() >= Duration::MAX / 2 - Duration::from_secs(1));
    }

    #[test]
    fn backoff_rejects_nonsense() {
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }
}
