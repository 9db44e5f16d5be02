package istiod

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	internalupstream "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/internal_upstream/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"istio.io/api/label"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/config/constants"
)

// The ambient egress waypoint example, as `render istio --mode waypoint` writes it.
const waypointDir = "examples/istio/egress-waypoint"

var waypointFiles = []string{
	"waypoint.yaml", "service-entries.yaml", "destination-rules.yaml", "http-route.yaml",
	"authorization-policy.yaml", "wasm-plugin.yaml",
}

// What Istio's gateway controller deploys for the waypoint Gateway: its Service (HBONE on 15008) and one
// instance.
const waypointKube = `apiVersion: v1
kind: Service
metadata:
  name: egress-waypoint
  namespace: egress-waypoint
  labels:
    gateway.istio.io/managed: istio.io-mesh-controller
    gateway.networking.k8s.io/gateway-name: egress-waypoint
    istio.io/gateway-name: egress-waypoint
spec:
  clusterIP: 10.96.0.20
  ports:
  - {appProtocol: hbone, name: mesh, port: 15008}
  selector:
    gateway.networking.k8s.io/gateway-name: egress-waypoint
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: egress-waypoint-0
  namespace: egress-waypoint
spec:
  address: 10.0.0.20
  labels:
    gateway.networking.k8s.io/gateway-name: egress-waypoint
`

func waypointProxy() *model.Proxy {
	return &model.Proxy{
		Type:            model.Waypoint,
		ConfigNamespace: "egress-waypoint",
		Labels: map[string]string{
			label.IoK8sNetworkingGatewayGatewayName.Name: "egress-waypoint",
			label.GatewayManaged.Name:                    constants.ManagedGatewayMeshControllerLabel,
		},
		IPAddresses: []string{"10.0.0.20"},
	}
}

// What Kubernetes controllers add to the rendered objects on a live cluster, which the fake server does not
// run: the waypoint Gateway's status address (Istio's gateway controller) and an address for each
// ServiceEntry (Istio's IP auto-allocation controller, ambient's way of giving a ServiceEntry a VIP).
func liveWaypoint(file, text string) string {
	switch file {
	case "waypoint.yaml":
		return text + "status:\n  addresses:\n  - type: Hostname\n    value: egress-waypoint.egress-waypoint.svc.cluster.local\n"
	case "service-entries.yaml":
		n := 0
		return replaceEach(text, "\n  location: MESH_EXTERNAL\n", func() string {
			n++
			return fmt.Sprintf("\n  location: MESH_EXTERNAL\n  addresses: [240.240.0.%d]\n", n)
		})
	}
	return text
}

func replaceEach(text, old string, with func() string) string {
	parts := strings.Split(text, old)
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteString(with())
		}
		b.WriteString(p)
	}
	return b.String()
}

// generateWaypoint runs istiod's generator on the waypoint example (as live, see liveWaypoint), with extra
// objects, for the waypoint's proxy. Ambient must be on (PILOT_ENABLE_AMBIENT=true, read at start-up).
func generateWaypoint(t *testing.T, mutate func(file, text string) string, extra string) generated {
	t.Helper()
	if !features.EnableAmbient {
		t.Fatal("run with PILOT_ENABLE_AMBIENT=true (make test-istiod does): istiod reads it at start-up")
	}
	config := manifests(t, waypointDir, waypointFiles, func(file, text string) string {
		if mutate != nil {
			text = mutate(file, text)
		}
		return liveWaypoint(file, text)
	})
	all := config + "\n---\n" + waypointKube + extra
	// The ambient index reads Kubernetes objects, the config store Istio configuration: both get everything.
	return generate(t, all, all, waypointProxy())
}

// The waypoint pod's proxy, as istio-agent names it.
const waypointNodeID = "waypoint~10.0.0.11~egress-waypoint-0.egress-waypoint~egress-waypoint.svc.cluster.local"

// The port applications call an HTTP destination on in Istio (core/src/platform.rs MESH_HTTP_PORT).
const meshHTTPPort = 80

