//! Interfaces as they come and go: pods start and stop, and their veths with them, so the
//! agent watches the links of its network namespace over rtnetlink and reports the ones whose
//! names match the `dataplane.tc` globs. The caller attaches to and detaches from them.
//!
//! One socket does both parts: it joins the `RTNLGRP_LINK` multicast group first and then asks
//! for a dump, so no link can appear between the two unseen. Notifications that arrive during
//! the dump are held back until it is complete, then applied on top of it.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{AsyncSocket as _, AsyncSocketExt as _, SocketAddr, TokioSocket, protocols};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// A matching interface appeared or went away: (name, ifindex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Added(String, u32),
    Removed(String, u32),
}

/// Room for bursts of notifications (many pods starting at once) before the kernel drops some
/// and reports ENOBUFS, after which the watcher dumps again.
const RECEIVE_BUFFER: usize = 4 << 20;

/// The matching links known, by ifindex; turns netlink messages into [`LinkEvent`]s.
#[derive(Debug)]
pub struct LinkTable {
    patterns: Vec<glob::Pattern>,
    links: BTreeMap<u32, String>,
}

impl LinkTable {
    /// Fails on a pattern that is not a valid glob, naming it.
    pub fn new(patterns: &[String]) -> Result<LinkTable> {
        let patterns = patterns
            .iter()
            .map(|p| glob::Pattern::new(p).with_context(|| format!("interface pattern {p:?}")))
            .collect::<Result<_>>()?;
        Ok(LinkTable {
            patterns,
            links: BTreeMap::new(),
        })
    }

    fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    /// RTM_NEWLINK: a new link, a rename, or (most often) a change of state of a known one.
    pub fn new_link(&mut self, ifindex: u32, name: &str) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        match self.links.get(&ifindex) {
            Some(known) if known == name => return events,
            Some(_) => events.extend(self.del_link(ifindex)),
            None => {}
        }
        if self.matches(name) {
            self.links.insert(ifindex, name.to_string());
            events.push(LinkEvent::Added(name.to_string(), ifindex));
        }
        events
    }

    /// RTM_DELLINK (also sent when a link moves to another namespace).
    pub fn del_link(&mut self, ifindex: u32) -> Vec<LinkEvent> {
        self.links
            .remove(&ifindex)
            .map(|name| LinkEvent::Removed(name, ifindex))
            .into_iter()
            .collect()
    }

    /// A complete dump: links not in it are gone.
    pub fn resync(&mut self, links: &[(u32, String)]) -> Vec<LinkEvent> {
        let gone: Vec<u32> = self
            .links
            .keys()
            .filter(|index| !links.iter().any(|(i, _)| i == *index))
            .copied()
            .collect();
        let mut events: Vec<LinkEvent> = gone.into_iter().flat_map(|i| self.del_link(i)).collect();
        for (index, name) in links {
            events.extend(self.new_link(*index, name));
        }
        events
    }
}

/// A dump in progress: the links it listed so far, and the notifications held back until it
/// is complete.
#[derive(Default)]
struct Dump {
    listed: Vec<(u32, String)>,
    held: Vec<Seen>,
}

/// What one netlink message says about links.
enum Seen {
    New(u32, String),
    Del(u32),
    DumpDone,
    DumpFailed(String),
    Other,
}

/// Watches this network namespace's links until `tx` is closed: first an `Added` for every
/// matching link present, then events as they change.
pub async fn watch(patterns: Vec<String>, tx: mpsc::Sender<LinkEvent>) -> Result<()> {
    let mut table = LinkTable::new(&patterns)?;
    let mut socket = TokioSocket::new(protocols::NETLINK_ROUTE).context("netlink socket")?;
    if let Err(e) = socket.socket_mut().set_rx_buf_sz(RECEIVE_BUFFER) {
        debug!(error = %e, "netlink receive buffer size");
    }
    socket
        .socket_mut()
        .bind(&SocketAddr::new(0, 0))
        .context("binding the netlink socket")?;
    socket
        .socket_mut()
        .add_membership(libc::RTNLGRP_LINK)
        .context("joining RTNLGRP_LINK")?;

    let mut sequence = 1;
    request_dump(&socket, sequence).await?;
    let mut dump = Some(Dump::default());
    loop {
        let buffer = match socket.recv_from_full().await {
            Ok((buffer, _)) => buffer,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Notifications were dropped: start over from a dump.
                warn!("link notifications overflowed; listing the links again");
                sequence += 1;
                request_dump(&socket, sequence).await?;
                dump = Some(Dump::default());
                continue;
            }
            Err(e) => return Err(e).context("receiving from the netlink socket"),
        };
        let mut events = Vec::new();
        for (seen, from_dump) in parse(&buffer, sequence) {
            match (&mut dump, seen, from_dump) {
                (Some(dump), Seen::New(index, name), true) => dump.listed.push((index, name)),
                (Some(_), Seen::DumpFailed(message), true) => {
                    anyhow::bail!("listing links: {message}")
                }
                (Some(_), Seen::DumpDone, true) => {
                    let Dump { listed, held } = dump.take().expect("a dump is running");
                    events.extend(table.resync(&listed));
                    for seen in held {
                        events.extend(apply(&mut table, seen));
                    }
                }
                (Some(dump), seen, false) => dump.held.push(seen),
                (None, seen, false) => events.extend(apply(&mut table, seen)),
                _ => {}
            }
        }
        for event in events {
            debug!(?event, "link");
            if tx.send(event).await.is_err() {
                return Ok(());
            }
        }
    }
}

