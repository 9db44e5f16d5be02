// Package istiod runs istiod's own xDS generation (istio.io/istio/pilot/test/xds, in-process, no Kubernetes)
// on the Istio manifests `egress-identity render istio` writes (examples/istio), and checks what the design
// assumes, by name and position: where the filter lands, that the per-identity clusters exist with the
// certificates the Secrets hold, that the EnvoyFilter patches landed on the chains istiod really generates.
// The names the filter will use come from the real CLI (`egress-identity explain --platform … --json`), so
// a renderer that writes other names than the core derives fails here.
//
// This file holds what the gateway and waypoint tests share: reading the manifests, running the generator,
// asking the CLI.
package istiod

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	wasm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	networkwasm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/wasm/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"istio.io/istio/pilot/pkg/model"
	v3 "istio.io/istio/pilot/pkg/xds/v3"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/util/sets"
)

// The repository root (tests run in tests/istiod).
var repo = filepath.Join("..", "..")

// IstioCommit is the istio.io/istio pseudo-version whose generator these tests run (go.mod): the README says
// which Istio generated the tested configuration.
const IstioCommit = "v0.0.0-20260827124520-eed52ebb66ad"

// manifests reads the rendered files of dir (relative to the repository) and keeps the documents of the
// kinds istiod reads as configuration; mutate, if not nil, edits the text first (the mutation tests).
func manifests(t *testing.T, dir string, files []string, mutate func(file, text string) string) string {
	t.Helper()
	var docs []string
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(inRepo(dir), f))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if mutate != nil {
			text = mutate(f, text)
		}
		docs = append(docs, text)
	}
	return strings.Join(docs, "\n---\n")
}

// generated is what istiod pushes to one proxy.
type generated struct {
	server *xds.FakeDiscoveryServer
	proxy  *model.Proxy
}

// generate runs istiod's generator on the Istio configuration config and the Kubernetes objects kube, for a
// proxy as setup.
func generate(t *testing.T, config, kube string, setup *model.Proxy) generated {
	t.Helper()
	s := xds.NewFakeDiscoveryServer(t, xds.FakeOptions{ConfigString: config, KubernetesObjectString: kube})
	return generated{server: s, proxy: s.SetupProxy(setup)}
}

// extension is the Wasm configuration istiod delivers by extension config discovery (ECDS) under name: an
// HTTP or a network Wasm filter, its plugin config as the filter reads it.
type extension struct {
	rootID        string
	configuration string
	failOpen      bool
	failurePolicy string
	network       bool
}

// extensionConfigs: what istiod's ECDS generator serves the proxy for name, by resource name.
func (g generated) extensionConfigs(t *testing.T, name string) map[string]*core.TypedExtensionConfig {
	t.Helper()
	gen := g.server.Discovery.Generators[v3.ExtensionConfigurationType]
	req := &model.PushRequest{Push: g.server.PushContext(), Start: time.Now(), Forced: true}
	resources, _, err := gen.Generate(g.proxy, &model.WatchedResource{ResourceNames: sets.New(name)}, req)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*core.TypedExtensionConfig{}
	for _, r := range resources {
		ec := &core.TypedExtensionConfig{}
		if err := r.Resource.UnmarshalTo(ec); err != nil {
			t.Fatal(err)
		}
		out[r.Name] = ec
	}
	return out
}

func (g generated) extension(t *testing.T, name string) (extension, bool) {
	t.Helper()
	for rname, ec := range g.extensionConfigs(t, name) {
		if rname != name {
			continue
		}
		h := &wasm.Wasm{}
		if ec.TypedConfig.UnmarshalTo(h) == nil {
			return extension{rootID: h.GetConfig().GetRootId(), configuration: stringValue(t, h.GetConfig().GetConfiguration().GetValue()), failOpen: h.GetConfig().GetFailOpen(), failurePolicy: h.GetConfig().GetFailurePolicy().String()}, true
		}
		n := &networkwasm.Wasm{}
		if ec.TypedConfig.UnmarshalTo(n) == nil {
			return extension{rootID: n.GetConfig().GetRootId(), configuration: stringValue(t, n.GetConfig().GetConfiguration().GetValue()), failOpen: n.GetConfig().GetFailOpen(), failurePolicy: n.GetConfig().GetFailurePolicy().String(), network: true}, true
		}
		t.Fatalf("extension %s is a %s, not a Wasm filter", name, ec.TypedConfig.TypeUrl)
	}
	return extension{}, false
}

// stringValue decodes a google.protobuf.StringValue's bytes (field 1, length-delimited).
func stringValue(t *testing.T, b []byte) string {
	t.Helper()
	if len(b) == 0 {
		return ""
	}
	if b[0] != 0x0a {
		t.Fatalf("not a StringValue: %x", b[:1])
	}
	n, i := 0, 1
	for shift := 0; i < len(b); shift += 7 {
		c := b[i]
		i++
		n |= int(c&0x7f) << shift
		if c < 0x80 {
			break
		}
	}
	if i+n > len(b) {
		t.Fatalf("truncated StringValue")
	}
	return string(b[i : i+n])
}

