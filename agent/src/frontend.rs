//! A service port as the kernel matches it — VIP, port, protocol — for either address family.
//! The agent names services by [`Frontend`] (Cilium's word for an LB VIP:port); only the
//! map-writing edge turns one into the family's kernel key ([`KernelKey`]).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use geosteer_common::{PROTO_TCP, PROTO_UDP, ServiceKey, ServiceKey6};

/// VIP, port and protocol in host terms. Orders IPv4 before IPv6, then by address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
}

impl Default for Frontend {
    fn default() -> Self {
        Frontend::new(Ipv4Addr::UNSPECIFIED, 0, 0)
    }
}

/// The key of a [`Frontend`] in its family's service map (`GS_SERVICES` or `GS_SERVICES6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKey {
    V4(ServiceKey),
    V6(ServiceKey6),
}

impl Frontend {
    pub fn new(vip: impl Into<IpAddr>, port: u16, proto: u8) -> Self {
        Frontend {
            vip: vip.into(),
            port,
            proto,
        }
    }

    pub fn kernel_key(&self) -> KernelKey {
        match self.vip {
            IpAddr::V4(vip) => KernelKey::V4(ServiceKey::for_vip(vip, self.port, self.proto)),
            IpAddr::V6(vip) => KernelKey::V6(ServiceKey6::for_vip(vip, self.port, self.proto)),
        }
    }

    pub fn from_key(key: &ServiceKey) -> Self {
        Frontend::new(
            Ipv4Addr::from(u32::from_be(key.addr)),
            u16::from_be(key.port),
            key.proto,
        )
    }

    pub fn from_key6(key: &ServiceKey6) -> Self {
        Frontend::new(key.addr.to_ip(), u16::from_be(key.port), key.proto)
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.vip, self.port)
    }
}

/// `198.51.100.1:80/TCP`, `[2001:db8::1]:80/UDP`.
impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.socket_addr(), protocol_name(self.proto))
    }
}

pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn kernel_keys_are_in_network_order_for_each_family() {
        let v4 = Frontend::new(Ipv4Addr::new(198, 19, 0, 10), 80, PROTO_TCP);
        let KernelKey::V4(key) = v4.kernel_key() else {
            panic!("an IPv4 VIP has an IPv4 key")
        };
        assert_eq!(key.addr.to_ne_bytes(), [198, 19, 0, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(Frontend::from_key(&key), v4);

        let ip6: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let v6 = Frontend::new(ip6, 443, PROTO_UDP);
        let KernelKey::V6(key) = v6.kernel_key() else {
            panic!("an IPv6 VIP has an IPv6 key")
        };
        assert_eq!(key.addr.octets(), ip6.octets());
        assert_eq!(Frontend::from_key6(&key), v6);
    }

    #[test]
    fn display_brackets_ipv6_and_orders_ipv4_first() {
        let v6 = Frontend::new("2001:db8::10".parse::<Ipv6Addr>().unwrap(), 80, PROTO_TCP);
        let v4 = Frontend::new(Ipv4Addr::new(203, 0, 113, 1), 53, PROTO_UDP);
        assert_eq!(v6.to_string(), "[2001:db8::10]:80/TCP");
        assert_eq!(v4.to_string(), "203.0.113.1:53/UDP");
        assert!(v4 < v6);
    }
}
