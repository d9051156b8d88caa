//! The API's rate limits: at most [`API_PER_SECOND`] calls in any one-second window
//! in all (`Throttling.Api`) and [`USER_PER_SECOND`] per access key
//! (`Throttling.User`). A sliding window of the admitted calls' times: exact, and
//! small at these rates. Time is passed in, so tests need no clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

pub const API_PER_SECOND: usize = 100;
pub const USER_PER_SECOND: usize = 10;
const WINDOW: Duration = Duration::from_secs(1);

/// Calls admitted in the last second.
#[derive(Debug, Default)]
struct Window {
    times: VecDeque<Instant>,
}

impl Window {
    fn has_room(&mut self, now: Instant, limit: usize) -> bool {
        while let Some(&t) = self.times.front() {
            if now.saturating_duration_since(t) >= WINDOW {
                self.times.pop_front();
            } else {
                break;
            }
        }
        self.times.len() < limit
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Api,
    User,
}

#[derive(Debug, Default)]
pub struct Throttle {
    api: Window,
    users: HashMap<String, Window>,
}

impl Throttle {
    /// Admits a call by `key` (`None`: an unsigned loopback call, only the overall
    /// limit applies) at `now`, or says which limit refuses it. A refused call does
    /// not count.
    pub fn admit(&mut self, key: Option<&str>, now: Instant) -> Result<(), Refusal> {
        if let Some(key) = key {
            let user = self.users.entry(key.to_string()).or_default();
            if !user.has_room(now, USER_PER_SECOND) {
                return Err(Refusal::User);
            }
        }
        if !self.api.has_room(now, API_PER_SECOND) {
            return Err(Refusal::Api);
        }
        self.api.times.push_back(now);
        if let Some(user) = key.and_then(|k| self.users.get_mut(k)) {
            user.times.push_back(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_per_second_per_key() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(
                t.admit(Some("a"), t0 + Duration::from_millis(i * 10)),
                Ok(())
            );
        }
        assert_eq!(
            t.admit(Some("a"), t0 + Duration::from_millis(500)),
            Err(Refusal::User)
        );
        assert_eq!(
            t.admit(Some("b"), t0 + Duration::from_millis(500)),
            Ok(()),
            "another key has its own limit"
        );
        // The first call leaves the window one second after it was made.
        assert_eq!(
            t.admit(Some("a"), t0 + Duration::from_millis(999)),
            Err(Refusal::User)
        );
        assert_eq!(t.admit(Some("a"), t0 + Duration::from_millis(1000)), Ok(()));
        assert_eq!(
            t.admit(Some("a"), t0 + Duration::from_millis(1001)),
            Err(Refusal::User)
        );
    }

    #[test]
    fn hundred_per_second_in_all() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for i in 0..100u64 {
            let key = format!("k{}", i % 20);
            assert_eq!(t.admit(Some(&key), t0 + Duration::from_millis(i)), Ok(()));
        }
        assert_eq!(
            t.admit(Some("fresh"), t0 + Duration::from_millis(200)),
            Err(Refusal::Api)
        );
        assert_eq!(
            t.admit(None, t0 + Duration::from_millis(200)),
            Err(Refusal::Api)
        );
        assert_eq!(
            t.admit(None, t0 + Duration::from_millis(1000)),
            Ok(()),
            "the first call left the window"
        );
    }

    #[test]
    fn refused_calls_do_not_count() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            t.admit(Some("a"), t0).unwrap();
        }
        for _ in 0..1000 {
            assert_eq!(t.admit(Some("a"), t0), Err(Refusal::User));
        }
        for _ in 0..90 {
            assert_eq!(
                t.admit(None, t0),
                Ok(()),
                "the key's refusals took none of the overall budget"
            );
        }
    }
}
