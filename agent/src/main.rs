use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

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