// pluginConfig is the pluginConfig of the first WasmPlugin in file (relative to the repository), as JSON.
func pluginConfig(t *testing.T, file string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(inRepo(file))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var obj struct {
			Kind string `json:"kind"`
			Spec struct {
				PluginConfig map[string]any `json:"pluginConfig"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		if obj.Kind == "WasmPlugin" && obj.Spec.PluginConfig != nil {
			return obj.Spec.PluginConfig
		}
	}
	t.Fatalf("%s: no WasmPlugin with a pluginConfig", file)
	return nil
}

// goCommand: the go command of the toolchain running these tests (for `go tool istioctl`, `go list`).
func goCommand(args ...string) *exec.Cmd {
	return exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), args...)
}

// cli runs the egress-identity CLI (EGRESS_IDENTITY_CLI, else target/debug/egress-identity).
func cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	bin := os.Getenv("EGRESS_IDENTITY_CLI")
	if bin == "" {
		bin = filepath.Join(repo, "target", "debug", "egress-identity")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the CLI %s is not built (cargo build -p egress-identity-cli, or set EGRESS_IDENTITY_CLI): %v", bin, err)
	}
	cmd := exec.Command(bin, args...)
	out, err := cmd.Output()
	code := 0
	if e, ok := err.(*exec.ExitError); ok {
		code = e.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// routed is what the filter decides for one call, as `explain --json` says.
type routed struct {
	Decision struct {
		Decision string `json:"decision"`
		Cluster  string `json:"cluster"`
		Identity string `json:"identity"`
		Reason   string `json:"reason"`
	} `json:"decision"`
}

// explain asks the CLI how the filter decides a call on platform, with the policy at policy.
func explain(t *testing.T, policy, platform string, args ...string) routed {
	t.Helper()
	out, code := cli(t, append([]string{"explain", inRepo(policy), "--platform", platform, "--json"}, args...)...)
	var r routed
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("explain %v: exit %d, %v: %s", args, code, err, out)
	}
	return r
}

// problems collects what a check found; a test fails with all of them, a mutation test expects some.
type problems []string

func (p *problems) add(format string, args ...any) {
	*p = append(*p, fmt.Sprintf(format, args...))
}

func (p problems) contains(text string) bool {
	for _, s := range p {
		if strings.Contains(s, text) {
			return true
		}
	}
	return false
}

// clusterT is Envoy's cluster.
type clusterT = cluster.Cluster

func findCluster(clusters []*clusterT, name string) *clusterT {
	for _, c := range clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// withTrafficExtensions: files with wasm-plugin.yaml replaced by its TrafficExtension form (Istio 1.30+).
func withTrafficExtensions(files []string) []string {
	var out []string
	for _, f := range files {
		if f == "wasm-plugin.yaml" {
			f = "traffic-extension/traffic-extension.yaml"
		}
		out = append(out, f)
	}
	return out
}

// connectionManager is the HTTP connection manager of a filter chain (nil when it has none).
func connectionManager(t *testing.T, fc *listener.FilterChain) *hcm.HttpConnectionManager {
	t.Helper()
	for _, f := range fc.Filters {
		if f.Name == "envoy.filters.network.http_connection_manager" {
			conn := &hcm.HttpConnectionManager{}
			if err := f.GetTypedConfig().UnmarshalTo(conn); err != nil {
				t.Fatal(err)
			}
			return conn
		}
	}
	return nil
}

// inRepo: path p relative to the repository, or p itself when absolute (files a test rendered elsewhere).
func inRepo(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(repo, p)
}

// dumpDir: where dump writes (ISTIOD_DUMP_DIR, else target/istiod).
func dumpDir() string {
	if dir := os.Getenv("ISTIOD_DUMP_DIR"); dir != "" {
		return dir
	}
	return filepath.Join(repo, "target", "istiod")
}

// dump writes what istiod pushes to the proxy -- listeners, clusters, route configurations, and the extension
// configs the listeners name -- as one JSON document (protojson), for the end-to-end test that loads it into
// Envoy with the filter.
func (g generated) dump(t *testing.T, path string) {
	t.Helper()
	marshal := func(m proto.Message) json.RawMessage {
		b, err := protojson.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	out := map[string]any{"istio": IstioCommit}
	var listeners, clusters, routes []json.RawMessage
	extensions := map[string]json.RawMessage{}
	for _, l := range g.server.Listeners(g.proxy) {
		listeners = append(listeners, marshal(l))
		for _, fc := range l.FilterChains {
			for _, f := range fc.Filters {
				g.dumpExtension(t, f.Name, f.GetConfigDiscovery() != nil, extensions, marshal)
				if f.Name != "envoy.filters.network.http_connection_manager" {
					continue
				}
				conn := &hcm.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(conn); err != nil {
					t.Fatal(err)
				}
				for _, h := range conn.HttpFilters {
					g.dumpExtension(t, h.Name, h.GetConfigDiscovery() != nil, extensions, marshal)
				}
			}
		}
	}
	for _, c := range g.server.Clusters(g.proxy) {
		clusters = append(clusters, marshal(c))
	}
	for _, r := range g.server.Routes(g.proxy) {
		routes = append(routes, marshal(r))
	}
	out["listeners"], out["clusters"], out["routes"], out["extensions"] = listeners, clusters, routes, extensions
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (g generated) dumpExtension(t *testing.T, name string, discovered bool, into map[string]json.RawMessage, marshal func(proto.Message) json.RawMessage) {
	if !discovered {
		return
	}
	for rname, ec := range g.extensionConfigs(t, name) {
		into[rname] = marshal(ec)
	}
}
