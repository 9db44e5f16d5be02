package istiod

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	networkrbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"istio.io/istio/pilot/pkg/model"
)

// The egress gateway example, as `render istio --mode gateway` writes it.
const gatewayDir = "examples/istio/egress-gateway"

// The files istiod reads as configuration (the Namespace, NetworkPolicy and stats ConfigMap are Kubernetes'
// or istio-agent's; traffic-extension/ is the alternative to wasm-plugin.yaml).
var gatewayFiles = []string{
	"service-entry.yaml", "gateway.yaml", "destination-rule.yaml", "virtual-service.yaml",
	"envoy-filter.yaml", "wasm-plugin.yaml", "authorization-policy.yaml",
}

// The egress gateway as the istio/gateway Helm chart deploys it (its Service's default ports, 15021, 80 and
// 443, each to the same target port), with the port the README has it add for tcp/tls destinations (8443).
const gatewayKube = `apiVersion: v1
kind: Service
metadata:
  name: istio-egressgateway
  namespace: istio-egress
  labels: {app: istio-egressgateway, istio: egressgateway}
spec:
  selector: {app: istio-egressgateway, istio: egressgateway}
  ports:
  - {name: status-port, port: 15021, targetPort: 15021}
  - {name: http2, port: 80, targetPort: 80}
  - {name: https, port: 443, targetPort: 443}
  - {name: tls-egress-identity, port: 8443, targetPort: 8443}
---
apiVersion: v1
kind: Pod
metadata:
  name: istio-egressgateway-0
  namespace: istio-egress
  labels: {app: istio-egressgateway, istio: egressgateway}
spec:
  containers: [{name: istio-proxy, image: proxyv2}]
status:
  phase: Running
  podIP: 10.0.0.10
  podIPs: [{ip: 10.0.0.10}]
`

// The egress gateway pod's proxy, as istio-agent names it (type~IP~pod.namespace~domain).
const gatewayNodeID = "router~10.0.0.10~istio-egressgateway-0.istio-egress~istio-egress.svc.cluster.local"

// The port the core says tcp/tls destinations arrive on at an Istio egress gateway
// (core/src/platform.rs ISTIO_GATEWAY_L4_PORT).
const gatewayL4Port = 8443

// The port of the gateway's HTTPS server.
const gatewayHTTPSPort = 443

func gatewayProxy() *model.Proxy {
	labels := map[string]string{"app": "istio-egressgateway", "istio": "egressgateway"}
	return &model.Proxy{
		Type:            model.Router,
		Labels:          labels,
		Metadata:        &model.NodeMetadata{Labels: labels, Namespace: "istio-egress"},
		IPAddresses:     []string{"10.0.0.10"},
		ConfigNamespace: "istio-egress",
	}
}

// A destination of the example policy.
type destination struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Host     string `json:"host"`
	Port     int    `json:"port"`
}

// The example policy's destinations and the callers the checks route through them.
func examplePolicy(t *testing.T) []destination {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "examples", "policy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Destinations []destination `json:"destinations"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	for i := range p.Destinations {
		if p.Destinations[i].Protocol == "" {
			p.Destinations[i].Protocol = "http"
		}
	}
	return p.Destinations
}

var callers = []string{"spiffe://cluster.local/ns/team/sa/app1", "spiffe://cluster.local/ns/team/sa/app2"}

