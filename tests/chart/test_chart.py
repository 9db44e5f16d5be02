"""The example Helm charts (``examples/helm``: ``egress-identity render istio|kuma ... --chart``) under Helm v4
(``tools/helm``, built into ``.tools/bin`` by ``scripts/setup.sh test``):

* ``helm lint --strict`` passes;
* ``helm template`` gives the plain render's objects (``examples/istio/...``, ``examples/kuma``, which
  cli/tests/render.rs keeps equal to ``render --out-dir``), object for object, each valid against the released CRDs
  (tests/manifests' validator); the chart leaves out the TrafficExtension variant (apply one of the two);
* the policy guard: any other policy fails with the guard's message, and Helm reads back exactly the text the
  CLI hashed, for policy files a YAML block scalar holds differently (no final newline, several, tabs and CRLF);
* the knobs: ``--set wasm.url`` (Istio) and ``--set wasm.sha256`` (Kuma) change those fields and nothing else.

Run: ``make test-chart`` (``python -m pytest tests/chart``; builds the CLI with cargo).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "manifests"))
from test_manifests import REPO_ROOT, crds, load_yaml_documents, validate_object  # noqa: E402,F401 (crds: fixture)

HELM = REPO_ROOT / ".tools" / "bin" / "helm"
CARGO = os.environ.get("CARGO", "cargo")
EXAMPLE_POLICY = REPO_ROOT / "examples" / "policy.json"

# chart -> (the plain render it is made of, render's platform arguments, the knob and where it lands)
CHARTS = {
    "istio-gateway": ("istio/egress-gateway", ["istio", "--mode", "gateway"], "url"),
    "istio-waypoint": ("istio/egress-waypoint", ["istio", "--mode", "waypoint"], "url"),
    "kuma": ("kuma", ["kuma"], "sha256"),
}
# A file of the plain render that is another form of one the chart has (apply one of the two).
ALTERNATIVE = "traffic-extension"
NEW_DIGEST = "0123456789abcdef" * 4


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory) -> dict[str, str]:
    if not os.access(HELM, os.X_OK):
        pytest.fail(f"{HELM} not found: `bash scripts/setup.sh test` builds it (tools/helm)")
    home = tmp_path_factory.mktemp("helm-home")
    # Helm's own directories inside the test's: nothing is read from the user's Helm setup.
    env = dict(os.environ)
    env.update({f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")})
    return env


def helm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HELM), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def template(env: dict[str, str], chart: Path, *args: str) -> list[Any]:
    r = helm(env, "template", "egress-identity", str(chart), *args)
    assert r.returncode == 0, f"helm template {chart} {args}: {r.stderr}"
    return load_yaml_documents(r.stdout)


def render_chart(policy: Path, platform: list[str], out: Path) -> None:
    r = subprocess.run([CARGO, "run", "--quiet", "-p", "egress-identity-cli", "--bin", "egress-identity", "--",
                        "render", *platform, str(policy), "--chart", str(out)],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr


def plain_objects(example: str) -> list[Any]:
    docs = []
    for path in sorted((REPO_ROOT / "examples" / example).rglob("*.yaml")):
        if ALTERNATIVE not in path.relative_to(REPO_ROOT / "examples" / example).parts:
            docs.extend(load_yaml_documents(path.read_text(encoding="utf-8")))
    return docs


def _key(obj: Any) -> tuple:
    meta = obj.get("metadata") or {}
    return (obj.get("apiVersion"), obj.get("kind"), meta.get("namespace", ""), meta.get("name"))


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where `a` and `b` differ. A string that differs is compared as the YAML document it may carry (Kuma's
    MeshProxyPatch values): `sha256: abc` and `sha256: "abc"` are the same document."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a.keys() ^ b.keys())}"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items, {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, str) and isinstance(b, str) and a != b:
        try:
            da, db = yaml.safe_load(a), yaml.safe_load(b)
        except yaml.YAMLError:
            return [f"{path}: {a!r} != {b!r}"]
        if isinstance(da, (dict, list)) and isinstance(db, (dict, list)):
            return differences(da, db, f"{path}(yaml)")
        return [f"{path}: {a!r} != {b!r}"]
    return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} != {b!r}"]


def object_differences(got: list[Any], want: list[Any]) -> list[str]:
    got_by, want_by = {_key(o): o for o in got}, {_key(o): o for o in want}
    assert len(got_by) == len(got) and len(want_by) == len(want), "two objects with one name"
    if got_by.keys() != want_by.keys():
        return [f"objects only in the chart: {sorted(got_by.keys() - want_by.keys())}; "
                f"only in the plain render: {sorted(want_by.keys() - got_by.keys())}"]
    return [f"{'/'.join(map(str, k))}{d}" for k in want_by for d in differences(got_by[k], want_by[k])]


def chart_dir(name: str) -> Path:
    return REPO_ROOT / "examples" / "helm" / name


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_lint_strict(name: str, helm_env) -> None:
    r = helm(helm_env, "lint", "--strict", str(chart_dir(name)))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_the_chart_installs_the_plain_render_valid_against_the_crds(name: str, helm_env, crds) -> None:
    example = CHARTS[name][0]
    got = template(helm_env, chart_dir(name))
    assert not object_differences(got, plain_objects(example)), object_differences(got, plain_objects(example))
    for obj in got:
        problems = validate_object(obj, crds)
        assert not problems, f"{name} {_key(obj)}:\n  " + "\n  ".join(problems)
    # Not vacuous: the plain render with the alternative forms differs (they would insert the filter twice).
    with_alternatives = [d for p in sorted((REPO_ROOT / "examples" / example).rglob("*.yaml"))
                         for d in load_yaml_documents(p.read_text(encoding="utf-8"))]
    if name.startswith("istio"):
        assert object_differences(got, with_alternatives), name


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_another_policy_is_refused_by_the_guard(name: str, helm_env, tmp_path: Path) -> None:
    chart = chart_dir(name)
    platform = " ".join(CHARTS[name][1])
    sha = hashlib.sha256(EXAMPLE_POLICY.read_bytes()).hexdigest()
    message = (f"values.policy is not the policy this chart was rendered from (sha256 {sha}): "
               f"re-render with `egress-identity render {platform} POLICY --chart DIR`")
    # Another policy, and this one without its final newline (the same JSON, not the same text).
    trimmed = tmp_path / "trimmed.json"
    trimmed.write_text(EXAMPLE_POLICY.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")
    for other in REPO_ROOT / "envoy" / "policy.json", trimmed:
        r = helm(helm_env, "template", "egress-identity", str(chart), "--set-file", f"policy={other}")
        assert r.returncode != 0 and message in r.stderr, f"{other}: {r.stdout[:200]} {r.stderr}"
    # The policy's own text passes.
    template(helm_env, chart, "--set-file", f"policy={EXAMPLE_POLICY}")


# Policy texts whose values.yaml form differs: a literal block keeps one final newline (`|`), none (`|-`),
# several (`|+`); tabs and carriage returns need a quoted string.
VARIANTS = {
    "no-final-newline": lambda t: t.rstrip("\n"),
    "two-final-newlines": lambda t: t.rstrip("\n") + "\n\n",
    "tabs-and-crlf": lambda t: t.replace("\n  ", "\n\t").replace("\n", "\r\n"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_reads_back_exactly_the_policy_the_cli_hashed(variant: str, helm_env, tmp_path: Path) -> None:
    text = VARIANTS[variant](EXAMPLE_POLICY.read_text(encoding="utf-8"))
    assert text != EXAMPLE_POLICY.read_text(encoding="utf-8")
    policy = tmp_path / "policy.json"
    policy.write_bytes(text.encode())
    chart = tmp_path / "chart"
    render_chart(policy, CHARTS["istio-gateway"][1], chart)
    values = yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8"))
    assert values["policy"] == text, variant
    template(helm_env, chart)  # values.yaml's own policy passes the guard: Helm's sha256sum is the CLI's
    template(helm_env, chart, "--set-file", f"policy={policy}")
    r = helm(helm_env, "template", "egress-identity", str(chart), "--set-file", f"policy={EXAMPLE_POLICY}")
    assert r.returncode != 0 and "values.policy is not the policy" in r.stderr, r.stderr


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_the_knob_changes_its_field_and_nothing_else(name: str, helm_env) -> None:
    example, _, knob = CHARTS[name]
    values = yaml.safe_load((chart_dir(name) / "values.yaml").read_text(encoding="utf-8"))
    default = values["wasm"][knob]
    new = f"oci://example.test/x@sha256:{NEW_DIGEST}" if knob == "url" else NEW_DIGEST
    r = helm(helm_env, "template", "egress-identity", str(chart_dir(name)), "--set", f"wasm.{knob}={new}")
    assert r.returncode == 0, r.stderr
    got = load_yaml_documents(r.stdout)
    if knob == "url":
        plugins = [o for o in got if o["kind"] == "WasmPlugin"]
        assert plugins and all(p["spec"]["url"] == new for p in plugins), plugins
    else:
        patch = next(o for o in got if o["kind"] == "MeshProxyPatch")
        mods = patch["spec"]["default"]["appendModifications"]
        values = [yaml.safe_load(m[k]["value"]) for m in mods for k in m if "value" in m[k]]
        digests = [v["typedConfig"]["config"]["vmConfig"]["code"]["remote"]["sha256"]
                   for v in values if str(v.get("name", "")).endswith(".wasm")]
        assert len(digests) >= 2 and set(digests) == {new}, digests
    plain = plain_objects(example)
    assert object_differences(got, plain), "the knob changed nothing"
    back = load_yaml_documents(r.stdout.replace(new, default))
    assert not object_differences(back, plain), object_differences(back, plain)
