//! Where the configuration comes from: a TOML file, a built-in model, a manifests directory,
//! or a Kubernetes watch. [`ConfigSource`] is the one place that tells them apart: what a
//! (re)load reads ([`read_plan`](ConfigSource::read_plan)), starting and waiting for a watch
//! ([`start`](ConfigSource::start), [`wait_synced`](ConfigSource::wait_synced)), the model
//! of what was read ([`load`](ConfigSource::load), first load and reload alike) and the name
//! `ctl status` shows ([`describe`](ConfigSource::describe)) — one `match` each.
//!
//! An enum with methods rather than a trait like pingora-load-balancing's `ServiceDiscovery`:
//! the set of sources is closed, `main` builds them, and a watch's `start` is async (an
//! `async fn` makes a trait unusable as `dyn`). The built-in model (`Fixed`) plays the part
//! of pingora's `Static` implementation.
//!
//! Reading the files is `source_files`' business (off the control loop); this module does no
//! IO of its own except through the Kubernetes watch.

use super::metrics::SourceMetrics;
use super::source_files::{ReadInput, ReadPlan};
use crate::config::{self, ConfigError};
use crate::model::Model;
use std::path::PathBuf;
use std::time::Instant;

/// Where the configuration comes from.
pub enum ConfigSource {
    /// A TOML file, re-read on each reload.
    File(PathBuf),
    /// A model built in (the demo); reloads are refused.
    Fixed(Box<Model>),
    /// Kubernetes manifests in a directory (`--manifests`), re-read on each reload.
    Manifests(config::manifests::Manifests),
    /// Services and EndpointSlices watched on the Kubernetes API (`--kubernetes`); a change
    /// reloads from the watch's stores, an explicit reload also re-reads the node settings.
    Kubernetes(Box<crate::watch::ClusterWatch>),
}

/// Why a (re)load produced no model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration file or the manifests are invalid (`FILE:LINE:COLUMN: message`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Anything else, whole: a watched source's settings or objects, a reload of the
    /// built-in model, what was read not matching the source.
    #[error("{0}")]
    Other(String),
}

impl ConfigSource {
    /// What a (re)load reads. `reread`: explicit reloads read a watched source's settings
    /// file again (its changes reload from what the watch holds).
    pub(super) fn read_plan(&self, reread: bool) -> ReadPlan {
        match self {
            ConfigSource::File(path) => ReadPlan::File(path.clone()),
            ConfigSource::Fixed(_) => ReadPlan::Nothing,
            ConfigSource::Manifests(m) => ReadPlan::Manifests(m.clone()),
            ConfigSource::Kubernetes(k) => match k.settings_file() {
                Some(path) if reread => ReadPlan::Settings(path.to_path_buf()),
                _ => ReadPlan::Nothing,
            },
        }
    }

    /// Starts what runs beside the daemon (the Kubernetes watch, which calls `on_change` once
    /// per burst of changes); returns its metrics. Nothing for the other sources.
    pub(super) async fn start(
        &mut self,
        on_change: impl FnMut(Instant) + Send + 'static,
    ) -> Result<Option<SourceMetrics>, crate::watch::WatchError> {
        match self {
            ConfigSource::Kubernetes(k) => {
                k.start(on_change).await?;
                Ok(Some(SourceMetrics::new(k.status())))
            }
            ConfigSource::File(_) | ConfigSource::Fixed(_) | ConfigSource::Manifests(_) => Ok(None),
        }
    }

    /// Returns when the source holds everything there is to serve: a watch after its first
    /// full list (READY and the NodePorts wait for it: docs/kubernetes-watch.md, "Startup");
    /// at once for the other sources.
    pub(super) async fn wait_synced(&self) {
        match self {
            ConfigSource::Kubernetes(k) => {
                tracing::info!("waiting for the first list of Services and EndpointSlices");
                k.wait_synced().await;
            }
            ConfigSource::File(_) | ConfigSource::Fixed(_) | ConfigSource::Manifests(_) => {}
        }
    }

    /// The model of what was read (`input`, from [`read_plan`](Self::read_plan)).
    /// `running`: the model serving (none at start), passed on so allocated NodePorts and
    /// other carried state stay. A watched source without new settings loads from what the
    /// watch holds; the built-in model loads once and refuses reloads.
    pub(super) fn load(
        &self,
        input: ReadInput,
        running: Option<&Model>,
    ) -> Result<Model, LoadError> {
        match (self, input) {
            (ConfigSource::File(path), ReadInput::File(text)) => {
                Ok(config::parse(&text, &path.display().to_string(), running)?)
            }
            (ConfigSource::Fixed(m), _) => match running {
                None => Ok((**m).clone()),
                Some(_) => Err(LoadError::Other(
                    "this daemon runs a built-in configuration (demo): nothing to reload".into(),
                )),
            },
            (ConfigSource::Manifests(m), ReadInput::Manifests(files)) => {
                let (model, problems) = m.build(&files, running)?;
                log_problems(&problems);
                Ok(model)
            }
            (ConfigSource::Kubernetes(k), input) => {
                if let ReadInput::Settings(text) = input {
                    k.use_settings_text(&text).map_err(LoadError::Other)?;
                }
                k.load(running, false).map_err(LoadError::Other)
            }
            (_, input) => Err(LoadError::Other(format!(
                "internal error: read {} for another kind of source",
                input.kind()
            ))),
        }
    }

    /// What `ctl status` shows as the configuration: a path, or the watch's server and
    /// scope; `None` for the built-in model.
    pub(super) fn describe(&self) -> Option<String> {
        match self {
            ConfigSource::File(p) => Some(p.display().to_string()),
            ConfigSource::Fixed(_) => None,
            ConfigSource::Manifests(m) => Some(m.dir.display().to_string()),
            ConfigSource::Kubernetes(k) => Some(k.describe()),
        }
    }
}

/// Problems with single Kubernetes objects: logged naming the object; the rest is served.
fn log_problems(problems: &[config::k8s::Problem]) {
    for p in problems {
        tracing::warn!(object = %p.object, "{}", p.message);
    }
}
