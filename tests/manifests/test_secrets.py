"""`egress-identity secrets istio|kuma`: the Secrets it writes are valid Kubernetes Secrets (Kubernetes' own
schema), are exactly the Secrets the rendered examples read (no more, no fewer, in their namespace), and
carry the user's PEM files unchanged. Error cases (missing, unused, conflicting CAs, a key where a
certificate belongs) are tested in cli/tests/secrets.rs.

Run: ``python -m pytest tests/manifests`` (builds the CLI and a test PKI with cargo).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from test_manifests import REPO_ROOT, crds, load_yaml_documents, validate_object  # noqa: F401 (crds: fixture)

CARGO = os.environ.get("CARGO", "cargo")


def _cargo_run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([CARGO, "run", "--quiet", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    r = _cargo_run(["-p", "egress-identity-harness", "--bin", "pki", "--", str(out)])
    assert r.returncode == 0, r.stderr
    return out


def secrets(args: list[str]) -> subprocess.CompletedProcess:
    return _cargo_run(["-p", "egress-identity-cli", "--bin", "egress-identity", "--", "secrets", *args])


# (platform args, example directory, namespace, what the rendered manifests call a secret)
CASES = {
    "istio-gateway": (["istio", "--mode", "gateway"], "istio/egress-gateway", "istio-egress",
                      [r"credentialName: (\S+)", r"kubernetes://([a-z0-9-]+?)(?:-cacert)?\s"]),
    "istio-waypoint": (["istio", "--mode", "waypoint"], "istio/egress-waypoint", "egress-waypoint",
                       [r"credentialName: (\S+)", r"kubernetes://([a-z0-9-]+?)(?:-cacert)?\s"]),
    "kuma": (["kuma"], "kuma", "kuma-system", [r"\bsecret: (\S+)"]),
}


def _referenced(example: Path, patterns: list[str]) -> set[str]:
    """The Secrets the manifests read, but the one that must never exist (a fail-closed DestinationRule's)."""
    text = "".join(p.read_text() for p in sorted(example.rglob("*.yaml")))
    return {m for pattern in patterns for m in re.findall(pattern, text)} - {"egress-identity-no-identity"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_secrets_are_what_the_manifests_read(case: str, pki: Path, crds) -> None:
    platform, example_dir, namespace, patterns = CASES[case]
    example = REPO_ROOT / "examples" / example_dir
    # Every example is rendered from the one example policy (`make render`).
    policy = str(REPO_ROOT / "examples" / "policy.json")

    # Nothing given: refused, naming every --identity and --ca the manifests need.
    r = secrets([*platform, policy])
    assert r.returncode == 1, r.stdout + r.stderr
    identities = sorted(set(re.findall(r"--identity ([^=\s]+)=CERT,KEY", r.stderr)))
    destinations = sorted(set(re.findall(r"--ca ([^=\s]+)=PEM", r.stderr)))
    assert identities and destinations, r.stderr

    args = [*platform, policy]
    for identity in identities:
        args += ["--identity", f"{identity}={pki / 'external' / f'{identity}.crt'},{pki / 'external' / f'{identity}.key'}"]
    for destination in destinations:
        args += ["--ca", f"{destination}={pki / 'partner-ca.crt'}"]
    r = secrets(args)
    assert r.returncode == 0, r.stderr
    docs = [d for d in load_yaml_documents(r.stdout) if d is not None]

    for doc in docs:
        problems = validate_object(doc, crds)
        assert not problems, f"{doc['metadata']['name']}: {problems}"
        assert doc["metadata"]["namespace"] == namespace
    names = {d["metadata"]["name"] for d in docs}
    assert names == _referenced(example, patterns), "the Secrets written are not those the manifests read"

    decoded = {d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()} for d in docs}
    partner_ca = (pki / "partner-ca.crt").read_text()
    for identity in identities:
        cert, key = (pki / "external" / f"{identity}.crt").read_text(), (pki / "external" / f"{identity}.key").read_text()
        base = "egress-identity-" + re.sub(r"[^a-z0-9]+", "-", identity.lower())
        if platform[0] == "istio":
            assert decoded[base] == {"tls.crt": cert, "tls.key": key, "ca.crt": partner_ca}
        else:
            assert decoded[f"{base}-cert"] == {"value": cert} and decoded[f"{base}-key"] == {"value": key}
    if platform[0] == "kuma":
        for d in docs:
            assert d["type"] == "system.kuma.io/secret" and d["metadata"]["labels"]["kuma.io/mesh"] == "default"
        for destination in destinations:
            assert decoded[f"{destination}-ca"] == {"value": partner_ca}
