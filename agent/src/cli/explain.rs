//! `geosteer explain`: which backend a new connection would get, and why.
//!
//! The verdict comes from the live data path, not from a model of it: a synthetic first packet
//! (TCP SYN or a UDP datagram) goes through the pinned `geosteer_tc_ingress` program with
//! BPF_PROG_TEST_RUN, against the same maps real packets use, and the backend is read from the
//! rewritten destination. The run creates the flow's two conntrack entries; explain deletes them
//! right away, so what remains is one counted packet and new flow on that backend.
//!
//! The why is then read beside it: the flow hash and its Maglev slot in the service's live
//! table (and how many ejected backends selection probed past), and from the agent's policy
//! state the backend's priority level and its load, its locality weight, health and panic.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, MapData};
use aya::{
    TestRunOptions,
    programs::{SchedClassifier, TestRun as _},
};
use geosteer_common::{
    Addr, Addr6, DIR_ORIGINAL, FlowKeyOf, FlowValueOf, MAX_EJECTED_PROBE, PROTO_TCP, PROTO_UDP,
    csum, flow_hash, program_names,
};

use super::{
    Context,
    gather::{endpoint, open_maps},
    report::{ExplainReport, ExplainVerdict},
};
use crate::{
    dataplane::BpfMaps,
    frontend::{Frontend, KernelKey, protocol_name},
    loader,
};

/// TC verdict of a dropped packet (`TC_ACT_SHOT`).
const TC_ACT_SHOT: u32 = 2;
/// Linux's default ephemeral port range (net.ipv4.ip_local_port_range), where a real client's
/// source port would come from.
const EPHEMERAL_PORTS: (u16, u16) = (32768, 60999);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExplainArgs {
    pub src: IpAddr,
    /// None: a random ephemeral port (printed in the report).
    pub sport: Option<u16>,
    /// Of `src`'s family.
    pub dst: SocketAddr,
    pub proto: Proto,
}

/// Parses `IP`, `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_source(text: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("--src {text:?}: port 0 is not a source port"));
        }
        return Ok((addr.ip(), Some(addr.port())));
    }
    text.parse::<IpAddr>()
        .map(|ip| (ip, None))
        .map_err(|e| format!("--src {text:?}: expected IP, IP:PORT or [IPv6]:PORT ({e})"))
}

/// How explain reaches one family's conntrack and addresses.
trait Family: Addr
where
    FlowKeyOf<Self>: aya::Pod,
    FlowValueOf<Self>: aya::Pod,
{
    fn of(ip: IpAddr) -> Option<Self>;
    fn conntrack(maps: &mut BpfMaps) -> &mut HashMap<MapData, FlowKeyOf<Self>, FlowValueOf<Self>>;
}

impl Family for u32 {
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(ip) => Some(ip.to_bits().to_be()),
            IpAddr::V6(_) => None,
        }
    }
    fn conntrack(maps: &mut BpfMaps) -> &mut HashMap<MapData, FlowKeyOf<u32>, FlowValueOf<u32>> {
        &mut maps.conntrack
    }
}

impl Family for Addr6 {
    fn of(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(ip) => Some(Addr6::from_ip(ip)),
            IpAddr::V4(_) => None,
        }
    }
    fn conntrack(
        maps: &mut BpfMaps,
    ) -> &mut HashMap<MapData, FlowKeyOf<Addr6>, FlowValueOf<Addr6>> {
        &mut maps.conntrack6
    }
}

fn random_ephemeral_port() -> Result<u16> {
    let mut bytes = [0u8; 2];
    // SAFETY: writes at most 2 bytes into a 2-byte buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    let span = u32::from(EPHEMERAL_PORTS.1 - EPHEMERAL_PORTS.0) + 1;
    Ok(EPHEMERAL_PORTS.0 + (u32::from(u16::from_ne_bytes(bytes)) % span) as u16)
}

