#!/usr/bin/env python3
"""Draws grafana-dashboard.json's panels from a Prometheus, as a PNG: the picture in the README.

Not a Grafana screenshot (no Grafana here): each panel's queries, as the dashboard writes them (Grafana's
variables filled in: $job = .*, $__rate_interval = 30s), evaluated by the Prometheus at URL over the last
RANGE seconds, laid out by the panels' gridPos. `make dashboard-preview` runs it against a test gateway.

Usage: preview.py PROMETHEUS_URL OUT.png [RANGE_SECONDS]   (needs matplotlib)
"""

import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DASHBOARD = Path(__file__).resolve().parent / "grafana-dashboard.json"


def query(url, path, params):
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        body = json.load(r)
    if body["status"] != "success":
        raise SystemExit(f"{params}: {body}")
    return body["data"]["result"]


def expr_of(target):
    return target["expr"].replace("$__rate_interval", "30s").replace("$job", ".*")


def legend(fmt, labels):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or ", ".join(
        f"{k}={v}" for k, v in labels.items()
    )


def main():
    url, out = sys.argv[1].rstrip("/"), sys.argv[2]
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 120
    end = time.time()
    dash = json.loads(DASHBOARD.read_text())
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"])
    fig = plt.figure(figsize=(16, rows * 0.55))
    fig.suptitle(f"{dash['title']} (panels of monitoring/grafana-dashboard.json, drawn from a test Prometheus)", fontsize=13)
    grid = fig.add_gridspec(rows, 24, hspace=3.0, wspace=2.0)
    for panel in dash["panels"]:
        g = panel["gridPos"]
        ax = fig.add_subplot(grid[g["y"]:g["y"] + g["h"], g["x"]:g["x"] + g["w"]])
        ax.set_title(panel["title"], fontsize=10, loc="left")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        if panel["type"] == "stat":
            result = query(url, "/api/v1/query", {"query": expr_of(panel["targets"][0]), "time": end})
            value = float(result[0]["value"][1]) if result else float("nan")
            text = f"{value:.1%}" if unit == "percentunit" else (f"{value:.2f}/s" if unit == "reqps" else f"{value:g}")
            ax.text(0.5, 0.4, text, ha="center", va="center", fontsize=22, color="#1f77b4")
            ax.axis("off")
            continue
        for target in panel["targets"]:
            series = query(url, "/api/v1/query_range",
                           {"query": expr_of(target), "start": end - seconds, "end": end, "step": 2})
            for s in series:
                xs = [float(t) - end for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                if not any(ys):
                    continue  # series at zero all along: left out, for a readable picture
                ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), s["metric"]), linewidth=1.2)
        ax.set_xlabel("seconds", fontsize=7)
        ax.set_ylabel("per second" if unit == "reqps" else unit, fontsize=7)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data (zero all along)", ha="center", va="center", fontsize=9, color="grey",
                    transform=ax.transAxes)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
