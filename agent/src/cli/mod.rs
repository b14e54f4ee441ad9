//! The node diagnostics commands of the `geosteer` binary: `status`, `services`, `backends`,
//! `flows`, `explain`, `events`, `top`.
//!
//! Each command gathers a report from two sources and renders it as a table (default), JSON or
//! YAML:
//! - the agent's policy and health state, asked on the admin socket (see `admin`);
//! - counters, conntrack and fill levels, read directly from the pinned maps, which outlive
//!   the agent. With the agent down the commands still show what the maps hold, and say that
//!   the agent is down.
//!
//! Gathering is in [`gather`] and [`explain`](mod@explain); the report types and their tables are in
//! [`report`], which is pure and covered by golden-output tests.

pub mod explain;
pub mod gather;
#[cfg(test)]
mod golden;
pub mod report;
pub mod table;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    admin::{self, Request},
    config::{self, DEFAULT_ADMIN_SOCKET},
    state::AgentState,
};

/// How long the CLI waits for the agent's answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Where to find the agent and its pinned maps.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Target {
    /// The agent's config file: its admin.socket and dataplane.pinPath are used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// bpffs directory of the pinned maps (default: the agent's, else /sys/fs/bpf/geosteer).
    #[arg(long)]
    pub pin_path: Option<PathBuf>,
    /// The agent's admin socket (default: /run/geosteer/admin.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Output format: human tables, or JSON/YAML for scripts.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Whether the agent answered, as every report states it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AgentLine {
    pub up: bool,
    /// Why not, when down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AgentLine {
    /// The first line of a table when the agent is down (none when it is up).
    pub fn banner(&self) -> String {
        match (&self.error, self.up) {
            (_, true) => String::new(),
            (Some(error), false) => {
                format!("agent: down ({error}); showing what the pinned maps hold\n")
            }
            (None, false) => "agent: down; showing what the pinned maps hold\n".to_string(),
        }
    }
}

/// The agent's answer (if any) and where the maps are.
pub struct Context {
    pub socket: PathBuf,
    pub pin_path: PathBuf,
    pub agent: std::result::Result<AgentState, String>,
}

impl Context {
    /// Asks the agent for its state and settles where the pinned maps are: `--pin-path`, else
    /// the config's, else the agent's own, else the default.
    pub fn connect(target: &Target) -> Result<Context> {
        let config = match &target.config {
            Some(path) => Some(config::load(path)?),
            None => None,
        };
        let socket = target
            .socket
            .clone()
            .or_else(|| config.as_ref().map(|c| c.admin.socket.clone()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
        let agent = query_state(&socket);
        let pin_path = target
            .pin_path
            .clone()
            .or_else(|| config.as_ref().map(|c| c.dataplane.pin_path.clone()))
            .or_else(|| {
                agent
                    .as_ref()
                    .ok()
                    .map(|state| PathBuf::from(&state.agent.pin_path))
            })
            .unwrap_or_else(|| config::Dataplane::default().pin_path);
        Ok(Context {
            socket,
            pin_path,
            agent,
        })
    }

    pub fn agent_line(&self) -> AgentLine {
        match &self.agent {
            Ok(_) => AgentLine {
                up: true,
                error: None,
            },
            Err(error) => AgentLine {
                up: false,
                error: Some(error.clone()),
            },
        }
    }

    pub fn state(&self) -> Option<&AgentState> {
        self.agent.as_ref().ok()
    }
}

fn query_state(socket: &Path) -> std::result::Result<AgentState, String> {
    let reply = admin::query(socket, &Request::State, QUERY_TIMEOUT).map_err(|e| e.to_string())?;
    reply
        .state
        .ok_or_else(|| "the agent sent no state".to_string())
}

/// A report that can be printed in every output format.
pub trait Render: Serialize {
    fn table(&self) -> String;
}

/// The report in the chosen format, ready to print.
pub fn format<R: Render>(report: &R, output: Output) -> Result<String> {
    Ok(match output {
        Output::Table => report.table(),
        Output::Json => serde_json::to_string_pretty(report)? + "\n",
        Output::Yaml => serde_yaml_ng::to_string(report)?,
    })
}

pub fn print<R: Render>(report: &R, output: Output) -> Result<()> {
    let text = format(report, output)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

pub fn status(target: &Target) -> Result<()> {
    let ctx = Context::connect(target)?;
    print(&gather::status(&ctx), target.output)
}

/// Removes the data path (links, programs, maps) the agents of this node left pinned. Refused
/// while an agent answers: its link handles would keep the programs attached.
pub fn uninstall(target: &Target) -> Result<()> {
    let ctx = Context::connect(target)?;
    if let Some(state) = ctx.state() {
        anyhow::bail!(
            "an agent is running (pid {}, admin socket {}): stop it first (delete the DaemonSet), \
             then uninstall",
            state.agent.pid,
            ctx.socket.display()
        );
    }
    let removed = crate::loader::uninstall(&ctx.pin_path)?;
    println!(
        "{}: detached {} ({}), removed {} program and {} map pins",
        ctx.pin_path.display(),
        removed.links.len(),
        if removed.links.is_empty() {
            "nothing was attached".to_string()
        } else {
            removed.links.join(", ")
        },
        removed.programs,
        removed.maps
    );
    Ok(())
}

pub fn services(target: &Target) -> Result<()> {
    let ctx = Context::connect(target)?;
    print(&gather::services(&ctx)?, target.output)
}

pub fn backends(target: &Target, service: Option<&str>) -> Result<()> {
    let ctx = Context::connect(target)?;
    print(&gather::backends(&ctx, service)?, target.output)
}

pub fn flows(target: &Target, service: Option<&str>, backend: Option<&str>) -> Result<()> {
    let ctx = Context::connect(target)?;
    print(&gather::flows(&ctx, service, backend)?, target.output)
}

pub fn explain(target: &Target, args: &explain::ExplainArgs) -> Result<()> {
    let ctx = Context::connect(target)?;
    print(&explain::explain(&ctx, args)?, target.output)
}

pub fn events(target: &Target, follow: bool) -> Result<()> {
    let ctx = Context::connect(target)?;
    gather::events(&ctx, follow, target.output)
}

pub fn top(target: &Target, interval: Duration, count: Option<u64>) -> Result<()> {
    let ctx = Context::connect(target)?;
    gather::top(&ctx, interval, count, target.output)
}
