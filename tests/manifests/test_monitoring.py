"""The shipped monitoring (monitoring/): alert rules checked and unit-tested by promtool, the PrometheusRule
identical to the rules file, and the Grafana dashboard well formed with valid PromQL. That the dashboard's
queries return data and the alerts fire against a real gateway is checked end to end by
cli/tests/operations.rs (a real Prometheus scraping a real Envoy).

Run: ``python -m pytest tests/manifests`` (needs promtool: Debian's prometheus package, `scripts/setup.sh test`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None)
    assert binary, "promtool not found: run scripts/setup.sh test (Debian package prometheus)"
    return binary


def run(args: list[str], cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(promtool: str) -> None:
    r = run([promtool, "check", "rules", "alerts.yaml"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout, r.stdout


def test_promtool_unit_tests_every_alert(promtool: str) -> None:
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    alerts = {r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"] for r in g["rules"]}
    assert tested == alerts, f"alerts without a firing test: {sorted(alerts - tested)}"
    r = run([promtool, "test", "rules", "alerts.test.yaml"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_unit_tests_can_fail(promtool: str, tmp_path: Path) -> None:
    # A rule that never fires must fail its unit test: the tests are not vacuous.
    rules = (MONITORING / "alerts.yaml").read_text().replace('> 0.2 * sum by (job)', '> 0.9 * sum by (job)')
    (tmp_path / "alerts.yaml").write_text(rules)
    shutil.copy(MONITORING / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    r = run([promtool, "test", "rules", "alerts.test.yaml"], cwd=tmp_path)
    assert r.returncode != 0 and "EgressIdentityDenialSpike" in r.stdout + r.stderr


def test_the_prometheus_rule_is_the_rules_file() -> None:
    rule = yaml.safe_load((MONITORING / "prometheus-rule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((MONITORING / "alerts.yaml").read_text())


def dashboard() -> dict:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def test_the_dashboard_is_well_formed() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        assert p["type"] in ("timeseries", "stat"), p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert "egress_identity_" in t["expr"], (p["title"], t["expr"])
            assert 'job=~"$job"' in t["expr"], f"{p['title']}: not filtered by the job variable"
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for wanted in ("decision", "layer and reason", "policy", "identity", "hit rate", "dry-run"):
        assert wanted in titles, wanted


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses recording rules' expressions: one rule per dashboard query, Grafana variables filled in.
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard()["annotations"]["list"]]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "1m").replace("$job", ".*")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard-queries.yaml").write_text(yaml.safe_dump(rules))
    r = run([promtool, "check", "rules", "dashboard-queries.yaml"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    # And a broken one is refused (the check is real).
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(
        {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (job (rate(x[1m]))"}]}]}))
    assert run([promtool, "check", "rules", "broken.yaml"], cwd=tmp_path).returncode != 0
