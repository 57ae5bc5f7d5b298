//! Kubernetes objects → [`Model`]: the one conversion shared by manifest files
//! (`--manifests`) and the API watch (`--kubernetes`), so both give the same model for the
//! same objects.
//!
//! STUB: the interface is fixed here; the conversion is being written (issue #7).

use crate::model::{Model, Settings};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::sync::Arc;

/// The objects a model is built from. `Arc`s, so a watch's stores can lend theirs
/// without copying.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Legacy `v1/Endpoints`, used for a Service only when no EndpointSlice names it.
    pub endpoints: Vec<Arc<Endpoints>>,
}

/// How this node reads the objects.
#[derive(Debug, Clone, Default)]
pub struct K8sOptions {
    /// This node's name (`--node-name`, `NODE_NAME`): endpoints whose `nodeName` is this
    /// are local (externalTrafficPolicy: Local).
    pub node_name: Option<String>,
    /// The `service.kubernetes.io/service-proxy-name` value this instance serves; Services
    /// labelled with another value (or any value, when `None`) are skipped.
    pub proxy_name: Option<String>,
}

/// Something wrong with one object: logged (and reported) naming it; the rest is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Service workshop/myfrontend`, `EndpointSlice workshop/myfrontend-abc12`, …
    pub object: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// Builds the model for `objects` with `settings`. `previous` (the model serving now)
/// keeps allocated NodePorts and the last good value of a Service's invalid annotation.
/// Never fails as a whole: an object that cannot be served is skipped with a [`Problem`].
pub fn build_model(
    settings: Settings,
    objects: &Objects,
    options: &K8sOptions,
    previous: Option<&Model>,
) -> (Model, Vec<Problem>) {
    let _ = (objects, options, previous);
    (
        Model {
            settings,
            services: Vec::new(),
        },
        Vec::new(),
    )
}
