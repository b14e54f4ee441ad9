//! Shared by the packet-test binaries: hand-built packets, an independent output parser that
//! verifies checksums (etherparse), and a rig that loads the real, verifier-checked programs and
//! runs packets through them with BPF_PROG_TEST_RUN.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, TestRun as _, Xdp};
use aya::{Ebpf, TestRunOptions};
use etherparse::{Ipv4Header, TcpHeader, UdpHeader};
use geosteer::{
    dataplane::{BpfMaps, Dataplane as _},
    frontend::Frontend,
    loader::{self, MapSizes},
    programmer::{DesiredBackend, DesiredService, Programmer, ServiceSettings},
};
use geosteer_common::csum;
use geosteer_common::{
    BackendState, DIR_ORIGINAL, DropReason, FlowKey, PROTO_TCP, PROTO_UDP, program_names,
};
use geosteer_tests::require_root;

pub(crate) mod v6;

pub(crate) const TC_ACT_OK: u32 = 0;
pub(crate) const TC_ACT_SHOT: u32 = 2;
pub(crate) const XDP_DROP: u32 = 1;
pub(crate) const XDP_PASS: u32 = 2;

pub(crate) const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
pub(crate) const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 99, 9);
pub(crate) const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 11, 2),
    Ipv4Addr::new(198, 18, 12, 2),
    Ipv4Addr::new(198, 18, 21, 2),
];
pub(crate) const VPORT: u16 = 80;
pub(crate) const TPORT: u16 = 8080;

pub(crate) const SYN: u8 = 0x02;
pub(crate) const ACK: u8 = 0x10;
pub(crate) const RST: u8 = 0x04;
pub(crate) const FIN: u8 = 0x01;
pub(crate) const PSH_ACK: u8 = 0x18;

/// A hand-built Ethernet + IPv4 + TCP/UDP packet. Inputs are built here; outputs are checked
/// with etherparse, so a checksum bug cannot hide by being the same on both sides.
#[derive(Clone)]
pub(crate) struct Pkt {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    pub ip_options: Vec<u8>,
    /// Raw flags+offset field (0x2000 = more fragments).
    pub frag: u16,
    pub udp_no_checksum: bool,
    pub seq: u32,
    pub ack: u32,
}