/// Ethernet + IPv4 or IPv6 (the family of both addresses) + TCP SYN (or UDP with a short
/// payload), checksums filled in.
pub fn synthetic_packet(src: SocketAddr, dst: SocketAddr, proto: u8) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(src.port().to_be_bytes());
    l4.extend(dst.port().to_be_bytes());
    let check_at = if proto == PROTO_TCP {
        l4.extend(1u32.to_be_bytes()); // seq
        l4.extend(0u32.to_be_bytes()); // ack
        l4.push(5 << 4); // data offset: 20 bytes
        l4.push(0x02); // SYN
        l4.extend(64240u16.to_be_bytes()); // window
        l4.extend([0, 0, 0, 0]); // checksum, urgent pointer
        16
    } else {
        let payload = b"geosteer-explain";
        l4.extend(((8 + payload.len()) as u16).to_be_bytes());
        l4.extend([0, 0]);
        l4.extend(payload);
        6
    };
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let (saddr, daddr) = (octets(src.ip()), octets(dst.ip()));
    // The pseudo-header: RFC 793 (IPv4), RFC 8200 section 8.1 (IPv6); the sum is the same over
    // a 16-bit length and zero byte as over IPv6's 32-bit length and three zero bytes.
    let mut pseudo = Vec::new();
    pseudo.extend(&saddr);
    pseudo.extend(&daddr);
    pseudo.extend([0, proto]);
    pseudo.extend((l4.len() as u16).to_be_bytes());
    pseudo.extend(&l4);
    let mut check = csum::checksum(&pseudo);
    if proto == PROTO_UDP && check == 0 {
        check = 0xffff;
    }
    l4[check_at..check_at + 2].copy_from_slice(&check.to_ne_bytes());

    let (ethertype, ip) = if src.is_ipv4() {
        let mut ip = vec![0x45, 0];
        ip.extend(((20 + l4.len()) as u16).to_be_bytes());
        ip.extend([0, 0, 0x40, 0, 64, proto, 0, 0]); // id, DF, ttl, protocol, checksum
        ip.extend(&saddr);
        ip.extend(&daddr);
        let check = csum::checksum(&ip);
        ip[10..12].copy_from_slice(&check.to_ne_bytes());
        (0x0800u16, ip)
    } else {
        let mut ip = vec![0x60, 0, 0, 0]; // version, traffic class, flow label
        ip.extend((l4.len() as u16).to_be_bytes());
        ip.extend([proto, 64]); // next header, hop limit
        ip.extend(&saddr);
        ip.extend(&daddr);
        (0x86dd, ip)
    };

    // Locally administered MACs; the program does not look at them.
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend(ethertype.to_be_bytes());
    frame.extend(ip);
    frame.extend(l4);
    frame
}

/// The destination of an output frame (after DNAT, if any), IPv4 or IPv6 (without extension
/// headers, as [`synthetic_packet`] makes them).
pub fn destination(frame: &[u8]) -> Option<SocketAddr> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (daddr, l4): (IpAddr, usize) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let daddr: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (daddr.into(), ihl)
        }
        0x86dd => {
            let daddr: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (daddr.into(), 40)
        }
        _ => return None,
    };
    let dport = u16::from_be_bytes([*ip.get(l4 + 2)?, *ip.get(l4 + 3)?]);
    Some(SocketAddr::new(daddr, dport))
}

pub fn explain(ctx: &Context, args: &ExplainArgs) -> Result<ExplainReport> {
    if args.src.is_ipv4() != args.dst.is_ipv4() {
        bail!(
            "--src {} and --dst {} are of different families: a connection has one",
            args.src,
            args.dst
        );
    }
    let mut maps = open_maps(ctx)?;
    if args.dst.is_ipv4() {
        explain_in::<u32>(ctx, args, &mut maps)
    } else {
        explain_in::<Addr6>(ctx, args, &mut maps)
    }
}

