//! The `edgelb` binary: command line, logging, and the process lifecycle.

use clap::{Parser, Subcommand, ValueEnum};
use edgelb::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// A TCP (layer 4) load balancer whose listeners follow the ENS
/// CreateLoadBalancerTCPListener API.
#[derive(Parser, Debug)]
#[command(name = "edgelb", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate FILE, bind every running listener, serve until SIGTERM/SIGINT
    /// (SIGHUP reloads FILE).
    Run {
        /// The listener file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate FILE and print every error found, one per line; binds nothing.
    Check {
        /// The listener file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Exit status for an invalid listener file.
const EXIT_INVALID_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => check(&config),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            let running = config.listeners.iter().filter(|l| l.is_running()).count();
            println!(
                "{}: valid ({} load balancers, {} listeners, {} running)",
                path.display(),
                config.load_balancers.len(),
                config.listeners.len(),
                running
            );
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            for line in diagnostics.lines() {
                eprintln!("{line}");
            }
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
    }
}