impl Pkt {
    pub(crate) fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            proto: PROTO_TCP,
            tcp_flags: flags,
            payload: Vec::new(),
            ip_options: Vec::new(),
            frag: 0,
            udp_no_checksum: false,
            seq: 1000,
            ack: 0,
        }
    }

    pub(crate) fn udp(
        src: Ipv4Addr,
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
        payload: &[u8],
    ) -> Self {
        Self {
            proto: PROTO_UDP,
            payload: payload.to_vec(),
            ..Self::tcp(src, sport, dst, dport, 0)
        }
    }

    pub(crate) fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub(crate) fn with_seq(mut self, seq: u32, ack: u32) -> Self {
        self.seq = seq;
        self.ack = ack;
        self
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend(self.sport.to_be_bytes());
        l4.extend(self.dport.to_be_bytes());
        if self.proto == PROTO_TCP {
            l4.extend(self.seq.to_be_bytes());
            l4.extend(self.ack.to_be_bytes());
            l4.push(5 << 4);
            l4.push(self.tcp_flags);
            l4.extend(64240u16.to_be_bytes());
            l4.extend([0, 0, 0, 0]); // checksum, urgent
        } else {
            l4.extend(((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend([0, 0]);
        }
        l4.extend(&self.payload);
        let check_at = if self.proto == PROTO_TCP { 16 } else { 6 };
        if !(self.proto == PROTO_UDP && self.udp_no_checksum) {
            let mut pseudo = Vec::new();
            pseudo.extend(self.src.octets());
            pseudo.extend(self.dst.octets());
            pseudo.extend([0, self.proto]);
            pseudo.extend((l4.len() as u16).to_be_bytes());
            pseudo.extend(&l4);
            let mut c = geosteer_common::csum::checksum(&pseudo);
            if self.proto == PROTO_UDP && c == 0 {
                c = 0xffff;
            }
            l4[check_at..check_at + 2].copy_from_slice(&c.to_ne_bytes());
        }
        let ihl = 5 + self.ip_options.len() / 4;
        let mut ip = vec![(4 << 4) | ihl as u8, 0];
        ip.extend(((ihl * 4 + l4.len()) as u16).to_be_bytes());
        ip.extend([0x12, 0x34]);
        ip.extend(self.frag.to_be_bytes());
        ip.extend([64, self.proto, 0, 0]);
        ip.extend(self.src.octets());
        ip.extend(self.dst.octets());
        ip.extend(&self.ip_options);
        let c = geosteer_common::csum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
        let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
        frame.extend(ip);
        frame.extend(l4);
        frame
    }
}

/// What an output packet says, after checksum verification.
#[derive(Debug, PartialEq)]
pub(crate) struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// Parses an output frame and asserts that its IPv4 and L4 checksums are correct.
pub(crate) fn verify(frame: &[u8]) -> Seen {
    let (ip, rest) = Ipv4Header::from_slice(&frame[14..]).expect("ipv4 header parses");
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let payload_len = ip.payload_len().expect("ip payload length") as usize;
    let l4 = &rest[..payload_len];
    let (src, dst) = (Ipv4Addr::from(ip.source), Ipv4Addr::from(ip.destination));
    if ip.protocol == etherparse::IpNumber::TCP {
        let (tcp, data) = TcpHeader::from_slice(l4).expect("tcp header parses");
        let expected = tcp.calc_checksum_ipv4(&ip, data).expect("tcp checksum");
        assert_eq!(tcp.checksum, expected, "TCP checksum");
        Seen {
            src,
            dst,
            sport: tcp.source_port,
            dport: tcp.destination_port,
        }
    } else {
        let (udp, data) = UdpHeader::from_slice(l4).expect("udp header parses");
        if udp.checksum != 0 {
            let expected = udp.calc_checksum_ipv4(&ip, data).expect("udp checksum");
            assert_eq!(udp.checksum, expected, "UDP checksum");
        }
        Seen {
            src,
            dst,
            sport: udp.source_port,
            dport: udp.destination_port,
        }
    }
}

pub(crate) struct Rig {
    pub ebpf: Ebpf,
    pub maps: BpfMaps,
    pub programmer: Programmer,
    /// Applied to every service `set_services` writes.
    pub settings: ServiceSettings,
}

impl Rig {
    /// At the agent's default log level (`info`), so the programs are the ones a node runs.
    pub(crate) fn new() -> Self {
        Self::at_log_level(loader::LevelFilter::INFO)
    }

    /// With the kernel's log statements on up to `level`.
    pub(crate) fn at_log_level(level: loader::LevelFilter) -> Self {
        require_root();
        let sizes = MapSizes {
            max_services: 16,
            max_backends: 256,
            conntrack: 65536,
            conntrack6: geosteer_common::CONNTRACK6_SIZE,
            table_chunks: 1 << 12,
        };
        let (mut ebpf, _) =
            loader::load_logging(sizes, None, level).expect("kernel object loads and verifies");
        // As the agent does when it attaches: the IPv6 programs into their tail-call slots.
        loader::fill_tail_calls(&mut ebpf).expect("tail calls");
        let maps = BpfMaps::take(&mut ebpf).expect("maps");
        let mut rig = Self {
            ebpf,
            maps,
            programmer: Programmer::new(16, 256, 1 << 12),
            settings: ServiceSettings::default(),
        };
        rig.set_services(&[
            (VIP, VPORT, PROTO_TCP, &[1, 1, 1]),
            (VIP, VPORT, PROTO_UDP, &[1, 1, 1]),
        ]);
        rig
    }

    pub(crate) fn set_services(&mut self, services: &[(Ipv4Addr, u16, u8, &[u32])]) {
        let desired: Vec<DesiredService> = services
            .iter()
            .map(|(vip, port, proto, weights)| DesiredService {
                name: format!("{vip}:{port}/{proto}"),
                key: Frontend::new(*vip, *port, *proto),
                key6: None,
                backends: weights
                    .iter()
                    .zip(BACKENDS)
                    .map(|(w, ip)| DesiredBackend {
                        addr: ip.into(),
                        port: TPORT.to_be(),
                        weight: *w,
                        ..Default::default()
                    })
                    .collect(),
                settings: self.settings,
            })
            .collect();
        self.programmer
            .apply(&mut self.maps, &desired)
            .expect("apply");
    }

    /// A rig whose services have these settings (protocol, connect timeout, ejection limit).
    pub(crate) fn with_settings(settings: ServiceSettings) -> Self {
        let mut rig = Self::new();
        rig.settings = settings;
        rig.set_services(&[
            (VIP, VPORT, PROTO_TCP, &[1, 1, 1]),
            (VIP, VPORT, PROTO_UDP, &[1, 1, 1]),
        ]);
        rig
    }

    /// Marks a backend outlier-ejected, as the kernel does at its consecutive-error limit.
    pub(crate) fn eject(&mut self, ip: Ipv4Addr, proto: u8) {
        let id = self.backend_id(ip, proto);
        self.maps
            .write_backend_state(
                id,
                &BackendState {
                    ejected: 1,
                    ..Default::default()
                },
            )
            .unwrap();
    }

    /// The kernel's outlier state of a backend.
    pub(crate) fn state(&self, ip: Ipv4Addr) -> BackendState {
        self.maps
            .backend_state
            .get(&self.backend_id(ip, PROTO_TCP), 0)
            .unwrap()
    }

    /// Backend ids of the connect timeouts the kernel reported since the last call (other
    /// events in the ring are dropped).
    pub(crate) fn suspected_timeouts(&mut self) -> Vec<u32> {
        let mut ids = Vec::new();
        while let Some(item) = self.maps.events.next() {
            assert!(item.len() >= std::mem::size_of::<geosteer_common::KernelEvent>());
            // SAFETY: the kernel writes KernelEvents (repr(C), plain data) into the ring.
            let event = unsafe {
                std::ptr::read_unaligned(item.as_ptr() as *const geosteer_common::KernelEvent)
            };
            if event.kind == geosteer_common::EVENT_CONNECT_TIMEOUT {
                ids.push(event.backend_id);
            }
        }
        ids
    }

    /// Counts `n` connect timeouts of a backend as the agent does once its own connection
    /// failed too. Whether the kernel counted them.
    pub(crate) fn confirm_timeouts(&mut self, ip: Ipv4Addr, n: u32) -> bool {
        let id = self.backend_id(ip, PROTO_TCP);
        self.maps
            .count_connect_timeouts(id, ip.into(), TPORT.to_be(), n)
            .expect("counting program runs")
    }

    pub(crate) fn counters(&self, ip: Ipv4Addr) -> geosteer_common::BackendCounters {
        self.maps
            .backend_counters(self.backend_id(ip, PROTO_TCP))
            .unwrap()
    }

    pub(crate) fn run_tc(&mut self, program: &str, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.try_run_tc(program, pkt).expect("test run")
    }

    /// Like [`Rig::run_tc`], but an error of the test run itself (the kernel refuses an IPv4
    /// frame too short to hold an IP header, an IPv6 one without its fixed header) is returned.
    pub(crate) fn try_run_tc(
        &mut self,
        program: &str,
        pkt: &[u8],
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(program).unwrap().try_into().unwrap();
        let mut out = vec![0u8; pkt.len() + 256];
        let result = prog.test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    pub(crate) fn ingress(&mut self, pkt: &Pkt) -> (u32, Vec<u8>) {
        self.run_tc(program_names::TC_INGRESS, &pkt.build())
    }

    pub(crate) fn egress(&mut self, pkt: &Pkt) -> (u32, Vec<u8>) {
        self.run_tc(program_names::TC_EGRESS, &pkt.build())
    }

    pub(crate) fn xdp(&mut self, pkt: &Pkt) -> (u32, Vec<u8>) {
        self.run_xdp(&pkt.build())
    }

    pub(crate) fn run_xdp(&mut self, data: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(program_names::XDP)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; data.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(data),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("test run");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    pub(crate) fn backend_id(&self, ip: Ipv4Addr, proto: u8) -> u32 {
        let key = Frontend::new(VIP, VPORT, proto);
        let live = self.programmer.service(&key).expect("service live");
        live.backends[&(ip.into(), TPORT.to_be())].0
    }

    pub(crate) fn drops(&self, reason: DropReason) -> u64 {
        self.maps.drops(reason).unwrap()
    }

    pub(crate) fn forget_flow(&mut self, pkt: &Pkt) {
        let key = FlowKey {
            saddr: u32::from(pkt.src).to_be(),
            daddr: u32::from(pkt.dst).to_be(),
            sport: pkt.sport.to_be(),
            dport: pkt.dport.to_be(),
            proto: pkt.proto,
            direction: DIR_ORIGINAL,
            _pad: 0,
        };
        let _ = self.maps.conntrack.remove(&key);
    }
}

/// The backend's RST refusing a SYN sent by [`syn`] (RST|ACK acknowledging its ISN).
pub(crate) fn refusal(backend: Ipv4Addr, sport: u16) -> Pkt {
    Pkt::tcp(backend, TPORT, CLIENT, sport, RST | ACK).with_seq(0, 1001)
}

pub(crate) fn syn(sport: u16) -> Pkt {
    Pkt::tcp(CLIENT, sport, VIP, VPORT, SYN)
}

/// One TCP connection through the VIP, driven packet by packet with real sequence numbers: the
/// client's next byte, the backend's next byte, and what each side has acknowledged.
pub(crate) struct Conn {
    pub port: u16,
    pub backend: Ipv4Addr,
    /// Client's next sequence number.
    pub client_seq: u32,
    /// Backend's next sequence number (what the client acknowledges).
    pub backend_seq: u32,
}

impl Conn {
    /// SYN through ingress, SYN-ACK through egress.
    pub(crate) fn open(rig: &mut Rig, port: u16) -> Conn {
        let (_, out) = rig.ingress(&syn(port).with_seq(7_000, 0));
        let backend = verify(&out).dst;
        let backend_isn = 0xfffe_0000; // close to wrapping: sequence arithmetic must cope
        rig.egress(&Pkt::tcp(backend, TPORT, CLIENT, port, SYN | ACK).with_seq(backend_isn, 7_001));
        Conn {
            port,
            backend,
            client_seq: 7_001,
            backend_seq: backend_isn.wrapping_add(1),
        }
    }

    /// A client segment acknowledging everything the backend sent.
    pub(crate) fn send(&mut self, rig: &mut Rig, payload: &[u8]) -> (u32, Vec<u8>) {
        let pkt = Pkt::tcp(CLIENT, self.port, VIP, VPORT, PSH_ACK)
            .with_payload(payload)
            .with_seq(self.client_seq, self.backend_seq);
        self.client_seq = self.client_seq.wrapping_add(payload.len() as u32);
        rig.ingress(&pkt)
    }

    /// A client segment with an explicit acknowledgement (e.g. of less than was sent).
    pub(crate) fn send_acking(&mut self, rig: &mut Rig, payload: &[u8], ack: u32) {
        let pkt = Pkt::tcp(CLIENT, self.port, VIP, VPORT, PSH_ACK)
            .with_payload(payload)
            .with_seq(self.client_seq, ack);
        self.client_seq = self.client_seq.wrapping_add(payload.len() as u32);
        rig.ingress(&pkt);
    }

    /// A backend segment at its next sequence number.
    pub(crate) fn reply(&mut self, rig: &mut Rig, payload: &[u8]) -> (u32, Vec<u8>) {
        let seq = self.backend_seq;
        self.backend_seq = seq.wrapping_add(payload.len() as u32);
        self.reply_at(rig, seq, payload)
    }

    /// A backend segment at an explicit sequence number (retransmissions, gaps).
    pub(crate) fn reply_at(&self, rig: &mut Rig, seq: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        rig.egress(
            &Pkt::tcp(self.backend, TPORT, CLIENT, self.port, PSH_ACK)
                .with_payload(payload)
                .with_seq(seq, self.client_seq),
        )
    }

    /// A request and its whole response, one segment each.
    pub(crate) fn exchange(&mut self, rig: &mut Rig, response: &[u8]) {
        self.send(rig, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        self.reply(rig, response);
    }
}

pub(crate) const OK_200: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
pub(crate) const UNAVAILABLE_503: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";

/// An Ethernet frame with an ICMP error from `src` to `dst` quoting `quoted` (an Ethernet frame
/// as built by [`Pkt::build`]; its IP packet is quoted whole).
pub(crate) fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    // Unused, or (fragmentation needed) the next hop's MTU.
    icmp.extend([0, 0, 0x05, 0x00]);
    icmp.extend(&quoted[14..]);
    let c = csum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend([0xab, 0xcd, 0, 0, 64, 1, 0, 0]);
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = csum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend(ip);
    frame.extend(icmp);
    frame
}

/// A datagram's fragment after the first: the IP header alone (offset in 8-byte units).
pub(crate) fn later_fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    offset_units: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + payload.len()) as u16).to_be_bytes());
    ip.extend([0x12, 0x34]); // the id Pkt::build uses
    ip.extend(offset_units.to_be_bytes());
    ip.extend([64, PROTO_UDP, 0, 0]); // (the protocol of the datagram: UDP here)
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = csum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_ne_bytes());
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend(ip);
    frame.extend(payload);
    frame
}
