//! The gateway with its listener served by file-based LDS, so that a new plugin configuration can be
//! pushed to a running Envoy (config reload), as a control plane (istiod, Kuma CP) would.
//!
//! [`split_bootstrap`] takes a gateway bootstrap (`envoy/gateway.yaml` or a variant) and writes, in the
//! run directory,
//!
//! * `lds/listeners.yaml` ([`LISTENERS_IN_RUN_DIR`]): a `DiscoveryResponse` whose `resources` are the
//!   bootstrap's `static_resources.listeners` (each with `"@type": type.googleapis.com/envoy.config.listener.v3.Listener`);
//! * `gateway-lds.json` ([`BOOTSTRAP_IN_RUN_DIR`]): the bootstrap without them, plus
//!   `dynamic_resources: { lds_config: { path_config_source: { path: lds/listeners.yaml,
//!   watched_directory: { path: lds } }, resource_api_version: V3 } }`. Clusters stay static.
//!
//! The YAML bootstrap is converted to JSON once, with Python's PyYAML (the `.venv` that provides Envoy
//! has it); everything else is `serde_json`. Both files are JSON (a JSON document is YAML too).
//!
//! Like SDS ([`crate::sds`]), Envoy reloads the resource when a file is *moved into* `lds/`: every write
//! here is atomic (temporary file in the same directory, then rename). Writing the file in place is not
//! picked up (no move event). An update whose plugin configuration the filter refuses is rejected as a
//! whole (`listener_manager.lds.update_rejected`) and the previous listener keeps serving.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{err, repo_root, Result};

