//! The link watcher in a network namespace: interfaces whose names match the `dataplane.tc`
//! globs are reported within a second of appearing (pods starting) and of going away.
//!
//! Needs root (netns); run through `cargo xtask test`.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use geosteer::links::{self, LinkEvent};
use geosteer_tests::{Netns, require_root};

/// The promise to the agent: it can attach within a second of the interface appearing.
const WITHIN: Duration = Duration::from_secs(1);

/// Runs `links::watch` on a thread that has entered `ns`, so the netlink socket it opens
/// belongs to that namespace; events come back on a plain channel.
fn watch_in(ns: &Netns, patterns: &[&str]) -> mpsc::Receiver<anyhow::Result<LinkEvent>> {
    let netns = File::open(format!("/run/netns/{}", ns.name)).expect("netns file");
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // SAFETY: setns moves only this thread, which does nothing else, into the namespace.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let error = std::io::Error::last_os_error();
            let _ = tx.send(Err(anyhow::anyhow!("setns: {error}")));
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let (events_tx, mut events) = tokio::sync::mpsc::channel(64);
            let watcher = tokio::spawn(links::watch(patterns, events_tx));
            while let Some(event) = events.recv().await {
                if tx.send(Ok(event)).is_err() {
                    return;
                }
            }
            let ended = watcher.await.map_err(anyhow::Error::from).and_then(|r| r);
            let _ = tx.send(Err(anyhow::anyhow!("the watcher ended: {ended:?}")));
        });
    });
    rx
}

fn ifindex(ns: &Netns, name: &str) -> u32 {
    ns.exec(&["cat", &format!("/sys/class/net/{name}/ifindex")])
        .expect("ifindex")
        .trim()
        .parse()
        .expect("a number")
}

/// The next event, within [`WITHIN`] of `since`.
fn next(
    events: &mpsc::Receiver<anyhow::Result<LinkEvent>>,
    since: Instant,
    what: &str,
) -> LinkEvent {
    let left = WITHIN.saturating_sub(since.elapsed());
    match events.recv_timeout(left) {
        Ok(Ok(event)) => event,
        Ok(Err(e)) => panic!("{what}: {e:#}"),
        Err(_) => panic!("{what}: no event within {WITHIN:?}"),
    }
}

#[test]
fn reports_matching_links_as_they_come_and_go() {
    require_root();
    let ns = Netns::new("gsk-links").expect("netns");
    // Present before the watcher starts: reported by the initial dump.
    ns.exec(&[
        "ip", "link", "add", "vethpre0", "type", "veth", "peer", "name", "other0",
    ])
    .unwrap();
    let pre = ifindex(&ns, "vethpre0");

    let started = Instant::now();
    let events = watch_in(&ns, &["veth*", "cl0"]);
    assert_eq!(
        next(&events, started, "initial dump"),
        LinkEvent::Added("vethpre0".into(), pre)
    );

    // A pod's veth appears; its peer's name does not match.
    let at = Instant::now();
    ns.exec(&[
        "ip", "link", "add", "vethpod1", "type", "veth", "peer", "name", "eth-pod1",
    ])
    .unwrap();
    let pod = ifindex(&ns, "vethpod1");
    assert_eq!(
        next(&events, at, "new veth"),
        LinkEvent::Added("vethpod1".into(), pod)
    );

    // A plain name from the list.
    let at = Instant::now();
    ns.exec(&[
        "ip", "link", "add", "cl0", "type", "veth", "peer", "name", "clpeer0",
    ])
    .unwrap();
    let cl0 = ifindex(&ns, "cl0");
    assert_eq!(
        next(&events, at, "cl0"),
        LinkEvent::Added("cl0".into(), cl0)
    );

    // State changes are not events.
    ns.exec(&["ip", "link", "set", "vethpod1", "up"]).unwrap();
    ns.exec(&["ip", "link", "set", "cl0", "up"]).unwrap();

    // The pod goes away (deleting one end removes both).
    let at = Instant::now();
    ns.exec(&["ip", "link", "del", "vethpod1"]).unwrap();
    assert_eq!(
        next(&events, at, "deleted veth"),
        LinkEvent::Removed("vethpod1".into(), pod)
    );

    // Renamed out of the patterns: as good as gone.
    let at = Instant::now();
    ns.exec(&["ip", "link", "set", "vethpre0", "name", "renamed0"])
        .unwrap();
    assert_eq!(
        next(&events, at, "renamed veth"),
        LinkEvent::Removed("vethpre0".into(), pre)
    );

    match events.recv_timeout(Duration::from_millis(300)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("no further events expected, got {other:?}"),
    }
}
