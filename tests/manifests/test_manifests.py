"""Validates the Kubernetes manifests in examples/ against the CRD schemas of Istio, Kuma and Gateway API.

Every YAML document in ``examples/**/*.yaml`` (but the Helm charts of ``examples/helm``: tests/chart) must

* be a kind whose CRD is in the CRD directory (``tests/manifests/crds``: the released Istio 1.30.3, Kuma 2.14.3
  and Gateway API CRDs, see its README; or ``$EGRESS_CRDS_DIR``), validated against the ``openAPIV3Schema`` of the served version named by its
  ``apiVersion`` -- or a built-in kind listed in ``BUILTIN_KINDS`` (with its own small schema);
* validate the way ``kubectl apply --validate=strict`` would: unknown fields are errors (the structural schema
  closes every object that is not ``x-kubernetes-preserve-unknown-fields``), ``x-kubernetes-int-or-string``,
  ``nullable``, ``x-kubernetes-list-type: set|map`` are honoured, and every ``x-kubernetes-validations`` (CEL)
  rule that applies to a node present in the document is evaluated by a Python equivalent from ``CEL_RULES``.
  A CEL rule without an equivalent fails the test, so no rule is silently skipped.

The plugin configurations embedded in the examples (``WasmPlugin.spec.pluginConfig``, ``TrafficExtension``'s, and
the Kuma ``MeshProxyPatch`` wasm filter's ``configuration``) must be the one example policy (``examples/policy.json``)
plus the ``platform`` of their example; the clusters the filter derives from them for that platform must exist in
the same example. ``examples/envoy/gateway.yaml`` is a plain Envoy bootstrap, not a manifest: its plugin
configuration and clusters are checked the same way (cli/tests/render.rs runs ``envoy --mode validate`` on it). The
negative tests prove that the validator rejects broken manifests (it is not vacuous).

Run: ``python -m pytest tests/manifests`` (needs jsonschema, pyyaml, pytest).
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"
# The one example policy every platform's example is rendered from (`make render`).
EXAMPLE_POLICY = EXAMPLES_DIR / "policy.json"
# `render envoy examples/policy.json`: an Envoy bootstrap, not Kubernetes manifests.
ENVOY_EXAMPLE_DIR = EXAMPLES_DIR / "envoy"
# `render --chart`: Helm charts, whose templates are YAML only once Helm renders them (tests/chart checks that).
HELM_EXAMPLE_DIR = EXAMPLES_DIR / "helm"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

# Internal headers of the filter (README.md (Configuration reference)) that every route must strip before forwarding.
CLUSTER_HEADER = "x-egress-identity-cluster"
PRINCIPAL_HEADER = "x-egress-identity-principal"
HEADERS_TO_REMOVE = {CLUSTER_HEADER, PRINCIPAL_HEADER, "x-forwarded-client-cert"}


def crds_dir() -> Path:
    """`$EGRESS_CRDS_DIR`, else the released CRDs kept in the project (tests/manifests/crds, see its README)."""
    env = os.environ.get("EGRESS_CRDS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "crds"


# ---------------------------------------------------------------------------------------------------------------
# YAML loading: like sigs.k8s.io/yaml in strict mode, a duplicated key is an error (PyYAML keeps the last one).


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_documents(text: str) -> list[Any]:
    return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes object metadata (the CRD schemas leave it to the API server).

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)

OBJECT_META_SCHEMA: dict = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL},
        "labels": {
            "type": "object",
            "propertyNames": {"pattern": QUALIFIED_NAME},
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
        },
        "annotations": {
            "type": "object",
            "propertyNames": {"pattern": QUALIFIED_NAME},
            "additionalProperties": {"type": "string"},
        },
    },
}

# Built-in kinds (no CRD) that the examples may use, each with the schema it is checked against.
# Anything else without a CRD fails the test.
BUILTIN_KINDS: dict[tuple[str, str], dict] = {
    ("v1", "Namespace"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "Namespace"},
            "metadata": {
                **OBJECT_META_SCHEMA,
                "properties": {
                    **OBJECT_META_SCHEMA["properties"],
                    "name": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL},
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"finalizers": {"type": "array", "items": {"type": "string"}}},
            },
        },
    },
}

# Built-in kinds checked against Kubernetes' own schema (vendored, tests/manifests/schemas/README.md).
KUBERNETES_SCHEMAS = Path(__file__).resolve().parent / "schemas" / "kubernetes-1.37"
for _kind, _file in ((("networking.k8s.io/v1", "NetworkPolicy"), "networkpolicy-networking-v1.json"),
                     (("v1", "ConfigMap"), "configmap-v1.json"), (("v1", "Secret"), "secret-v1.json")):
    BUILTIN_KINDS[_kind] = json.loads((KUBERNETES_SCHEMAS / _file).read_text(encoding="utf-8"))
# Built-in kinds that live in a namespace (the examples spell it out, as for namespaced CRDs).
NAMESPACED_BUILTINS = {("networking.k8s.io/v1", "NetworkPolicy"), ("v1", "ConfigMap"), ("v1", "Secret")}


# ---------------------------------------------------------------------------------------------------------------
# CEL (x-kubernetes-validations): a Python equivalent for each rule the examples can reach. The key is the rule's
# text with whitespace collapsed; the function gets the node (`self`) and returns whether the rule holds.


def _norm_rule(rule: str) -> str:
    return " ".join(rule.split())


def _has(obj: Any, field: str) -> bool:
    return isinstance(obj, dict) and field in obj


_GO_DURATION = re.compile(r"^([0-9]*(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")
_GO_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration_seconds(value: str) -> float:
    """A Go/CEL duration ("1.5s", "1h30m"); raises ValueError when it is not one."""
    if not isinstance(value, str) or not _GO_DURATION.match(value):
        raise ValueError(f"{value!r} is not a duration")
    return sum(float(n or 0) * _DURATION_UNIT_SECONDS[u] for n, u in _GO_DURATION_PART.findall(value))


def _duration_at_least_1ms(value: Any) -> bool:
    try:
        return _duration_seconds(value) >= 1e-3
    except ValueError:
        return False


_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _wasm_url_scheme_ok(value: Any) -> bool:
    # isURL(self) ? scheme in [...] : isURL("http://" + self) && ... -- a bare reference defaults to oci://.
    if not isinstance(value, str) or not value:
        return False
    m = _URL_SCHEME.match(value)
    return m is None or m.group(1).lower() in {"http", "https", "oci", "file"}


def _unique_by(items: list, key: Callable[[Any], Any]) -> bool:
    keys = [key(item) for item in items]
    return all(keys.count(k) == 1 for k in keys)


def _listener_hostname_key(listener: dict) -> Any:
    return listener.get("hostname", None)


CEL_RULES: dict[str, Callable[[Any], bool]] = {
    # selector / targetRef / targetRefs exclusivity (WasmPlugin, AuthorizationPolicy, EnvoyFilter)
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: sum(_has(s, f) for f in ("selector", "targetRef", "targetRefs")) <= 1,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: sum(_has(s, f) for f in ("workloadSelector", "targetRefs")) <= 1,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1":
        lambda s: sum(_has(s, f) for f in ("workloadSelector", "endpoints")) <= 1,
    # Gateway API infrastructure annotations/labels: qualified names, prefix under 253 characters
    'self.all(key, key.matches(r"""^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$"""))':
        lambda s: all(re.fullmatch(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]", k) for k in s),
    'self.all(key, key.split("/")[0].size() < 253)': lambda s: all(len(k.split("/")[0]) < 253 for k in s),
    # label selectors
    'self.all(key, !key.contains("*"))': lambda s: all("*" not in k for k in s),
    "self.all(key, key.size() != 0)": lambda s: all(len(k) != 0 for k in s),
    '!self.contains("*")': lambda s: "*" not in s,
    # cross-namespace references
    "self.size() == 0": lambda s: len(s) == 0,
    # WasmPlugin
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) '
    '&& url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])': _wasm_url_scheme_ok,
    # TrafficExtension (Istio 1.30): the same URL rule (schemes in another order), selector xor targetRefs,
    # exactly one of wasm and lua
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "file", "oci"]) : (isURL("http://" + self) '
    '&& url("http://" + self).getScheme() in ["", "http", "https", "file", "oci"])': _wasm_url_scheme_ok,
    "(has(self.selector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: sum(_has(s, f) for f in ("selector", "targetRefs")) <= 1,
    "has(self.wasm) != has(self.lua)": lambda s: _has(s, "wasm") != _has(s, "lua"),
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda s: s.get("valueFrom", "") != "HOST" or "value" not in s,
    # EnvoyFilter
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) : '
    "!has(self.waypoint)":
        lambda s: (_has(s, "waypoint") == (s.get("context") == "WAYPOINT")) if _has(s, "context")
        else not _has(s, "waypoint"),
    # ports
    "0 < self && self <= 65535": lambda s: 0 < s <= 65535,
    # ServiceEntry
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && !((has(self.resolution) ? '
    'self.resolution : "NONE") in ["STATIC", "NONE"]))':
        lambda s: not (any("/" in a for a in s.get("addresses", []))
                       and s.get("resolution", "NONE") not in ("STATIC", "NONE")),
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda s: s.get("resolution", "NONE") != "NONE" or "endpoints" not in s,
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? ((has(self.endpoints) ? '
    "self.endpoints : []).size() <= 1) : true":
        lambda s: s.get("resolution", "") != "DNS_ROUND_ROBIN" or len(s.get("endpoints", [])) <= 1,
    "has(self.address) || has(self.network)": lambda s: _has(s, "address") or _has(s, "network"),
    '(has(self.address) ? self.address : "").startsWith("unix://") ? !has(self.ports) : true':
        lambda s: not s.get("address", "").startswith("unix://") or "ports" not in s,
    'self != "*"': lambda s: s != "*",
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))":
        lambda s: _unique_by(s, lambda p: p.get("number")),
    # Istio Gateway
    "(has(self.tlsCertificates) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1":
        lambda s: sum(_has(s, f) for f in ("tlsCertificates", "credentialNames")) <= 1,
    "(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1":
        lambda s: sum(_has(s, f) for f in ("credentialName", "credentialNames")) <= 1,
    "(has(self.credentialNames) ? 1 : 0) + (has(self.tlsCertificates) ? 1 : 0) <= 1":
        lambda s: sum(_has(s, f) for f in ("credentialNames", "tlsCertificates")) <= 1,
    # AuthorizationPolicy
    "(has(self.serviceAccounts) || has(self.notServiceAccounts)) ? (!has(self.principals) && "
    "!has(self.notPrincipals) && !has(self.namespaces) && !has(self.notNamespaces)) : true":
        lambda s: not (_has(s, "serviceAccounts") or _has(s, "notServiceAccounts"))
        or not any(_has(s, f) for f in ("principals", "notPrincipals", "namespaces", "notNamespaces")),
    # durations (DestinationRule, VirtualService)
    "duration(self) >= duration('1ms')": _duration_at_least_1ms,
    # Gateway API Gateway listeners
    "self.all(l, l.protocol in ['HTTP', 'TCP', 'UDP'] ? !has(l.tls) : true)":
        lambda s: all(ln.get("protocol") not in ("HTTP", "TCP", "UDP") or "tls" not in ln for ln in s),
    "self.all(l, (l.protocol == 'HTTPS' && has(l.tls)) ? (l.tls.mode == '' || l.tls.mode == 'Terminate') : true)":
        lambda s: all(not (ln.get("protocol") == "HTTPS" and "tls" in ln)
                      or ln["tls"].get("mode", "") in ("", "Terminate") for ln in s),
    "self.all(l, (l.protocol == 'TLS' ? has(l.tls) && has(l.tls.mode) && l.tls.mode != '' : true))":
        lambda s: all(ln.get("protocol") != "TLS" or ("tls" in ln and ln["tls"].get("mode", "") != "") for ln in s),
    "self.all(l, l.protocol in ['TCP', 'UDP'] ? (!has(l.hostname) || l.hostname == '') : true)":
        lambda s: all(ln.get("protocol") not in ("TCP", "UDP") or ln.get("hostname", "") == "" for ln in s),
    "self.all(l1, self.exists_one(l2, l1.name == l2.name))": lambda s: _unique_by(s, lambda ln: ln.get("name")),
    "self.all(l1, self.exists_one(l2, l1.port == l2.port && l1.protocol == l2.protocol && (has(l1.hostname) && "
    "has(l2.hostname) ? l1.hostname == l2.hostname : !has(l1.hostname) && !has(l2.hostname))))":
        lambda s: _unique_by(s, lambda ln: (ln.get("port"), ln.get("protocol"), _listener_hostname_key(ln))),
    "self.mode == 'Terminate' ? size(self.certificateRefs) > 0 || size(self.options) > 0 : true":
        lambda s: s.get("mode", "Terminate") != "Terminate"
        or len(s.get("certificateRefs", [])) > 0 or len(s.get("options", {})) > 0,
    # ServiceEntry endpoints
    'self.startsWith("unix://") ? (self.substring(7, 8) == "/" || self.substring(7, 8) == "@") : true':
        lambda s: not s.startswith("unix://") or s[7:8] in ("/", "@"),
    'self.startsWith("unix://") ? !self.endsWith("/") : true':
        lambda s: not s.startswith("unix://") or not s.endswith("/"),
    'self.all(key, size(key) < 63 && key.matches("^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$"))':
        lambda s: all(len(k) < 63 and re.search(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$", k) for k in s),
    # Gateway API HTTPRoute (CEL sees defaulted values: backendRef group "" and kind "Service", parentRef group
    # gateway.networking.k8s.io and kind Gateway)
    "(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true":
        lambda s: not (s.get("group", "") == "" and s.get("kind", "Service") == "Service") or "port" in s,
    "(self.size() > 0 ? self[0].matches.size() : 0) + " + " + ".join(
        f"(self.size() > {i} ? self[{i}].matches.size() : 0)" for i in range(1, 16)
    ) + " <= 128":
        lambda s: sum(len(rule["matches"]) for rule in s[:16]) <= 128,
    "(has(self.backendRefs) && size(self.backendRefs) > 0) ? (!has(self.filters) || "
    "self.filters.all(f, !has(f.requestRedirect))): true":
        lambda s: not s.get("backendRefs") or all("requestRedirect" not in f for f in s.get("filters", [])),
    "!(self.exists(f, f.type == 'RequestRedirect') && self.exists(f, f.type == 'URLRewrite'))":
        lambda s: not ({"RequestRedirect", "URLRewrite"} <= {f.get("type") for f in s}),
}


def _httproute_parent_key(ref: dict) -> tuple:
    return (ref.get("group", "gateway.networking.k8s.io"), ref.get("kind", "Gateway"), ref["name"],
            ref.get("namespace", ""))


def _httproute_parents_section_names_consistent(refs: list) -> bool:
    return all(
        not (_httproute_parent_key(p1) == _httproute_parent_key(p2))
        or ((p1.get("sectionName", "") == "") == (p2.get("sectionName", "") == ""))
        for p1 in refs for p2 in refs
    )


def _httproute_parents_unique(refs: list) -> bool:
    return _unique_by(refs, lambda p: (_httproute_parent_key(p), p.get("sectionName", "")))


CEL_RULES.update({
    "self.all(p1, self.all(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name == p2.name && "
    "(((!has(p1.__namespace__) || p1.__namespace__ == '') && (!has(p2.__namespace__) || p2.__namespace__ == '')) "
    "|| (has(p1.__namespace__) && has(p2.__namespace__) && p1.__namespace__ == p2.__namespace__ )) ? "
    "((!has(p1.sectionName) || p1.sectionName == '') == (!has(p2.sectionName) || p2.sectionName == '')) : true))":
        _httproute_parents_section_names_consistent,
    "self.all(p1, self.exists_one(p2, p1.group == p2.group && p1.kind == p2.kind && p1.name == p2.name && "
    "(((!has(p1.__namespace__) || p1.__namespace__ == '') && (!has(p2.__namespace__) || p2.__namespace__ == '')) "
    "|| (has(p1.__namespace__) && has(p2.__namespace__) && p1.__namespace__ == p2.__namespace__ )) && "
    "(((!has(p1.sectionName) || p1.sectionName == '') && (!has(p2.sectionName) || p2.sectionName == '')) || "
    "(has(p1.sectionName) && has(p2.sectionName) && p1.sectionName == p2.sectionName))))":
        _httproute_parents_unique,
})

# HTTPRoute path matches: an Exact or PathPrefix value is an absolute, normalized path of URI characters.
def _path_rule(check: Callable[[str], bool]) -> Callable[[Any], bool]:
    return lambda s: check(s.get("value", "")) if s.get("type") in ("Exact", "PathPrefix") else True


CEL_RULES.update({
    "(self.type in ['Exact','PathPrefix']) ? self.value.startsWith('/') : true": _path_rule(lambda v: v.startswith("/")),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.endsWith('/..') : true": _path_rule(lambda v: not v.endswith("/..")),
    "(self.type in ['Exact','PathPrefix']) ? !self.value.endsWith('/.') : true": _path_rule(lambda v: not v.endswith("/.")),
    "self.type in ['Exact','PathPrefix'] || self.type == 'RegularExpression'":
        lambda s: s.get("type") in ("Exact", "PathPrefix", "RegularExpression"),
    "(self.type in ['Exact','PathPrefix']) ? self.value.matches(r\"\"\"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$\"\"\") : true":
        _path_rule(lambda v: re.fullmatch(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+", v) is not None),
})
for _part in ("//", "/./", "/../", "%2f", "%2F", "#"):
    CEL_RULES[f"(self.type in ['Exact','PathPrefix']) ? !self.value.contains('{_part}') : true"] = (
        _path_rule(lambda v, p=_part: p not in v))

# HTTPRoute filters: one field per filter type, each type at most once per list (where the API says so).
_HTTPROUTE_FILTER_FIELDS = {
    "CORS": "cors",
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
}
for _type, _field in _HTTPROUTE_FILTER_FIELDS.items():
    CEL_RULES[f"!(has(self.{_field}) && self.type != '{_type}')"] = (
        lambda s, f=_field, t=_type: not (f in s and s.get("type") != t))
    CEL_RULES[f"!(!has(self.{_field}) && self.type == '{_type}')"] = (
        lambda s, f=_field, t=_type: not (f not in s and s.get("type") == t))
    CEL_RULES[f"self.filter(f, f.type == '{_type}').size() <= 1"] = (
        lambda s, t=_type: sum(1 for f in s if f.get("type") == t) <= 1)


def _replace_prefix_needs_one_path_prefix(rule: dict, field: str, within_backends: bool) -> bool:
    def uses_replace_prefix(filters: list) -> bool:
        return sum(1 for f in filters if f.get(field, {}).get("path", {}).get("type") == "ReplacePrefixMatch"
                   and "replacePrefixMatch" in f[field]["path"]) == 1

    if within_backends:
        applies = sum(1 for b in rule.get("backendRefs", []) if uses_replace_prefix(b.get("filters", []))) == 1
    else:
        applies = uses_replace_prefix(rule.get("filters", []))
    matches = rule.get("matches", [])
    return not applies or (len(matches) == 1 and matches[0].get("path", {}).get("type") == "PathPrefix")


for _field, _type in (("requestRedirect", "RequestRedirect"), ("urlRewrite", "URLRewrite")):
    _cond = (f"has(f.{_field}) && has(f.{_field}.path) && f.{_field}.path.type == 'ReplacePrefixMatch' && "
             f"has(f.{_field}.path.replacePrefixMatch)")
    _then = ("? ((size(self.matches) != 1 || !has(self.matches[0].path) || "
             "self.matches[0].path.type != 'PathPrefix') ? false : true) : true")
    CEL_RULES[f"(has(self.filters) && self.filters.exists_one(f, {_cond})) {_then}"] = (
        lambda s, f=_field: _replace_prefix_needs_one_path_prefix(s, f, within_backends=False))
    CEL_RULES[f"(has(self.backendRefs) && self.backendRefs.exists_one(b, (has(b.filters) && "
              f"b.filters.exists_one(f, {_cond})) )) {_then}"] = (
        lambda s, f=_field: _replace_prefix_needs_one_path_prefix(s, f, within_backends=True))

CEL_RULES = {_norm_rule(k): v for k, v in CEL_RULES.items()}


# ---------------------------------------------------------------------------------------------------------------
# Structural schema (OpenAPI v3 as Kubernetes uses it) -> JSON Schema (draft 7) plus three private keywords.

_DROP = {"description", "example", "default", "externalDocs", "title"}


def to_json_schema(node: Any, structural: bool = True) -> Any:
    """Convert one schema node.

    `structural` is False inside allOf/anyOf/oneOf/not: there, as in Kubernetes, `properties` constrain the
    fields that are present but do not close the object.
    """
    if not isinstance(node, dict):
        return node
    out: dict = {}
    for key, value in node.items():
        if key in _DROP or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub, structural) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = to_json_schema(value, structural) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(sub, False) for sub in value]
        elif key == "not":
            out[key] = to_json_schema(value, False)
        else:
            out[key] = value

    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        if not any(k in out for k in ("anyOf", "oneOf")):
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]

    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]

    is_object = out.get("type") == "object" or (structural and "properties" in out)
    if (
        structural
        and is_object
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        # Kubernetes prunes (and `kubectl apply --validate=strict` rejects) fields the schema does not declare.
        out["additionalProperties"] = False

    list_type = node.get("x-kubernetes-list-type")
    if list_type == "set":
        out["uniqueItems"] = True
    elif list_type == "map":
        out["x-list-map-keys"] = list(node.get("x-kubernetes-list-map-keys", []))

    rules = node.get("x-kubernetes-validations")
    if rules:
        out["x-cel"] = [{"rule": r["rule"], "message": r.get("message", r["rule"])} for r in rules]
    return out


def _list_map_keys(validator, keys, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    seen: dict = {}
    for index, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
        if key in seen:
            values = {k: item.get(k) for k in keys}
            yield jsonschema.ValidationError(f"items {seen[key]} and {index} have the same list-map key {values}")
        seen[key] = index


def _cel(validator, rules, instance, schema):
    for entry in rules:
        rule = _norm_rule(entry["rule"])
        check = CEL_RULES.get(rule)
        if check is None:
            yield jsonschema.ValidationError(
                f"CEL rule without a Python equivalent in CEL_RULES (add one): {entry['rule']!r}"
            )
            continue
        try:
            ok = check(instance)
        except (AttributeError, KeyError, TypeError) as e:  # the rule does not apply to a value of this shape
            yield jsonschema.ValidationError(f"CEL rule {entry['rule']!r} failed to evaluate: {e}")
            continue
        if not ok:
            yield jsonschema.ValidationError(f"{entry['message']} (CEL: {entry['rule']})")


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("int32")
def _int32(value: Any) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: Any) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@_FORMATS.checks("ipv4", raises=ValueError)
def _ipv4(value: Any) -> bool:
    return not isinstance(value, str) or bool(ipaddress.IPv4Address(value))


@_FORMATS.checks("ipv6", raises=ValueError)
def _ipv6(value: Any) -> bool:
    return not isinstance(value, str) or bool(ipaddress.IPv6Address(value))


@_FORMATS.checks("byte", raises=ValueError)
def _byte(value: Any) -> bool:
    return not isinstance(value, str) or base64.b64decode(value, validate=True) is not None


KubernetesValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"x-list-map-keys": _list_map_keys, "x-cel": _cel}
)


# ---------------------------------------------------------------------------------------------------------------
# CRD index


@dataclass(frozen=True)
class Crd:
    group: str
    version: str
    kind: str
    namespaced: bool
    source: Path
    schema: dict  # openAPIV3Schema as JSON Schema, the object's root


def _root_schema(open_api: dict) -> dict:
    root = to_json_schema(open_api)
    props = dict(root.get("properties", {}))
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = OBJECT_META_SCHEMA
    root["properties"] = props
    root["type"] = "object"
    root["additionalProperties"] = False
    root["required"] = sorted(set(root.get("required", [])) | {"apiVersion", "kind", "metadata"})
    return root


@lru_cache(maxsize=None)
def crd_index(directory: str) -> dict[tuple[str, str, str], Crd]:
    index: dict[tuple[str, str, str], Crd] = {}
    for path in sorted(Path(directory).rglob("*.yaml")):
        for doc in load_yaml_documents(path.read_text(encoding="utf-8")):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                open_api = version.get("schema", {}).get("openAPIV3Schema")
                if open_api is None:
                    continue
                key = (spec["group"], version["name"], spec["names"]["kind"])
                if key in index:
                    raise ValueError(f"{path}: {key} is also defined by {index[key].source}: one release per CRD")
                index[key] = Crd(
                    group=spec["group"],
                    version=version["name"],
                    kind=spec["names"]["kind"],
                    namespaced=spec.get("scope") == "Namespaced",
                    source=path,
                    schema=_root_schema(open_api),
                )
    return index


def split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _path_of(error: jsonschema.ValidationError) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path) or "<root>"


def validate_object(obj: Any, crds: dict[tuple[str, str, str], Crd]) -> list[str]:
    """Every problem with one manifest object, as 'path: message' strings (empty when it is valid)."""
    if not isinstance(obj, dict):
        return [f"<root>: a manifest must be a mapping, got {type(obj).__name__}"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["<root>: apiVersion and kind are required strings"]
    group, version = split_api_version(api_version)

    crd = crds.get((group, version, kind))
    problems: list[str] = []
    if crd is not None:
        schema = crd.schema
        if crd.namespaced and not (obj.get("metadata") or {}).get("namespace"):
            # Examples are applied with `kubectl apply -f`: spell the namespace out instead of relying on the
            # kubectl context.
            problems.append("metadata.namespace: required for a namespaced kind in the examples")
    elif (api_version, kind) in BUILTIN_KINDS:
        schema = BUILTIN_KINDS[(api_version, kind)]
        if (api_version, kind) in NAMESPACED_BUILTINS and not (obj.get("metadata") or {}).get("namespace"):
            problems.append("metadata.namespace: required for a namespaced kind in the examples")
    else:
        known = sorted(f"{g}/{v}" if g else v for g, v, k in crds if k == kind)
        hint = f" (CRD versions of {kind}: {', '.join(known)})" if known else ""
        return [f"<root>: no CRD for {api_version} {kind} and not an allow-listed built-in kind{hint}"]

    validator = KubernetesValidator(schema, format_checker=_FORMATS)
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(f"{_path_of(error)}: {error.message}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# The examples


@dataclass(frozen=True)
class Doc:
    path: Path
    index: int
    obj: Any

    @property
    def id(self) -> str:
        rel = self.path.relative_to(REPO_ROOT)
        kind = self.obj.get("kind", "?") if isinstance(self.obj, dict) else "?"
        name = (self.obj.get("metadata") or {}).get("name", "?") if isinstance(self.obj, dict) else "?"
        return f"{rel}#{self.index}:{kind}/{name}"

    @property
    def example(self) -> Path:
        """The example directory (e.g. examples/istio/egress-gateway) the document belongs to (its
        traffic-extension/ variant files included)."""
        parent = self.path.parent
        return parent.parent if parent.name == "traffic-extension" else parent


def example_files() -> list[Path]:
    """The Kubernetes manifests of examples/ (examples/envoy/ holds a plain Envoy bootstrap instead: see "The plain
    Envoy example" below; examples/helm/ the charts of the same manifests)."""
    return sorted(p for pattern in ("*.yaml", "*.yml") for p in EXAMPLES_DIR.rglob(pattern)
                  if ENVOY_EXAMPLE_DIR not in p.parents and HELM_EXAMPLE_DIR not in p.parents)


@lru_cache(maxsize=None)
def example_docs() -> tuple[Doc, ...]:
    docs = []
    for path in example_files():
        for i, obj in enumerate(load_yaml_documents(path.read_text(encoding="utf-8"))):
            docs.append(Doc(path, i, obj))
    return tuple(docs)


def _docs_or_placeholder() -> list:
    try:
        docs = list(example_docs())
    except yaml.YAMLError as e:  # reported by test_every_example_file_parses
        return [pytest.param(None, id=f"unparsable: {e}".splitlines()[0])]
    return [pytest.param(d, id=d.id) for d in docs] or [pytest.param(None, id="no-documents")]


@pytest.fixture(scope="session")
def crds() -> dict[tuple[str, str, str], Crd]:
    directory = crds_dir()
    if not directory.is_dir():
        pytest.fail(f"CRD directory {directory} not found")
    index = crd_index(str(directory))
    expected = {
        ("extensions.istio.io", "v1alpha1", "WasmPlugin"),
        ("networking.istio.io", "v1alpha3", "EnvoyFilter"),
        ("networking.istio.io", "v1", "ServiceEntry"),
        ("gateway.networking.k8s.io", "v1", "Gateway"),
        ("kuma.io", "v1alpha1", "MeshProxyPatch"),
        ("kuma.io", "v1alpha1", "MeshExternalService"),
    }
    missing = expected - set(index)
    assert not missing, f"CRDs not found under {directory}: {sorted(missing)}"
    return index


def test_the_crd_table_names_every_crd_file() -> None:
    """tests/manifests/crds/README.md says where every schema comes from; no file without a source."""
    directory = Path(__file__).resolve().parent / "crds"
    files = {str(p.relative_to(directory)) for p in directory.rglob("*.yaml")}
    table = (directory / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([^`]+\.yaml)` \|", table, re.M))
    assert files, f"no CRD files under {directory}"
    assert files == listed, f"files without a row: {sorted(files - listed)}; rows without a file: {sorted(listed - files)}"


def test_every_example_file_parses() -> None:
    files = example_files()
    assert files, f"no YAML files under {EXAMPLES_DIR}"
    for path in files:
        try:
            docs = load_yaml_documents(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            pytest.fail(f"{path.relative_to(REPO_ROOT)}: {e}")
        assert docs, f"{path.relative_to(REPO_ROOT)} holds no YAML document"


def test_examples_cover_every_platform() -> None:
    kinds_by_dir: dict[str, set[str]] = {}
    for doc in example_docs():
        rel = str(doc.example.relative_to(EXAMPLES_DIR))
        kinds_by_dir.setdefault(rel, set()).add(doc.obj.get("kind"))
    assert {"WasmPlugin", "EnvoyFilter", "ServiceEntry", "NetworkPolicy"} <= kinds_by_dir.get("istio/egress-gateway", set())
    assert {"TrafficExtension"} <= kinds_by_dir.get("istio/egress-gateway", set())
    assert {"WasmPlugin", "Gateway", "ServiceEntry", "DestinationRule", "HTTPRoute", "NetworkPolicy"} <= kinds_by_dir.get(
        "istio/egress-waypoint", set()
    )
    assert {"MeshProxyPatch", "MeshExternalService", "MeshTrafficPermission", "NetworkPolicy"} <= kinds_by_dir.get(
        "kuma", set()
    )


def test_no_example_carries_a_secret() -> None:
    # Secrets hold private keys: `egress-identity secrets` writes them at deploy time (test_secrets.py).
    secrets = [d.id for d in example_docs() if isinstance(d.obj, dict) and d.obj.get("kind") == "Secret"]
    assert not secrets, secrets


@pytest.mark.parametrize("doc", _docs_or_placeholder())
def test_document_matches_its_crd(doc: Doc | None, crds) -> None:
    assert doc is not None, "no example documents (see test_every_example_file_parses)"
    problems = validate_object(doc.obj, crds)
    assert not problems, f"{doc.id}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------------------------
# Plugin configurations and their coherence with the rest of each example


@dataclass(frozen=True)
class PluginConfig:
    doc: Doc
    where: str
    config: Any
    # The configuration's text where the manifest carries it as text (a StringValue), else None (a YAML object).
    text: str | None = None


def _wasm_filter_configs_in_mesh_proxy_patch(doc: Doc) -> Iterator[PluginConfig]:
    """The HTTP (httpFilter) and network (networkFilter) wasm filters a MeshProxyPatch adds."""
    for i, mod in enumerate(doc.obj.get("spec", {}).get("default", {}).get("appendModifications", [])):
        kind = "httpFilter" if "httpFilter" in mod else "networkFilter"
        added = mod.get(kind)
        if not added or "value" not in added or added.get("operation") == "Patch":
            continue
        value = yaml.safe_load(added["value"])
        typed = (value or {}).get("typedConfig") or (value or {}).get("typed_config") or {}
        if not re.fullmatch(r".*envoy\.extensions\.filters\.(http|network)\.wasm\.v3\.Wasm", str(typed.get("@type", ""))):
            continue
        configuration = typed.get("config", {}).get("configuration", {})
        where = f"spec.default.appendModifications[{i}].{kind}.value ... configuration.value"
        assert str(configuration.get("@type", "")).endswith("google.protobuf.StringValue"), (
            f"{doc.id}: {where}: the wasm configuration must be a google.protobuf.StringValue"
        )
        yield PluginConfig(doc, where, json.loads(configuration["value"]), configuration["value"])


def plugin_configs() -> list[PluginConfig]:
    found = []
    for doc in example_docs():
        kind = doc.obj.get("kind")
        if kind == "WasmPlugin":
            found.append(PluginConfig(doc, "spec.pluginConfig", doc.obj.get("spec", {}).get("pluginConfig")))
        elif kind == "TrafficExtension":
            wasm = doc.obj.get("spec", {}).get("wasm", {})
            found.append(PluginConfig(doc, "spec.wasm.pluginConfig", wasm.get("pluginConfig")))
        elif kind == "MeshProxyPatch":
            found.extend(_wasm_filter_configs_in_mesh_proxy_patch(doc))
    return found


# The platform each example directory is rendered for (the `platform` render appends to the policy).
EXAMPLE_PLATFORMS = {"istio/egress-gateway": "istio-gateway", "istio/egress-waypoint": "istio-waypoint", "kuma": "kuma"}


def plugin_configuration(policy: str, platform: dict) -> str:
    """What `render` writes as the gateway's configuration (core/src/platform.rs, plugin_configuration, written
    again here): the policy's text with `"platform"` (compact, `kind` first) appended as its last field."""
    body = policy.rstrip()
    assert body.endswith("}"), "the policy is not a JSON object"
    return f'{body[:-1].rstrip()},\n  "platform": {json.dumps(platform, separators=(",", ":"))}\n}}\n'


def _k8s_form(identity: str) -> str:
    return identity.replace(".", "-")


def derived_clusters(config: dict) -> set[str]:
    """The clusters the filter can name for a plugin configuration, derived from its `platform` as README.md
    documents it (core/src/platform.rs is the implementation; this is an independent reading): Envoy and Istio
    `<destination>|<identity, '.' -> '-'>`, `<destination>|passthrough` (tls), `<destination>|shared`
    (singleCluster); Kuma `kri_extsvc_<mesh>_<zone>_<namespace>_<destination>-<identity>_<port>` (80 for http).
    An Istio waypoint carries no tcp/tls destination, so none of their clusters is ever named there."""
    platform = config.get("platform") or {"kind": "envoy"}
    clusters = set()
    for dest in config["destinations"]:
        protocol = dest.get("protocol", "http")
        if platform["kind"] == "istio-waypoint" and protocol != "http":
            continue
        if protocol == "tls":
            routes = ["passthrough"]
        elif dest.get("singleCluster"):
            routes = ["shared"]
        else:
            named = list(dest.get("identities", [])) + ([dest["defaultIdentity"]] if "defaultIdentity" in dest else [])
            routes = [_k8s_form(identity) for identity in named]
        for route in routes:
            if platform["kind"] == "kuma":
                port = dest["port"] if protocol != "http" else 80
                clusters.add("_".join(["kri", "extsvc", platform["mesh"], platform["zone"], platform["namespace"],
                                       f"{dest['name']}-{route}", str(port)]))
            else:
                clusters.add(f"{dest['name']}|{route}")
    return clusters


def test_derived_clusters_follow_the_platform() -> None:
    """The derivation the coherence tests below rely on, on a policy of each kind of destination."""
    config = {"destinations": [
        {"name": "api", "host": "api.example", "port": 443, "identities": ["team.app1"], "defaultIdentity": "ops"},
        {"name": "db", "protocol": "tcp", "host": "db.example", "port": 5432, "identities": ["team.app1"]},
        {"name": "files", "protocol": "tls", "host": "files.example", "port": 443},
        {"name": "one", "host": "one.example", "port": 8443, "singleCluster": True, "identities": ["team.app1"]},
    ]}
    assert derived_clusters(config) == {"api|team-app1", "api|ops", "db|team-app1", "files|passthrough", "one|shared"}
    waypoint = derived_clusters({**config, "platform": {"kind": "istio-waypoint"}})
    assert waypoint == {"api|team-app1", "api|ops", "one|shared"}
    kuma = {"kind": "kuma", "mesh": "m", "zone": "z", "namespace": "ns", "egressPort": 10002}
    assert derived_clusters({**config, "destinations": config["destinations"][:3], "platform": kuma}) == {
        "kri_extsvc_m_z_ns_api-team-app1_80", "kri_extsvc_m_z_ns_api-ops_80",
        "kri_extsvc_m_z_ns_db-team-app1_5432", "kri_extsvc_m_z_ns_files-passthrough_443"}


def test_every_example_has_a_plugin_config() -> None:
    dirs = {str(pc.doc.example.relative_to(EXAMPLES_DIR)) for pc in plugin_configs()}
    assert dirs == set(EXAMPLE_PLATFORMS)


@pytest.mark.parametrize("pc", [pytest.param(pc, id=f"{pc.doc.id}:{pc.where}") for pc in plugin_configs()])
def test_plugin_config_is_the_example_policy_and_its_platform(pc: PluginConfig) -> None:
    """Every example is rendered from the one example policy: its plugin configurations are that policy,
    unchanged, plus the `platform` of the example's directory (and, carried as text, that policy's very text)."""
    config = pc.config
    assert isinstance(config, dict), f"{pc.where} must be an object"
    # JSON-serialisable and unchanged by a round trip (no YAML-only types such as dates, no NaN).
    text = json.dumps(config, allow_nan=False)
    assert json.loads(text) == config
    platform = config.get("platform")
    assert isinstance(platform, dict), f"{pc.where}: no platform (render appends it to the policy)"
    assert platform.get("kind") == EXAMPLE_PLATFORMS[str(pc.doc.example.relative_to(EXAMPLES_DIR))], platform
    assert list(config)[-1] == "platform", f"{pc.where}: platform is not the last field"
    policy_text = EXAMPLE_POLICY.read_text(encoding="utf-8")
    policy = json.loads(policy_text)
    assert "platform" not in policy, "examples/policy.json is a policy, which names no platform"
    assert {k: v for k, v in config.items() if k != "platform"} == policy, f"{pc.where} is not examples/policy.json"
    if pc.text is not None:
        assert pc.text == plugin_configuration(policy_text, platform), f"{pc.where}: not the policy's text verbatim"
    assert isinstance(config.get("destinations"), list) and config["destinations"], "destinations: non-empty list"
    declared = {identity["name"] for identity in config.get("identities", [])}
    for i, dest in enumerate(config["destinations"]):
        named = list(dest.get("identities", [])) + ([dest["defaultIdentity"]] if "defaultIdentity" in dest else [])
        if dest.get("protocol") == "tls":
            assert not named, f"destinations[{i}]: a tls destination presents no identity"
        else:
            assert named, f"destinations[{i}]: identities or defaultIdentity"
        assert set(named) <= declared, f"destinations[{i}]: undeclared identities {sorted(set(named) - declared)}"


def _docs_in(example: Path, kind: str) -> list[dict]:
    return [d.obj for d in example_docs() if d.example == example and d.obj.get("kind") == kind]


def _envoy_filter_clusters(example: Path) -> set[str]:
    names = set()
    for ef in _docs_in(example, "EnvoyFilter"):
        for patch in ef["spec"].get("configPatches", []):
            if patch["applyTo"] == "CLUSTER" and patch["patch"]["operation"] == "ADD":
                names.add(patch["patch"]["value"]["name"])
    return names


def _httproute_identity_routes(example: Path) -> dict[str, list[str]]:
    """Cluster-header value matched by each HTTPRoute rule -> the hostnames of its backends."""
    routes: dict[str, list[str]] = {}
    for route in _docs_in(example, "HTTPRoute"):
        for rule in route["spec"].get("rules", []):
            for match in rule.get("matches", []):
                for header in match.get("headers", []):
                    if header["name"].lower() == CLUSTER_HEADER and header.get("type", "Exact") == "Exact":
                        routes[header["value"]] = [b["name"] for b in rule.get("backendRefs", [])]
    return routes


def _mutual_tls_hosts(example: Path) -> set[str]:
    """ServiceEntry hosts of the example whose DestinationRule originates mTLS with a credential."""
    se_hosts = {h for se in _docs_in(example, "ServiceEntry") for h in se["spec"]["hosts"]}
    return {
        dr["spec"]["host"]
        for dr in _docs_in(example, "DestinationRule")
        if dr["spec"].get("trafficPolicy", {}).get("tls", {}).get("mode") == "MUTUAL"
        and dr["spec"]["trafficPolicy"]["tls"].get("credentialName")
        and dr["spec"]["host"] in se_hosts
    }


def _kri(mes: dict, zone: str) -> str:
    meta = mes["metadata"]
    return "_".join(
        ["kri", "extsvc", meta["labels"]["kuma.io/mesh"], zone, meta["namespace"], meta["name"],
         str(mes["spec"]["match"]["port"])]
    )


@pytest.mark.parametrize("pc", [pytest.param(pc, id=f"{pc.doc.id}:{pc.where}") for pc in plugin_configs()])
def test_identity_clusters_exist_in_the_example(pc: PluginConfig) -> None:
    """The clusters the filter selects are defined by the same example (and nothing else is)."""
    wanted = derived_clusters(pc.config)
    example = pc.doc.example
    rel = str(example.relative_to(EXAMPLES_DIR))
    if rel == "istio/egress-gateway":
        provided = _envoy_filter_clusters(example)
        what = "EnvoyFilter CLUSTER ADD patches"
    elif rel == "istio/egress-waypoint":
        routes = _httproute_identity_routes(example)
        mtls_hosts = _mutual_tls_hosts(example)
        for key, backends in routes.items():
            assert len(backends) == 1 and backends[0] in mtls_hosts, (
                f"route for {key!r} must send to one ServiceEntry host with a MUTUAL DestinationRule: {backends}"
            )
        assert len({b[0] for b in routes.values()}) == len(routes), "two identities share a backend"
        provided = set(routes)
        what = f"HTTPRoute rules matching {CLUSTER_HEADER}"
    elif rel == "kuma":
        # Kuma names a MeshExternalService cluster by its KRI: kri_extsvc_<mesh>_<zone>_<namespace>_<name>_<port>,
        # in the mesh, zone and namespace of the platform the configuration was rendered for.
        platform = pc.config["platform"]
        zone = platform["zone"]
        # Fronts (what callers address) have an unresolvable endpoint; every other MeshExternalService is an
        # identity's: TLS with its client certificate (http, tcp), or plain TCP (tls passthrough).
        services = _docs_in(example, "MeshExternalService")
        for m in services:
            where = (m["metadata"]["labels"]["kuma.io/mesh"], m["metadata"]["namespace"])
            assert where == (platform["mesh"], platform["namespace"]), f"{m['metadata']['name']}: {where} != {platform}"
        front = {_kri(m, zone) for m in services
                 if all(e["address"].endswith(".egress-identity.invalid") for e in m["spec"]["endpoints"])}
        provided = {_kri(m, zone) for m in services} - front
        for m in services:
            if _kri(m, zone) in provided and m["spec"]["match"].get("protocol") == "http":
                assert m["spec"].get("tls", {}).get("verification", {}).get("clientCert"), f"{m['metadata']['name']}"
        what = "identities' MeshExternalServices"
    else:
        pytest.fail(f"unknown example directory {rel}")
    assert wanted == provided, f"{pc.doc.id}: identity clusters {sorted(wanted)} != {what} {sorted(provided)}"


# ---------------------------------------------------------------------------------------------------------------
# The plain Envoy example: examples/envoy/gateway.yaml, `render envoy examples/policy.json` (a bootstrap, not a
# Kubernetes manifest; cli/tests/render.rs checks it is the render and that `envoy --mode validate` accepts it).


def _wasm_configurations(node: Any) -> Iterator[tuple[str, str]]:
    """(filter type, configuration text) of every Wasm filter in an Envoy bootstrap."""
    if isinstance(node, dict):
        typed = node.get("typed_config")
        if isinstance(typed, dict) and re.fullmatch(r".*\.filters\.(http|network)\.wasm\.v3\.Wasm", str(typed.get("@type", ""))):
            yield typed["@type"].split(".")[-4], typed["config"]["configuration"]["value"]
        for value in node.values():
            yield from _wasm_configurations(value)
    elif isinstance(node, list):
        for value in node:
            yield from _wasm_configurations(value)


def test_the_envoy_example_runs_the_example_policy_with_its_clusters_and_ports() -> None:
    path = ENVOY_EXAMPLE_DIR / "gateway.yaml"
    docs = load_yaml_documents(path.read_text(encoding="utf-8"))
    assert len(docs) == 1, f"{path}: one bootstrap"
    bootstrap = docs[0]
    policy_text = EXAMPLE_POLICY.read_text(encoding="utf-8")
    configurations = list(_wasm_configurations(bootstrap))
    # The example policy has http and tcp/tls destinations: the HTTP filter and the network filter.
    assert sorted(kind for kind, _ in configurations) == ["http", "network"], configurations
    expected = plugin_configuration(policy_text, {"kind": "envoy"})
    for kind, text in configurations:
        assert text == expected, f"{path}: the {kind} filter's configuration is not examples/policy.json + envoy"
    config = json.loads(expected)
    clusters = {c["name"] for c in bootstrap["static_resources"]["clusters"]}
    # Every cluster the filter can name is defined; every cluster named like one is one of them.
    wanted = derived_clusters(config)
    assert wanted and wanted <= clusters, f"missing clusters: {sorted(wanted - clusters)}"
    assert {c for c in clusters if "|" in c} == wanted, sorted(clusters)
    # The L4 listener listens on every port a tcp/tls destination declares, callers' port (and on no other).
    listeners = {lst["name"]: lst for lst in bootstrap["static_resources"]["listeners"]}
    l4 = listeners["egress-l4"]
    ports = {l4["address"]["socket_address"]["port_value"]} | {
        a["address"]["socket_address"]["port_value"] for a in l4.get("additional_addresses", [])}
    declared = {d["port"] for d in config["destinations"] if d.get("protocol", "http") != "http"}
    assert ports == declared, (ports, declared)


def _removed_headers_of_route(value: dict) -> set[str]:
    return {h.lower() for h in value.get("request_headers_to_remove", value.get("requestHeadersToRemove", []))}


def test_routes_use_the_cluster_header_and_strip_internal_headers() -> None:
    checked = 0
    for doc in example_docs():
        kind, spec = doc.obj.get("kind"), doc.obj.get("spec", {})
        if kind == "EnvoyFilter":
            for patch in spec.get("configPatches", []):
                if patch["applyTo"] != "HTTP_ROUTE":
                    continue
                value = patch["patch"]["value"]
                assert value["route"]["cluster_header"] == CLUSTER_HEADER, doc.id
                assert HEADERS_TO_REMOVE <= _removed_headers_of_route(value), doc.id
                checked += 1
        elif kind == "HTTPRoute":
            for rule in spec.get("rules", []):
                removed = {
                    h.lower()
                    for f in rule.get("filters", []) if f.get("type") == "RequestHeaderModifier"
                    for h in f["requestHeaderModifier"].get("remove", [])
                }
                assert HEADERS_TO_REMOVE <= removed, f"{doc.id}: rule {rule.get('name')}"
                checked += 1
        elif kind == "MeshProxyPatch":
            for mod in spec.get("default", {}).get("appendModifications", []):
                vhost = mod.get("virtualHost")
                if not vhost:
                    continue
                ops = {(p["op"], p["path"]): p.get("value") for p in vhost.get("jsonPatches", [])}
                assert ops.get(("add", "/routes/0/route/clusterHeader")) == CLUSTER_HEADER, doc.id
                assert ("remove", "/routes/0/route/cluster") in ops, doc.id
                assert HEADERS_TO_REMOVE <= set(ops.get(("add", "/routes/0/requestHeadersToRemove"), [])), doc.id
                checked += 1
    assert checked >= 3, "expected route patches in every example"


# ---------------------------------------------------------------------------------------------------------------
# The validator is not vacuous: broken manifests are rejected.

_GOOD_WASM_PLUGIN = {
    "apiVersion": "extensions.istio.io/v1alpha1",
    "kind": "WasmPlugin",
    "metadata": {"name": "egress-identity", "namespace": "istio-egress"},
    "spec": {
        "selector": {"matchLabels": {"istio": "egressgateway"}},
        "url": "oci://ghcr.io/egress-identity/egress-identity:0.1.0",
        "phase": "AUTHZ",
        "failStrategy": "FAIL_CLOSE",
        "pluginConfig": {"localTrustDomain": "cluster.local", "destinations": [], "platform": {"kind": "istio-gateway"}},
    },
}


def _broken(mutate: Callable[[dict], None], base: dict = _GOOD_WASM_PLUGIN) -> dict:
    obj = copy.deepcopy(base)
    mutate(obj)
    return obj


BROKEN_MANIFESTS = {
    "enum: phase NOPE": _broken(lambda o: o["spec"].update(phase="NOPE")),
    "unknown field (typo)": _broken(lambda o: o["spec"].update(pluginConfg={})),
    "missing required url": _broken(lambda o: o["spec"].pop("url")),
    "wrong type": _broken(lambda o: o["spec"].update(priority="high")),
    "CEL: selector and targetRefs": _broken(
        lambda o: o["spec"].update(targetRefs=[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "w"}])
    ),
    "CEL: url scheme": _broken(lambda o: o["spec"].update(url="ftp://example.com/f.wasm")),
    "pattern: sha256": _broken(lambda o: o["spec"].update(sha256="not-a-digest")),
    "metadata: invalid name": _broken(lambda o: o["metadata"].update(name="Egress_Identity")),
    "metadata: unknown field": _broken(lambda o: o["metadata"].update(labelz={})),
    "metadata: namespace missing": _broken(lambda o: o["metadata"].pop("namespace")),
    "unknown version": _broken(lambda o: o.update(apiVersion="extensions.istio.io/v9")),
    "kind without CRD and not allow-listed": {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "s", "namespace": "istio-egress"},
    },
    "EnvoyFilter: applyTo enum": {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "ef", "namespace": "istio-egress"},
        "spec": {"configPatches": [{"applyTo": "ROUTE", "patch": {"operation": "MERGE", "value": {}}}]},
    },
    "EnvoyFilter: oneOf match (listener and cluster)": {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "ef", "namespace": "istio-egress"},
        "spec": {"configPatches": [{"applyTo": "CLUSTER", "match": {"listener": {}, "cluster": {}},
                                    "patch": {"operation": "MERGE", "value": {}}}]},
    },
    "ServiceEntry: duplicate port numbers (CEL)": {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "se", "namespace": "istio-egress"},
        "spec": {"hosts": ["api.partner.example"], "resolution": "DNS",
                 "ports": [{"number": 443, "name": "a", "protocol": "TLS"},
                           {"number": 443, "name": "b", "protocol": "HTTPS"}]},
    },
    "Gateway API: duplicate listener names (CEL)": {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "w", "namespace": "istio-egress"},
        "spec": {"gatewayClassName": "istio-waypoint",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"},
                               {"name": "mesh", "port": 15009, "protocol": "HBONE"}]},
    },
    "Gateway API: HTTPRoute path with an empty segment (CEL)": {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "egress-waypoint"},
        "spec": {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/a//b"}}]}]},
    },
    "Kuma: MeshTrafficPermission targetRef kind": {
        "apiVersion": "kuma.io/v1alpha1",
        "kind": "MeshTrafficPermission",
        "metadata": {"name": "mtp", "namespace": "kuma-system", "labels": {"kuma.io/mesh": "default"}},
        "spec": {"targetRef": {"kind": "ZoneEgress"}, "rules": [{"default": {"allow": []}}]},
    },
    "Kuma: MeshProxyPatch operation enum": {
        "apiVersion": "kuma.io/v1alpha1",
        "kind": "MeshProxyPatch",
        "metadata": {"name": "mpp", "namespace": "kuma-system", "labels": {"kuma.io/mesh": "default"}},
        "spec": {"default": {"appendModifications": [{"cluster": {"operation": "Append", "value": "name: x"}}]}},
    },
    "duplicate YAML key": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n",
}


