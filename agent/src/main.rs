use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use geosteer::cli::{
    self, Target,
    explain::{ExplainArgs, Proto, parse_source},
};

/// geosteer: eBPF traffic steering for multi-region Kubernetes services.
#[derive(Parser)]
#[command(name = "geosteer", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: load the kernel programs, program services, steer traffic.
    Agent {
        /// Configuration file (YAML). Without it, the built-in demo configuration is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file; prints every problem and exits non-zero if there is one.
    Validate { file: PathBuf },
    /// Is the agent up, where are the programs attached, how full are the maps.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Services: frontends, policy mode, priority loads, locality weights, healthy/total.
    Services {
        #[command(flatten)]
        target: Target,
    },
    /// Backends of every service, or of SERVICE: locality, weights, health, counters.
    Backends {
        /// namespace/name, name, or VIP:port.
        service: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Flows in conntrack.
    Flows {
        /// Only flows of this service (namespace/name, name, or VIP:port).
        #[arg(long)]
        service: Option<String>,
        /// Only flows to this backend (IP or IP:PORT).
        #[arg(long)]
        backend: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The backend a new connection would get, and why.
    ///
    /// One synthetic first packet goes through the live TC ingress program
    /// (BPF_PROG_TEST_RUN) against the live maps; the conntrack entries it creates are removed
    /// again, so the only lasting trace is one packet and one new flow counted on that backend.
    Explain {
        /// Client address, IP or IP:PORT ([IPv6]:PORT; without a port, a random ephemeral one
        /// is used and printed).
        #[arg(long, value_parser = parse_source)]
        src: (IpAddr, Option<u16>),
        /// Service frontend, VIP:PORT ([VIP]:PORT for IPv6).
        #[arg(long)]
        dst: SocketAddr,
        /// The frontend's protocol.
        #[arg(long, value_enum, default_value_t = Proto::Tcp)]
        proto: Proto,
        #[command(flatten)]
        target: Target,
    },
    /// Remove the data path from this node: detach the programs, delete the pinned programs
    /// and maps. Stopping the agent (SIGTERM) leaves them steering; this is the only way to
    /// remove them. Refused while an agent runs.
    Uninstall {
        #[command(flatten)]
        target: Target,
    },
    /// Ejections, un-ejections, reloads and failovers, with timestamps.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Live per-backend rates (new flows, packets, bytes, 5xx).
    Top {
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = geosteer::config::parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent { config: path } => load_config(path.as_deref()).and_then(|config| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(geosteer::agent::run(path, config))
        }),
        Command::Validate { file } => validate(&file),
        Command::Status { target } => cli::status(&target),
        Command::Services { target } => cli::services(&target),
        Command::Backends { service, target } => cli::backends(&target, service.as_deref()),
        Command::Flows {
            service,
            backend,
            target,
        } => cli::flows(&target, service.as_deref(), backend.as_deref()),
        Command::Explain {
            src: (src, sport),
            dst,
            proto,
            target,
        } => cli::explain(
            &target,
            &ExplainArgs {
                src,
                sport,
                dst,
                proto,
            },
        ),
        Command::Uninstall { target } => cli::uninstall(&target),
        Command::Events { follow, target } => cli::events(&target, follow),
        Command::Top {
            interval,
            count,
            target,
        } => cli::top(&target, interval, count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<geosteer::config::Config> {
    Ok(match path {
        Some(path) => geosteer::config::load(path)?,
        None => geosteer::config::default_config(),
    })
}

/// Prints every error (and warning) in a config file; fails if there is an error.
fn validate(file: &std::path::Path) -> anyhow::Result<()> {
    let config = geosteer::config::load(file)?;
    let warnings = geosteer::config::warnings(&config);
    for w in &warnings {
        println!("warning: {w}");
    }
    println!(
        "{}: ok ({} services, {} warnings)",
        file.display(),
        config.services.len(),
        warnings.len()
    );
    Ok(())
}
