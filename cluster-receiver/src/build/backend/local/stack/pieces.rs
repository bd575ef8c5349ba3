//! Small pieces of pod specs and objects that the plan reads: ports,
//! selectors, a Secret's bytes, prefixed `envFrom`, the canonical text
//! that hashes.

use crate::build::backend::stack::StackObject;
use base64::Engine as _;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Whether `labels` has every `selector` pair (an empty selector selects
/// nothing, as a Service without one routes to no pod).
pub(crate) fn selects(selector: &Map<String, Value>, labels: &Map<String, Value>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The number of a container port named `name` in `spec`.
pub(crate) fn named_port(spec: &Value, name: &str) -> Option<u16> {
    containers(spec)
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
        .and_then(|n| u16::try_from(n).ok())
}

/// The regular and init containers of a pod spec.
pub(crate) fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|k| spec.get(k).and_then(Value::as_array))
        .flatten()
}

/// A Service's `targetPort` in a pod: a number, a port name, or its `port`.
pub(crate) fn target_port(port: &Value, spec: &Value) -> Option<u16> {
    match port.get("targetPort") {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Some(Value::String(s)) => s.parse().ok().or_else(|| named_port(spec, s)),
        _ => port
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok()),
    }
}

/// `obj`'s `.data` (base64) and `.stringData` (plain) as key → bytes.
pub(crate) fn secret_bytes(obj: &StackObject) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = BTreeMap::new();
    if let Some(m) = obj.body.get("data").and_then(Value::as_object) {
        for (k, v) in m {
            let s: String = v
                .as_str()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            out.insert(k.clone(), b64.decode(s).unwrap_or_default());
        }
    }
    if let Some(m) = obj.body.get("stringData").and_then(Value::as_object) {
        for (k, v) in m {
            out.insert(k.clone(), v.as_str().unwrap_or("").as_bytes().to_vec());
        }
    }
    out
}

/// The value with its object keys sorted, as text: what hashes.
pub(crate) fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

pub(crate) fn hash(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    h.finalize().to_hex()[..32].to_owned()
}

/// podman 4.3 ignores an `envFrom` entry's `prefix`: such an entry
/// becomes one `env` entry per key (before the container's own, which
/// win as they do over `envFrom` in Kubernetes).
pub(crate) fn expand_prefixed(
    c: &mut Map<String, Value>,
    configmaps: &BTreeMap<&str, &StackObject>,
    secrets: &BTreeMap<&str, &StackObject>,
) {
    let Some(from) = c.get("envFrom").and_then(Value::as_array).cloned() else {
        return;
    };
    let mut keep = Vec::new();
    let mut env = Vec::new();
    for e in from {
        let p = e.get("prefix").and_then(Value::as_str).unwrap_or("");
        let keys = |obj: &StackObject, secret: bool| -> Vec<String> {
            if secret {
                secret_bytes(obj).into_keys().collect()
            } else {
                ["data", "binaryData"]
                    .iter()
                    .filter_map(|k| obj.body.get(k).and_then(Value::as_object))
                    .flat_map(|m| m.keys().cloned())
                    .collect()
            }
        };
        let found = [
            ("configMapRef", "configMapKeyRef", false),
            ("secretRef", "secretKeyRef", true),
        ]
        .into_iter()
        .find_map(|(from, by_key, secret)| {
            let name = e.pointer(&format!("/{from}/name"))?.as_str()?;
            let obj = if secret {
                secrets.get(name)
            } else {
                configmaps.get(name)
            }?;
            Some((name.to_owned(), by_key, keys(obj, secret)))
        });
        match found {
            Some((name, by_key, keys)) if !p.is_empty() => {
                for k in keys {
                    env.push(json!({"name": format!("{p}{k}"), "valueFrom": {by_key: {"name": name, "key": k}}}));
                }
            }
            _ => keep.push(e),
        }
    }
    if env.is_empty() {
        return;
    }
    if let Some(own) = c.get("env").and_then(Value::as_array) {
        env.extend(own.iter().cloned());
    }
    c.insert("env".into(), Value::Array(env));
    if keep.is_empty() {
        c.remove("envFrom");
    } else {
        c.insert("envFrom".into(), Value::Array(keep));
    }
}

/// The files of a secret volume: every key, or the `items` asked for.
pub(crate) fn secret_files(obj: &StackObject, src: &Value) -> Vec<(String, Vec<u8>, u32)> {
    let data = secret_bytes(obj);
    let default_mode = src
        .get("defaultMode")
        .and_then(Value::as_u64)
        .map_or(0o644, |m| m as u32 & 0o777);
    match src.get("items").and_then(Value::as_array) {
        Some(items) => items
            .iter()
            .filter_map(|it| {
                let key = it.get("key")?.as_str()?;
                let path = it.get("path").and_then(Value::as_str).unwrap_or(key);
                let mode = it
                    .get("mode")
                    .and_then(Value::as_u64)
                    .map_or(default_mode, |m| m as u32 & 0o777);
                Some((path.to_owned(), data.get(key)?.clone(), mode))
            })
            .collect(),
        None => data
            .into_iter()
            .map(|(k, v)| (k, v, default_mode))
            .collect(),
    }
}