// checkGateway checks istiod's output for the egress gateway against what the design assumes.
func checkGateway(t *testing.T, g generated) problems {
	t.Helper()
	var p problems
	listeners := g.server.Listeners(g.proxy)
	clusters := g.server.Clusters(g.proxy)
	routes := g.server.Routes(g.proxy)
	byName := map[string]*listener.Listener{}
	for _, l := range listeners {
		byName[l.Name] = l
	}
	wantConfig := pluginConfig(t, filepath.Join(gatewayDir, "wasm-plugin.yaml"))
	for _, d := range examplePolicy(t) {
		port := gatewayHTTPSPort
		if d.Protocol != "http" {
			port = gatewayL4Port
		}
		l := byName[fmt.Sprintf("0.0.0.0_%d", port)]
		if l == nil {
			p.add("%s: no listener on port %d (listeners: %v)", d.Name, port, names(listeners))
			continue
		}
		chain := chainFor(l, d.Host)
		if chain == nil {
			p.add("%s: listener %s has no filter chain for SNI %s", d.Name, l.Name, d.Host)
			continue
		}
		if l.GetPerConnectionBufferLimitBytes().GetValue() != 32768 {
			p.add("%s: listener %s buffers %v bytes per connection, not the hardening's 32768 (the EnvoyFilter's LISTENER MERGE did not land)", d.Name, l.Name, l.GetPerConnectionBufferLimitBytes())
		}
		if chain.GetTransportSocketConnectTimeout().AsDuration() == 0 {
			p.add("%s: listener %s does not bound the TLS handshake", d.Name, l.Name)
		}
		if d.Protocol == "http" {
			checkHTTPChain(t, g, &p, d, chain, routes, wantConfig)
		} else {
			checkL4Chain(t, g, &p, d, chain, wantConfig)
		}
		checkClusters(t, &p, d, clusters)
	}
	return p
}

func names(ls []*listener.Listener) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Name)
	}
	return out
}

// chainFor is the filter chain of l that matches SNI host.
func chainFor(l *listener.Listener, host string) *listener.FilterChain {
	for _, fc := range l.FilterChains {
		for _, sn := range fc.GetFilterChainMatch().GetServerNames() {
			if sn == host {
				return fc
			}
		}
	}
	return nil
}

// isOurs says whether a filter is egress-identity's extension config (the WasmPlugin, as istiod names it).
func isOurs(name, root string) bool {
	return isOursIn(name, "istio-egress", root)
}

// isOursIn: whether an ECDS filter name is the plugin root of namespace ns, as istiod names a WasmPlugin
// (`<ns>.<name>~istio-translated-wasmplugin`) or a TrafficExtension (`<ns>.<name>`).
func isOursIn(name, ns, root string) bool {
	return strings.Contains(name, ns+"."+root+"~") || strings.HasSuffix(name, ns+"."+root)
}

