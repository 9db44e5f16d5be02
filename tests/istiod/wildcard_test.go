package istiod

// Dynamic destinations on the Istio egress gateway (issue 26): `render istio --mode gateway` of a policy with
// `*.partner.example` on two ports (and an exact b.partner.example beside it), run through istiod's generator.
// istiod itself puts no dynamic forward proxy on a gateway (gateway.go has no DFP code); the EnvoyFilter adds
// one DFP cluster per identity and the DFP HTTP filter. The checks: the filter order, the clusters the filter
// names for concrete hosts and ports exist as DFP clusters with the identity's Secret and auto SNI/SAN, the
// DNS caches of filter and clusters are one, the routes take the filter's cluster, and a request for a
// concrete host on either port finds that route.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dfpcluster "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	dfpfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"istio.io/istio/pilot/pkg/model"
)

// The wildcard policy, relative to the repository.
const wildcardPolicy = "tests/istiod/testdata/wildcard-policy.json"

// Each concrete call the checks route: the authority a sidecar forwards, the destination it reaches, and
// the caller the policy denies there, if any.
var wildcardCalls = []struct{ authority, host, port, destination, denied string }{
	{"a.partner.example:18443", "a.partner.example", "18443", "partner", "/app2"},
	{"a.partner.example:18446", "a.partner.example", "18446", "partner", "/app2"},
	{"b.partner.example:18446", "b.partner.example", "18446", "partner", ""},
	{"x.y.partner.example:18443", "x.y.partner.example", "18443", "partner", ""},
	{"b.partner.example", "b.partner.example", "", "api", ""},
}

// renderWildcard renders the wildcard policy for the gateway into the dump directory, with loopback allowed
// (the test's partners), and returns that directory.
func renderWildcard(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join(dumpDir(), "wildcard-gateway"))
	if err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(dir)
	out, code := cli(t, "render", "istio", "--mode", "gateway", inRepo(wildcardPolicy), "--allow-resolved", "127.0.0.0/8", "--out-dir", dir)
	if code != 0 {
		t.Fatalf("render istio: exit %d: %s", code, out)
	}
	return dir
}

