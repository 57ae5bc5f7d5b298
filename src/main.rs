//! The `sluice` command line: wiring only. Everything it does lives in the library.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice::control::protocol::{EndpointAction, Request};
use sluice::control::{self, ConfigSource, LogFilterSetter};
use sluice::model::DEFAULT_CONTROL_SOCKET;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::prelude::*;

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
    /// Serve every Service of a config file, of Kubernetes manifests, or of the Kubernetes
    /// API (--kubernetes) on its NodePort.
    Run {
        /// TOML config; with --manifests or --kubernetes: node settings only (no `[[service]]`).
        #[arg(long, short, required_unless_present_any = ["manifests", "kubernetes"])]
        config: Option<PathBuf>,
        #[command(flatten)]
        manifests: ManifestArgs,
        /// Watch Services and EndpointSlices on the Kubernetes API (docs/kubernetes-watch.md).
        #[arg(long, conflicts_with = "manifests")]
        kubernetes: bool,
        /// Watch only this namespace (repeatable; default: cluster-wide).
        #[arg(long = "namespace", value_name = "NAMESPACE", requires = "kubernetes")]
        namespaces: Vec<String>,
        /// kubeconfig file (default: KUBECONFIG, ~/.kube/config, then in-cluster).
        #[arg(long, requires = "kubernetes")]
        kubeconfig: Option<PathBuf>,
        /// Serve only Services labelled service.kubernetes.io/service-proxy-name=NAME
        /// (default: only Services without that label).
        #[arg(long, requires = "kubernetes")]
        proxy_name: Option<String>,
        /// Worker threads (overrides the config; default one per CPU; 1..=1024).
        #[arg(long, value_parser = workers_in_range)]
        workers: Option<usize>,
        /// Kernel interface of the workers (overrides the config's `driver`).
        #[arg(long, value_enum)]
        driver: Option<DriverArg>,
    },
    /// Validate a config file (or manifests) and print what would be served.
    Check {
        #[arg(long, short, required_unless_present = "manifests")]
        config: Option<PathBuf>,
        #[command(flatten)]
        manifests: ManifestArgs,
    },
    /// Print the node's ip/nft commands that Services with forwarding = "transparent" need.
    TproxyRules {
        /// TOML config; with --manifests: node settings only.
        #[arg(long, short, required_unless_present = "manifests")]
        config: Option<PathBuf>,
        #[command(flatten)]
        manifests: ManifestArgs,
    },
    /// Start three local demo pods and serve the seed's `myfrontend` Service on NodePort 30000.
    Demo {
        #[arg(long, value_parser = workers_in_range)]
        workers: Option<usize>,
        #[arg(long, value_enum)]
        driver: Option<DriverArg>,
    },
    /// Talk to a running daemon through its control socket.
    Ctl {
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Human)]
        output: Output,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

/// `--manifests DIR` and what goes with it (docs/kubernetes.md).
#[derive(clap::Args)]
struct ManifestArgs {
    /// Serve the Services of the Kubernetes YAML/JSON files in DIR (Services,
    /// EndpointSlices, Endpoints); reloads re-read it.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// This node's name, for externalTrafficPolicy: Local, with --manifests or
    /// --kubernetes (default: $NODE_NAME).
    #[arg(long)]
    node_name: Option<String>,
}

impl ManifestArgs {
    /// `--node-name`, else `$NODE_NAME` (empty = unset).
    fn node_name(&self) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
    }

    /// The manifest source, when `--manifests` is given.
    fn source(&self, config: &Option<PathBuf>) -> Option<sluice::config::manifests::Manifests> {
        let dir = self.manifests.clone()?;
        let node_name = self.node_name();
        Some(sluice::config::manifests::Manifests {
            dir,
            config: config.clone(),
            options: sluice::config::k8s::K8sOptions {
                node_name,
                proxy_name: None,
            },
        })
    }
}