// checkWaypoint checks istiod's output for the waypoint against what the design assumes: each carried HTTP
// destination's chain runs the filter before RBAC and the router, and each value the filter writes into the
// cluster header routes to that identity's cluster, which presents the identity's Secret.
func checkWaypoint(t *testing.T, g generated) problems {
	t.Helper()
	var p problems
	var main *listener.Listener
	for _, l := range g.server.Listeners(g.proxy) {
		if l.Name == "main_internal" {
			main = l
		}
	}
	if main == nil {
		p.add("the waypoint has no main_internal listener")
		return p
	}
	clusters := g.server.Clusters(g.proxy)
	want := pluginConfig(t, waypointDir+"/wasm-plugin.yaml")
	for _, d := range examplePolicy(t) {
		if d.Protocol != "http" {
			checkWaypointL4(t, g, &p, d, main, clusters)
			continue
		}
		chainName := fmt.Sprintf("inbound-vip|%d|http|%s", meshHTTPPort, d.Host)
		var conn *hcm.HttpConnectionManager
		for _, fc := range main.FilterChains {
			if fc.Name == chainName {
				conn = connectionManager(t, fc)
			}
		}
		if conn == nil {
			p.add("%s: main_internal has no HTTP chain %s", d.Name, chainName)
			continue
		}
		names := make([]string, 0, len(conn.HttpFilters))
		for _, f := range conn.HttpFilters {
			names = append(names, f.Name)
		}
		position, ours := filterPositions(names, "egress-identity")
		if ours == "" {
			p.add("%s: the egress-identity filter is not in the chain's HTTP filters (%v)", d.Name, position)
		} else {
			for _, after := range []string{"envoy.filters.http.rbac", "envoy.filters.http.router"} {
				if at, ok := position[after]; !ok || position[ours] > at {
					p.add("%s: the egress-identity filter must come before %s (positions %v)", d.Name, after, position)
				}
			}
			checkExtension(t, g, &p, d.Name, ours, "egress-identity", want)
		}
		routes := conn.GetRouteConfig()
		if routes == nil {
			p.add("%s: the chain has no inline route configuration", d.Name)
			continue
		}
		for _, vh := range routes.VirtualHosts {
			for _, rt := range vh.Routes {
				if headerValue(rt.GetMatch(), "x-egress-identity-cluster") == "" {
					p.add("%s: route %s forwards requests without the filter's cluster header", d.Name, rt.Name)
				}
			}
		}
		for _, caller := range callers {
			r := explain(t, "examples/policy.json", "istio-waypoint", "--principal", caller, "--host", d.Host)
			if r.Decision.Decision != "allow" {
				continue
			}
			target := ""
			for _, vh := range routes.VirtualHosts {
				for _, rt := range vh.Routes {
					if headerValue(rt.GetMatch(), "x-egress-identity-cluster") == r.Decision.Cluster {
						target = rt.GetRoute().GetCluster()
					}
				}
			}
			if target == "" {
				p.add("%s: no route takes the value the filter writes for %s, %q", d.Name, caller, r.Decision.Cluster)
				continue
			}
			c := findCluster(clusters, target)
			if c == nil {
				p.add("%s: the route of %q goes to %s, which istiod does not generate", d.Name, r.Decision.Cluster, target)
				continue
			}
			wantSecret := "kubernetes://egress-identity-" + strings.ReplaceAll(r.Decision.Identity, ".", "-")
			secret, ca, sni := waypointTLS(t, c)
			if secret != wantSecret || ca != wantSecret+"-cacert" || sni != d.Host {
				p.add("%s: cluster %s presents %q (CA %q, SNI %q), not the Secret of identity %s, %q", d.Name, c.Name, secret, ca, sni, r.Decision.Identity, wantSecret)
			}
		}
	}
	return p
}