func checkHTTPChain(t *testing.T, g generated, p *problems, d destination, fc *listener.FilterChain, routes []*route.RouteConfiguration, want map[string]any) {
	for _, f := range fc.Filters {
		if isOurs(f.Name, "egress-identity-l4") {
			p.add("%s: the network filter sits on the HTTPS chain too: it would decide (and refuse) HTTP connections", d.Name)
		}
	}
	conn := connectionManager(t, fc)
	if conn == nil {
		p.add("%s: no HTTP connection manager on its chain", d.Name)
		return
	}
	position := map[string]int{}
	ours := ""
	for i, f := range conn.HttpFilters {
		position[f.Name] = i
		if isOurs(f.Name, "egress-identity") {
			ours = f.Name
		}
	}
	if ours == "" {
		p.add("%s: the egress-identity filter is not in the HTTP filters (%v)", d.Name, position)
	} else {
		for _, after := range []string{"envoy.filters.http.rbac", "envoy.filters.http.router"} {
			if at, ok := position[after]; !ok || position[ours] > at {
				p.add("%s: the egress-identity filter must come before %s (positions %v)", d.Name, after, position)
			}
		}
		checkExtension(t, g, p, d.Name, ours, "egress-identity", want)
	}
	if conn.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction().String() != "REJECT_REQUEST" {
		p.add("%s: headers with underscores are not refused (the EnvoyFilter's HCM MERGE did not land)", d.Name)
	}
	if !conn.GetMergeSlashes() || conn.GetPathWithEscapedSlashesAction().String() != "REJECT_REQUEST" {
		p.add("%s: slashes are not merged or escaped slashes not refused (the EnvoyFilter's HCM MERGE did not land)", d.Name)
	}
	if !conn.GetProxy_100Continue() {
		p.add("%s: Expect: 100-continue is answered by the gateway, before the filter decides", d.Name)
	}
	// Edge-proxy hardening (cli/src/render/hardening.rs).
	if conn.GetRequestHeadersTimeout().AsDuration() == 0 || conn.GetStreamIdleTimeout().AsDuration() == 0 ||
		conn.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration() == 0 ||
		conn.GetHttp2ProtocolOptions().GetMaxConcurrentStreams().GetValue() != 100 {
		p.add("%s: the HCM's edge-proxy hardening did not land: headers %v, stream idle %v, idle %v, h2 streams %v", d.Name,
			conn.GetRequestHeadersTimeout().AsDuration(), conn.GetStreamIdleTimeout().AsDuration(),
			conn.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration(), conn.GetHttp2ProtocolOptions().GetMaxConcurrentStreams())
	}
	rc := conn.GetRds().GetRouteConfigName()
	found := false
	for _, r := range routes {
		if r.Name != rc {
			continue
		}
		for _, vh := range r.VirtualHosts {
			if !contains(vh.Domains, d.Host) {
				continue
			}
			for _, rt := range vh.Routes {
				found = true
				if rt.GetRoute().GetClusterHeader() != "x-egress-identity-cluster" {
					p.add("%s: route %s of %s does not take its cluster from the filter's header (the EnvoyFilter's route MERGE did not land): %v", d.Name, rt.Name, vh.Name, rt.GetAction())
				}
				for _, h := range []string{"x-egress-identity-cluster", "x-egress-identity-principal", "x-forwarded-client-cert"} {
					if !contains(rt.RequestHeadersToRemove, h) {
						p.add("%s: route %s does not remove %s", d.Name, rt.Name, h)
					}
				}
			}
		}
	}
	if !found {
		p.add("%s: no route for %s in route configuration %s", d.Name, d.Host, rc)
	}
}

func checkL4Chain(t *testing.T, g generated, p *problems, d destination, fc *listener.FilterChain, want map[string]any) {
	ours, proxy := -1, -1
	for i, f := range fc.Filters {
		if isOurs(f.Name, "egress-identity-l4") {
			ours = i
			checkExtension(t, g, p, d.Name, f.Name, "egress-identity-l4", want)
		}
		if f.Name == "envoy.filters.network.tcp_proxy" {
			proxy = i
			tp := &tcpproxy.TcpProxy{}
			if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
				t.Fatal(err)
			}
			if tp.GetCluster() != "egress-identity-unrouted" || tp.GetUpstreamConnectMode().String() != "ON_DOWNSTREAM_DATA" || tp.GetMaxEarlyDataBytes().GetValue() != 65536 {
				p.add("%s: the EnvoyFilter's tcp_proxy MERGE did not land: cluster %q, mode %s, early data %d", d.Name, tp.GetCluster(), tp.GetUpstreamConnectMode(), tp.GetMaxEarlyDataBytes().GetValue())
			}
		}
	}
	checkGuardSparesL4(t, p, d.Name, fc, 443)
	switch {
	case ours < 0:
		p.add("%s: the network filter is not in its chain", d.Name)
	case proxy < 0:
		p.add("%s: no tcp_proxy in its chain", d.Name)
	case ours > proxy:
		p.add("%s: the network filter comes after tcp_proxy", d.Name)
	}
}