fn apply(table: &mut LinkTable, seen: Seen) -> Vec<LinkEvent> {
    match seen {
        Seen::New(index, name) => table.new_link(index, &name),
        Seen::Del(index) => table.del_link(index),
        _ => Vec::new(),
    }
}

async fn request_dump(socket: &TokioSocket, sequence: u32) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
    );
    message.finalize();
    let mut buffer = vec![0; message.buffer_len()];
    message.serialize(&mut buffer);
    socket
        .send_to(&buffer, &SocketAddr::new(0, 0))
        .await
        .context("asking for the links")?;
    Ok(())
}

/// The messages of one datagram, each with whether it answers dump `sequence` (notifications
/// carry sequence 0).
fn parse(buffer: &[u8], sequence: u32) -> Vec<(Seen, bool)> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < buffer.len() {
        let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buffer[offset..]) {
            Ok(message) => message,
            Err(e) => {
                warn!(error = %e, "unreadable netlink message");
                break;
            }
        };
        let length = message.header.length as usize;
        let from_dump = message.header.sequence_number == sequence;
        let seen = match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                match link_name(&link) {
                    Some(name) => Seen::New(link.header.index, name),
                    None => Seen::Other,
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                Seen::Del(link.header.index)
            }
            NetlinkPayload::Done(_) => Seen::DumpDone,
            NetlinkPayload::Error(error) => Seen::DumpFailed(format!("{error:?}")),
            _ => Seen::Other,
        };
        out.push((seen, from_dump));
        if length == 0 {
            break;
        }
        offset += length;
    }
    out
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LinkTable {
        LinkTable::new(&["veth*".to_string(), "cl0".to_string()]).unwrap()
    }

    #[test]
    fn events_for_matching_links_only() {
        use LinkEvent::{Added, Removed};
        // (case, steps: new (index, name) or del index, expected events)
        enum Step {
            New(u32, &'static str),
            Del(u32),
        }
        let cases: [(&str, Vec<Step>, Vec<LinkEvent>); 6] = [
            (
                "a matching link comes and goes",
                vec![Step::New(5, "veth1a2b"), Step::Del(5)],
                vec![Added("veth1a2b".into(), 5), Removed("veth1a2b".into(), 5)],
            ),
            (
                "others are ignored",
                vec![Step::New(6, "eth0"), Step::Del(6)],
                vec![],
            ),
            (
                "state changes repeat NEWLINK",
                vec![
                    Step::New(7, "cl0"),
                    Step::New(7, "cl0"),
                    Step::New(7, "cl0"),
                ],
                vec![Added("cl0".into(), 7)],
            ),
            (
                "renamed into the pattern",
                vec![Step::New(8, "tmp123"), Step::New(8, "veth9")],
                vec![Added("veth9".into(), 8)],
            ),
            (
                "renamed out of it",
                vec![Step::New(9, "veth9"), Step::New(9, "eth1")],
                vec![Added("veth9".into(), 9), Removed("veth9".into(), 9)],
            ),
            (
                "renamed within it",
                vec![Step::New(10, "veth1"), Step::New(10, "veth2")],
                vec![
                    Added("veth1".into(), 10),
                    Removed("veth1".into(), 10),
                    Added("veth2".into(), 10),
                ],
            ),
        ];
        for (case, steps, expected) in cases {
            let mut table = table();
            let events: Vec<LinkEvent> = steps
                .into_iter()
                .flat_map(|step| match step {
                    Step::New(index, name) => table.new_link(index, name),
                    Step::Del(index) => table.del_link(index),
                })
                .collect();
            assert_eq!(events, expected, "{case}");
        }
    }

    #[test]
    fn a_dump_adds_the_new_and_removes_the_vanished() {
        let mut table = table();
        table.new_link(1, "veth1");
        table.new_link(2, "veth2");
        let events = table.resync(&[(2, "veth2".into()), (3, "veth3".into()), (4, "lo".into())]);
        assert_eq!(
            events,
            [
                LinkEvent::Removed("veth1".into(), 1),
                LinkEvent::Added("veth3".into(), 3)
            ]
        );
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let error = LinkTable::new(&["veth[".to_string()]).unwrap_err();
        assert_eq!(error.to_string(), "interface pattern \"veth[\"");
    }
}