// checkWaypointL4 checks a tcp or tls destination's chain in the waypoint: main_internal has a chain for its
// VIP named inbound-vip|<port>|tcp|<host> (what the network filter reads in xds.filter_chain_name), the
// network filter runs there before RBAC and tcp_proxy (which connects as soon as the filter lets the
// connection go on), and no HTTP chain carries it. tcp: the chain's own cluster presents the Secret that never
// exists (fail closed), and the cluster the filter names for each allowed caller presents that identity's
// Secret with the partner's name as SNI and SAN. tls (passthrough): the chain's own cluster is the path,
// plain TCP, and the filter names it.
func checkWaypointL4(t *testing.T, g generated, p *problems, d destination, main *listener.Listener, clusters []*clusterT) {
	chainName := fmt.Sprintf("inbound-vip|%d|tcp|%s", d.Port, d.Host)
	var chain *listener.FilterChain
	for _, fc := range main.FilterChains {
		if fc.Name == chainName {
			chain = fc
		}
		for _, f := range fc.Filters {
			if isOursIn(f.Name, "egress-waypoint", "egress-identity-l4") && strings.Contains(fc.Name, "|http|") {
				p.add("%s: the network filter sits on the HTTP chain %s: it would refuse its connections", d.Name, fc.Name)
			}
		}
	}
	if chain == nil {
		p.add("%s: main_internal has no chain %s", d.Name, chainName)
		return
	}
	names := make([]string, 0, len(chain.Filters))
	for _, f := range chain.Filters {
		names = append(names, f.Name)
	}
	position, ours := filterPositions(names, "egress-identity-l4")
	if ours == "" {
		p.add("%s: the network filter is not in the chain %s (%v)", d.Name, chainName, position)
		return
	}
	for _, after := range []string{"envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"} {
		if at, ok := position[after]; !ok || position[ours] > at {
			p.add("%s: the network filter must come before %s (positions %v)", d.Name, after, position)
		}
	}
	checkExtension(t, g, p, d.Name, ours, "egress-identity-l4", pluginConfig(t, waypointDir+"/wasm-plugin.yaml"))
	checkGuardSparesL4(t, p, d.Host, chain, meshHTTPPort)
	own := findCluster(clusters, chainName)
	if own == nil {
		p.add("%s: istiod generates no cluster %s", d.Name, chainName)
		return
	}
	secret, sni, _ := internalTLS(t, own)
	switch {
	case d.Protocol == "tls" && (secret != "" || sni != ""):
		p.add("%s: the chain's own cluster %s originates TLS (%q, SNI %q): the caller's own TLS would be wrapped", d.Name, chainName, secret, sni)
	case d.Protocol == "tcp" && secret != "kubernetes://egress-identity-no-identity":
		p.add("%s: the chain's own cluster %s presents %q: a connection the filter names no cluster for would leave without an identity", d.Name, chainName, secret)
	}
	allowed := 0
	for _, caller := range callers {
		args := []string{"--principal", caller, "--sni", d.Host, "--port", fmt.Sprint(d.Port)}
		if d.Protocol == "tls" {
			args = append(args, "--inner-sni", d.Host)
		}
		r := explain(t, "examples/policy.json", "istio-waypoint", args...)
		if r.Decision.Decision != "allow" {
			continue
		}
		allowed++
		if d.Protocol == "tls" {
			if r.Decision.Cluster != chainName {
				p.add("%s: the filter names cluster %q for %s, not the chain's own %s, which tcp_proxy connects to", d.Name, r.Decision.Cluster, caller, chainName)
			}
			continue
		}
		c := findCluster(clusters, r.Decision.Cluster)
		if c == nil {
			p.add("%s: the filter names cluster %q for %s, which istiod does not generate", d.Name, r.Decision.Cluster, caller)
			continue
		}
		wantSecret := "kubernetes://egress-identity-" + strings.ReplaceAll(r.Decision.Identity, ".", "-")
		secret, sni, sans := internalTLS(t, c)
		if secret != wantSecret || sni != d.Host || len(sans) != 1 || sans[0] != d.Host {
			p.add("%s: cluster %s presents %q (SNI %q, SANs %v), not the Secret of identity %s, %q, to %s", d.Name, c.Name, secret, sni, sans, r.Decision.Identity, wantSecret, d.Host)
		}
	}
	if allowed == 0 {
		p.add("%s: the filter allows none of the callers %v: nothing checked", d.Name, callers)
	}
}

// filterPositions is each filter's position in a chain, and the name of the waypoint's plugin with root id
// root ("" when it is not there).
func filterPositions(names []string, root string) (map[string]int, string) {
	position := map[string]int{}
	ours := ""
	for i, name := range names {
		position[name] = i
		if isOursIn(name, "egress-waypoint", root) {
			ours = name
		}
	}
	return position, ours
}

// internalTLS is the client certificate, SNI and SAN matchers of a waypoint inbound-vip cluster's TLS to the
// partner (inside its internal_upstream transport socket).
func internalTLS(t *testing.T, c *clusterT) (secret, sni string, sans []string) {
	outer := &internalupstream.InternalUpstreamTransport{}
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(outer); err != nil {
		return "", "", nil
	}
	ctx := &tlsv3.UpstreamTlsContext{}
	if err := outer.GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil {
		return "", "", nil
	}
	common := ctx.GetCommonTlsContext()
	for _, s := range common.GetTlsCertificateSdsSecretConfigs() {
		secret = s.GetName()
	}
	for _, m := range common.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchSubjectAltNames() {
		sans = append(sans, m.GetExact())
	}
	return secret, ctx.GetSni(), sans
}

// headerValue is the exact value a route match requires of header name ("" when it does not).
func headerValue(m *route.RouteMatch, name string) string {
	for _, h := range m.GetHeaders() {
		if h.GetName() == name {
			return h.GetStringMatch().GetExact()
		}
	}
	return ""
}