def test_the_good_base_manifest_is_valid(crds) -> None:
    """The negative cases below start from a valid object, so each fails for its own reason."""
    assert validate_object(copy.deepcopy(_GOOD_WASM_PLUGIN), crds) == []


# A fragment of the problem each broken manifest must be rejected for (so none passes for another reason).
EXPECTED_PROBLEM = {
    "enum: phase NOPE": "'NOPE' is not one of",
    "unknown field (typo)": "'pluginConfg' was unexpected",
    "missing required url": "'url' is a required property",
    "wrong type": "'high' is not of type",
    "CEL: selector and targetRefs": "only one of targetRefs or selector",
    "CEL: url scheme": "url must have schema",
    "pattern: sha256": "does not match",
    "metadata: invalid name": ".metadata.name",
    "metadata: unknown field": "'labelz' was unexpected",
    "metadata: namespace missing": "metadata.namespace: required",
    "unknown version": "no CRD for extensions.istio.io/v9",
    "kind without CRD and not allow-listed": "not an allow-listed built-in kind",
    "EnvoyFilter: applyTo enum": "'ROUTE' is not one of",
    "EnvoyFilter: oneOf match (listener and cluster)": "is valid under each of",
    "ServiceEntry: duplicate port numbers (CEL)": "port number cannot be duplicated",
    "Gateway API: duplicate listener names (CEL)": "Listener name must be unique",
    "Gateway API: HTTPRoute path with an empty segment (CEL)": "must not contain '//'",
    "Kuma: MeshTrafficPermission targetRef kind": "'ZoneEgress' is not one of",
    "Kuma: MeshProxyPatch operation enum": "'Append' is not one of",
}