// checkGuardSparesL4: the cluster guard (the AuthorizationPolicy egress-identity-cluster-guard) is about the
// cluster header of requests. On a TCP chain Istio drops a DENY rule's HTTP-only conditions, which makes
// each rule "deny every caller but this identity's" -- together, deny everyone. Each rule must therefore be
// limited to the port the requests arrive on (httpPort), which istiod keeps on TCP chains.
func checkGuardSparesL4(t *testing.T, p *problems, dest string, fc *listener.FilterChain, httpPort int) {
	for _, f := range fc.Filters {
		if f.Name != "envoy.filters.network.rbac" {
			continue
		}
		r := &networkrbac.RBAC{}
		if err := f.GetTypedConfig().UnmarshalTo(r); err != nil {
			t.Fatal(err)
		}
		for name, policy := range r.GetRules().GetPolicies() {
			if !strings.Contains(name, "policy[egress-identity-cluster-guard]") {
				continue
			}
			spared := false
			for _, perm := range policy.Permissions {
				b, err := protojson.Marshal(perm)
				if err != nil {
					t.Fatal(err)
				}
				spared = spared || strings.Contains(string(b), fmt.Sprintf(`"destinationPort":%d`, httpPort))
			}
			if !spared {
				p.add("%s: the cluster guard's %s denies its L4 callers (no port limits it to the requests' port %d)", dest, name, httpPort)
			}
		}
	}
}

// checkExtension checks the Wasm configuration istiod serves under name: the root id the filter reads its
// form from, fail closed, and the plugin configuration the renderer wrote.
func checkExtension(t *testing.T, g generated, p *problems, dest, name, root string, want map[string]any) {
	ext, ok := g.extension(t, name)
	if !ok {
		p.add("%s: istiod serves no extension config %s", dest, name)
		return
	}
	if ext.rootID != root {
		p.add("%s: extension %s has root id %q, not %q", dest, name, ext.rootID, root)
	}
	if ext.failOpen {
		p.add("%s: extension %s fails open", dest, name)
	}
	if ext.failurePolicy != "FAIL_RELOAD" {
		p.add("%s: extension %s has failure policy %s, not FAIL_RELOAD (a trapped VM would fail every request until a restart)", dest, name, ext.failurePolicy)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(ext.configuration), &got); err != nil {
		p.add("%s: extension %s: its configuration is not JSON: %v", dest, name, err)
		return
	}
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		p.add("%s: extension %s: the plugin configuration istiod serves differs from the WasmPlugin's", dest, name)
	}
}

