//! The `sluice` command line: wiring only. Everything it does lives in the library.
//!
//! Past ~600 lines on purpose: it is clap's declaration of every command and flag (their
//! help text is the man pages') followed by one short function per command; splitting it
//! would scatter the command-line reference a reader looks for in one place.

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use sluice::control::protocol::{EndpointAction, Request};
use sluice::control::{self, ConfigSource, LogFilterSetter};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A user-space load balancer for Kubernetes NodePort traffic",
    long_about = "A user-space load balancer for Kubernetes NodePort traffic: serves the \
                  NodePorts of Services from a TOML file (--config), Kubernetes manifests \
                  (--manifests) or the Kubernetes API (--kubernetes). Documentation: \
                  /usr/share/doc/sluice/ (docs/ in the source)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every Service of a config file, of Kubernetes manifests, or of the Kubernetes
    /// API (--kubernetes) on its NodePort.
    Run(RunArgs),
    /// Check what `run` would be given, without serving: the same arguments as `run`; prints
    /// what would be served (or FILE:LINE:COL: error) and warns about missing capabilities.
    Check(RunArgs),
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
        /// Worker threads (default: one per CPU; 1..=1024).
        #[arg(long, value_parser = workers_in_range)]
        workers: Option<usize>,
        /// Kernel interface of the workers.
        #[arg(long, value_enum)]
        driver: Option<DriverArg>,
        /// Control socket to serve (default: the one `sluice ctl` finds by itself:
        /// /run/sluice/control.sock for root, $XDG_RUNTIME_DIR/sluice/control.sock otherwise).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Talk to a running daemon through its control socket.
    Ctl {
        /// The daemon's control socket (default: $XDG_RUNTIME_DIR/sluice/control.sock for a
        /// user other than root when it exists, else /run/sluice/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// How long to wait for the daemon's answer (connect, send, answer), e.g. `30s`
        /// (default: 10s; 120s for `upgrade`).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Human)]
        output: Output,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Print a shell completion script (e.g. `sluice completions bash >
    /// /usr/share/bash-completion/completions/sluice`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (sluice.1, sluice-run.1, sluice-ctl-status.1, …) into DIR.
    Man {
        /// Directory to write the pages into (created when missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// What `run` is given (and `check` checks).
#[derive(clap::Args)]
struct RunArgs {
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
    #[command(flatten)]
    log: LogArgs,
}

/// How the daemon logs (stderr).
#[derive(clap::Args)]
struct LogArgs {
    /// Log filter (tracing's EnvFilter syntax: `info`, `debug`, `sluice=debug,warn`);
    /// RUST_LOG wins when set. `sluice ctl log-level` changes it at run time.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    log_level: String,
    /// Log line format: `text` (key=value, values with spaces quoted) or `json` (one object
    /// per line). Under journald (JOURNAL_STREAM) lines carry no timestamp.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
}

impl LogArgs {
    fn init(&self) -> LogFilterSetter {
        let format = match self.log_format {
            LogFormatArg::Text => sluice::logging::LogFormat::Text,
            LogFormatArg::Json => sluice::logging::LogFormat::Json,
        };
        sluice::logging::init(format, &self.log_level)
    }
}

/// `--log-format` values.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
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
    /// This node's zone (topology.kubernetes.io/zone), for EndpointSlice topology hints,
    /// with --manifests (a Node object named --node-name in DIR wins; with --kubernetes the
    /// zone comes from this node's Node object).
    #[arg(long)]
    zone: Option<String>,
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
                zone: self.zone.clone().filter(|z| !z.is_empty()),
                primary_ips: Vec::new(),
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
    /// Endpoints of every Service, or of one: state, weight, conditions, locality, health.
    Endpoints {
        /// Only this Service: `[NAMESPACE/]NAME` (default namespace `default`).
        #[arg(value_name = "SERVICE")]
        service: Option<String>,
    },
    /// Counters per Service port and endpoint.
    Stats,
    /// Re-read the configuration and apply it; prints what changed, exits non-zero when it
    /// fails (the running configuration keeps serving).
    Reload,
    /// Runtime endpoint overrides (kept across reloads while the endpoint exists).
    Endpoint {
        #[command(subcommand)]
        action: EndpointCommand,
    },
    /// The live UDP flows and TCP connections (like `conntrack -L`): client, node address,
    /// endpoint, age, idle, bytes and datagrams each way, worker; the first LIMIT with the
    /// count of all.
    Flows {
        /// Only this Service: `[NAMESPACE/]NAME[:PORT_NAME]`.
        #[arg(value_name = "SERVICE")]
        service: Option<String>,
        /// List at most this many (1..=100000; the total is counted anyway).
        #[arg(long, value_name = "N", default_value_t = sluice::control::protocol::FLOWS_DEFAULT_LIMIT)]
        limit: usize,
    },
    /// Change the log filter (e.g. `debug`, `sluice=trace,info`).
    LogLevel {
        /// The new filter, in tracing's EnvFilter syntax.
        #[arg(value_name = "FILTER")]
        level: String,
    },
    /// Replace the running daemon by a new process without refusing or cutting a
    /// connection: it starts the binary, hands it the listening sockets, and drains once
    /// the new one serves. Exits non-zero, with the new process's error, when that one
    /// fails (the running daemon serves on). Also SIGUSR2.
    Upgrade {
        /// The new binary (default: the path the daemon was started from, read again from
        /// disk). A relative path is made absolute here; the daemon must see the same file
        /// (not under its PrivateTmp), owned by root or its user, writable by no one else.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// How long the new process may take from its start to "ready" (loading the
        /// configuration, the first list of the API, starting workers), e.g. `20s`
        /// (1s..=600s; default 60s). Past it the upgrade is rolled back.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        ready_timeout: Option<std::time::Duration>,
    },
}

#[derive(Subcommand)]
enum DescribeWhat {
    /// `describe service NAME [-n NAMESPACE]`.
    #[command(alias = "svc")]
    Service {
        /// The Service's name.
        name: String,
        /// The Service's namespace.
        #[arg(short = 'n', long = "namespace", default_value = "default")]
        namespace: String,
    },
}

/// The endpoint an override names.
#[derive(clap::Args)]
struct EndpointTarget {
    /// The Service: `[NAMESPACE/]NAME[:PORT_NAME]` (without PORT_NAME: every port).
    #[arg(value_name = "SERVICE")]
    service: String,
    /// The endpoint: `IP:PORT`, or `IP` for every port of that address.
    #[arg(value_name = "ADDR")]
    address: String,
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// No new connections to ADDR; open ones continue.
    Drain(EndpointTarget),
    /// Take ADDR out of service (no new connections; open ones continue; counted down for
    /// health).
    Disable(EndpointTarget),
    /// Undo drain/disable.
    Enable(EndpointTarget),
    /// Override ADDR's weight.
    Weight {
        #[command(flatten)]
        target: EndpointTarget,
        /// The weight, 0..=65535 (0: no new connections).
        weight: u32,
    },
}

impl CtlCommand {
    fn request(self) -> Request {
        let ep = |action, t: EndpointTarget, weight| Request::Endpoint {
            action,
            service: t.service,
            address: t.address,
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
                EndpointCommand::Drain(t) => ep(EndpointAction::Drain, t, None),
                EndpointCommand::Disable(t) => ep(EndpointAction::Disable, t, None),
                EndpointCommand::Enable(t) => ep(EndpointAction::Enable, t, None),
                EndpointCommand::Weight { target, weight } => {
                    ep(EndpointAction::Weight, target, Some(weight))
                }
            },
            CtlCommand::LogLevel { level } => Request::LogLevel { level },
            CtlCommand::Upgrade {
                binary,
                ready_timeout,
            } => Request::Upgrade {
                binary: binary.map(|b| {
                    std::path::absolute(&b)
                        .unwrap_or(b)
                        .to_string_lossy()
                        .into_owned()
                }),
                ready_timeout_seconds: ready_timeout
                    .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            },
            CtlCommand::Flows { service, limit } => Request::Flows {
                service,
                limit: Some(limit),
            },
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
    // Before anything else: the path this binary was started from, while it is surely the
    // file running (a package upgrade may replace it later; `ctl upgrade` runs it again).
    let _ = sluice::handover::StartedAs::remember();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run(_) | Command::Demo { .. }) {
        // Until the control plane handles SIGHUP ("reload"), its default action would end
        // the process: a reload asked for during start-up must not.
        if let Err(e) = sluice::dataplane::ignore_hangup() {
            eprintln!("sluice: cannot ignore SIGHUP during start-up: {e}");
        }
    }
    // The self-loop check (an endpoint that is our own NodePort) needs this node's addresses.
    sluice::config::set_local_addresses(|| control::node::addresses().unwrap_or_default());
    let result = match cli.command {
        Command::Ctl {
            socket,
            timeout,
            output,
            command,
        } => {
            let socket = socket.unwrap_or_else(control::client::default_socket);
            let request = command.request();
            let timeout = timeout.unwrap_or(match request {
                sluice::control::protocol::Request::Upgrade { .. } => {
                    control::client::UPGRADE_TIMEOUT
                }
                _ => control::client::DEFAULT_TIMEOUT,
            });
            return ExitCode::from(control::client::run(
                &socket,
                output == Output::Json,
                &request,
                timeout,
            ));
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "sluice", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => man_pages(&dir),
        Command::Check(args) => return check(args),
        Command::Run(args) => return run(args),
        Command::Demo {
            workers,
            driver,
            socket,
            log,
        } => demo(workers, driver, socket, starting(log.init())),
        Command::TproxyRules { config, manifests } => {
            let _ = sluice::logging::init(sluice::logging::LogFormat::Text, "info");
            match load_model(&config, &manifests, true) {
                Ok(model) => {
                    print!("{}", sluice::tproxy::rules(&model));
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// `sluice check`: what `sluice run` with the same arguments would load, without serving.
fn check(args: RunArgs) -> ExitCode {
    // Loading manifests logs what it skips (like `run`).
    let _ = args.log.init();
    if args.kubernetes {
        if let Some(refused) = zone_with_kubernetes(&args) {
            return refused;
        }
        return check_kubernetes(args);
    }
    match load_model(&args.config, &args.manifests, true) {
        Ok(model) => {
            print!("{}", sluice::config::render_check(&model));
            if sluice::tproxy::uses_transparent(&model) {
                if let Err(e) = sluice::tproxy::check_transparent_capability() {
                    eprintln!("warning: {e}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `sluice check --kubernetes`: the node settings file and the kubeconfig; the Services
/// come from the API, which is not contacted. Local Services forward transparently by
/// default, so a missing CAP_NET_ADMIN is a warning naming it.
fn check_kubernetes(args: RunArgs) -> ExitCode {
    let options = watch_options(&args);
    let kubeconfig = options.kubeconfig.clone();
    let node_name = options.k8s.node_name.clone();
    let source = match sluice::watch::ClusterWatch::new(options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Some(path) = &kubeconfig {
        if let Err(e) = sluice::watch::check_kubeconfig(path) {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    }
    let model = sluice::model::Model {
        settings: source.settings(),
        services: Vec::new(),
        primary_ips: Vec::new(),
    };
    let summary = sluice::config::render_check(&model);
    // The settings lines; the Services come from the API.
    for line in summary.lines().skip(1).take(2) {
        println!("{line}");
    }
    println!(
        "services: from the Kubernetes API {}, node {}",
        source
            .describe()
            .trim_start_matches("kubernetes ")
            .to_owned(),
        node_name
            .as_deref()
            .unwrap_or("(none: no endpoint is local)")
    );
    if node_name.is_none() {
        eprintln!(
            "warning: no node name (--node-name or NODE_NAME): Services with \
             externalTrafficPolicy: Local will have no local endpoint on this node"
        );
    }
    if let Err(e) = sluice::tproxy::check_transparent_capability() {
        eprintln!(
            "warning: Services with externalTrafficPolicy: Local forward transparently unless \
             annotated sluice.io/forwarding: {e}"
        );
    }
    ExitCode::SUCCESS
}

/// `--zone` with `--kubernetes` is refused: the zone is read from this node's Node object.
fn zone_with_kubernetes(args: &RunArgs) -> Option<ExitCode> {
    (args.kubernetes && args.manifests.zone.is_some()).then(|| {
        eprintln!(
            "--zone applies to --manifests: with --kubernetes the zone is read from this \
             node's Node object (label topology.kubernetes.io/zone)"
        );
        ExitCode::from(2)
    })
}

fn watch_options(args: &RunArgs) -> sluice::watch::Options {
    sluice::watch::Options {
        kubeconfig: args.kubeconfig.clone(),
        namespaces: args.namespaces.clone(),
        settings_file: args.config.clone(),
        k8s: sluice::config::k8s::K8sOptions {
            node_name: args.manifests.node_name(),
            proxy_name: args.proxy_name.clone(),
            zone: None,
            primary_ips: Vec::new(),
        },
        window: Default::default(),
    }
}

/// `sluice run`.
fn run(args: RunArgs) -> ExitCode {
    let log_filter = starting(args.log.init());
    if let Some(refused) = zone_with_kubernetes(&args) {
        return refused;
    }
    // Sockets and state from the sluice that started this one (`ctl upgrade`), or from
    // systemd's fd store; an error here was told to the old process, which serves on.
    let inherit = match sluice::handover::inherit::from_env(sluice::dataplane::adopt_inherited_fd) {
        Ok(start) => start,
        Err(e) => {
            eprintln!("sluice: cannot take over: {e}");
            return ExitCode::from(1);
        }
    };
    let result: anyhow::Result<()> = if args.kubernetes {
        let source = match sluice::watch::ClusterWatch::new(watch_options(&args)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        control::run(control::Options {
            config: ConfigSource::Kubernetes(Box::new(source)),
            workers: args.workers,
            driver: args.driver.map(Into::into),
            log_filter: Some(log_filter),
            on_ready: None,
            inherit,
        })
        .map_err(Into::into)
    } else {
        let RunArgs {
            config,
            manifests,
            workers,
            driver,
            ..
        } = args;
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
            on_ready: None,
            inherit,
        }) {
            Ok(()) => Ok(()),
            Err(control::ControlError::Config(e)) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
            Err(e) => Err(e.into()),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// `sluice man DIR`: one page per command and subcommand (`sluice-ctl-status.1`).
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(())
}

/// The first log line of `run` and `demo` (from here on SIGHUP is ignored until the control
/// plane handles it); passes the log filter setter through.
fn starting(log_filter: LogFilterSetter) -> LogFilterSetter {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        "sluice starting"
    );
    log_filter
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
    socket: Option<PathBuf>,
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
    model.settings.control.socket = socket;
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
        inherit: sluice::handover::Start::Fresh,
        log_filter: Some(log_filter),
        on_ready: Some(Box::new(|socket| {
            let Some(socket) = socket else { return };
            let ctl = if socket == control::client::default_socket() {
                "sluice ctl".to_owned()
            } else {
                format!("sluice ctl --socket {}", socket.display())
            };
            println!("inspect it with:  {ctl} services   (or: status, endpoints, stats)");
        })),
    })?;
    Ok(())
}

/// An error and its causes, each said once: a cause whose text its error already includes
/// (thiserror's `"...: {source}"` with `#[source]`) is not repeated, as `{:#}` would.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut said = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !said.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        said = text;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and subcommand, with its path (`sluice ctl endpoint drain`).
    fn commands() -> Vec<(String, clap::Command)> {
        fn walk(path: String, cmd: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
            for sub in cmd.get_subcommands() {
                walk(format!("{path} {}", sub.get_name()), sub, out);
            }
            out.push((path, cmd.clone()));
        }
        let mut root = Cli::command();
        root.build();
        let mut out = Vec::new();
        walk("sluice".into(), &root, &mut out);
        out
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// `--help`, the man pages and the completions show a line for every flag and argument.
    #[test]
    fn every_command_flag_and_argument_has_help_text() {
        let mut missing = Vec::new();
        for (path, cmd) in commands() {
            if path != "sluice" && cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    /// No flag is global: each is defined (and shown in `--help`) only where it applies, so
    /// `sluice ctl status --help` does not list the daemon's logging flags.
    #[test]
    fn no_flag_is_repeated_on_every_subcommand() {
        for (path, cmd) in commands() {
            for arg in cmd.get_arguments() {
                assert!(!arg.is_global_set(), "{path}: --{} is global", arg.get_id());
            }
        }
        let ctl_status = commands()
            .into_iter()
            .find(|(p, _)| p == "sluice ctl status")
            .expect("ctl status")
            .1;
        let flags: Vec<String> = ctl_status
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        assert_eq!(flags, ["help"], "ctl status takes no flags of its own");
    }

    /// `check` takes exactly what `run` takes, so a unit's (or a DaemonSet's) `run` line can
    /// be checked as it is.
    #[test]
    fn check_takes_the_arguments_of_run() {
        let args = |name: &str| -> Vec<String> {
            let cmd = Cli::command();
            let sub = cmd.find_subcommand(name).expect(name);
            sub.get_arguments()
                .map(|a| a.get_id().to_string())
                .collect()
        };
        assert_eq!(args("run"), args("check"));
        Cli::try_parse_from([
            "sluice",
            "check",
            "--kubernetes",
            "--config",
            "/etc/sluice/sluice.toml",
            "--log-format",
            "json",
        ])
        .map(|_| ())
        .expect("the DaemonSet's arguments parse for check");
    }
}