def _render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.environ.get("CARGO", "cargo"), "run", "--quiet", "-p", "egress-identity-cli", "--",
                           "render", *args], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


def test_render_kuma_with_spire_writes_a_spire_mesh_identity_the_crds_accept(crds) -> None:
    """`render kuma --spire TD` (SPIRE issues the dataplanes' SVIDs): every document valid against the released
    CRDs, the MeshIdentity's provider Spire and its trust domain SPIRE's; a trust domain the policy does not take as
    local is refused (callers from it would all be denied)."""
    result = _render("kuma", "examples/policy.json", "--spire", "cluster.local")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        assert validate_object(doc, crds) == [], doc["kind"]
    identity = next(d for d in docs if d["kind"] == "MeshIdentity")
    assert identity["spec"]["provider"] == {"type": "Spire", "spire": {"agent": {"timeout": "1s"}}}
    assert identity["spec"]["spiffeID"]["trustDomain"] == "cluster.local"
    refused = _render("kuma", "examples/policy.json", "--spire", "other.example")
    assert refused.returncode == 2 and "not take as its local trust domain" in refused.stderr, refused.stderr


def test_render_istio_of_a_wildcard_destination_writes_what_the_crds_accept(crds) -> None:
    """`render istio --mode gateway` of a wildcard destination on two ports (tests/istiod/testdata, which istiod's
    generator and cli/tests/istiod_gateway_wildcard.rs run): every document valid against the released CRDs; the
    ServiceEntry carries the pattern with resolution NONE and both ports; waypoint mode refuses it, with the
    reason."""
    policy = "tests/istiod/testdata/wildcard-policy.json"
    result = _render("istio", "--mode", "gateway", policy, "--allow-resolved", "127.0.0.0/8")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    for doc in docs:
        assert validate_object(doc, crds) == [], doc["kind"]
    entry = next(d for d in docs if d["kind"] == "ServiceEntry" and d["spec"]["hosts"] == ["*.partner.example"])
    assert entry["spec"]["resolution"] == "NONE"
    assert [p["number"] for p in entry["spec"]["ports"]] == [18443, 18446]
    refused = _render("istio", "--mode", "waypoint", policy)
    assert refused.returncode == 1 and "use --mode gateway" in refused.stderr, refused.stderr


