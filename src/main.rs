//! The `sluice` command line: wiring only. Everything it does lives in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::dataplane::Dataplane;
use sluice::model::Model;
use sluice::publish::Publisher;
use sluice::table::{RoutingSnapshot, StatsRegistry};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A user-space load balancer for Kubernetes NodePort traffic"
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every Service of a config file on its NodePort.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads (overrides the config; default one per CPU).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a config file and print what would be served.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the node's ip/nft commands that Services with forwarding = "transparent" need.
    TproxyRules {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start three local demo pods and serve the seed's `myfrontend` Service on NodePort 30000.
    Demo {
        #[arg(long)]
        workers: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Check { config } => match sluice::config::load_file(&config, None) {
            Ok(model) => {
                print!("{}", sluice::config::render_check(&model));
                if sluice::tproxy::uses_transparent(&model) {
                    if let Err(e) = sluice::tproxy::check_transparent_capability() {
                        eprintln!("warning: {e}");
                    }
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        Command::Run { config, workers } => match sluice::config::load_file(&config, None) {
            Ok(mut model) => {
                if workers.is_some() {
                    model.settings.workers = workers;
                }
                if sluice::tproxy::uses_transparent(&model) {
                    if let Err(e) = sluice::tproxy::check_transparent_capability() {
                        eprintln!("{}: {e}", config.display());
                        return ExitCode::from(1);
                    }
                }
                serve(model)
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        Command::TproxyRules { config } => match sluice::config::load_file(&config, None) {
            Ok(model) => {
                print!("{}", sluice::tproxy::rules(&model));
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        Command::Demo { workers } => demo(workers),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn demo(workers: Option<usize>) -> anyhow::Result<()> {
    let pods: Vec<(String, std::net::SocketAddr)> = sluice::demo::DEMO_POD_ADDRS
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("pod-{}", i + 1), a.parse().expect("demo address")))
        .collect();
    let _pods = sluice::demo::DemoPods::start(&pods).context("starting the demo pods")?;
    let mut model = sluice::demo::demo_model();
    model.settings.workers = workers.or(model.settings.workers);
    println!(
        "demo pods: {}",
        pods.iter()
            .map(|(n, a)| format!("{n} on {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("serving workshop/myfrontend on NodePort 30000 — try:  curl 127.0.0.1:30000   (Ctrl-C to stop)");
    serve(model)
}

/// Serve `model` until SIGINT or SIGTERM.
fn serve(model: Model) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let workers = model
        .settings
        .workers
        .unwrap_or_else(|| sluice::dataplane::sys::allowed_cpus().len().max(1));
    let mut registry = StatsRegistry::new(workers);
    let snapshot = RoutingSnapshot::build(&model, 1, &mut registry);
    let publisher = Publisher::new(snapshot);
    let mut node_ports: Vec<_> = model
        .services
        .iter()
        .map(|s| (s.key.protocol, s.node_port))
        .collect();
    node_ports.sort_unstable();
    node_ports.dedup();
    let mut settings = model.settings.clone();
    settings.workers = Some(workers);
    let dataplane = Dataplane::start(&settings, &node_ports, &publisher)?;
    for s in &model.services {
        tracing::info!(
            service = %s.key,
            node_port = %format_args!("{}/{}", s.node_port, s.key.protocol),
            allocated = s.node_port_allocated,
            endpoints = s.endpoints.len(),
            "serving"
        );
    }
    tracing::info!(workers = dataplane.workers(), addresses = ?dataplane.listen_addrs(), "sluice is serving");
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
    dataplane.stop()?;
    Ok(())
}