// checkWildcardGateway checks istiod's output for the gateway of the wildcard policy.
func checkWildcardGateway(t *testing.T, g generated) problems {
	t.Helper()
	var p problems
	clusters := g.server.Clusters(g.proxy)
	routes := g.server.Routes(g.proxy)
	var l443 *listener.Listener
	for _, l := range g.server.Listeners(g.proxy) {
		if l.Name == fmt.Sprintf("0.0.0.0_%d", gatewayHTTPSPort) {
			l443 = l
		}
	}
	if l443 == nil {
		p.add("no listener on port %d", gatewayHTTPSPort)
		return p
	}
	// Sidecars send the DestinationRule subset's SNI: it must select the HTTPS server's chain.
	chain := chainFor(l443, "*.partner.example")
	if chain == nil {
		p.add("no filter chain of %s serves *.partner.example", l443.Name)
		return p
	}
	conn := connectionManager(t, chain)
	if conn == nil {
		p.add("no HTTP connection manager on the chain of *.partner.example")
		return p
	}
	// The filter decides (and sets the dynamic host and port) before the forward proxy resolves them,
	// before the router.
	ours, dfp, router := -1, -1, -1
	var cache *dfpcluster.ClusterConfig
	var filterCache proto.Message
	for i, f := range conn.HttpFilters {
		switch {
		case isOurs(f.Name, "egress-identity"):
			ours = i
		case f.Name == "envoy.filters.http.dynamic_forward_proxy":
			dfp = i
			fc := &dfpfilter.FilterConfig{}
			if err := f.GetTypedConfig().UnmarshalTo(fc); err != nil {
				t.Fatal(err)
			}
			if !fc.GetAllowDynamicHostFromFilterState() {
				p.add("the forward-proxy filter does not take the host from filter state: it would resolve the :authority, not what the filter allowed")
			}
			filterCache = fc.GetDnsCacheConfig()
		case f.Name == "envoy.filters.http.router":
			router = i
		}
	}
	if !(ours >= 0 && ours < dfp && dfp < router) {
		p.add("HTTP filters out of order: egress-identity %d, dynamic_forward_proxy %d, router %d (want the filter, then the forward proxy, then the router)", ours, dfp, router)
	}
	rc := conn.GetRds().GetRouteConfigName()
	var config *route.RouteConfiguration
	for _, r := range routes {
		if r.Name == rc {
			config = r
		}
	}
	if config == nil {
		p.add("no route configuration %s", rc)
		return p
	}
	for _, call := range wildcardCalls {
		vh := virtualHostFor(config, call.authority)
		if vh == nil {
			p.add("%s: no virtual host of %s matches it (domains: %v)", call.authority, rc, domains(config))
			continue
		}
		// Every route of the virtual host asks the filter (a wildcard's route may come first in an exact
		// host's virtual host), and the destination's own route is there.
		own := false
		for _, rt := range vh.Routes {
			own = own || rt.Name == call.destination
			if rt.GetRoute().GetClusterHeader() != "x-egress-identity-cluster" {
				p.add("%s: virtual host %s routes by %q to %v, not by the filter's header (the EnvoyFilter's route MERGE did not land)", call.authority, vh.Name, rt.Name, rt.GetAction())
			}
		}
		if !own {
			p.add("%s: virtual host %s has no route %q", call.authority, vh.Name, call.destination)
		}
		for _, caller := range callers {
			args := []string{"--principal", caller, "--host", call.host}
			if call.port != "" {
				args = append(args, "--port", call.port)
			}
			r := explain(t, wildcardPolicy, "istio-gateway", args...)
			if r.Decision.Decision != "allow" {
				if call.denied == "" || !strings.HasSuffix(caller, call.denied) {
					p.add("%s as %s: the filter denies it: %s", call.authority, caller, r.Decision.Reason)
				}
				continue
			}
			c := findCluster(clusters, r.Decision.Cluster)
			if c == nil {
				p.add("%s: the filter names cluster %q for %s, which istiod does not generate", call.authority, r.Decision.Cluster, caller)
				continue
			}
			sni, secret, ca := upstreamTLS(t, c)
			wantSecret := "kubernetes://egress-identity-" + strings.ReplaceAll(r.Decision.Identity, ".", "-")
			if secret != wantSecret || ca != wantSecret+"-cacert" {
				p.add("%s: cluster %s presents %q (CA %q), not the Secret of identity %s", call.authority, c.Name, secret, ca, r.Decision.Identity)
			}
			if call.destination == "api" {
				if sni != call.host || c.GetType().String() != "LOGICAL_DNS" {
					p.add("%s: the exact destination's cluster %s is %s with SNI %q", call.authority, c.Name, c.GetType(), sni)
				}
				continue
			}
			if sni != "" {
				p.add("%s: the forward-proxy cluster %s sends the fixed SNI %q, not the requested host's", call.authority, c.Name, sni)
			}
			if c.GetClusterType().GetName() != "envoy.clusters.dynamic_forward_proxy" || c.GetLbPolicy().String() != "CLUSTER_PROVIDED" {
				p.add("%s: cluster %s is not a dynamic forward proxy (%v, %s)", call.authority, c.Name, c.GetClusterType().GetName(), c.GetLbPolicy())
				continue
			}
			cache = &dfpcluster.ClusterConfig{}
			if err := c.GetClusterType().GetTypedConfig().UnmarshalTo(cache); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(cache.GetDnsCacheConfig(), filterCache) {
				p.add("%s: cluster %s's DNS cache differs from the forward-proxy filter's: the filter would fill a cache the cluster never reads", call.authority, c.Name)
			}
			opts := &httpopts.HttpProtocolOptions{}
			any := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
			if any == nil || any.UnmarshalTo(opts) != nil || !opts.GetUpstreamHttpProtocolOptions().GetAutoSni() || !opts.GetUpstreamHttpProtocolOptions().GetAutoSanValidation() {
				p.add("%s: cluster %s does not take SNI and the partner's name from the request (auto_sni, auto_san_validation)", call.authority, c.Name)
			}
		}
	}
	return p
}