@pytest.mark.parametrize("name", sorted(BROKEN_MANIFESTS))
def test_validator_rejects_broken_manifest(name: str, crds) -> None:
    manifest = BROKEN_MANIFESTS[name]
    if isinstance(manifest, str):
        with pytest.raises(yaml.YAMLError, match="duplicate key"):
            load_yaml_documents(manifest)
        return
    problems = validate_object(manifest, crds)
    assert problems, f"the validator accepted a broken manifest ({name})"
    assert any(EXPECTED_PROBLEM[name] in p for p in problems), f"{name}: unexpected problems {problems}"


def test_unimplemented_cel_rule_is_an_error() -> None:
    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "self.frobnicate()"}]}
    validator = KubernetesValidator(to_json_schema(schema), format_checker=_FORMATS)
    errors = list(validator.iter_errors({}))
    assert errors and "without a Python equivalent" in errors[0].message


# ---------------------------------------------------------------------------------------------------------------
# docker-compose.yml (no Docker engine is needed: the file is checked as data)


def test_docker_compose_runs_the_local_topology() -> None:
    compose = load_yaml_documents(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert len(compose) == 1
    services = compose[0]["services"]
    gateway, external = services["gateway"], services["external"]

    assert gateway["image"].startswith("envoyproxy/envoy:")
    assert external["image"].startswith("nginx")
    # The configs use 127.0.0.1 for everything: one network namespace for all containers.
    for name, service in services.items():
        if name != "gateway":
            assert service.get("network_mode") == "service:gateway", name
    published = {str(p).rsplit(":", 1)[0].rsplit(":", 1)[-1] for p in gateway.get("ports", [])}
    assert {"10443", "9901"} <= published, gateway.get("ports")

    def mounts(service: dict) -> dict[str, str]:
        return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}

    for service in (gateway, external):
        workdir = service["working_dir"]
        m = mounts(service)
        assert m.get(f"{workdir}/pki") == "./envoy/pki"
        assert f"{workdir}/logs" in m
    assert mounts(gateway).get(f"{gateway['working_dir']}/dist") == "./dist"
    assert "envoy/gateway.yaml" in " ".join(gateway["command"])
    for source in ("./envoy/gateway.yaml", "./envoy/external-server/nginx.conf"):
        assert any(v.startswith(source + ":") for s in services.values() for v in s.get("volumes", [])), source


