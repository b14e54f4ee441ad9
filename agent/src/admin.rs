//! The admin socket: a Unix stream socket (mode 0600) where the `geosteer` CLI asks the running
//! agent for its policy and health state.
//!
//! Protocol: newline-delimited JSON, one request line → one reply line, any number of requests
//! per connection.
//!
//! ```text
//! {"get":"state"}               → {"state": AgentState}
//! {"get":"events","since":N}    → {"events": [events with seq > N]}
//! anything else                 → {"error": "why"}
//! ```
//!
//! The state is whatever the agent published last (it republishes after every change), so a
//! request never waits for the control loop.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::watch,
    task::JoinHandle,
};
use tracing::warn;

use crate::state::{AgentState, EventInfo};

/// Bytes the agent reads from one connection. Requests are a few dozen bytes and the CLI opens
/// a connection per request; the cap only keeps a bad client from growing a line buffer
/// without bound.
const MAX_CONNECTION_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "get", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    State,
    Events {
        #[serde(default)]
        since: u64,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AgentState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reply to one request line.
pub fn answer(line: &str, state: &AgentState) -> Reply {
    match serde_json::from_str::<Request>(line) {
        Ok(Request::State) => Reply {
            state: Some(state.clone()),
            ..Default::default()
        },
        Ok(Request::Events { since }) => Reply {
            events: Some(
                state
                    .events
                    .iter()
                    .filter(|e| e.seq > since)
                    .cloned()
                    .collect(),
            ),
            ..Default::default()
        },
        Err(e) => Reply {
            error: Some(format!("bad request {line:?}: {e}")),
            ..Default::default()
        },
    }
}

/// A bound admin socket; the socket file is removed on drop.
pub struct AdminSocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket at `path` (mode 0600) and serves `state` on it.
pub fn serve(path: &Path, state: watch::Receiver<Arc<AgentState>>) -> Result<AdminSocket> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        // A leftover of a crashed agent is removed; a live agent's socket is not taken over.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "admin.socket {}: another agent answers there",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale admin socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding admin.socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, state.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "admin socket accept");
                    // E.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(AdminSocket {
        path: path.to_path_buf(),
        task,
    })
}

async fn serve_connection(stream: UnixStream, state: watch::Receiver<Arc<AgentState>>) {
    let (read, mut write) = stream.into_split();
    let read = tokio::io::AsyncReadExt::take(read, MAX_CONNECTION_BYTES);
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let snapshot = state.borrow().clone();
        let reply = answer(&line, &snapshot);
        let Ok(mut text) = serde_json::to_string(&reply) else {
            return;
        };
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no agent answers on {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent on {} sent an unreadable reply: {message}", path.display())]
    BadReply { path: PathBuf, message: String },
    #[error("the agent on {} refused the request: {message}", path.display())]
    Refused { path: PathBuf, message: String },
}

/// One request to the agent at `path` (blocking; the CLI has no runtime).
pub fn query(path: &Path, request: &Request, timeout: Duration) -> Result<Reply, QueryError> {
    let io = |source| QueryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| QueryError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    let reply: Reply = serde_json::from_str(&reply).map_err(|e| QueryError::BadReply {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if let Some(error) = reply.error {
        return Err(QueryError::Refused {
            path: path.to_path_buf(),
            message: error,
        });
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{controller::EventKind, state::AgentInfo};

    fn state() -> AgentState {
        AgentState {
            agent: AgentInfo {
                node: "n1".into(),
                ..Default::default()
            },
            events: (1..=3)
                .map(|seq| EventInfo {
                    seq,
                    at: "2025-01-01T00:00:00.000Z".into(),
                    kind: EventKind::Reload,
                    message: format!("event {seq}"),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn answers_requests_by_line() {
        let state = state();
        // (request line, events expected, error expected)
        let cases: [(&str, Option<Vec<u64>>, bool); 5] = [
            (r#"{"get":"events"}"#, Some(vec![1, 2, 3]), false),
            (r#"{"get":"events","since":2}"#, Some(vec![3]), false),
            (r#"{"get":"events","since":3}"#, Some(vec![]), false),
            (r#"{"get":"nothing"}"#, None, true),
            ("not json", None, true),
        ];
        for (line, events, error) in cases {
            let reply = answer(line, &state);
            let seqs = reply
                .events
                .as_ref()
                .map(|e| e.iter().map(|e| e.seq).collect::<Vec<_>>());
            assert_eq!(seqs, events, "{line}");
            assert_eq!(reply.error.is_some(), error, "{line}: {reply:?}");
        }
        let reply = answer(r#"{"get":"state"}"#, &state);
        assert_eq!(reply.state.unwrap().agent.node, "n1");
    }

    #[tokio::test]
    async fn serves_on_a_private_socket_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("geosteer-admin-test-{}", std::process::id()));
        let path = dir.join("admin.sock");
        let (_tx, rx) = watch::channel(Arc::new(state()));
        let socket = serve(&path, rx).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second agent must not take the socket over.
        let (_tx2, rx2) = watch::channel(Arc::new(state()));
        let error = serve(&path, rx2).err().unwrap().to_string();
        assert!(error.contains("another agent answers"), "{error}");

        let client_path = path.clone();
        let reply = tokio::task::spawn_blocking(move || {
            query(
                &client_path,
                &Request::Events { since: 1 },
                Duration::from_secs(5),
            )
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(reply.events.unwrap().len(), 2);
        drop(socket);
        assert!(!path.exists());
        let error = query(&path, &Request::State, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(error, QueryError::Connect { .. }), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