// virtualHostFor is the virtual host Envoy picks for authority (exact domain, then the longest suffix
// wildcard, then the longest prefix wildcard, then "*"), as route/config_impl.cc does; without the port when
// the configuration ignores it (istiod sets ignore_port_in_host_matching on sidecars and gateways).
func virtualHostFor(rc *route.RouteConfiguration, authority string) *route.VirtualHost {
	if host, _, err := net.SplitHostPort(authority); err == nil && rc.GetIgnorePortInHostMatching() {
		authority = host
	}
	var suffix, prefix, any *route.VirtualHost
	suffixLen, prefixLen := -1, -1
	for _, vh := range rc.VirtualHosts {
		for _, d := range vh.Domains {
			switch {
			case d == authority:
				return vh
			case d == "*":
				any = vh
			case strings.HasPrefix(d, "*") && strings.HasSuffix(authority, d[1:]) && len(authority) > len(d)-1 && len(d) > suffixLen:
				suffix, suffixLen = vh, len(d)
			case strings.HasSuffix(d, "*") && strings.HasPrefix(authority, d[:len(d)-1]) && len(authority) > len(d)-1 && len(d) > prefixLen:
				prefix, prefixLen = vh, len(d)
			}
		}
	}
	switch {
	case suffix != nil:
		return suffix
	case prefix != nil:
		return prefix
	}
	return any
}

func domains(rc *route.RouteConfiguration) [][]string {
	var out [][]string
	for _, vh := range rc.VirtualHosts {
		out = append(out, vh.Domains)
	}
	return out
}

// A sidecar of the callers' namespace.
func sidecarProxy() *model.Proxy {
	labels := map[string]string{"app": "app1"}
	return &model.Proxy{
		Type:            model.SidecarProxy,
		Labels:          labels,
		Metadata:        &model.NodeMetadata{Labels: labels, Namespace: "team"},
		IPAddresses:     []string{"10.0.0.20"},
		ConfigNamespace: "team",
	}
}

// The egress gateway's cluster for a destination's DestinationRule subset, as a sidecar names it.
func gatewaySubsetCluster(subset string) string {
	return "outbound|443|" + subset + "|istio-egressgateway.istio-egress.svc.cluster.local"
}

// checkWildcardSidecar checks what a caller's sidecar does with the calls: the outbound route of the port the
// application calls sends each to the egress gateway's subset of its destination, over Istio mTLS with the
// subset's SNI, which one of the gateway server's names matches.
func checkWildcardSidecar(t *testing.T, g generated, gatewayNames []string) problems {
	t.Helper()
	var p problems
	routes := map[string]*route.RouteConfiguration{}
	for _, r := range g.server.Routes(g.proxy) {
		routes[r.Name] = r
	}
	clusters := g.server.Clusters(g.proxy)
	for _, call := range wildcardCalls {
		port := call.port
		if port == "" {
			port = "80"
		}
		rc := routes[port]
		if rc == nil {
			p.add("%s: the sidecar has no outbound route configuration for port %s", call.authority, port)
			continue
		}
		vh := virtualHostFor(rc, call.authority)
		if vh == nil || len(vh.Routes) == 0 {
			p.add("%s: no virtual host of the sidecar's route %s matches it (domains: %v)", call.authority, rc.Name, domains(rc))
			continue
		}
		want := gatewaySubsetCluster(call.destination)
		if got := vh.Routes[0].GetRoute().GetCluster(); got != want {
			p.add("%s: the sidecar routes it to %q, not the egress gateway's subset %q", call.authority, got, want)
			continue
		}
		c := findCluster(clusters, want)
		if c == nil {
			p.add("%s: the sidecar has no cluster %s", call.authority, want)
			continue
		}
		sni, secret := meshTLS(t, c)
		if secret != "default" || !serverNameMatches(gatewayNames, sni) {
			p.add("%s: the sidecar reaches the gateway with certificate %q and SNI %q, which none of the gateway server's names %v matches", call.authority, secret, sni, gatewayNames)
		}
	}
	return p
}

// meshTLS: the SNI and client certificate of a sidecar's cluster towards a mesh workload (the TLS of its
// transport socket match for Istio mTLS, tlsMode-istio).
func meshTLS(t *testing.T, c *clusterT) (sni, secret string) {
	for _, m := range c.GetTransportSocketMatches() {
		if m.GetName() != "tlsMode-istio" {
			continue
		}
		ctx := &tlsv3.UpstreamTlsContext{}
		if err := m.GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil {
			t.Fatal(err)
		}
		for _, s := range ctx.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs() {
			secret = s.GetName()
		}
		return ctx.GetSni(), secret
	}
	return "", ""
}