# ---------------------------------------------------------------------------------------------------------------
# The Envoy configuration inside the manifests, checked by Envoy itself (`envoy --mode validate`): the clusters the
# EnvoyFilter and the MeshProxyPatch add, the routes as their patches leave them, and -- when the filter is built
# (dist/egress_identity.wasm) -- every plugin configuration loaded by the real filter. Skipped without an Envoy
# binary ($ENVOY_BIN, .venv/bin/envoy from `make setup`, or `envoy` on PATH).


def _envoy_binary() -> str | None:
    for candidate in (os.environ.get("ENVOY_BIN"), str(REPO_ROOT / ".venv/bin/envoy"), shutil.which("envoy")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _json_patch(document: Any, patches: list[dict]) -> Any:
    """RFC 6902 add/remove/replace, with Kuma's options (remove of a missing path is a no-op)."""
    doc = copy.deepcopy(document)
    for patch in patches:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in patch["path"].split("/")[1:]]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if patch["op"] == "remove":
            if isinstance(node, dict):
                node.pop(last, None)
            elif int(last) < len(node):
                del node[int(last)]
        elif patch["op"] == "add" and isinstance(node, list):
            node.insert(int(last), patch["value"])
        elif patch["op"] in ("add", "replace"):
            node[int(last) if isinstance(node, list) else last] = patch["value"]
        else:
            raise AssertionError(f"unsupported JSON patch op {patch['op']}")
    return doc


