#!/usr/bin/env python3
"""egress-identity end-to-end benchmark (`make bench`; see BENCHMARKS.md for what it measures and why).

Starts, on loopback, one gateway Envoy per variant (all idle except the one under load), a client-side Envoy
that turns wrk's plain HTTP into mTLS with the workload's real client certificate, and an nginx "partner"
(mTLS, small fixed body). Then it runs rounds A B C D ... in alternation, each `DURATION` seconds of wrk, and
takes the gateway process's CPU time (utime+stime, /proc/<pid>/stat) before and after each run.

Usage: bench.py RUN_DIR [--rounds N] [--duration S] [--connections C] [--check]
Environment: ENVOY (default .venv/bin/envoy), WRK (wrk), NGINX (nginx), BENCH_PORT_BASE (28400).
"""

import argparse
import glob
import ctypes
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import policy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def default_envoy():
    """The Envoy binary itself: .venv/bin/envoy is a Python launcher that execs it, which callgrind
    (--instructions) would measure instead of Envoy."""
    import glob

    real = sorted(glob.glob(os.path.join(ROOT, ".venv/lib/python*/site-packages/envoy/_bin/envoy")))
    return real[0] if real else os.path.join(ROOT, ".venv/bin/envoy")


ENVOY = os.environ.get("ENVOY") or default_envoy()
WRK = os.environ.get("WRK", "wrk")
NGINX = os.environ.get("NGINX", "nginx")
BASE = int(os.environ.get("BENCH_PORT_BASE", "28400"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

PARTNER_PORT = BASE + 43  # 28443
CLIENT_ADMIN = BASE + 99  # 28499

# name -> (kind, rules); the order is the round order.
VARIANTS = {
    "A": ("router", 0),
    "B": ("rbac", 1000),
    "C": ("empty_wasm", 0),
    "D": ("egress_identity", 1000),
    "D10": ("egress_identity", 10),
    "D10k": ("egress_identity", 10000),
    # L4: the same requests carried through a network filter chain ending in tcp_proxy (the gateway sees TCP
    # over mTLS); measured above all with a new connection per request (connections per second, CPU per
    # connection).
    "L0": ("tcp_proxy", 0),
    "L1": ("empty_wasm_l4", 0),
    "L2": ("egress_identity_l4", 1000),
}
L4_KINDS = ("tcp_proxy", "empty_wasm_l4", "egress_identity_l4")
DESCRIPTION = {
    "A": "Envoy router only",
    "B": "native RBAC, equivalent policy, 1,000 rules",
    "C": "empty proxy-wasm filter (Rust, V8)",
    "D": "egress-identity, 1,000 rules",
    "D10": "egress-identity, 10 rules",
    "D10k": "egress-identity, 10,000 rules",
    "L0": "L4: tcp_proxy alone",
    "L1": "L4: empty network Wasm filter + tcp_proxy (early data)",
    "L2": "L4: egress-identity network filter, 1,000 rules + tcp_proxy (early data)",
}
# The ladder (--ladder, filter/src/bench_ladder.rs): rung N runs the first N steps of the filter; rungs before
# the header sets are routed to the caller's cluster directly (nothing names it yet).
LADDER_STEPS = [
    "nothing (context creation, dispatch)",
    "+ peer-certificate digest read",
    "+ certificate-cache lookup (principal resolved)",
    "+ header reads (:authority, :path)",
    "+ decision (1,000 rules)",
    "+ internal header sets (route by cluster header)",
    "+ audit record (filter state)",
    "+ counters (the whole filter)",
]
LADDER_FIRST_ROUTED = 5
# Variants also measured with a new downstream connection per request.
NEWCONN_VARIANTS = ["A", "C", "D", "L0", "L1", "L2"]


def gw_port(i):
    return BASE + i  # 28400..


def gw_admin(i):
    return BASE + 100 + i  # 28500..


def client_port(i, newconn):
    return BASE + (300 if newconn else 200) + i  # 28600.. keep-alive, 28700.. new connections


# ------------------------------------------------------------------------------------------------- configs


def sds(name):
    return {
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": f"sds/{name}.yaml", "watched_directory": {"path": "sds"}},
        },
    }


def l4_filters(kind, rules, run_dir, port, wasm_file):
    """The network filters of an L4 variant: [the Wasm network filter], then tcp_proxy. With a Wasm filter,
    tcp_proxy is configured as `render envoy` does for egress-identity (early data, connect on data), so L2/L1
    is the filter's own cost."""
    filters = []
    proxy = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
             "stat_prefix": "egress_l4", "cluster": policy.CALLER_CLUSTER}
    if kind != "tcp_proxy":
        name, filename, configuration = (
            ("empty-l4", os.path.join(run_dir, "empty_filter.wasm"), "{}") if kind == "empty_wasm_l4"
            else ("egress-identity-l4", os.path.join(run_dir, wasm_file),
                  json.dumps(policy.l4_plugin_config(rules, port), separators=(",", ":")))
        )
        filters.append({
            "name": "envoy.filters.network.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
                "config": {
                    "name": name, "root_id": name, "fail_open": False,
                    "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": filename}}},
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
                },
            },
        })
        proxy.update({"upstream_connect_mode": "ON_DOWNSTREAM_DATA", "max_early_data_bytes": 65536})
        if kind == "egress_identity_l4":
            proxy["cluster"] = "egress-identity-unrouted"
    filters.append({"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy})
    return filters


def gateway_bootstrap(i, kind, rules, run_dir, wasm_file="egress_identity.wasm", fixed_route=False,
                      root_id="egress-identity", extra_config=None):
    """The gateway under test: envoy/gateway.yaml's listener (downstream mTLS from file SDS, header_mutation,
    the variant's filter, router) and the caller's per-identity cluster (upstream mTLS to the partner); for
    the L4 variants its egress-l4 listener (tls_inspector, mTLS without ALPN, network filters, tcp_proxy).
    No access log in any variant (it would dominate and is the same for all)."""
    header_mutation = {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {
                "request_mutations": [
                    {"remove": "x-egress-identity-principal"},
                    {"remove": "x-egress-identity-cluster"},
                ]
            },
        },
    }

    def wasm(name, filename, configuration, root=None):
        return {
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": name,
                    "root_id": root or name,
                    "fail_open": False,
                    "vm_config": {
                        "vm_id": name,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": filename}},
                    },
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration},
                },
            },
        }

    filters = [header_mutation]
    route = {"cluster": policy.CALLER_CLUSTER, "timeout": "30s"}
    if kind == "rbac":
        filters += policy.rbac_filters(rules)
    elif kind == "empty_wasm":
        filters.append(wasm("empty", os.path.join(run_dir, "empty_filter.wasm"), "{}"))
    elif kind == "probe":  # `rules` is the probe's list of host calls (bench/empty-filter)
        filters.append(wasm("empty", os.path.join(run_dir, "empty_filter.wasm"), rules))
        if "set_cluster_header" in rules:
            route = {"cluster_header": "x-egress-identity-cluster", "timeout": "30s"}
    elif kind == "egress_identity":
        filters.append(
            wasm(
                "egress-identity",
                os.path.join(run_dir, wasm_file),
                json.dumps({**policy.plugin_config(rules), **(extra_config or {})}, separators=(",", ":")),
                root_id,
            )
        )
        if not fixed_route:
            route = {"cluster_header": "x-egress-identity-cluster", "timeout": "30s"}
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "egress",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "forward_client_cert_details": "SANITIZE",
        "route_config": {
            "name": "egress",
            "virtual_hosts": [
                {
                    "name": "egress",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": route,
                            "request_headers_to_remove": [
                                "x-egress-identity-principal",
                                "x-egress-identity-cluster",
                                "x-forwarded-client-cert",
                            ],
                        }
                    ],
                }
            ],
        },
        "http_filters": filters,
    }
    l4 = kind in L4_KINDS
    common_tls = {
        "tls_certificate_sds_secret_configs": [sds("gateway-cert")],
        "validation_context_sds_secret_config": sds("mesh-ca"),
    }
    if not l4:
        common_tls = {"alpn_protocols": ["h2", "http/1.1"], **common_tls}
    listener = {
        "name": "egress-l4" if l4 else "egress",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": gw_port(i)}},
        "filter_chains": [
            {
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": True,
                        "common_tls_context": common_tls,
                    },
                },
                "filters": l4_filters(kind, rules, run_dir, gw_port(i), wasm_file) if l4
                else [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
            }
        ],
    }
    if l4:
        listener["listener_filters"] = [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
        }]
    return {
        "node": {"id": f"bench-gateway-{i}", "cluster": "bench-gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": gw_admin(i)}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": [
                {
                    "name": policy.CALLER_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": policy.CALLER_CLUSTER,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": PARTNER_PORT}}}}]}],
                    },
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            "sni": policy.HOST,
                            "common_tls_context": {
                                "tls_certificate_sds_secret_configs": [sds("external-team.app1")],
                                "combined_validation_context": {
                                    "default_validation_context": {
                                        "match_typed_subject_alt_names": [
                                            {"san_type": "DNS", "matcher": {"exact": policy.HOST}}
                                        ]
                                    },
                                    "validation_context_sds_secret_config": sds("partner-ca"),
                                },
                            },
                        },
                    },
                }
            ],
        },
    }