// checkClusters checks that every cluster the filter names for the example's callers exists, presents the
// identity's certificate from the Secret `secrets istio` writes, and reaches the partner.
func checkClusters(t *testing.T, p *problems, d destination, clusters []*clusterT) {
	for _, caller := range callers {
		args := []string{"--principal", caller}
		if d.Protocol == "http" {
			args = append(args, "--host", d.Host)
		} else {
			args = append(args, "--sni", d.Host, "--port", fmt.Sprint(gatewayL4Port), "--inner-sni", d.Host)
		}
		r := explain(t, "examples/policy.json", "istio-gateway", args...)
		if r.Decision.Decision != "allow" {
			continue
		}
		c := findCluster(clusters, r.Decision.Cluster)
		if c == nil {
			p.add("%s: the filter names cluster %q for %s, which istiod does not generate", d.Name, r.Decision.Cluster, caller)
			continue
		}
		sni, secret, ca := upstreamTLS(t, c)
		if d.Protocol == "tls" {
			if secret != "" {
				p.add("%s: the passthrough cluster %s originates TLS", d.Name, c.Name)
			}
			continue
		}
		wantSecret := "kubernetes://egress-identity-" + strings.ReplaceAll(r.Decision.Identity, ".", "-")
		if secret != wantSecret || ca != wantSecret+"-cacert" || sni != d.Host {
			p.add("%s: cluster %s presents %q (CA %q, SNI %q), not the Secret of identity %s, %q", d.Name, c.Name, secret, ca, sni, r.Decision.Identity, wantSecret)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func upstreamTLS(t *testing.T, c *clusterT) (sni, secret, ca string) {
	ts := c.GetTransportSocket()
	if ts == nil {
		return "", "", ""
	}
	ctx := &tlsv3.UpstreamTlsContext{}
	if err := ts.GetTypedConfig().UnmarshalTo(ctx); err != nil {
		t.Fatal(err)
	}
	common := ctx.GetCommonTlsContext()
	for _, s := range common.GetTlsCertificateSdsSecretConfigs() {
		secret = s.GetName()
	}
	ca = common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName()
	if ca == "" {
		// A forward-proxy cluster: the partner's name comes from the request (auto_san_validation).
		ca = common.GetValidationContextSdsSecretConfig().GetName()
	}
	return ctx.GetSni(), secret, ca
}

func TestGatewayAsIstiodGeneratesIt(t *testing.T) {
	g := generate(t, manifests(t, gatewayDir, gatewayFiles, nil), gatewayKube, gatewayProxy())
	for _, problem := range checkGateway(t, g) {
		t.Error(problem)
	}
	// For cli/tests/istiod_gateway.rs to serve traffic through.
	dumpGateway(t, g, gatewayDir, "egress-gateway")
}

// dumpGateway writes what istiod pushes to the gateway (`<name>.json`) and what istio-agent starts it with
// (`<name>-bootstrap.json`, from the stats.yaml of the rendered dir), for a test that serves traffic through
// them.
func dumpGateway(t *testing.T, g generated, dir, name string) {
	t.Helper()
	g.dump(t, filepath.Join(dumpDir(), name+".json"))
	stats := filepath.Join(dir, "stats.yaml")
	agentBootstrap(t, podAnnotations(t, stats), stats, gatewayNodeID, name+"-bootstrap.json")
}

// The same with the plugins as TrafficExtensions (traffic-extension/, the alternative to wasm-plugin.yaml).
func TestGatewayWithTrafficExtensionsAsIstiodGeneratesIt(t *testing.T) {
	g := generate(t, manifests(t, gatewayDir, withTrafficExtensions(gatewayFiles), nil), gatewayKube, gatewayProxy())
	for _, problem := range checkGateway(t, g) {
		t.Error(problem)
	}
}

// A renderer that names what the design does not find -- another cluster, another route, a patch on
// another port, the plugin in another phase -- fails the checks above: each mutation of the rendered
// manifests must be caught, with the problem it causes.
func TestGatewayMutationsAreCaught(t *testing.T) {
	cases := []struct {
		name, file, from, to, caught string
	}{
		{"a renamed identity cluster", "envoy-filter.yaml", `name: "partner-api|team-app1"`, `name: "partner-api|team-app-1"`, `names cluster "partner-api|team-app1"`},
		{"the route patch on another route name", "envoy-filter.yaml", "route:\n            name: partner-api", "route:\n            name: partner-api-x", "does not take its cluster from the filter's header"},
		{"the tcp_proxy patch on another port", "envoy-filter.yaml", "portNumber: 8443", "portNumber: 9443", "tcp_proxy MERGE did not land"},
		{"another Secret for an identity", "envoy-filter.yaml", "kubernetes://egress-identity-team-app2\n", "kubernetes://egress-identity-team-app-2\n", "not the Secret of identity team.app2"},
		{"the cluster guard without its port", "authorization-policy.yaml", "    to:\n    - operation:\n        ports:\n        - \"443\"\n", "", "the cluster guard's"},
		{"the HCM hardening left out", "envoy-filter.yaml", "          request_headers_timeout: 10s\n", "", "edge-proxy hardening did not land"},
		{"the network filter on every port", "wasm-plugin.yaml", "  match:\n  - ports:\n    - number: 8443\n", "", "the network filter sits on the HTTPS chain"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mutated := false
			text := manifests(t, gatewayDir, gatewayFiles, func(file, text string) string {
				if file != c.file {
					return text
				}
				if !strings.Contains(text, c.from) {
					t.Fatalf("%s does not contain %q: the mutation no longer applies", file, c.from)
				}
				mutated = true
				return strings.Replace(text, c.from, c.to, 1)
			})
			if !mutated {
				t.Fatalf("%s not read", c.file)
			}
			g := generate(t, text, gatewayKube, gatewayProxy())
			got := checkGateway(t, g)
			if !got.contains(c.caught) {
				t.Errorf("not caught (want a problem with %q), problems: %v", c.caught, got)
			}
		})
	}
}
