package istiod

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
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
			continue // not carried by the waypoint (the core warns)
		}
		chainName := fmt.Sprintf("inbound-vip|%d|http|%s", meshHTTPPort, d.Host)
		var conn *hcm.HttpConnectionManager
		for _, fc := range main.FilterChains {
			if fc.Name != chainName {
				continue
			}
			for _, f := range fc.Filters {
				if f.Name == "envoy.filters.network.http_connection_manager" {
					conn = &hcm.HttpConnectionManager{}
					if err := f.GetTypedConfig().UnmarshalTo(conn); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if conn == nil {
			p.add("%s: main_internal has no HTTP chain %s", d.Name, chainName)
			continue
		}
		position := map[string]int{}
		ours := ""
		for i, f := range conn.HttpFilters {
			position[f.Name] = i
			if isOursIn(f.Name, "egress-waypoint", "egress-identity") {
				ours = f.Name
			}
		}
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

// What the waypoint's configuration says of L4 there (the question the waypoint layout leaves open: the
// rendered waypoint carries no tcp/tls destination). A TCP ServiceEntry bound to the waypoint gets its own
// chain of main_internal, chosen by the connection's destination VIP and port, and named
// inbound-vip|<port>|tcp|<host>: a network filter there could name the destination by
// xds.filter_chain_name, since no SNI does. It ends in tcp_proxy after istio's RBAC; a network WasmPlugin
// lands there (asserted below), so the L4 design can build on it. The cluster guard, attached to the
// waypoint, must not deny that chain's callers.
func TestWaypointNamesATCPDestinationByItsFilterChain(t *testing.T) {
	tcp := `
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db-partner-example
  namespace: egress-waypoint
  labels: {istio.io/use-waypoint: egress-waypoint}
spec:
  hosts: [db.partner.example]
  addresses: [240.240.1.1]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 5432, name: tcp-5432, protocol: TCP}]
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: egress-identity-l4
  namespace: egress-waypoint
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: egress-waypoint}]
  type: NETWORK
  pluginName: egress-identity-l4
  url: oci://example/egress-identity@sha256:0000000000000000000000000000000000000000000000000000000000000000
  pluginConfig: {}
`
	g := generateWaypoint(t, nil, tcp)
	var chain *listener.FilterChain
	for _, l := range g.server.Listeners(g.proxy) {
		if l.Name != "main_internal" {
			continue
		}
		for _, fc := range l.FilterChains {
			if fc.Name == "inbound-vip|5432|tcp|db.partner.example" {
				chain = fc
			}
		}
	}
	if chain == nil {
		t.Fatal("no chain inbound-vip|5432|tcp|db.partner.example in main_internal")
	}
	var filters []string
	for _, f := range chain.Filters {
		filters = append(filters, f.Name)
	}
	got := strings.Join(filters, " ")
	if !strings.Contains(got, "egress-waypoint.egress-identity-l4~") || !strings.HasSuffix(got, "envoy.filters.network.tcp_proxy") {
		t.Errorf("the TCP chain's filters: %v", filters)
	}
	var p problems
	checkGuardSparesL4(t, &p, "db.partner.example", chain, 80)
	for _, problem := range p {
		t.Error(problem)
	}
	t.Logf("TCP chain of the waypoint: %s: %v", chain.Name, filters)
}
