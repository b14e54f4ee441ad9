//! Kubernetes Events about TrafficPolicies, rate-limited.
//!
//! Two kinds, so that a cluster of many nodes does not flood the API server:
//! - `Accepted` / `Invalid`: the object's verdict, published by the node whose status write
//!   changed the status, so about once per generation for the whole cluster;
//! - node facts (`NotInEffect`): a valid policy this node does not apply (its Service is
//!   missing, an older policy claims it, it names a region no endpoint is in), once per
//!   (generation, reason) per node, and at most [`BURST`] in a row per node, refilled at one
//!   per [`REFILL`]. kube-runtime's recorder folds repeats into an event series.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ::kube::{
    Client, Resource as _,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tracing::{debug, warn};

use super::{crd::TrafficPolicy, index::ObjectKey};

/// The `reportingController` of every event.
pub const CONTROLLER: &str = "geosteer.io/agent";
/// Events a node may publish in a row.
const BURST: u32 = 10;
/// One more event allowed per this much time.
const REFILL: Duration = Duration::from_secs(6);

/// What a node says about one policy, to publish once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEvent {
    pub warning: bool,
    /// `Accepted`, `Invalid` or `NotInEffect`.
    pub reason: &'static str,
    pub note: String,
}

/// Publishes policy events for one node.
pub struct PolicyEvents {
    recorder: Recorder,
    /// What was last published per policy, with the generation it was about.
    published: BTreeMap<ObjectKey, (Option<i64>, PolicyEvent)>,
    budget: TokenBucket,
    dropped: u64,
}

impl PolicyEvents {
    pub fn new(client: Client, node_name: &str) -> PolicyEvents {
        let reporter = Reporter {
            controller: CONTROLLER.to_string(),
            instance: Some(node_name.to_string()),
        };
        PolicyEvents {
            recorder: Recorder::new(client, reporter),
            published: BTreeMap::new(),
            budget: TokenBucket::new(BURST, REFILL, Instant::now()),
            dropped: 0,
        }
    }

    /// Publishes `event` about `policy` in the background unless the same was already
    /// published for this generation, or the budget is spent (then it is dropped, counted
    /// and logged at debug).
    pub fn publish(&mut self, policy: &TrafficPolicy, event: PolicyEvent) {
        let key = (
            policy.metadata.namespace.clone().unwrap_or_default(),
            policy.metadata.name.clone().unwrap_or_default(),
        );
        let about = (policy.metadata.generation, event.clone());
        if self.published.get(&key) == Some(&about) {
            return;
        }
        if !self.budget.take(Instant::now()) {
            self.dropped += 1;
            debug!(namespace = %key.0, name = %key.1, dropped = self.dropped,
                   "event budget spent: not publishing {}", event.reason);
            return;
        }
        self.published.insert(key, about);
        let recorder = self.recorder.clone();
        let reference = policy.object_ref(&());
        tokio::spawn(async move {
            let event = Event {
                type_: if event.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: event.reason.to_string(),
                note: Some(truncate(event.note, 1000)),
                action: "Steer".to_string(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(error = %e, "publishing an Event about a TrafficPolicy");
            }
        });
    }

    /// Forgets policies that are gone, so that a re-created one is reported again.
    pub fn retain(&mut self, exists: impl Fn(&ObjectKey) -> bool) {
        self.published.retain(|key, _| exists(key));
    }
}

/// An Event note is limited to 1 kB.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// `capacity` tokens, one more per `refill`.
#[derive(Debug)]
struct TokenBucket {
    capacity: u32,
    tokens: u32,
    refill: Duration,
    last: Instant,
}

impl TokenBucket {
    fn new(capacity: u32, refill: Duration, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity,
            tokens: capacity,
            refill,
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let earned = (now.saturating_duration_since(self.last).as_nanos()
            / self.refill.as_nanos().max(1)) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.capacity);
            self.last += self.refill * earned;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_refill() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, Duration::from_secs(6), start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start), "the burst is spent");
        assert!(!bucket.take(start + Duration::from_secs(5)));
        assert!(bucket.take(start + Duration::from_secs(6)));
        assert!(!bucket.take(start + Duration::from_secs(7)));
        // A long quiet time refills to the capacity, not beyond.
        let later = start + Duration::from_secs(600);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_char_boundary() {
        assert_eq!(truncate("short".into(), 1000), "short");
        let long = "é".repeat(600);
        let cut = truncate(long, 1000);
        assert!(cut.len() <= 1000 && cut.ends_with("..."), "{}", cut.len());
    }
}
