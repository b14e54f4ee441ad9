//! Which protocol a service port speaks, for the health signals: Istio's protocol selection
//! (istio/istio `pkg/config/protocol/instance.go` `Parse`, `pkg/config/kube/conversion.go`
//! `ConvertProtocol`), reduced to what the kernel can read exactly.
//!
//! - `appProtocol` first (Kubernetes `ports[].appProtocol`, incl. `kubernetes.io/h2c`), then the
//!   port name's prefix before the first `-` (`http`, `http-web`, `grpc-api`, …);
//! - a value Istio does not know (or none) leaves the port to detection: each TCP flow is read as
//!   HTTP/1.x if the client's first bytes are an HTTP method, as opaque TCP otherwise (Istio's
//!   sniffing);
//! - HTTP/2, gRPC, TLS and every other known protocol are opaque at L4: only connect results
//!   count (Envoy tcp_proxy), since their responses cannot be read from packets.

use std::fmt;

use geosteer_common::{APP_PROTOCOL_DETECT, APP_PROTOCOL_HTTP1, APP_PROTOCOL_OPAQUE};
use serde::{Deserialize, Serialize};

use super::{Protocol, ServicePort};

/// How the kernel reads a port's flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// Per flow, from the client's first bytes.
    #[default]
    Detect,
    /// HTTP/1.x: the status of each response.
    Http1,
    /// Connect results only.
    Opaque,
}

impl AppProtocol {
    /// The kernel's `APP_PROTOCOL_*` value.
    pub fn kernel_value(self) -> u8 {
        match self {
            AppProtocol::Detect => APP_PROTOCOL_DETECT,
            AppProtocol::Http1 => APP_PROTOCOL_HTTP1,
            AppProtocol::Opaque => APP_PROTOCOL_OPAQUE,
        }
    }
}

impl fmt::Display for AppProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppProtocol::Detect => "detect",
            AppProtocol::Http1 => "http/1.x",
            AppProtocol::Opaque => "opaque",
        })
    }
}

/// The protocol chosen for a port and the rule that chose it (for `geosteer services`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolChoice {
    pub protocol: AppProtocol,
    /// e.g. `appProtocol "http"`, `port name "grpc-api"`, `UDP port`, `not declared`.
    pub reason: String,
}

/// What Istio's `protocol.Parse` makes of a declared value (case-insensitive). `None`: a value
/// Istio does not know, which it treats as undeclared.
fn istio_protocol(value: &str) -> Option<AppProtocol> {
    let value = value.to_ascii_lowercase();
    Some(match value.as_str() {
        "http" | "http1" | "http/1.1" => AppProtocol::Http1,
        "http2" | "http_proxy" | "grpc" | "grpc-web" | "https" | "tls" | "tcp" | "mongo"
        | "mysql" | "redis" | "thrift" | "kubernetes.io/h2c" | "kubernetes.io/ws"
        | "kubernetes.io/wss" => AppProtocol::Opaque,
        _ => return None,
    })
}

/// The protocol of one service port.
pub fn app_protocol(port: &ServicePort) -> ProtocolChoice {
    if port.protocol == Protocol::Udp {
        return ProtocolChoice {
            protocol: AppProtocol::Opaque,
            reason: "UDP port".to_string(),
        };
    }
    if let Some(value) = port.app_protocol.as_deref()
        && let Some(protocol) = istio_protocol(value)
    {
        return ProtocolChoice {
            protocol,
            reason: format!("appProtocol {value:?}"),
        };
    }
    if let Some(name) = port.name.as_deref() {
        let prefix = name.split('-').next().unwrap_or(name);
        if let Some(protocol) = istio_protocol(prefix) {
            return ProtocolChoice {
                protocol,
                reason: format!("port name {name:?}"),
            };
        }
    }
    ProtocolChoice {
        protocol: AppProtocol::Detect,
        reason: match (&port.app_protocol, &port.name) {
            (Some(value), _) => format!("appProtocol {value:?} unknown: detected per flow"),
            (None, Some(name)) => {
                format!("port name {name:?} names no protocol: detected per flow")
            }
            (None, None) => "not declared: detected per flow".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: Option<&str>, app_protocol: Option<&str>, protocol: Protocol) -> ServicePort {
        ServicePort {
            name: name.map(str::to_string),
            app_protocol: app_protocol.map(str::to_string),
            port: 80,
            target_port: 80,
            protocol,
        }
    }

    #[test]
    fn istio_protocol_selection() {
        use AppProtocol::*;
        let cases = [
            (None, None, Detect),
            (Some("http"), None, Http1),
            (Some("http-web"), None, Http1),
            (Some("HTTP-web"), None, Http1),
            (Some("httpbin"), None, Detect),
            (Some("http2"), None, Opaque),
            (Some("grpc-api"), None, Opaque),
            (Some("grpc-web"), None, Opaque),
            (Some("https"), None, Opaque),
            (Some("tls-x"), None, Opaque),
            (Some("tcp"), None, Opaque),
            (Some("mysql"), None, Opaque),
            (Some("web"), None, Detect),
            // appProtocol wins over the name.
            (Some("tcp"), Some("http"), Http1),
            (Some("http"), Some("kubernetes.io/h2c"), Opaque),
            (Some("http"), Some("grpc"), Opaque),
            // An unknown appProtocol falls back to the name, as Istio does.
            (Some("http"), Some("example.com/custom"), Http1),
            (None, Some("example.com/custom"), Detect),
        ];
        for (name, app, expected) in cases {
            let choice = app_protocol(&port(name, app, Protocol::Tcp));
            assert_eq!(
                choice.protocol, expected,
                "name {name:?} appProtocol {app:?}"
            );
        }
    }

    #[test]
    fn reasons_name_the_rule() {
        let choice = app_protocol(&port(Some("grpc-api"), None, Protocol::Tcp));
        assert_eq!(choice.reason, "port name \"grpc-api\"");
        let choice = app_protocol(&port(None, Some("http"), Protocol::Tcp));
        assert_eq!(choice.reason, "appProtocol \"http\"");
        let choice = app_protocol(&port(None, None, Protocol::Tcp));
        assert_eq!(choice.reason, "not declared: detected per flow");
        let choice = app_protocol(&port(Some("http"), None, Protocol::Udp));
        assert_eq!(
            (choice.protocol, choice.reason.as_str()),
            (AppProtocol::Opaque, "UDP port")
        );
    }
}
