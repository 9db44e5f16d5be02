"""Benchmark policies of N rules: the egress-identity plugin configuration and the equivalent native RBAC.

The shape (core/benches/decision.rs builds the very same document in Rust; keep them in sync):

  gateway layer      DENY  "deny-blocked":   N rules, rule i: principals ["cluster.local/ns/blocked-<i>/*"] (prefix)
                     ALLOW "allow-callers":  N rules, rule i < N-1: principals ["cluster.local/ns/other-<i>/sa/app"],
                                             the LAST rule: the benchmark caller cluster.local/ns/team/sa/app1
  identities         declared once each: svc-<i> (cluster.local/ns/other-<i>/sa/app, i < N-1), other-<i>
                     (cluster.local/ns/other-<i>/sa/*, i < N-1) and, LAST, team.app1 (the benchmark caller)
  destinations       N: svc-<i>.partner.example:443 (i < N-1, each allow-all presenting svc-<i>) and, LAST,
                     partner-api = api.partner.example:443
  partner-api layer  DENY  "deny-paths":     N rules, rule i: paths ["/admin-<i>*"] (prefix)
                     ALLOW "allow-callers":  as in the gateway layer (the caller matches the last rule)
  partner-api ids    N identities in order, other-0 .. other-<N-2> then team.app1: the caller's is the LAST,
                     cluster partner-api|team-app1 (derived: <destination>|<identity, '.' -> '-'>)

so the benchmark caller (GET api.partner.example/bench) is allowed, but only after every DENY rule of both
layers missed, by the last ALLOW rule of both layers, and mapped by the last mapping: the worst case of a
first-match evaluator. Other callers (blocked-*, quarantine) stay denied.
"""

CALLER = "spiffe://cluster.local/ns/team/sa/app1"
CALLER_CLUSTER = "partner-api|team-app1"
HOST = "api.partner.example"


def _allow_rules(n):
    rules = [{"from": [{"source": {"principals": [f"cluster.local/ns/other-{i}/sa/app"]}}]} for i in range(n - 1)]
    rules.append({"from": [{"source": {"principals": ["cluster.local/ns/team/sa/app1"]}}]})
    return rules


def plugin_config(n):
    """The egress-identity policy with N rules per list (see the module doc): a plain Envoy plugin
    configuration (it names no platform)."""
    assert n >= 1
    identities = [{"name": f"svc-{i}", "principals": [f"cluster.local/ns/other-{i}/sa/app"]} for i in range(n - 1)]
    identities += [{"name": f"other-{i}", "principals": [f"cluster.local/ns/other-{i}/sa/*"]} for i in range(n - 1)]
    identities.append({"name": "team.app1", "principals": [CALLER]})
    destinations = [
        {
            "name": f"svc-{i}",
            "host": f"svc-{i}.partner.example",
            "port": 443,
            "policies": [{"name": "allow-all", "action": "ALLOW", "rules": [{}]}],
            "identities": [f"svc-{i}"],
        }
        for i in range(n - 1)
    ]
    destinations.append(
        {
            "name": "partner-api",
            "host": HOST,
            "port": 443,
            "policies": [
                {
                    "name": "deny-paths",
                    "action": "DENY",
                    "rules": [{"to": [{"operation": {"paths": [f"/admin-{i}*"]}}]} for i in range(n)],
                },
                {"name": "allow-callers", "action": "ALLOW", "rules": _allow_rules(n)},
            ],
            "identities": [f"other-{i}" for i in range(n - 1)] + ["team.app1"],
        }
    )
    return {
        "localTrustDomain": "cluster.local",
        "trustDomainAliases": ["example.com", "example.org"],
        "identities": identities,
        "gateway": {
            "policies": [
                {
                    "name": "deny-blocked",
                    "action": "DENY",
                    "rules": [
                        {"from": [{"source": {"principals": [f"cluster.local/ns/blocked-{i}/*"]}}]} for i in range(n)
                    ],
                },
                {"name": "allow-callers", "action": "ALLOW", "rules": _allow_rules(n)},
            ]
        },
        "destinations": destinations,
    }


def _principal(exact=None, prefix=None):
    m = {"exact": exact} if exact is not None else {"prefix": prefix}
    return {"authenticated": {"principal_name": m}}


def _rbac(action, policies):
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": policies},
        },
    }


def rbac_filters(n):
    """Envoy's native RBAC with the same allow/deny outcome for the same N rules: three filters, as Istio
    generates them (DENY first, then one ALLOW filter per layer, since a request must pass both layers).
    RBAC has no destination table and no identity mapping: the route names the caller's cluster."""
    allow_principals = [_principal(exact=f"spiffe://cluster.local/ns/other-{i}/sa/app") for i in range(n - 1)]
    allow_principals.append(_principal(exact=CALLER))
    authority = {"header": {"name": ":authority", "string_match": {"exact": HOST}}}
    deny = _rbac(
        "DENY",
        {
            "deny-blocked": {
                "permissions": [{"any": True}],
                "principals": [
                    {"or_ids": {"ids": [_principal(prefix=f"spiffe://cluster.local/ns/blocked-{i}/") for i in range(n)]}}
                ],
            },
            "deny-paths": {
                "permissions": [
                    {
                        "and_rules": {
                            "rules": [
                                authority,
                                {
                                    "or_rules": {
                                        "rules": [
                                            {"url_path": {"path": {"prefix": f"/admin-{i}"}}} for i in range(n)
                                        ]
                                    }
                                },
                            ]
                        }
                    }
                ],
                "principals": [{"any": True}],
            },
        },
    )
    gateway_allow = _rbac(
        "ALLOW",
        {"allow-callers": {"permissions": [{"any": True}], "principals": [{"or_ids": {"ids": allow_principals}}]}},
    )
    destination_allow = _rbac(
        "ALLOW",
        {"allow-callers": {"permissions": [authority], "principals": [{"or_ids": {"ids": allow_principals}}]}},
    )
    return [deny, gateway_allow, destination_allow]


def l4_plugin_config(n, port):
    """The same shape for the network (L4) filter: the benchmark caller's destination is a `tcp` one on the
    gateway's L4 port, reached by SNI api.partner.example; its DENY list names N principal prefixes (paths
    mean nothing to a connection). Allowed only after every DENY rule missed, by the last ALLOW rule of both
    layers, and mapped by the last mapping."""
    config = plugin_config(n)
    partner = config["destinations"][-1]
    partner["protocol"] = "tcp"
    partner["port"] = port
    partner["policies"][0] = {
        "name": "deny-blocked",
        "action": "DENY",
        "rules": [{"from": [{"source": {"principals": [f"cluster.local/ns/blocked-dest-{i}/*"]}}]} for i in range(n)],
    }
    return config