/// Run-directory relative directory of the LDS resource file (the watched directory).
pub const LDS_DIR_IN_RUN_DIR: &str = "lds";
/// Run-directory relative LDS resource file.
pub const LISTENERS_IN_RUN_DIR: &str = "lds/listeners.yaml";
/// Run-directory relative bootstrap written by [`split_bootstrap`].
pub const BOOTSTRAP_IN_RUN_DIR: &str = "gateway-lds.json";
/// Type URL of a listener resource.
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// Python with PyYAML: `$PYTHON`, else `<repo>/.venv/bin/python`, else `python3` on `PATH`.
pub fn python_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// A YAML file (one document) as JSON, through PyYAML's `safe_load`.
pub fn yaml_file_to_json(path: &Path) -> Result<Value> {
    let out = Command::new(python_bin())
        .arg("-c")
        .arg("import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| err(format!("running {} (PyYAML): {e}", python_bin().display())))?;
    if !out.status.success() {
        return Err(err(format!(
            "converting {} to JSON with {} failed: {}",
            path.display(),
            python_bin().display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A bootstrap (JSON) split into the bootstrap with `dynamic_resources.lds_config` (file-based,
/// [`LISTENERS_IN_RUN_DIR`] in the watched directory [`LDS_DIR_IN_RUN_DIR`]) and its static listeners
/// (each with its `"@type"`).
pub fn split(mut bootstrap: Value) -> Result<(Value, Vec<Value>)> {
    let listeners = bootstrap
        .get_mut("static_resources")
        .and_then(Value::as_object_mut)
        .and_then(|s| s.remove("listeners"))
        .ok_or_else(|| err("the bootstrap has no static_resources.listeners"))?;
    let Value::Array(mut listeners) = listeners else {
        return Err(err("static_resources.listeners is not a list"));
    };
    if listeners.is_empty() {
        return Err(err("static_resources.listeners is empty"));
    }
    for l in &mut listeners {
        let obj = l.as_object_mut().ok_or_else(|| err("a listener is not an object"))?;
        obj.insert("@type".into(), Value::from(LISTENER_TYPE));
    }
    let root = bootstrap.as_object_mut().ok_or_else(|| err("the bootstrap is not an object"))?;
    if root.contains_key("dynamic_resources") {
        return Err(err("the bootstrap already has dynamic_resources"));
    }
    root.insert(
        "dynamic_resources".into(),
        serde_json::json!({
            "lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": LISTENERS_IN_RUN_DIR,
                    "watched_directory": { "path": LDS_DIR_IN_RUN_DIR }
                }
            }
        }),
    );
    Ok((bootstrap, listeners))
}

/// The LDS resource file content for `listeners` (a `DiscoveryResponse`, JSON).
pub fn listeners_resource(listeners: &[Value]) -> Result<String> {
    let mut text = serde_json::to_string_pretty(&serde_json::json!({ "resources": listeners }))?;
    text.push('\n');
    Ok(text)
}

/// Write the LDS resource file in `lds_dir` atomically (temporary file in the same directory, then
/// rename): Envoy applies it on the rename. Returns the file's path.
pub fn write_listeners(lds_dir: &Path, listeners: &[Value]) -> Result<PathBuf> {
    let target = lds_dir.join("listeners.yaml");
    let tmp = lds_dir.join(".listeners.yaml.tmp");
    fs::create_dir_all(lds_dir)?;
    fs::write(&tmp, listeners_resource(listeners)?).map_err(|e| err(format!("writing {}: {e}", tmp.display())))?;
    fs::rename(&tmp, &target).map_err(|e| err(format!("renaming {} to {}: {e}", tmp.display(), target.display())))?;
    Ok(target)
}

/// The listeners of the LDS resource file in `lds_dir`.
pub fn read_listeners(lds_dir: &Path) -> Result<Vec<Value>> {
    let path = lds_dir.join("listeners.yaml");
    let text = fs::read_to_string(&path).map_err(|e| err(format!("reading {}: {e}", path.display())))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| err(format!("{} is not JSON: {e}", path.display())))?;
    match doc.get("resources") {
        Some(Value::Array(l)) => Ok(l.clone()),
        _ => Err(err(format!("{} has no resources list", path.display()))),
    }
}

/// Whether `obj` is a wasm filter's `typed_config` with a `StringValue` plugin configuration.
fn is_wasm_with_string_config(obj: &serde_json::Map<String, Value>) -> bool {
    obj.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE)
        && obj.get("config").and_then(|c| c.get("configuration")).and_then(|c| c.get("@type")).and_then(Value::as_str)
            == Some(STRING_VALUE_TYPE)
}

/// How many wasm filters with a `StringValue` configuration `v` holds.
fn count_plugin_configurations(v: &Value) -> usize {
    match v {
        Value::Object(obj) if is_wasm_with_string_config(obj) => 1,
        Value::Object(obj) => obj.values().map(count_plugin_configurations).sum(),
        Value::Array(items) => items.iter().map(count_plugin_configurations).sum(),
        _ => 0,
    }
}

/// The first wasm filter `configuration` (`StringValue`) in `v`.
fn find_plugin_configuration(v: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    if v.as_object().is_some_and(is_wasm_with_string_config) {
        return v.get_mut("config").and_then(|c| c.get_mut("configuration")).and_then(Value::as_object_mut);
    }
    match v {
        Value::Object(obj) => obj.values_mut().find_map(find_plugin_configuration),
        Value::Array(items) => items.iter_mut().find_map(find_plugin_configuration),
        _ => None,
    }
}

/// The one wasm filter `configuration` (`StringValue`) of `listeners`.
fn the_plugin_configuration(listeners: &mut [Value]) -> Result<&mut serde_json::Map<String, Value>> {
    let count: usize = listeners.iter().map(count_plugin_configurations).sum();
    if count != 1 {
        return Err(err(format!(
            "the listeners must hold exactly one wasm filter with a StringValue configuration, found {count}"
        )));
    }
    listeners
        .iter_mut()
        .find_map(find_plugin_configuration)
        .ok_or_else(|| err("no wasm filter configuration in the listeners"))
}

/// The plugin configuration (JSON text) of `listeners`.
pub fn plugin_config(listeners: &[Value]) -> Result<String> {
    let mut copy = listeners.to_vec();
    let c = the_plugin_configuration(&mut copy)?;
    c.get("value")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| err("the plugin configuration has no string value"))
}

/// Replace the plugin configuration of `listeners` by `plugin_json` (taken verbatim: it may be
/// something the filter refuses, but must be JSON).
pub fn set_plugin_config(listeners: &mut [Value], plugin_json: &str) -> Result<()> {
    serde_json::from_str::<Value>(plugin_json)
        .map_err(|e| err(format!("the plugin configuration is not JSON: {e}")))?;
    let c = the_plugin_configuration(listeners)?;
    c.insert("value".into(), Value::from(plugin_json));
    Ok(())
}

/// Push a new plugin configuration: the LDS resource file in `lds_dir` with only the plugin
/// configuration replaced, written atomically ([`write_listeners`]).
pub fn push_plugin_config(lds_dir: &Path, plugin_json: &str) -> Result<PathBuf> {
    let mut listeners = read_listeners(lds_dir)?;
    set_plugin_config(&mut listeners, plugin_json)?;
    write_listeners(lds_dir, &listeners)
}

/// Split the bootstrap at `gateway_config` (YAML or JSON) for `run_dir`: a fresh `<run>/lds/` with the
/// listeners ([`LISTENERS_IN_RUN_DIR`]) and the LDS bootstrap [`BOOTSTRAP_IN_RUN_DIR`]. Returns the
/// bootstrap's path.
pub fn split_bootstrap(gateway_config: &Path, run_dir: &Path) -> Result<PathBuf> {
    let bootstrap = yaml_file_to_json(gateway_config)?;
    let (bootstrap, listeners) = split(bootstrap)?;
    let lds_dir = run_dir.join(LDS_DIR_IN_RUN_DIR);
    if lds_dir.exists() {
        fs::remove_dir_all(&lds_dir)?;
    }
    write_listeners(&lds_dir, &listeners)?;
    let path = run_dir.join(BOOTSTRAP_IN_RUN_DIR);
    fs::write(&path, serde_json::to_string_pretty(&bootstrap)? + "\n")?;
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn bootstrap() -> Value {
        serde_json::json!({
            "admin": {},
            "static_resources": {
                "listeners": [{ "name": "egress", "filter_chains": [{ "filters": [{ "typed_config": {
                    "http_filters": [
                        { "name": "envoy.filters.http.wasm", "typed_config": {
                            "@type": WASM_FILTER_TYPE,
                            "config": { "configuration": { "@type": STRING_VALUE_TYPE, "value": "{\"a\":1}" } }
                        } },
                        { "name": "envoy.filters.http.router" }
                    ]
                } }] }] }],
                "clusters": [{ "name": "c" }]
            }
        })
    }

    #[test]
    fn split_moves_listeners_to_lds() {
        let (b, l) = split(bootstrap()).unwrap();
        assert!(b["static_resources"].get("listeners").is_none());
        assert_eq!(b["static_resources"]["clusters"][0]["name"], "c");
        assert_eq!(b["dynamic_resources"]["lds_config"]["path_config_source"]["path"], LISTENERS_IN_RUN_DIR);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0]["@type"], LISTENER_TYPE);
        assert_eq!(plugin_config(&l).unwrap(), "{\"a\":1}");
        assert!(split(b).is_err(), "no listeners left");
    }

    #[test]
    fn set_plugin_config_replaces_only_the_value() {
        let (_, mut l) = split(bootstrap()).unwrap();
        let before = l.clone();
        set_plugin_config(&mut l, "{\"b\":2}").unwrap();
        assert_eq!(plugin_config(&l).unwrap(), "{\"b\":2}");
        set_plugin_config(&mut l, "{\"a\":1}").unwrap();
        assert_eq!(l, before);
        assert!(set_plugin_config(&mut l, "not json").is_err());
    }

    #[test]
    fn write_then_read_round_trips_atomically() {
        let dir = std::env::temp_dir().join(format!("egress-identity-lds-{}", std::process::id()));
        let (_, l) = split(bootstrap()).unwrap();
        write_listeners(&dir, &l).unwrap();
        push_plugin_config(&dir, "{\"c\":3}").unwrap();
        assert_eq!(plugin_config(&read_listeners(&dir).unwrap()).unwrap(), "{\"c\":3}");
        assert!(!dir.join(".listeners.yaml.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