/// [`explain`] over family `A`'s maps.
fn explain_in<A: Family>(
    ctx: &Context,
    args: &ExplainArgs,
    maps: &mut BpfMaps,
) -> Result<ExplainReport>
where
    FlowKeyOf<A>: aya::Pod,
    FlowValueOf<A>: aya::Pod,
{
    let proto = args.proto.number();
    let front = Frontend::new(args.dst.ip(), args.dst.port(), proto);
    let (src, vip) = (
        A::of(args.src).context("--src is of the frontend's family")?,
        A::of(args.dst.ip()).context("--dst is of its own family")?,
    );
    let flow_key = |sport: u16| {
        FlowKeyOf::<A>::new(
            src,
            vip,
            sport.to_be(),
            args.dst.port().to_be(),
            proto,
            DIR_ORIGINAL,
        )
    };
    let (sport, random) = match args.sport {
        Some(port) => (port, false),
        // A port no flow from this client to this frontend uses, as a new connection's would
        // be (a few tries; a busy client may have most of the range in conntrack).
        None => {
            let mut port = random_ephemeral_port()?;
            for _ in 0..64 {
                if A::conntrack(maps).get(&flow_key(port), 0).is_err() {
                    break;
                }
                port = random_ephemeral_port()?;
            }
            (port, true)
        }
    };
    let source = SocketAddr::new(args.src, sport);
    let status = ctx.state().and_then(|state| {
        state.services.iter().find(|s| {
            s.vips().any(|vip| vip == args.dst.ip())
                && (s.port, s.protocol.as_str()) == (args.dst.port(), protocol_name(proto))
        })
    });
    let mut report = ExplainReport {
        agent: ctx.agent_line(),
        source: source.to_string(),
        source_port_random: random,
        frontend: front.to_string(),
        service: status.map(|s| s.name.clone()),
        ..Default::default()
    };
    // The program's own first step: a packet to no service is passed on untouched. Running it
    // anyway could only have side effects (a SYN to a backend forgets a stale reverse NAT).
    let service = match front.kernel_key() {
        KernelKey::V4(key) => maps.services.get(&key, 0),
        KernelKey::V6(key) => maps.services6.get(&key, 0),
    };
    let Ok(service) = service else {
        report.verdict = ExplainVerdict::NotAService;
        return Ok(report);
    };
    let original_key = flow_key(sport);
    // A live flow on this 5-tuple keeps its backend; running the program would only touch
    // (and explain's cleanup would then delete) that flow's entries.
    if let Ok(existing) = A::conntrack(maps).get(&original_key, 0) {
        report.verdict = ExplainVerdict::ExistingFlow;
        report.backend = Some(endpoint(existing.nat_addr, existing.nat_port));
        report.backend_id = Some(existing.backend_id);
        return Ok(report);
    }

    let pin = loader::program_pin(&ctx.pin_path, program_names::TC_INGRESS);
    let program = SchedClassifier::from_pin(&pin).with_context(|| {
        format!(
            "opening the pinned program {} (the agent pins it while it runs; after a clean \
             stop nothing is attached, so there is nothing to explain)",
            pin.display()
        )
    })?;
    let packet = synthetic_packet(source, args.dst, proto);
    let mut out = vec![0u8; packet.len() + 256];
    let run = program
        .test_run(TestRunOptions {
            data_in: Some(&packet),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN of the pinned program")?;
    out.truncate(run.data_size_out as usize);
    report.program = Some(program_names::TC_INGRESS.to_string());
    report.return_code = Some(run.return_value);

    // Undo the run's conntrack entries before anything else can fail.
    let conntrack = A::conntrack(maps);
    let created = conntrack.get(&original_key, 0).ok();
    if let Some(created) = created {
        if conntrack.remove(&original_key).is_ok() {
            report.conntrack_entries_removed += 1;
        }
        let reply_key = original_key.reply_half(&created);
        // Only the entry this run wrote (same backend, same creation time).
        if let Ok(reply) = conntrack.get(&reply_key, 0)
            && reply.backend_id == created.backend_id
            && reply.created_ns == created.created_ns
            && conntrack.remove(&reply_key).is_ok()
        {
            report.conntrack_entries_removed += 1;
        }
    }

    if run.return_value == TC_ACT_SHOT {
        report.verdict = ExplainVerdict::Dropped;
    } else {
        let Some(target) = destination(&out) else {
            bail!(
                "the program returned a frame too short to read ({} bytes)",
                out.len()
            );
        };
        if target == args.dst {
            bail!(
                "the program left a packet to service {} unchanged (return code {})",
                report.frontend,
                run.return_value
            );
        }
        report.verdict = ExplainVerdict::Backend;
        report.backend = Some(target.to_string());
        report.backend_id = created.map(|c| c.backend_id);
    }

    // Where the hash landed in the live table, and what selection went past.
    let seed = maps.read_settings()?.hash_seed;
    let hash = flow_hash(
        seed,
        original_key.saddr,
        original_key.daddr,
        original_key.sport,
        original_key.dport,
        proto,
    );
    report.flow_hash = Some(hash);
    report.table_size = service.table_size;
    let table = crate::dataplane::KernelTable::read(maps, &service)?;
    if service.table_size > 0 {
        let slot = hash % service.table_size;
        report.slot = Some(slot);
        if let Some(id) = table.slot(slot) {
            let b = super::gather::kernel_backend(maps, id, args.dst.is_ipv6())?;
            report.slot_backend = Some(b.endpoint());
        }
        if let Some(chosen) = report.backend_id {
            let probes = (0..MAX_EJECTED_PROBE).find(|&p| table.slot(slot + p) == Some(chosen));
            report.probed_past_ejected = probes;
            report.fallback_scan = probes.is_none();
            report.kernel_ejected = maps
                .backend_state
                .get(&chosen, 0)
                .ok()
                .map(|s| s.ejected != 0);
        }
    }

    // The policy behind the backend's share, from the agent.
    if let Some(status) = status {
        report.mode = Some(status.mode.clone());
        if !status.signals.is_empty() {
            report.signals = Some(format!(
                "{} ({}); connect timeout {}",
                status.signals, status.signals_reason, status.connect_timeout
            ));
        }
        report.locality_weighted = Some(status.locality_weighted);
        report.panic = Some(status.panic);
        // By kernel id, else by address.
        let backend = status.backends.iter().find(|b| {
            (b.backend_id.is_some() && b.backend_id == report.backend_id)
                || Some(&b.address) == report.backend.as_ref()
        });
        if let Some(b) = backend {
            report.priority = b
                .priority
                .and_then(|level| status.priorities.iter().find(|p| p.level == level))
                .cloned();
            report.locality = status
                .localities
                .iter()
                .find(|l| {
                    Some(l.priority) == b.priority && (l.name == b.locality || l.name == b.cluster)
                })
                .cloned();
            report.backend_status = Some(b.clone());
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let ip6: IpAddr = "2001:db8:18::2".parse().unwrap();
        let cases = [
            ("198.18.0.2", Ok((ip, None))),
            ("198.18.0.2:40000", Ok((ip, Some(40000)))),
            (
                "198.18.0.2:0",
                Err("--src \"198.18.0.2:0\": port 0 is not a source port".to_string()),
            ),
            ("2001:db8:18::2", Ok((ip6, None))),
            ("[2001:db8:18::2]:40000", Ok((ip6, Some(40000)))),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_source(text), expected, "{text}");
        }
        for bad in [
            "client",
            "198.18.0.2:http",
            "[2001:db8::2]",
            "2001:db8::2:40000:x",
        ] {
            let error = parse_source(bad).unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn synthetic_packets_parse_back() {
        let src = "198.18.0.2:40000".parse().unwrap();
        let dst: SocketAddr = "198.19.0.10:80".parse().unwrap();
        for (proto, len) in [(PROTO_TCP, 14 + 20 + 20), (PROTO_UDP, 14 + 20 + 8 + 16)] {
            let frame = synthetic_packet(src, dst, proto);
            assert_eq!(frame.len(), len);
            assert_eq!(destination(&frame), Some(dst));
            assert_eq!(frame[14 + 9], proto);
            // A correct IPv4 header checksum sums to zero.
            assert_eq!(csum::checksum(&frame[14..34]), 0);
        }
        assert_eq!(destination(&[0; 20]), None);

        let src = "[2001:db8:18::2]:40000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8:19::10]:80".parse().unwrap();
        for (proto, l4_len) in [(PROTO_TCP, 20), (PROTO_UDP, 8 + 16)] {
            let frame = synthetic_packet(src, dst, proto);
            assert_eq!(frame.len(), 14 + 40 + l4_len);
            assert_eq!(frame[12..14], [0x86, 0xdd]);
            assert_eq!(destination(&frame), Some(dst));
            assert_eq!((frame[14] >> 4, frame[14 + 6]), (6, proto));
            assert_eq!(
                usize::from(u16::from_be_bytes([frame[18], frame[19]])),
                l4_len
            );
            // A correct L4 checksum sums to zero with the IPv6 pseudo-header (RFC 8200 8.1).
            let mut pseudo = frame[14 + 8..14 + 40].to_vec();
            pseudo.extend((l4_len as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, proto]);
            pseudo.extend(&frame[14 + 40..]);
            assert_eq!(csum::checksum(&pseudo), 0, "proto {proto}");
        }
    }

    #[test]
    fn random_ports_are_ephemeral() {
        for _ in 0..1000 {
            let port = random_ephemeral_port().unwrap();
            assert!((EPHEMERAL_PORTS.0..=EPHEMERAL_PORTS.1).contains(&port));
        }
    }
}
