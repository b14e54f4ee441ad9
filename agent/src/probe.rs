//! Active health checks: a TCP connect or an HTTP GET from the agent to each endpoint, with
//! Envoy-style thresholds (a host changes state only after `healthyThreshold` consecutive
//! successes or `unhealthyThreshold` consecutive failures).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Tcp,
    Http { path: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    pub target: SocketAddr,
    pub timeout: Duration,
}

/// The Host header of a probe to `ip`: an IPv6 address in brackets (RFC 9110 section 7.2, as
/// the URI's host is), which servers otherwise read as host and port and refuse.
fn host_header(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// One probe: TCP connects, or HTTP answers with a 2xx/3xx status line, within the timeout.
pub async fn probe_once(spec: &ProbeSpec) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(spec.target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let ProbeKind::Http { path } = &spec.kind else {
            return Ok(());
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: geosteer-health\r\nConnection: close\r\n\r\n",
            host_header(spec.target.ip())
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut head = [0u8; 12];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| format!("read: {e}"))?;
        match geosteer_common::http::parse_status(&head) {
            Some(status) if (200..400).contains(&status) => Ok(()),
            Some(status) => Err(format!("status {status}")),
            None => Err("not an HTTP/1.x response".to_string()),
        }
    };
    match tokio::time::timeout(spec.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timeout after {:?}", spec.timeout)),
    }
}

/// What a connection of the agent's own to a backend found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectResult {
    Accepted,
    /// Refused, unanswered within the deadline, or the host unreachable: the backend fails.
    Failed,
    /// Something on this node stopped the attempt (no local port or file descriptor left, no
    /// route, a local firewall): it says nothing about the backend.
    Inconclusive,
}

/// Connects to `endpoint` within `deadline`, and closes at once with a RST (SO_LINGER 0), so
/// checks leave no TIME_WAIT behind to use up this node's ports toward the backend.
pub async fn try_connect(endpoint: SocketAddr, deadline: Duration) -> ConnectResult {
    match tokio::time::timeout(deadline, TcpStream::connect(endpoint)).await {
        Ok(Ok(stream)) => {
            #[allow(
                deprecated,
                reason = "a zero linger never blocks: the close sends a RST at once"
            )]
            let _ = stream.set_linger(Some(Duration::ZERO));
            ConnectResult::Accepted
        }
        Err(_) => ConnectResult::Failed,
        Ok(Err(e)) => match e.raw_os_error() {
            Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ETIMEDOUT) => {
                ConnectResult::Failed
            }
            _ => ConnectResult::Inconclusive,
        },
    }
}

/// Threshold state of one host. New hosts start healthy: a restart of the agent must not take
/// every endpoint out until its first probe answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveHealth {
    pub healthy: bool,
    successes: u32,
    failures: u32,
}

impl Default for ActiveHealth {
    fn default() -> Self {
        Self {
            healthy: true,
            successes: 0,
            failures: 0,
        }
    }
}

impl ActiveHealth {
    /// Records one probe result; returns the new state if it changed.
    pub fn record(
        &mut self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.healthy && self.successes >= healthy_threshold.max(1) {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.healthy && self.failures >= unhealthy_threshold.max(1) {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let mut h = ActiveHealth::default();
        // unhealthyThreshold 3, healthyThreshold 2
        let steps = [
            (false, None),
            (false, None),
            (true, None), // a success breaks the failure run
            (false, None),
            (false, None),
            (false, Some(false)),
            (false, None),
            (true, None),
            (true, Some(true)),
            (true, None),
        ];
        for (i, (ok, want)) in steps.into_iter().enumerate() {
            assert_eq!(h.record(ok, 2, 3), want, "step {i}");
        }
        assert!(h.healthy);
    }

    #[tokio::test]
    async fn probes_real_listeners_on_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await.unwrap();
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let http = ProbeSpec {
            kind: ProbeKind::Http {
                path: "/healthz".into(),
            },
            target: addr,
            timeout: Duration::from_secs(2),
        };
        assert_eq!(probe_once(&http).await, Ok(()));
        assert_eq!(probe_once(&http).await, Err("status 503".into()));
        server.await.unwrap();
        // Nothing listens there any more: refused.
        let tcp = ProbeSpec {
            kind: ProbeKind::Tcp,
            ..http
        };
        assert!(probe_once(&tcp).await.unwrap_err().starts_with("connect"));
    }

    /// An IPv6 endpoint gets a Host header a server accepts: the address in brackets.
    #[tokio::test]
    async fn http_probes_of_an_ipv6_endpoint_bracket_the_host() {
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let status = if request.contains("\r\nHost: [::1]\r\n") {
                "200 OK"
            } else {
                "400 Bad Request"
            };
            let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            s.write_all(reply.as_bytes()).await.unwrap();
            request
        });
        let http = ProbeSpec {
            kind: ProbeKind::Http {
                path: "/healthz".into(),
            },
            target: addr,
            timeout: Duration::from_secs(2),
        };
        let result = probe_once(&http).await;
        let request = server.await.unwrap();
        assert_eq!(result, Ok(()), "{request:?}");
        assert_eq!(host_header("198.18.0.2".parse().unwrap()), "198.18.0.2");
    }
}