def _wasm_filter(name: str, config_json: str, wasm: Path, network: bool = False, root_id: str = "egress-identity") -> dict:
    kind = "network" if network else "http"
    return {
        "name": f"envoy.filters.{kind}.wasm.{name}",
        "typed_config": {
            "@type": f"type.googleapis.com/envoy.extensions.filters.{kind}.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": root_id,
                "fail_open": False,
                "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": str(wasm)}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config_json},
            },
        },
    }


def _envoy_check_bootstrap(wasm: Path | None) -> dict:
    clusters: list[dict] = [{
        "name": "xds", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": 15010}}}}]}]},
    }]
    virtual_hosts: list[dict] = []
    http_filters: list[dict] = []
    # The L4 chains: per platform, the network filters the examples add and the tcp_proxy they patch, which
    # stands for the one Istio / Kuma generate (a route to some cluster).
    l4_filters: dict[str, list[dict]] = {"istio": [], "kuma": []}
    tcp_proxy: dict[str, dict] = {
        p: {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": f"check_{p}", "cluster": "xds"}}
        for p in l4_filters
    }
    l4_patched = {p: False for p in l4_filters}
    # Network filters the examples add before the HTTP connection manager (Kuma's handshake guard).
    hcm_guards: list[dict] = []
    stats_tags: dict[str, dict] = {}  # Istio's bootstrap additions (custom_bootstrap.json), by tag name

    for doc in example_docs():
        kind, spec, name = doc.obj.get("kind"), doc.obj.get("spec", {}), doc.obj["metadata"]["name"]
        if kind == "EnvoyFilter":
            for i, patch in enumerate(spec["configPatches"]):
                value = patch["patch"]["value"]
                if patch["applyTo"] == "CLUSTER" and patch["patch"]["operation"] == "ADD":
                    clusters.append(value)
                elif patch["applyTo"] == "HTTP_ROUTE" and patch["patch"]["operation"] == "MERGE":
                    # The route Istio generates for the VirtualService placeholder (a direct response) after the
                    # MERGE: `route` replaces the action oneof (so no direct_response is left), lists are appended.
                    route = {"name": patch["match"]["routeConfiguration"]["vhost"]["route"]["name"],
                             "match": {"prefix": "/"}, **copy.deepcopy(value)}
                    virtual_hosts.append({"name": f"istio-{name}-{i}", "domains": [f"istio-{name}-{i}.check"],
                                          "routes": [route]})
                elif (patch["applyTo"] == "NETWORK_FILTER" and patch["patch"]["operation"] == "MERGE"
                      and patch["match"]["listener"]["filterChain"]["filter"]["name"] == "envoy.filters.network.tcp_proxy"):
                    # MERGE: the value's fields replace those of the generated tcp_proxy.
                    tcp_proxy["istio"]["typed_config"].update(copy.deepcopy(value["typed_config"]))
                    l4_patched["istio"] = True
        elif kind == "MeshProxyPatch":
            for i, mod in enumerate(spec["default"]["appendModifications"]):
                if "cluster" in mod and mod["cluster"]["operation"] == "Add":
                    clusters.append(yaml.safe_load(mod["cluster"]["value"]))
                elif "virtualHost" in mod and mod["virtualHost"]["operation"] == "Patch":
                    # The virtual host Kuma generates for a MeshExternalService at the zone egress.
                    kri = mod["virtualHost"]["match"]["name"]
                    generated = {"name": kri, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {
                        "autoHostRewrite": True, "cluster": kri, "timeout": "0s"}}]}
                    patched = _json_patch(generated, mod["virtualHost"]["jsonPatches"])
                    patched["domains"] = [f"kuma-{name}-{i}.check"]
                    virtual_hosts.append(patched)
                elif "networkFilter" in mod and mod["networkFilter"]["match"].get("name") == "envoy.filters.network.tcp_proxy":
                    value = yaml.safe_load(mod["networkFilter"]["value"])
                    if mod["networkFilter"]["operation"] == "Patch":
                        tcp_proxy["kuma"]["typed_config"].update(copy.deepcopy(value["typedConfig"]))
                        l4_patched["kuma"] = True
                    elif mod["networkFilter"]["operation"] == "AddBefore" and wasm is not None:
                        config = value["typedConfig"]["config"]
                        config["vmConfig"]["code"] = {"local": {"filename": str(wasm)}}
                        value["name"] = f"envoy.filters.network.wasm.kuma-{name}-{i}"
                        config["vmConfig"]["vmId"] = f"kuma-{name}-{i}"
                        l4_filters["kuma"].append(value)
                elif ("networkFilter" in mod and mod["networkFilter"]["operation"] == "AddBefore"
                      and mod["networkFilter"]["match"].get("name") == "envoy.filters.network.http_connection_manager"):
                    value = yaml.safe_load(mod["networkFilter"]["value"])
                    assert value["typedConfig"]["config"]["rootId"] == "egress-identity-guard", value
                    if wasm is not None:
                        config = value["typedConfig"]["config"]
                        config["vmConfig"]["code"] = {"local": {"filename": str(wasm)}}
                        value["name"] = f"envoy.filters.network.wasm.kuma-{name}-{i}"
                        config["vmConfig"]["vmId"] = f"kuma-{name}-{i}"
                        hcm_guards.append(value)
                elif "httpFilter" in mod and wasm is not None:
                    http_filter = yaml.safe_load(mod["httpFilter"]["value"])
                    config = http_filter["typedConfig"]["config"]
                    config["vmConfig"]["code"] = {"local": {"filename": str(wasm)}}
                    http_filter["name"] = f"envoy.filters.http.wasm.kuma-{name}-{i}"
                    config["vmConfig"]["vmId"] = f"kuma-{name}-{i}"
                    http_filters.append(http_filter)
        elif kind == "ConfigMap" and "custom_bootstrap.json" in doc.obj.get("data", {}):
            for tag in json.loads(doc.obj["data"]["custom_bootstrap.json"])["stats_config"]["stats_tags"]:
                assert stats_tags.setdefault(tag["tag_name"], tag) == tag, f"{doc.id}: two regexes for {tag['tag_name']}"
        elif kind == "WasmPlugin" and wasm is not None:
            example = doc.example.name
            if spec["type"] == "NETWORK":
                l4_filters["istio"].append(_wasm_filter(f"istio-{example}-l4", json.dumps(spec["pluginConfig"]), wasm,
                                                        network=True, root_id=spec["pluginName"]))
            else:
                http_filters.append(_wasm_filter(f"istio-{example}", json.dumps(spec["pluginConfig"]), wasm))

    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    return {
        "node": {"id": "manifests-check", "cluster": "manifests-check"},
        "stats_config": {"stats_tags": list(stats_tags.values())},
        "dynamic_resources": {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                             "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}},
        "static_resources": {
            "clusters": clusters,
            "listeners": [{
                "name": "check",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10999}},
                "filter_chains": [{"filters": hcm_guards + [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                                 ".HttpConnectionManager",
                        "stat_prefix": "check",
                        "route_config": {"name": "check", "virtual_hosts": virtual_hosts},
                        "http_filters": http_filters,
                    },
                }]}],
            }] + [{
                "name": f"check-l4-{platform}",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10997 - n}},
                "filter_chains": [{"filters": l4_filters[platform] + [tcp_proxy[platform]]}],
            } for n, platform in enumerate(sorted(l4_filters)) if l4_patched[platform]],
        },
    }