/// Loads what `check` and `run` validate: the manifests, or the config file. Problems
/// with single objects are printed as warnings when `warn` (the daemon logs its own).
fn load_model(
    config: &Option<PathBuf>,
    manifests: &ManifestArgs,
    warn: bool,
) -> Result<sluice::model::Model, sluice::config::ConfigError> {
    match (manifests.source(config), config) {
        (Some(m), _) => {
            let (model, problems) = m.load(None)?;
            for p in problems.iter().filter(|_| warn) {
                eprintln!("warning: {p}");
            }
            Ok(model)
        }
        (None, Some(path)) => sluice::config::load_file(path, None),
        (None, None) => unreachable!("clap requires --config or --manifests"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Version, uptime, driver, workers, config generation, last reload.
    Status,
    /// One line per Service port.
    Services,
    /// A Service in `kubectl describe service` form: `describe service NAME [-n NAMESPACE]`.
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// Endpoints of every Service, or of one (`[NAMESPACE/]NAME`).
    Endpoints { service: Option<String> },
    /// Counters per Service port and endpoint.
    Stats,
    /// Re-read the configuration file and apply it; exits non-zero when it fails.
    Reload,
    /// Runtime endpoint overrides (kept across reloads while the endpoint exists).
    Endpoint {
        #[command(subcommand)]
        action: EndpointCommand,
    },
    /// Change the log filter (e.g. `debug`, `sluice=trace,info`).
    LogLevel { level: String },
}

#[derive(Subcommand)]
enum DescribeWhat {
    /// `describe service NAME [-n NAMESPACE]`.
    #[command(alias = "svc")]
    Service {
        name: String,
        #[arg(short = 'n', long = "namespace", default_value = "default")]
        namespace: String,
    },
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// No new connections to ADDR; open ones continue.
    Drain { service: String, address: String },
    /// Take ADDR out of service (no new connections; open ones continue).
    Disable { service: String, address: String },
    /// Undo drain/disable.
    Enable { service: String, address: String },
    /// Override ADDR's weight (0..=65535).
    Weight {
        service: String,
        address: String,
        weight: u32,
    },
}

impl CtlCommand {
    fn request(self) -> Request {
        let ep = |action, service, address, weight| Request::Endpoint {
            action,
            service,
            address,
            weight,
        };
        match self {
            CtlCommand::Status => Request::Status,
            CtlCommand::Services => Request::Services,
            CtlCommand::Describe {
                what: DescribeWhat::Service { name, namespace },
            } => Request::Describe {
                service: name,
                namespace: Some(namespace),
            },
            CtlCommand::Endpoints { service } => Request::Endpoints { service },
            CtlCommand::Stats => Request::Stats,
            CtlCommand::Reload => Request::Reload,
            CtlCommand::Endpoint { action } => match action {
                EndpointCommand::Drain { service, address } => {
                    ep(EndpointAction::Drain, service, address, None)
                }
                EndpointCommand::Disable { service, address } => {
                    ep(EndpointAction::Disable, service, address, None)
                }
                EndpointCommand::Enable { service, address } => {
                    ep(EndpointAction::Enable, service, address, None)
                }
                EndpointCommand::Weight {
                    service,
                    address,
                    weight,
                } => ep(EndpointAction::Weight, service, address, Some(weight)),
            },
            CtlCommand::LogLevel { level } => Request::LogLevel { level },
        }
    }
}

/// `--driver` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DriverArg {
    Auto,
    Uring,
    Epoll,
}

impl From<DriverArg> for sluice::model::DriverSetting {
    fn from(d: DriverArg) -> Self {
        match d {
            DriverArg::Auto => Self::Auto,
            DriverArg::Uring => Self::Uring,
            DriverArg::Epoll => Self::Epoll,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Ctl {
        socket,
        output,
        command,
    } = cli.command
    {
        return ExitCode::from(control::client::run(
            &socket,
            output == Output::Json,
            &command.request(),
        ));
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    // The self-loop check (an endpoint that is our own NodePort) needs this node's addresses.
    sluice::config::set_local_addresses(sluice::dataplane::sys::local_addresses);
    let log_filter: LogFilterSetter = Box::new(move |level: &str| {
        let f = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    let result = match cli.command {
        Command::Ctl { .. } => unreachable!("handled above"),
        Command::Check { config, manifests } => match load_model(&config, &manifests, true) {
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
        Command::Run {
            kubernetes: true,
            config,
            manifests,
            namespaces,
            kubeconfig,
            proxy_name,
            workers,
            driver,
        } => {
            let options = sluice::watch::Options {
                kubeconfig,
                namespaces,
                settings_file: config,
                k8s: sluice::config::k8s::K8sOptions {
                    node_name: manifests.node_name(),
                    proxy_name,
                },
                window: Default::default(),
            };
            let source = match sluice::watch::Source::new(options) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            control::run(control::Options {
                config: ConfigSource::Kubernetes(Box::new(source)),
                workers,
                driver: driver.map(Into::into),
                log_filter: Some(log_filter),
            })
            .map_err(Into::into)
        }
        Command::Run {
            config,
            manifests,
            workers,
            driver,
            ..
        } => {
            let source = match manifests.source(&config) {
                Some(m) => ConfigSource::Manifests(m),
                None => ConfigSource::File(config.clone().expect("clap requires --config")),
            };
            let whence = manifests.manifests.as_ref().or(config.as_ref());
            if let (Ok(model), Some(whence)) = (load_model(&config, &manifests, false), whence) {
                if sluice::tproxy::uses_transparent(&model) {
                    if let Err(e) = sluice::tproxy::check_transparent_capability() {
                        eprintln!("{}: {e}", whence.display());
                        return ExitCode::from(1);
                    }
                }
            }
            match control::run(control::Options {
                config: source,
                workers,
                driver: driver.map(Into::into),
                log_filter: Some(log_filter),
            }) {
                Ok(()) => Ok(()),
                Err(control::ControlError::Config(e)) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Demo { workers, driver } => demo(workers, driver, log_filter),
        Command::TproxyRules { config, manifests } => match load_model(&config, &manifests, true) {
            Ok(model) => {
                print!("{}", sluice::tproxy::rules(&model));
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `--workers N` within the bound of the `workers` key.
fn workers_in_range(text: &str) -> Result<usize, String> {
    let range = sluice::config::limits::WORKERS;
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| range.contains(*n))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("must be a number in {}..={}", range.min, range.max))
}

fn demo(
    workers: Option<usize>,
    driver: Option<DriverArg>,
    log_filter: LogFilterSetter,
) -> anyhow::Result<()> {
    let pods: Vec<(String, std::net::SocketAddr)> = sluice::demo::DEMO_POD_ADDRS
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("pod-{}", i + 1), a.parse().expect("demo address")))
        .collect();
    let _pods = sluice::demo::DemoPods::start(&pods).context("starting the demo pods")?;
    let mut model = sluice::demo::demo_model();
    model.settings.workers = workers.or(model.settings.workers);
    if let Some(d) = driver {
        model.settings.driver = d.into();
    }
    println!(
        "demo pods: {}",
        pods.iter()
            .map(|(n, a)| format!("{n} on {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("serving workshop/myfrontend on NodePort 30000 — try:  curl 127.0.0.1:30000   (Ctrl-C to stop)");
    control::run(control::Options {
        config: ConfigSource::Fixed(Box::new(model)),
        workers: None,
        driver: None,
        log_filter: Some(log_filter),
    })?;
    Ok(())
}
