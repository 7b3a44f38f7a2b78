//! Single flight: concurrent misses on one key send one request to the origin. The first
//! request leads; the others wait until its write-back has committed (or failed), then read
//! the bucket again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// How long a follower waits for the leader before going to the origin itself.
pub const FOLLOWER_WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Flights {
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
}

/// This request's part in the flight of its key.
pub enum Flight {
    Leader(FlightGuard),
    Follower(watch::Receiver<()>),
}

/// Held by the leader until its write-back ends; dropping it releases the followers.
pub struct FlightGuard {
    key: String,
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
    _done: watch::Sender<()>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

impl Flights {
    /// Joins the flight of `key` (bucket and object key), leading it if there is none.
    pub fn join(&self, key: String) -> Flight {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = inflight.get(&key) {
            return Flight::Follower(waiting.clone());
        }
        let (done, waiting) = watch::channel(());
        inflight.insert(key.clone(), waiting);
        Flight::Leader(FlightGuard { key, inflight: self.inflight.clone(), _done: done })
    }
}

/// Waits (at most [`FOLLOWER_WAIT`]) for the leader to drop its guard.
pub async fn wait(mut leader: watch::Receiver<()>) {
    let _ = tokio::time::timeout(FOLLOWER_WAIT, leader.changed()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_per_key_and_followers_wake_when_it_ends() {
        let flights = Flights::default();
        let Flight::Leader(guard) = flights.join("b/k".into()) else { panic!("first joiner leads") };
        let Flight::Follower(waiting) = flights.join("b/k".into()) else { panic!("second joiner follows") };
        assert!(matches!(flights.join("b/other".into()), Flight::Leader(_)));
        let follower = tokio::spawn(wait(waiting));
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), follower).await.expect("follower woke").expect("task");
        assert!(matches!(flights.join("b/k".into()), Flight::Leader(_)), "the flight ended with its leader");
    }
}
