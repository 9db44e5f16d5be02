package istiod

// The other half of what an Istio proxy runs: the bootstrap istio-agent writes for it (istio.io/istio
// pkg/bootstrap, Istio's own template), from the pod annotations stats.yaml asks for, and the bootstrap override
// (the ConfigMap the annotation names) istio-agent hands Envoy as --config-yaml.

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"istio.io/api/annotation"
	"istio.io/istio/pkg/bootstrap"
	"istio.io/istio/pkg/bootstrap/platform"
	"istio.io/istio/pkg/config/mesh"
)

// podAnnotations reads the annotations stats.yaml's comment tells the user to put on the egress gateway's pods
// ("#   <name>: '<value>'", the README's helm podAnnotations).
func podAnnotations(t *testing.T, statsFile string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(inRepo(statsFile))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		for _, name := range []string{annotation.ProxyConfig.Name, annotation.SidecarBootstrapOverride.Name} {
			prefix := "#   " + name + ": '"
			if strings.HasPrefix(line, prefix) && strings.HasSuffix(line, "'") {
				out[name] = strings.TrimSuffix(strings.TrimPrefix(line, prefix), "'")
			}
		}
	}
	return out
}

// bootstrapOverride is the custom_bootstrap.json of the ConfigMap `name` in statsFile.
func bootstrapOverride(t *testing.T, statsFile, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(inRepo(statsFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var cm struct {
			Kind     string                `json:"kind"`
			Metadata struct{ Name string } `json:"metadata"`
			Data     map[string]string     `json:"data"`
		}
		if err := yaml.Unmarshal([]byte(doc), &cm); err != nil {
			t.Fatal(err)
		}
		if cm.Kind == "ConfigMap" && cm.Metadata.Name == name && cm.Data["custom_bootstrap.json"] != "" {
			return []byte(cm.Data["custom_bootstrap.json"])
		}
	}
	t.Fatalf("%s has no ConfigMap %s with custom_bootstrap.json (the pods' %s names it)", statsFile, name, annotation.SidecarBootstrapOverride.Name)
	return nil
}

// infrastructureAnnotations reads the annotations a waypoint's Gateway has Istio copy onto its pods.
func infrastructureAnnotations(t *testing.T, waypointFile string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, waypointFile))
	if err != nil {
		t.Fatal(err)
	}
	var gw struct {
		Spec struct {
			Infrastructure struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"infrastructure"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &gw); err != nil {
		t.Fatal(err)
	}
	return gw.Spec.Infrastructure.Annotations
}

// agentBootstrap writes, into dumpDir(), what istio-agent would start the proxy `id` with: the bootstrap from
// Istio's template (file) and the override (file with -override), for a pod with these annotations.
func agentBootstrap(t *testing.T, annotations map[string]string, statsFile, id, file string) {
	t.Helper()
	if annotations[annotation.SidecarBootstrapOverride.Name] == "" {
		t.Fatalf("the pods do not carry %s: %v", annotation.SidecarBootstrapOverride.Name, annotations)
	}
	mc, err := mesh.ApplyProxyConfig(annotations[annotation.ProxyConfig.Name], mesh.DefaultMeshConfig())
	if err != nil {
		t.Fatal(err)
	}
	discovery := false
	node, err := bootstrap.GetNodeMetaData(bootstrap.MetadataOptions{
		ID:                  id,
		Envs:                []string{"ISTIO_META_CLUSTER_ID=Kubernetes"},
		Platform:            &platform.Unknown{},
		InstanceIPs:         []string{"10.0.0.10"},
		ProxyConfig:         mc.DefaultConfig,
		EnvoyStatusPort:     15021,
		EnvoyPrometheusPort: 15090,
		MetadataDiscovery:   &discovery,
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := goCommand("list", "-m", "-f", "{{.Dir}}", "istio.io/istio").Output()
	if err != nil {
		t.Fatal(err)
	}
	template := filepath.Join(strings.TrimSpace(string(out)), "tools", "packaging", "common", "envoy_bootstrap.json")
	var written bytes.Buffer
	if err := bootstrap.New(bootstrap.Config{Node: node}).WriteTo(template, &written); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dumpDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	override := bootstrapOverride(t, statsFile, annotations[annotation.SidecarBootstrapOverride.Name])
	checkStatsKept(t, written.Bytes())
	checkConnectionLimit(t, written.Bytes())
	for name, b := range map[string][]byte{file: written.Bytes(), strings.TrimSuffix(file, ".json") + "-override.json": override} {
		if err := os.WriteFile(filepath.Join(dumpDir(), name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A metric the filter defines (core/src/metrics.rs), as Envoy names it: Wasm metrics live in the wasmcustom
// namespace.
const filterMetric = "wasmcustom.egress_identity.decisions_total"

// checkStatsKept: istio-agent's stats matcher keeps the filter's metrics (Envoy drops what it does not include).
func checkStatsKept(t *testing.T, written []byte) {
	t.Helper()
	var b struct {
		StatsConfig struct {
			StatsMatcher struct {
				InclusionList struct {
					Patterns []struct {
						Prefix string `json:"prefix"`
					} `json:"patterns"`
				} `json:"inclusion_list"`
			} `json:"stats_matcher"`
		} `json:"stats_config"`
	}
	if err := json.Unmarshal(written, &b); err != nil {
		t.Fatal(err)
	}
	var prefixes []string
	for _, p := range b.StatsConfig.StatsMatcher.InclusionList.Patterns {
		if p.Prefix != "" && strings.HasPrefix(filterMetric, p.Prefix) {
			return
		}
		prefixes = append(prefixes, p.Prefix)
	}
	t.Errorf("istio-agent's stats matcher drops %s (included prefixes: %v)", filterMetric, prefixes)
}

// checkConnectionLimit: the pods' annotation gives istio-agent's overload manager a global limit of
// downstream connections (without it: 2^31 - 1).
func checkConnectionLimit(t *testing.T, written []byte) {
	t.Helper()
	var b struct {
		OverloadManager struct {
			ResourceMonitors []struct {
				Name        string `json:"name"`
				TypedConfig struct {
					Max int64 `json:"max_active_downstream_connections"`
				} `json:"typed_config"`
			} `json:"resource_monitors"`
		} `json:"overload_manager"`
	}
	if err := json.Unmarshal(written, &b); err != nil {
		t.Fatal(err)
	}
	for _, m := range b.OverloadManager.ResourceMonitors {
		if m.Name == "envoy.resource_monitors.global_downstream_max_connections" {
			if m.TypedConfig.Max != 50000 {
				t.Errorf("istio-agent's bootstrap allows %d downstream connections, not the hardening's 50000", m.TypedConfig.Max)
			}
			return
		}
	}
	t.Errorf("istio-agent's bootstrap has no global downstream connection limit")
}