// waypointTLS is the client certificate, CA and SNI of a waypoint cluster's TLS to the partner (its `user`
// transport socket match: the waypoint originates TLS itself).
func waypointTLS(t *testing.T, c *clusterT) (secret, ca, sni string) {
	for _, m := range c.GetTransportSocketMatches() {
		if m.GetName() != "user" {
			continue
		}
		ctx := &tlsv3.UpstreamTlsContext{}
		if err := m.GetTransportSocket().GetTypedConfig().UnmarshalTo(ctx); err != nil {
			t.Fatal(err)
		}
		common := ctx.GetCommonTlsContext()
		for _, s := range common.GetTlsCertificateSdsSecretConfigs() {
			secret = s.GetName()
		}
		return secret, common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName(), ctx.GetSni()
	}
	return "", "", ""
}

func TestWaypointAsIstiodGeneratesIt(t *testing.T) {
	g := generateWaypoint(t, nil, "")
	for _, problem := range checkWaypoint(t, g) {
		t.Error(problem)
	}
	g.dump(t, filepath.Join(dumpDir(), "egress-waypoint.json"))
	annotations := infrastructureAnnotations(t, filepath.Join(waypointDir, "waypoint.yaml"))
	agentBootstrap(t, annotations, filepath.Join(waypointDir, "stats.yaml"), waypointNodeID, "egress-waypoint-bootstrap.json")
}

// The same with the plugin as a TrafficExtension (traffic-extension/, the alternative to wasm-plugin.yaml).
func TestWaypointWithTrafficExtensionsAsIstiodGeneratesIt(t *testing.T) {
	config := manifests(t, waypointDir, withTrafficExtensions(waypointFiles), liveWaypoint)
	all := config + "\n---\n" + waypointKube
	g := generate(t, all, all, waypointProxy())
	for _, problem := range checkWaypoint(t, g) {
		t.Error(problem)
	}
}

func TestWaypointMutationsAreCaught(t *testing.T) {
	cases := []struct {
		name, file, from, to, caught string
	}{
		{"a route keyed by another cluster name", "http-route.yaml", `value: "partner-api|team-app1"`, `value: "partner-api|team.app1"`, `no route takes the value the filter writes`},
		{"another Secret for an identity", "destination-rules.yaml", "credentialName: egress-identity-team-app2", "credentialName: egress-identity-team-app-2", "not the Secret of identity team.app2"},
		{"the plugin on another waypoint", "wasm-plugin.yaml", "name: egress-waypoint\n", "name: another-waypoint\n", "the egress-identity filter is not in the chain's HTTP filters"},
		{"no fail-closed Secret on the tcp destination", "destination-rules.yaml", "credentialName: egress-identity-no-identity", "credentialName: egress-identity-team-app1", "would leave without an identity"},
		{"a tcp identity with another Secret", "destination-rules.yaml", "host: team-app2.partner-db.egress-identity.internal\n  exportTo:\n  - \".\"\n  trafficPolicy:\n    tls:\n      mode: MUTUAL\n      credentialName: egress-identity-team-app2", "host: team-app2.partner-db.egress-identity.internal\n  exportTo:\n  - \".\"\n  trafficPolicy:\n    tls:\n      mode: MUTUAL\n      credentialName: egress-identity-team-app1", "not the Secret of identity team.app2"},
		{"a tcp identity not bound to the waypoint", "service-entries.yaml", "name: partner-db-team-app1\n  namespace: egress-waypoint\n  labels:\n    istio.io/use-waypoint: egress-waypoint", "name: partner-db-team-app1\n  namespace: egress-waypoint\n  labels:\n    istio.io/unbound: egress-waypoint", "which istiod does not generate"},
		{"the tcp destination not bound to the waypoint", "service-entries.yaml", "name: db-partner-example\n  namespace: egress-waypoint\n  labels:\n    istio.io/use-waypoint: egress-waypoint", "name: db-partner-example\n  namespace: egress-waypoint\n  labels:\n    istio.io/unbound: egress-waypoint", "main_internal has no chain inbound-vip|5432|tcp|db.partner.example"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			applied := false
			g := generateWaypoint(t, func(file, text string) string {
				if file != c.file {
					return text
				}
				if !strings.Contains(text, c.from) {
					t.Fatalf("%s does not contain %q: the mutation no longer applies", file, c.from)
				}
				applied = true
				return strings.Replace(text, c.from, c.to, 1)
			}, "")
			if !applied {
				t.Fatalf("%s not read", c.file)
			}
			if got := checkWaypoint(t, g); !got.contains(c.caught) {
				t.Errorf("not caught (want a problem with %q), problems: %v", c.caught, got)
			}
		})
	}
}
