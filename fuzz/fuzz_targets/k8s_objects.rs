//! Kubernetes objects → model, as the API watch and the manifests give them: a JSON array
//! (or `kind: List`) of Services, EndpointSlices and Endpoints. Whatever the objects say, the
//! conversion never panics and never fails as a whole; every Service port it keeps has a
//! NodePort in the range, no endpoint twice and fewer endpoints than Maglev slots; and
//! converting the same objects again as a reload (the model as `previous`) gives the same
//! model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sluice::config::k8s::{build_model, K8sOptions, Objects};
use sluice::model::{ListenAddresses, Settings};
use std::collections::HashSet;
use std::sync::Arc;

fn objects(v: Value, out: &mut Objects, depth: usize) {
    let items = match v {
        Value::Array(items) => items,
        other => vec![other],
    };
    for item in items {
        match item.get("kind").and_then(Value::as_str) {
            Some("List") if depth < 4 => {
                if let Some(inner) = item.get("items").cloned() {
                    objects(inner, out, depth + 1);
                }
            }
            Some("Service") => {
                if let Ok(s) = serde_json::from_value(item) {
                    out.services.push(Arc::new(s));
                }
            }
            Some("EndpointSlice") => {
                if let Ok(s) = serde_json::from_value(item) {
                    out.slices.push(Arc::new(s));
                }
            }
            Some("Endpoints") => {
                if let Ok(e) = serde_json::from_value(item) {
                    out.endpoints.push(Arc::new(e));
                }
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the node: its name, and where sluice listens.
    let Some((&node, json)) = data.split_first() else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    let mut objs = Objects::default();
    objects(value, &mut objs, 0);
    let mut settings = Settings::default();
    if node & 1 == 1 {
        settings.listen = ListenAddresses::Only(vec!["127.0.0.1".parse().unwrap()]);
    }
    let options = K8sOptions {
        node_name: (node & 2 == 2).then(|| "ip-192-168-22-88.eu-west-1.compute.internal".into()),
        proxy_name: None,
        zone: (node & 4 == 4).then(|| "eu-west-1a".into()),
        primary_ips: Vec::new(),
    };
    let (model, _problems) = build_model(settings.clone(), &objs, &options, None);
    let mut keys = HashSet::new();
    for p in &model.services {
        assert!(keys.insert(&p.key), "{} twice", p.key);
        // A nodePort the Service gives is served even outside the range (the API server
        // judged it against its own --service-node-port-range: docs/kubernetes.md); one
        // sluice allocated lies inside.
        // NodePort 0: reached only at its external or LoadBalancer IPs.
        assert!(
            p.node_port != 0 || !p.addresses.is_empty(),
            "{}: nodePort 0 and no address of its own",
            p.key
        );
        if p.node_port_allocated {
            assert!(settings.node_port_range.contains(p.node_port), "{}", p.node_port);
        }
        let addrs: HashSet<_> = p.endpoints.iter().map(|e| e.addr).collect();
        assert_eq!(addrs.len(), p.endpoints.len(), "{}: an endpoint twice", p.key);
        assert!(p.endpoints.len() < p.maglev_table_size as usize);
    }
    let (again, _) = build_model(settings, &objs, &options, Some(&model));
    assert_eq!(again, model, "a reload of the same objects changed the model");
});