def _envoy_validate(envoy: str, bootstrap: dict, directory: Path) -> subprocess.CompletedProcess:
    config = directory / "bootstrap.json"
    config.write_text(json.dumps(bootstrap, indent=1), encoding="utf-8")
    return subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--disable-hot-restart", "-l", "warning"],
        capture_output=True, text=True, timeout=120, cwd=directory,
    )


@pytest.fixture(scope="module")
def envoy() -> str:
    binary = _envoy_binary()
    if binary is None:
        pytest.skip("no Envoy binary (set ENVOY_BIN or run `make setup`)")
    return binary


def _built_wasm() -> Path | None:
    wasm = REPO_ROOT / "dist" / "egress_identity.wasm"
    return wasm if wasm.is_file() else None


def test_envoy_accepts_the_envoy_configuration_of_the_examples(envoy: str, tmp_path: Path) -> None:
    wasm = _built_wasm()
    bootstrap = _envoy_check_bootstrap(wasm)
    filters = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    hcm = filters[-1]["typed_config"]
    assert len(hcm["route_config"]["virtual_hosts"]) >= 2, "expected the Istio and Kuma route patches"
    assert len(bootstrap["static_resources"]["clusters"]) >= 4, "expected the added clusters"
    result = _envoy_validate(envoy, bootstrap, tmp_path)
    assert result.returncode == 0, f"envoy --mode validate failed:\n{result.stdout}\n{result.stderr}"
    if wasm is None:
        pytest.skip("dist/egress_identity.wasm not built: clusters and routes validated, plugin configs not loaded")
    assert len(hcm["http_filters"]) == 4, "expected the three plugin configurations and the router"
    # Kuma's zone egress: the handshake guard before the connection manager, loaded by Envoy.
    assert [f["typedConfig"]["config"]["rootId"] for f in filters[:-1]] == ["egress-identity-guard"], filters[:-1]
    # Istio's bootstrap additions: every tag of egress-identity's metrics, each with its own regex.
    tags = {t["tag_name"] for t in bootstrap["stats_config"]["stats_tags"]}
    assert tags == {"protocol", "decision", "layer", "reason", "policy", "destination", "identity", "version", "revision"}, tags
    # The L4 chains of the Istio gateway and of Kuma's zone egress: the network filter, then the patched
    # tcp_proxy (ON_DOWNSTREAM_DATA: the filter decides on the caller's first bytes; the unrouted cluster).
    l4 = {listener["name"]: listener["filter_chains"][0]["filters"] for listener in bootstrap["static_resources"]["listeners"][1:]}
    assert sorted(l4) == ["check-l4-istio", "check-l4-kuma"], sorted(l4)
    # Istio's: the egress gateway's and the ambient waypoint's network plugins (the waypoint's chains keep
    # Istio's own tcp_proxy; loading both here checks the waypoint's plugin configuration too).
    wasm_filters = {"check-l4-istio": 2, "check-l4-kuma": 1}
    for name, filters in l4.items():
        assert [f["name"].rsplit(".", 1)[0] if "wasm" in f["name"] else f["name"] for f in filters] == [
            "envoy.filters.network.wasm"] * wasm_filters[name] + ["envoy.filters.network.tcp_proxy"], (name, filters)
        proxy = filters[-1]["typed_config"]
        assert proxy.get("upstream_connect_mode", proxy.get("upstreamConnectMode")) == "ON_DOWNSTREAM_DATA", name
        assert proxy["cluster"] == "egress-identity-unrouted", name
        for wasm_filter in filters[:-1]:
            wasm_config = (wasm_filter.get("typed_config") or wasm_filter["typedConfig"])["config"]
            root_id = wasm_config.get("root_id", wasm_config.get("rootId"))
            assert root_id.endswith("-l4"), (name, root_id)


def test_envoy_check_is_not_vacuous(envoy: str, tmp_path: Path) -> None:
    bootstrap = _envoy_check_bootstrap(None)
    bootstrap["static_resources"]["clusters"][-1]["type"] = "NOT_A_DISCOVERY_TYPE"
    assert _envoy_validate(envoy, bootstrap, tmp_path).returncode != 0
