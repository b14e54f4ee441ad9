//! Kubernetes Events about TrafficPolicies, rate-limited.
//!
//! Two kinds: `Accepted` / `Invalid`, the object's verdict, published by the node whose status
//! write changed the status; and `NotInEffect`, a valid policy that a node does not apply (its
//! Service is missing, an older policy claims it, it names a region no endpoint is in). So that
//! a cluster of many nodes does not flood the API server, each Event's name is derived from the
//! policy, its generation and the reason: the first node to create it wins, the others get
//! `409 AlreadyExists` and stop there — one Event per fact for the whole cluster, whatever its
//! size and however often agents restart. Each node also publishes at most [`BURST`] in a row,
//! refilled at one per [`REFILL`].

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use ::kube::{Api, Client, Resource as _, api::PostParams};
use k8s_openapi::{
    api::events::v1::Event,
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
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
    client: Client,
    node_name: String,
    /// What was last published per policy, with the generation it was about.
    published: BTreeMap<ObjectKey, (Option<i64>, PolicyEvent)>,
    budget: TokenBucket,
    dropped: u64,
}

impl PolicyEvents {
    pub fn new(client: Client, node_name: &str) -> PolicyEvents {
        PolicyEvents {
            client,
            node_name: node_name.to_string(),
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
        self.published.insert(key.clone(), about);
        let generation = policy.metadata.generation.unwrap_or(0);
        let object = Event {
            metadata: ObjectMeta {
                name: Some(event_name(
                    &key.1,
                    policy.metadata.uid.as_deref().unwrap_or(""),
                    generation,
                    event.reason,
                )),
                namespace: Some(key.0.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            action: Some("Steer".to_string()),
            reason: Some(event.reason.to_string()),
            note: Some(truncate(event.note, 1000)),
            type_: Some(if event.warning { "Warning" } else { "Normal" }.to_string()),
            regarding: Some(policy.object_ref(&())),
            reporting_controller: Some(CONTROLLER.to_string()),
            reporting_instance: Some(self.node_name.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &key.0);
        tokio::spawn(async move {
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => {}
                // Another node said it first.
                Err(::kube::Error::Api(status)) if status.code == 409 => {}
                Err(e) => warn!(error = %e, "publishing an Event about a TrafficPolicy"),
            }
        });
    }

    /// Forgets policies that are gone, so that a re-created one is reported again.
    pub fn retain(&mut self, exists: impl Fn(&ObjectKey) -> bool) {
        self.published.retain(|key, _| exists(key));
    }
}

/// `<policy>.<uid prefix>.<generation>.<reason>`, lower case: the same on every node for the
/// same fact, and another for a policy re-created under the same name (its generations start
/// again at 1). A long name is cut, without a trailing `-`/`.`.
fn event_name(policy: &str, uid: &str, generation: i64, reason: &str) -> String {
    // Policy names are DNS subdomains of up to 253 characters; leave room for the suffix.
    let policy: String = policy.chars().take(200).collect();
    let policy = policy.trim_end_matches(['-', '.']);
    let uid: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    let uid = if uid.is_empty() { "0".to_string() } else { uid };
    format!(
        "{policy}.{uid}.{generation}.{}",
        reason.to_ascii_lowercase()
    )
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
    fn event_names_are_one_per_policy_generation_and_reason() {
        let uid = "6f1c2d3e-aaaa-bbbb-cccc-000000000000";
        assert_eq!(
            event_name("reviews", uid, 3, "NotInEffect"),
            "reviews.6f1c2d3e.3.notineffect"
        );
        let long = format!("{}-{}", "p".repeat(199), "q".repeat(53));
        let name = event_name(&long, uid, 1, "Accepted");
        assert!(name.len() <= 253 && !name.contains("-."), "{name}");
        assert_eq!(event_name("p", "", 1, "Accepted"), "p.0.1.accepted");
    }

    #[test]
    fn notes_are_cut_to_the_api_limit_on_a_char_boundary() {
        assert_eq!(truncate("short".into(), 1000), "short");
        let long = "é".repeat(600);
        let cut = truncate(long, 1000);
        assert!(cut.len() <= 1000 && cut.ends_with("..."), "{}", cut.len());
    }
}
