//! Connect timeouts are confirmed before they count.
//!
//! The kernel sees a connect timeout as a client's SYN repeated past the connect timeout while
//! the backend accepted no other connection. A client can produce exactly that on a healthy
//! backend: a SYN the backend's stack drops (a bad TCP checksum, which TC cannot tell from a
//! checksum left to offload), repeated. Envoy's connect timeouts are its own connections and
//! need no such care; ours are the client's. So the kernel only reports the suspicion
//! ([`geosteer_common::EVENT_CONNECT_TIMEOUT`]) and the agent connects to the backend itself:
//! if that connection is refused or unanswered too, the timeouts count (each a gateway error,
//! as Envoy's); if the backend accepts it, they were lost or forged SYNs and are dismissed.
//!
//! One check runs per backend at a time; suspicions that arrive while it runs share its verdict
//! (they are all older than its answer).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

pub use crate::probe::ConnectResult;

/// How long the agent's own connection may take. Long enough for one lost SYN of it to be
/// retransmitted (Linux's first SYN retransmission is after 1 s): one lost packet must not
/// confirm a forged timeout.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Default)]
pub struct ConnectTimeouts {
    /// Backend id → the check running for it.
    running: BTreeMap<u32, Check>,
    /// Timeouts counted after the agent's own connection failed too.
    pub confirmed: u64,
    /// Timeouts dismissed because the backend accepted the agent's connection.
    pub dismissed: u64,
    /// Timeouts neither counted nor dismissed: the agent's connection failed for a reason on
    /// this node (no local port left, no route), which says nothing about the backend.
    pub inconclusive: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Check {
    endpoint: SocketAddr,
    suspected: u32,
}

/// What a finished check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The backend failed the agent's connection too: count this many timeouts.
    Count(u32),
    /// The backend accepted the agent's connection: this many timeouts were not its fault.
    Dismiss(u32),
    /// The agent's connection failed on this node: this many timeouts go uncounted (a missed
    /// error, never a forged one).
    Inconclusive(u32),
}

impl ConnectTimeouts {
    /// The kernel suspects a connect timeout of `backend_id` (now `endpoint`). Returns true
    /// when the agent must start a check: none runs for this backend yet.
    pub fn suspect(&mut self, backend_id: u32, endpoint: SocketAddr) -> bool {
        match self.running.get_mut(&backend_id) {
            Some(check) if check.endpoint == endpoint => {
                check.suspected = check.suspected.saturating_add(1);
                false
            }
            // The id was reused for another endpoint: the running check is about the old one.
            _ => {
                self.running.insert(
                    backend_id,
                    Check {
                        endpoint,
                        suspected: 1,
                    },
                );
                true
            }
        }
    }

    /// The agent's connection to `endpoint` ended. `None` when no check of that backend and
    /// endpoint runs (a check of an endpoint whose id was reused since).
    pub fn checked(
        &mut self,
        backend_id: u32,
        endpoint: SocketAddr,
        result: ConnectResult,
    ) -> Option<Verdict> {
        if self.running.get(&backend_id)?.endpoint != endpoint {
            return None;
        }
        let check = self.running.remove(&backend_id)?;
        let n = u64::from(check.suspected);
        Some(match result {
            ConnectResult::Accepted => {
                self.dismissed += n;
                Verdict::Dismiss(check.suspected)
            }
            ConnectResult::Failed => Verdict::Count(check.suspected),
            ConnectResult::Inconclusive => {
                self.inconclusive += n;
                Verdict::Inconclusive(check.suspected)
            }
        })
    }

    /// The kernel counted `n` confirmed timeouts.
    pub fn counted(&mut self, n: u32) {
        self.confirmed += u64::from(n);
    }

    /// Checks running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn at(last: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), 8080))
    }

    #[test]
    fn suspicions_during_a_check_share_its_verdict() {
        let mut t = ConnectTimeouts::default();
        assert!(t.suspect(7, at(1)), "the first suspicion starts a check");
        assert!(!t.suspect(7, at(1)));
        assert!(!t.suspect(7, at(1)));
        assert!(t.suspect(8, at(2)), "another backend gets its own check");
        assert_eq!(t.running(), 2);
        assert_eq!(
            t.checked(7, at(1), ConnectResult::Failed),
            Some(Verdict::Count(3))
        );
        t.counted(3);
        assert_eq!(
            t.checked(8, at(2), ConnectResult::Accepted),
            Some(Verdict::Dismiss(1))
        );
        assert_eq!((t.confirmed, t.dismissed), (3, 1));
        assert!(t.suspect(9, at(3)));
        assert_eq!(
            t.checked(9, at(3), ConnectResult::Inconclusive),
            Some(Verdict::Inconclusive(1))
        );
        assert_eq!((t.confirmed, t.dismissed, t.inconclusive), (3, 1, 1));
        assert_eq!(t.running(), 0);
        assert!(t.suspect(7, at(1)), "a later suspicion starts a new check");
    }

    #[test]
    fn a_check_of_a_reused_backend_id_decides_nothing() {
        let mut t = ConnectTimeouts::default();
        assert!(t.suspect(7, at(1)));
        // Id 7 now names another endpoint, whose own suspicion starts its own check.
        assert!(t.suspect(7, at(2)));
        assert_eq!(
            t.checked(7, at(1), ConnectResult::Failed),
            None,
            "the old endpoint's check"
        );
        assert_eq!(
            t.checked(7, at(2), ConnectResult::Accepted),
            Some(Verdict::Dismiss(1))
        );
        assert_eq!(
            t.checked(7, at(2), ConnectResult::Accepted),
            None,
            "each check decides once"
        );
        assert_eq!((t.confirmed, t.dismissed), (0, 1));
    }
}