def client_bootstrap(names, pki):
    """wrk -> (plain HTTP/1.1) -> client Envoy -> (mTLS with the workload certificate of app1) -> gateway.
    Per gateway: a keep-alive listener/cluster and one whose upstream connections carry one request each."""
    listeners, clusters = [], []
    for i, _ in enumerate(names):
        for newconn in (False, True):
            cname = f"gw{i}{'-newconn' if newconn else ''}"
            listeners.append(
                {
                    "name": f"to-{cname}",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": client_port(i, newconn)}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": cname,
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": cname, "host_rewrite_literal": policy.HOST, "timeout": "30s"},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            )
            common = {"max_requests_per_connection": 1} if newconn else {}
            clusters.append(
                {
                    "name": cname,
                    "type": "STATIC",
                    "connect_timeout": "5s",
                    "circuit_breakers": {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}]},
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http_protocol_options": {}},
                            "common_http_protocol_options": common,
                        }
                    },
                    "load_assignment": {
                        "cluster_name": cname,
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": gw_port(i)}}}}]}],
                    },
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            # The L4 listener names the destination by SNI; the HTTP one by :authority.
                            "sni": policy.HOST if VARIANTS[names[i]][0] in L4_KINDS else "egress-gateway.local",
                            "common_tls_context": {
                                "alpn_protocols": ["http/1.1"],
                                "tls_certificates": [
                                    {
                                        "certificate_chain": {"filename": os.path.join(pki, "workloads/team-app1.crt")},
                                        "private_key": {"filename": os.path.join(pki, "workloads/team-app1.key")},
                                    }
                                ],
                                "validation_context": {"trusted_ca": {"filename": os.path.join(pki, "mesh-ca.crt")}},
                            },
                        },
                    },
                }
            )
    return {
        "node": {"id": "bench-client", "cluster": "bench-client"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": CLIENT_ADMIN}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid logs/partner-nginx.pid;
error_log logs/partner-error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path logs/tmp-body; proxy_temp_path logs/tmp-proxy; fastcgi_temp_path logs/tmp-fastcgi;
    uwsgi_temp_path logs/tmp-uwsgi; scgi_temp_path logs/tmp-scgi;
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {host};
        ssl_certificate pki/external/api.partner.example.crt;
        ssl_certificate_key pki/external/api.partner.example.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate pki/partner-ca.crt;
        ssl_verify_client on;
        location / {{ default_type text/plain; return 200 "ok $ssl_client_s_dn\\n"; }}
    }}
}}
"""

# ------------------------------------------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the benchmark


class Procs:
    def __init__(self):
        self.procs = []

    def spawn(self, name, args, cwd, log):
        f = open(log, "wb")
        p = subprocess.Popen(args, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        p.bench_name, p.bench_log = name, log
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_ready(proc, admin_port, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.bench_name} exited ({proc.returncode}); log {proc.bench_log}:\n{tail(proc.bench_log)}")
        try:
            if http_get(f"http://127.0.0.1:{admin_port}/ready", 1)[1].strip() == "LIVE":
                return time.time() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{proc.bench_name} not ready after {timeout}s; log {proc.bench_log}:\n{tail(proc.bench_log)}")


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def stats(admin_port, pattern):
    body = http_get(f"http://127.0.0.1:{admin_port}/stats?filter={pattern}")[1]
    out = {}
    for line in body.splitlines():
        k, _, v = line.partition(": ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def rq_2xx(admin_port):
    return stats(admin_port, r"^http\.egress\.downstream_rq_(2xx|completed)$")


# ------------------------------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(port, duration, connections):
    args = [WRK, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Host: {policy.HOST}", f"http://127.0.0.1:{port}/bench"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    res = {"raw": out}
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        res[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1) if m else ""
    return res


def measure(name, i, pid, duration, connections, newconn):
    before_rq = rq_2xx(gw_admin(i))
    t0, c0 = time.time(), cpu_ticks(pid)
    w = run_wrk(client_port(i, newconn), duration, connections)
    c1, t1 = cpu_ticks(pid), time.time()
    after_rq = rq_2xx(gw_admin(i))
    ok = after_rq.get("http.egress.downstream_rq_2xx", 0) - before_rq.get("http.egress.downstream_rq_2xx", 0)
    done = after_rq.get("http.egress.downstream_rq_completed", 0) - before_rq.get("http.egress.downstream_rq_completed", 0)
    if VARIANTS[name][0] in L4_KINDS:
        # The gateway sees connections, not requests: count what wrk got back (2xx, from the partner).
        ok = done = w["requests"] - w["non2xx"]
    cpu_s = (c1 - c0) / CLK_TCK
    return {
        "variant": name,
        "newconn": newconn,
        "wall_s": t1 - t0,
        "cpu_s": cpu_s,
        "gateway_2xx": ok,
        "gateway_completed": done,
        "cpu_us_per_rq": cpu_s * 1e6 / ok if ok else float("nan"),
        "cpu_cores": cpu_s / (t1 - t0),
        **{k: v for k, v in w.items() if k != "raw"},
    }


# ------------------------------------------------------------------------------------------------- main


def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0:3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--newconn-rounds", type=int, default=3)
    ap.add_argument("--newconn-duration", type=int, default=4)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--check", action="store_true", help="only write and validate every Envoy config (envoy --mode validate)")
    ap.add_argument(
        "--wasm-variant",
        action="append",
        default=[],
        metavar="NAME=PATH[@fixed-route]",
        help="an extra variant: egress-identity's configuration (1,000 rules) run by another .wasm, for A/B "
        "experiments; @fixed-route routes to the caller's cluster directly instead of by the cluster header",
    )
    ap.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="NAME=CALLS",
        help="an extra variant: the empty filter making these host calls per request, e.g. "
        "'set_cluster_header;get_header:10' (bench/empty-filter/src/lib.rs); routed by the cluster header "
        "when CALLS sets it",
    )
    ap.add_argument(
        "--config-variant",
        action="append",
        default=[],
        metavar="NAME=KEY:JSON",
        help="an extra variant: egress-identity (dist build, 1,000 rules) with one more top-level configuration "
        "key, e.g. 'DN=auditRecord:\"none\"'",
    )
    ap.add_argument(
        "--instructions",
        type=int,
        default=0,
        metavar="N",
        help="instead of timing: run each variant's gateway under valgrind's callgrind and count the "
        "instructions it executes for N sequential requests (after a warm-up): deterministic, unlike CPU time",
    )
    ap.add_argument(
        "--ladder",
        action="store_true",
        help="also measure the rungs R0..R7 of the ladder: the filter built with the bench-ladder feature "
        "(RUN/egress_identity_ladder.wasm, made by run.sh) stopped after each step (filter/src/bench_ladder.rs)",
    )
    a = ap.parse_args()
    extra = []  # variants added by --probe / --wasm-variant, measured in every round after the others

    def add_variant(option, spec, ok, kind, rules, description):
        name = spec.partition("=")[0]
        if not name or not ok or name in VARIANTS:
            raise SystemExit(f"{option} {spec!r}: see --help")
        VARIANTS[name], DESCRIPTION[name] = (kind, rules), description
        extra.append(name)
        return name

    for spec in a.probe:
        calls = spec.partition("=")[2]
        add_variant("--probe", spec, bool(calls), "probe", calls, f"empty filter + {calls}")
    wasm_files, fixed_routes = {}, set()
    for spec in a.wasm_variant:
        path = spec.partition("=")[2]
        fixed = path.endswith("@fixed-route")
        path = path.removesuffix("@fixed-route")
        desc = f"egress-identity, 1,000 rules, {os.path.basename(path)}" + (", fixed route" if fixed else "")
        name = add_variant("--wasm-variant", spec, os.path.isfile(path), "egress_identity", 1000, desc)
        wasm_files[name] = os.path.abspath(path)
        if fixed:
            fixed_routes.add(name)
    extra_config = {}
    for spec in a.config_variant:
        key, _, value = spec.partition("=")[2].partition(":")
        name = add_variant("--config-variant", spec, bool(key and value), "egress_identity", 1000,
                           f"egress-identity, 1,000 rules, {key}: {value}")
        extra_config[name] = {key: json.loads(value)}
    root_ids = {}
    if a.ladder:
        for rung, step in enumerate(LADDER_STEPS):
            name = add_variant("--ladder", f"R{rung}=", True, "egress_identity", 1000, f"ladder rung {rung}: {step}")
            wasm_files[name] = "egress_identity_ladder.wasm"
            root_ids[name] = f"egress-identity-rung-{rung}"
            if rung < LADDER_FIRST_ROUTED:
                fixed_routes.add(name)
    a.variants = ",".join([v for v in a.variants.split(",") if v and v not in extra] + extra)
    names = [v for v in a.variants.split(",") if v]
    for v in names:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v}")
    run = os.path.abspath(a.run_dir)
    os.makedirs(os.path.join(run, "logs"), exist_ok=True)
    pki = os.path.join(run, "pki")

    configs = {}
    for i, v in enumerate(names):
        kind, rules = VARIANTS[v]
        path = os.path.join(run, f"gateway-{v}.json")
        with open(path, "w") as f:
            json.dump(gateway_bootstrap(i, kind, rules, run, wasm_files.get(v, "egress_identity.wasm"), v in fixed_routes,
                                        root_ids.get(v, "egress-identity"), extra_config.get(v, {})), f)
        configs[v] = path
    client_cfg = os.path.join(run, "client.json")
    with open(client_cfg, "w") as f:
        json.dump(client_bootstrap(names, pki), f)
    with open(os.path.join(run, "partner-nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(port=PARTNER_PORT, host=policy.HOST))

    if a.check:
        bad = 0
        for v, path in list(configs.items()) + [("client", client_cfg)]:
            r = subprocess.run([ENVOY, "--mode", "validate", "-c", path, "-l", "error"], cwd=run, capture_output=True, text=True)
            print(f"  {v:6s} {os.path.basename(path)}: {'OK' if r.returncode == 0 else 'INVALID'}")
            if r.returncode:
                bad += 1
                print(r.stdout[-3000:], r.stderr[-3000:])
        r = subprocess.run([NGINX, "-t", "-p", run + "/", "-c", "partner-nginx.conf", "-e", "logs/partner-error.log"], capture_output=True, text=True)
        print(f"  nginx  partner-nginx.conf: {'OK' if r.returncode == 0 else 'INVALID'}")
        if r.returncode:
            bad += 1
            print(r.stderr[-2000:])
        sys.exit(1 if bad else 0)

    if a.instructions:
        return count_instructions(names, configs, client_cfg, run, a.instructions)

    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        procs.spawn("partner nginx", [NGINX, "-p", run + "/", "-c", "partner-nginx.conf", "-e", "logs/partner-error.log"], run, os.path.join(run, "logs/nginx.log"))
        gateways, ready_s = {}, {}
        for i, v in enumerate(names):
            p = procs.spawn(
                f"gateway {v}",
                [ENVOY, "-c", configs[v], "--concurrency", "1", "--disable-hot-restart", "-l", "warning", "--log-path", os.path.join(run, f"logs/gateway-{v}.log")],
                run,
                os.path.join(run, f"logs/gateway-{v}.out"),
            )
            ready_s[v] = wait_ready(p, gw_admin(i))
            gateways[v] = (i, p)
            print(f"gateway {v:5s} ({DESCRIPTION[v]}): pid {p.pid}, port {gw_port(i)}, ready in {ready_s[v]:.1f}s, RSS {rss_mb(p.pid):.0f} MB", flush=True)
        cp = procs.spawn("client envoy", [ENVOY, "-c", client_cfg, "--concurrency", "1", "--disable-hot-restart", "-l", "warning"], run, os.path.join(run, "logs/client.out"))
        wait_ready(cp, CLIENT_ADMIN)

        # Smoke: every variant answers 200 from the partner, as team.app1.
        for v, (i, _) in gateways.items():
            for newconn in (False, True):
                status, body = http_get(f"http://127.0.0.1:{client_port(i, newconn)}/bench")
                if status != 200 or "team.app1" not in body:
                    raise SystemExit(f"variant {v}: smoke request failed: {status} {body!r}")
        print("smoke: every variant answers 200 from the partner as CN=team.app1", flush=True)

        # Warm-up (V8 tiering, connection pools, caches): not measured.
        for v, (i, p) in gateways.items():
            run_wrk(client_port(i, False), 2, a.connections)

        results = []

        def series(variants, rounds, duration, newconn):
            for r in range(rounds):
                for v in variants:
                    i, p = gateways[v]
                    m = measure(v, i, p.pid, duration, a.connections, newconn)
                    m["round"] = r
                    results.append(m)
                    cores = "" if newconn else f"  gateway {m['cpu_cores']:.2f} cores"
                    print(f"  round {r} {v:5s} {m['cpu_us_per_rq']:7.1f} us CPU/rq  {m['rps']:8.0f} rps  p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms{cores}  non2xx {m['non2xx']}", flush=True)

        print(f"\n{a.rounds} rounds x {len(names)} variants x {a.duration:g}s, {a.connections} keep-alive connections, load {loadavg()}", flush=True)
        series(names, a.rounds, a.duration, False)
        nc_names = [v for v in NEWCONN_VARIANTS if v in gateways]
        if a.newconn_rounds and nc_names:
            print(f"\nnew connection per request: {a.newconn_rounds} rounds x {nc_names} x {a.newconn_duration:g}s", flush=True)
            series(nc_names, a.newconn_rounds, a.newconn_duration, True)

        time.sleep(1.5)  # egress-identity hands its counters to Envoy once a second
        cache = {}
        for v, (i, _) in gateways.items():
            if VARIANTS[v][0] in ("egress_identity", "egress_identity_l4"):
                s = stats(gw_admin(i), "certificate_cache")
                hits = sum(val for k, val in s.items() if k.endswith("certificate_cache_hits_total"))
                misses = sum(val for k, val in s.items() if k.endswith("certificate_cache_misses_total"))
                cache[v] = {"hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else float("nan")}
        tls = {v: stats(gw_admin(i), r"^listener\.127\.0\.0\.1_\d+\.ssl\.handshake$") for v, (i, _) in gateways.items()}
        rss = {v: rss_mb(p.pid) for v, (_, p) in gateways.items()}
        errors = [m for m in results if m["non2xx"] or m["socket_errors"]]
    finally:
        procs.stop()

    summary = summarize(results, names, nc_names, cache, ready_s, rss, tls, a)
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump({"results": results, "cache": cache, "ready_s": ready_s, "rss_mb": rss, "tls_handshakes": tls, "args": vars(a)}, f, indent=1)
    with open(os.path.join(run, "summary.md"), "w") as f:
        f.write(summary)
    print("\n" + summary)
    print(f"raw results: {os.path.join(run, 'results.json')}")
    if errors:
        print(f"WARNING: {len(errors)} measurements had non-2xx responses or socket errors", file=sys.stderr)
        sys.exit(1)


def count_instructions(names, configs, client_cfg, run, n, warmup=200):
    """Instructions per request of each gateway (valgrind --tool=callgrind, counters zeroed after a warm-up,
    dumped after `n` sequential requests through the client Envoy; an idle window of the same length is
    subtracted, so timers do not count). Deterministic to within a fraction of a percent, where CPU time on
    this VM varies by +-15 %: what the ladder's small steps need."""
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    try:
        procs.spawn("partner nginx", [NGINX, "-p", run + "/", "-c", "partner-nginx.conf", "-e", "logs/partner-error.log"], run, os.path.join(run, "logs/nginx.log"))
        cp = procs.spawn("client envoy", [ENVOY, "-c", client_cfg, "--concurrency", "1", "--disable-hot-restart", "-l", "warning"], run, os.path.join(run, "logs/client.out"))
        wait_ready(cp, CLIENT_ADMIN)

        def dump(pid, label):
            subprocess.run(["callgrind_control", f"--dump={label}", str(pid)], check=True, capture_output=True)
            for f in sorted(glob.glob(os.path.join(run, f"callgrind.out.{pid}.*")), key=os.path.getmtime, reverse=True):
                with open(f) as fh:
                    text = fh.read()
                if f"desc: Trigger: dump {label}\n" in text:
                    m = re.search(r"^summary: (\d+)", text, re.M)
                    return int(m.group(1))
            raise SystemExit(f"no callgrind dump {label} for {pid}")

        # Started together (valgrind is single-threaded: both cores start them), measured one at a time.
        gateways = {}
        for i, v in enumerate(names):
            gateways[v] = procs.spawn(
                f"gateway {v} (callgrind)",
                ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", f"--callgrind-out-file={run}/callgrind.out.%p",
                 ENVOY, "-c", configs[v], "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
                run,
                os.path.join(run, f"logs/gateway-{v}.callgrind.out"),
            )
        for i, v in enumerate(names):
            wait_ready(gateways[v], gw_admin(i), timeout=1800)
        print(f"callgrind: {len(names)} gateways ready", flush=True)
        for i, v in enumerate(names):
            p = gateways[v]
            url = f"http://127.0.0.1:{client_port(i, False)}/bench"
            deadline = time.time() + 300  # the first requests under valgrind may time out in the client
            while True:
                try:
                    status, body = http_get(url, 60)
                    break
                except OSError as e:
                    if time.time() > deadline:
                        raise SystemExit(f"variant {v}: no answer: {e}")
                    time.sleep(1)
            for _ in range(warmup):
                status, body = http_get(url, 60)
                if status != 200 or "team.app1" not in body:
                    raise SystemExit(f"variant {v}: request failed: {status} {body!r}")
            subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
            start = time.time()
            for _ in range(n):
                http_get(url, 60)
            busy = dump(p.pid, "busy")
            elapsed = time.time() - start
            subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
            time.sleep(elapsed)
            idle = dump(p.pid, "idle")
            rows.append({"variant": v, "requests": n, "busy_ir": busy, "idle_ir": idle, "ir_per_rq": (busy - idle) / n})
            print(f"  {v:5s} {(busy - idle) / n:12.0f} instructions/request  (busy {busy}, idle {idle}, {elapsed:.1f}s)", flush=True)
            p.terminate()
            p.wait(timeout=120)
    finally:
        procs.stop()
    by = {r["variant"]: r["ir_per_rq"] for r in rows}
    out = [f"Instructions per request (callgrind, {n} sequential requests after {warmup} warm-up, idle subtracted):\n",
           "| variant | | instructions/request | step (vs the variant before) | /C |", "|---|---|---:|---:|---:|"]
    prev = None
    for r in rows:
        v = r["variant"]
        step = f"{r['ir_per_rq'] - by[prev]:+.0f}" if prev else ""
        ratio = f"{r['ir_per_rq'] / by['C']:.3f}" if "C" in by else ""
        out.append(f"| {v} | {DESCRIPTION[v]} | {r['ir_per_rq']:.0f} | {step} | {ratio} |")
        prev = v
    summary = "\n".join(out) + "\n"
    with open(os.path.join(run, "instructions.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(run, "instructions.md"), "w") as f:
        f.write(summary)
    print("\n" + summary)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def summarize(results, names, nc_names, cache, ready_s, rss, tls, a):
    def rows(newconn):
        return [m for m in results if m["newconn"] == newconn]

    out = []
    out.append(f"Keep-alive: {a.rounds} rounds x {a.duration:g}s per variant, {a.connections} connections (medians over rounds)\n")
    out.append("| variant | | gateway CPU µs/request | requests/s | p50 ms | p99 ms | gateway CPU (cores) | RSS MB | ready s |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for v in names:
        ms = [m for m in rows(False) if m["variant"] == v]
        out.append(
            f"| {v} | {DESCRIPTION[v]} | {med([m['cpu_us_per_rq'] for m in ms]):.1f} | {med([m['rps'] for m in ms]):.0f} | "
            f"{med([m['p50_ms'] for m in ms]):.2f} | {med([m['p99_ms'] for m in ms]):.2f} | {med([m['cpu_cores'] for m in ms]):.2f} | {rss.get(v, float('nan')):.0f} | {ready_s.get(v, float('nan')):.1f} |"
        )

    def paired(num, den, newconn=False, key="cpu_us_per_rq"):
        by = {}
        for m in rows(newconn):
            by.setdefault(m["round"], {})[m["variant"]] = m[key]
        rs = [d[num] / d[den] for d in by.values() if num in d and den in d and d[den]]
        return med(rs), rs

    out.append("\nPaired ratios of gateway CPU per request (per round, then the median; min-max over rounds):\n")
    out.append("| ratio | median | range |")
    out.append("|---|---:|---|")
    for num, den in (("D", "A"), ("D", "B"), ("D", "C"), ("C", "A"), ("B", "A"), ("D10", "C"), ("D10k", "C"), ("D10k", "D10"), ("D", "D10"), ("L2", "L1"), ("L2", "L0"), ("L1", "L0")):
        if num in names and den in names:
            m, rs = paired(num, den)
            out.append(f"| {num}/{den} | {m:.3f} | {min(rs):.3f}-{max(rs):.3f} |" if rs else f"| {num}/{den} | n/a | |")
    rungs = [f"R{k}" for k in range(len(LADDER_STEPS)) if f"R{k}" in names]
    if rungs:
        out.append("\nThe ladder: each rung adds one step of the filter; a step's cost is the paired difference to the rung\nbefore (R0: to C, the empty filter), per round, then the median and the interquartile range:\n")
        out.append("| rung | step | µs/request | step µs (median) | step µs (IQR) | rung/C |")
        out.append("|---|---|---:|---:|---|---:|")
        for k, v in enumerate(rungs):
            ms = [m for m in rows(False) if m["variant"] == v]
            below = "C" if k == 0 else rungs[k - 1]
            by = {}
            for m in rows(False):
                by.setdefault(m["round"], {})[m["variant"]] = m["cpu_us_per_rq"]
            diffs = sorted(d[v] - d[below] for d in by.values() if v in d and below in d)
            q = lambda f: diffs[min(len(diffs) - 1, int(f * len(diffs)))] if diffs else float("nan")
            ratio = paired(v, "C")[0] if "C" in names else float("nan")
            out.append(f"| {v} | {LADDER_STEPS[k]} | {med([m['cpu_us_per_rq'] for m in ms]):.1f} | {med(diffs) if diffs else float('nan'):.2f} | {q(0.25):.2f}–{q(0.75):.2f} | {ratio:.3f} |")
    others = [v for v in names if v not in rungs and v not in ("A", "B", "C", "D", "D10", "D10k", "L0", "L1", "L2")]
    if others and "C" in names:
        out.append("\nOther variants, paired against C and D:\n")
        out.append("| variant | /C median | range | /D median |")
        out.append("|---|---:|---|---:|")
        for v in others:
            m, rs = paired(v, "C")
            d = paired(v, "D")[0] if "D" in names else float("nan")
            out.append(f"| {v} | {m:.3f} | {min(rs):.3f}-{max(rs):.3f} | {d:.3f} |" if rs else f"| {v} | n/a | | |")
    if nc_names and any(m["newconn"] for m in results):
        out.append("\nNew downstream connection (mTLS handshake, TLS session resumption allowed) per request; for the L4\nvariants, requests/s is connections/s and CPU per request is CPU per connection (each a new upstream mTLS\nconnection too):\n")
        out.append("| variant | gateway CPU µs/request | requests/s | p50 ms | p99 ms |")
        out.append("|---|---:|---:|---:|---:|")
        for v in nc_names:
            ms = [m for m in rows(True) if m["variant"] == v]
            out.append(f"| {v} | {med([m['cpu_us_per_rq'] for m in ms]):.1f} | {med([m['rps'] for m in ms]):.0f} | {med([m['p50_ms'] for m in ms]):.2f} | {med([m['p99_ms'] for m in ms]):.2f} |")
        for num, den in (("D", "A"), ("D", "C"), ("L2", "L1"), ("L2", "L0"), ("L1", "L0")):
            if num in nc_names and den in nc_names:
                m, rs = paired(num, den, True)
                out.append(f"\nnew connections, paired {num}/{den}: {m:.3f} ({min(rs):.3f}-{max(rs):.3f})")
    out.append("\nCertificate cache (egress-identity gateways, whole run incl. warm-up and smoke):\n")
    for v, c in cache.items():
        out.append(f"- {v}: hits {c['hits']}, misses {c['misses']}, hit rate {c['hit_rate']:.5f}; downstream TLS handshakes {sum(tls.get(v, {}).values())}")
    out.append(f"\nload average at the end: {' '.join(loadavg())}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
