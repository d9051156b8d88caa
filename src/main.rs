//! The `edgelb` binary: command line, logging, and the process lifecycle.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use edgelb::config::Config;
use edgelb::demo;
use edgelb::process::{Options, Process};
use edgelb::systemd::Notifier;
use edgelb::upgrade::{self, Upgrader};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::signal::unix::{signal, Signal, SignalKind};

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
    /// (SIGHUP reloads FILE, SIGUSR1 reopens the access log, SIGUSR2 upgrades to
    /// the binary now at this path).
    Run {
        /// The listener file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        workers: WorkersArg,
    },
    /// Validate FILE and print every error found, one per line; binds nothing.
    Check {
        /// The listener file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start three HTTP backends on loopback and a listener on 127.0.0.1:8080 (or
    /// the next free port) in front of them, with the admin server.
    Demo {
        #[command(flatten)]
        workers: WorkersArg,
    },
}

#[derive(clap::Args, Debug)]
struct WorkersArg {
    /// Threads that accept and serve connections, each with its own socket per
    /// listener [default: TOKIO_WORKER_THREADS, else one per core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

impl WorkersArg {
    fn count(&self) -> usize {
        self.workers
            .map_or_else(edgelb::workers::default_count, usize::from)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Exit status for an invalid listener file.
const EXIT_INVALID_CONFIG: u8 = 2;
/// Exit status for any other start failure.
const EXIT_START_FAILURE: u8 = 1;

fn main() -> ExitCode {
    // How this process was started, before anything can replace the binary.
    let upgrader = Upgrader::from_startup();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, workers } => match Config::load(&config) {
            Ok(loaded) => {
                let upgrader = upgrader
                    .map_err(|e| tracing::warn!(error = %e, "binary upgrade unavailable: cannot tell this binary's path"))
                    .ok();
                with_runtime(serve(config, loaded, None, workers.count(), upgrader))
            }
            Err(diagnostics) => {
                for line in diagnostics.lines() {
                    eprintln!("{line}");
                }
                ExitCode::from(EXIT_INVALID_CONFIG)
            }
        },
        Command::Demo { workers } => with_runtime(run_demo(workers.count())),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal, never in a log file or journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The process's own runtime, on the main thread: admin server, control API,
/// signals, health checks. Connections run on the workers (`edgelb::workers`).
fn with_runtime(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("edgelb: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_START_FAILURE);
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgelb: {e:#}");
            ExitCode::from(EXIT_START_FAILURE)
        }
    }
}

fn check(path: &Path) -> ExitCode {
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

/// Serves `config` until SIGTERM/SIGINT, reloading `path` on SIGHUP and, with an
/// `upgrader`, upgrading on SIGUSR2 (started by an upgrade, it first takes over).
async fn serve(
    path: PathBuf,
    config: Config,
    banner: Option<String>,
    workers: usize,
    upgrader: Option<Upgrader>,
) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut user1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut user2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
    let systemd = Notifier::from_env();
    let mut inheritance =
        upgrade::take_over().context("binary upgrade: cannot take over from the old process")?;
    let mut options = Options::production(workers);
    if let Some(inheritance) = &mut inheritance {
        options.handover = inheritance.take_handover();
    }
    let listeners = config.listeners.len();
    let process = Process::start(path.clone(), config, options).await?;
    tracing::info!(config = %path.display(), listeners, "edgelb running");
    match inheritance {
        // The main process from now on, before the old one can exit.
        Some(inheritance) => {
            systemd.took_over();
            inheritance
                .ready()
                .context("binary upgrade: cannot tell the old process")?;
        }
        None => systemd.ready(),
    }
    if let Some(banner) = banner {
        println!("{banner}");
    }
    // SIGTERM or SIGINT starts the drain (SPEC section 6: after `drain_delay`); a
    // successful upgrade, the drain without it.
    let mut upgrading = None;
    let handed_over = loop {
        tokio::select! {
            _ = terminate.recv() => break false,
            _ = interrupt.recv() => break false,
            _ = hangup.recv() => {
                systemd.reloading();
                process.reload().await;
                systemd.reloaded();
            }
            _ = user2.recv() => match &upgrader {
                _ if upgrading.is_some() => tracing::warn!("SIGUSR2 ignored: a binary upgrade is under way"),
                Some(upgrader) => upgrading = Some(Box::pin(upgrader.run(&process))),
                None => tracing::warn!("SIGUSR2 ignored: binary upgrade is for `edgelb run`"),
            },
            outcome = poll_some(&mut upgrading) => match outcome {
                Some(pid) => {
                    systemd.status(&format!("handed over to pid {pid}; draining"));
                    break true;
                }
                None => upgrading = None,
            },
            _ = user1.recv() => process.reopen_access_log(),
        }
    };
    // Dropping an upgrade under way (SIGTERM meanwhile) kills its new process.
    drop(upgrading);
    if handed_over {
        reopening_during(process.drain_handed_over(), &mut user1, &process).await;
        return Ok(());
    }
    systemd.stopping();
    // During the delay, SIGINT or a second SIGTERM ends it early.
    let early = async {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    reopening_during(process.drain(early), &mut user1, &process).await;
    Ok(())
}

/// Runs `drain` to its end while SIGUSR1 still reopens the access log: a drain can
/// last `drain_timeout`, and logrotate's `postrotate` signals every process of the
/// service, the draining one too, whose lines must then go to the new file.
async fn reopening_during<T>(
    drain: impl Future<Output = T>,
    user1: &mut Signal,
    process: &Process,
) -> T {
    tokio::pin!(drain);
    loop {
        tokio::select! {
            out = &mut drain => return out,
            _ = user1.recv() => process.reopen_access_log(),
        }
    }
}

async fn run_demo(workers: usize) -> anyhow::Result<()> {
    let backends = demo::start_backends()
        .await
        .context("cannot start the demo backends")?;
    let port = demo::free_port(demo::LISTENER_PORT).context("no free port from 8080 up")?;
    let admin_port = demo::free_port(demo::ADMIN_PORT).context("no free port from 9900 up")?;
    let text = demo::config_text(&backends, port, admin_port);
    let path = std::env::temp_dir().join(format!("edgelb-demo-{}.toml", std::process::id()));
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    let config = Config::parse(&text, None)
        .map_err(|errors| anyhow::anyhow!("demo config invalid: {errors:?}"))?;
    let banner = demo::banner(port, admin_port, &path);
    let result = serve(path.clone(), config, Some(banner), workers, None).await;
    let _ = std::fs::remove_file(&path);
    result
}

/// The output of the future in `slot`, if any; never ready while it is empty.
async fn poll_some<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