// serverNameMatches: whether sni selects a filter chain with these server names (exact, or `*.suffix` for a
// name with one label more or more).
func serverNameMatches(names []string, sni string) bool {
	for _, n := range names {
		if n == sni || (strings.HasPrefix(n, "*.") && strings.HasSuffix(sni, n[1:]) && len(sni) > len(n)-1) {
			return true
		}
	}
	return false
}

func TestGatewayWildcardAsIstiodGeneratesIt(t *testing.T) {
	dir := renderWildcard(t)
	g := generate(t, manifests(t, dir, gatewayFiles, nil), gatewayKube, gatewayProxy())
	for _, problem := range checkWildcardGateway(t, g) {
		t.Error(problem)
	}
	// For cli/tests/istiod_gateway_wildcard.rs.
	dumpGateway(t, g, dir, "egress-gateway-wildcard")

	sidecar := generate(t, manifests(t, dir, gatewayFiles, nil), gatewayKube, sidecarProxy())
	for _, problem := range checkWildcardSidecar(t, sidecar, gatewayServerNames(g)) {
		t.Error(problem)
	}
}

// gatewayServerNames: the server names of the gateway's HTTPS chains.
func gatewayServerNames(g generated) []string {
	var names []string
	for _, l := range g.server.Listeners(g.proxy) {
		for _, fc := range l.FilterChains {
			if l.Name == fmt.Sprintf("0.0.0.0_%d", gatewayHTTPSPort) {
				names = append(names, fc.GetFilterChainMatch().GetServerNames()...)
			}
		}
	}
	return names
}

// Each piece the rendering adds for dynamic destinations is needed: without it, the checks above fail.
func TestGatewayWildcardMutationsAreCaught(t *testing.T) {
	dir := renderWildcard(t)
	cases := []struct {
		name, file, from, to, caught string
	}{
		{"no forward-proxy filter", "envoy-filter.yaml", "name: envoy.filters.http.dynamic_forward_proxy", "name: envoy.filters.http.dynamic_forward_proxy_x", "HTTP filters out of order"},
		{"the host from the :authority", "envoy-filter.yaml", "allow_dynamic_host_from_filter_state: true", "allow_dynamic_host_from_filter_state: false", "does not take the host from filter state"},
		{"a cluster on another DNS cache", "envoy-filter.yaml", "            dns_cache_config:\n              name: egress-identity\n", "            dns_cache_config:\n              name: egress-identity-2\n", "DNS cache differs"},
		{"no auto SNI", "envoy-filter.yaml", "auto_sni: true", "auto_sni: false", "auto_sni, auto_san_validation"},
		{"the route patch for the exact host only", "envoy-filter.yaml", "          route:\n            name: partner\n", "          name: \"*.partner.example:443\"\n          route:\n            name: partner\n", "by the filter's header"},
		{"sidecars send another SNI", "destination-rule.yaml", "sni: egress-identity.partner.example", "sni: egress-identity.partner.example.other", "none of the gateway server's names"},
		{"sidecars keep one port to themselves", "virtual-service.yaml", "      port: 18446\n", "      port: 18447\n", "a.partner.example:18446: the sidecar routes it to \"outbound|18446||*.partner.example\", not the egress gateway"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			text := manifests(t, dir, gatewayFiles, func(file, text string) string {
				if file != c.file {
					return text
				}
				if !strings.Contains(text, c.from) {
					t.Fatalf("%s does not contain %q: the mutation no longer applies", file, c.from)
				}
				return strings.Replace(text, c.from, c.to, 1)
			})
			gateway := generate(t, text, gatewayKube, gatewayProxy())
			got := checkWildcardGateway(t, gateway)
			got = append(got, checkWildcardSidecar(t, generate(t, text, gatewayKube, sidecarProxy()), gatewayServerNames(gateway))...)
			if !got.contains(c.caught) {
				t.Errorf("not caught (want a problem with %q), problems: %v", c.caught, got)
			}
		})
	}
}
