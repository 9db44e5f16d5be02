package istiod

// istioctl analyze, offline (--use-kube=false, all namespaces), on the rendered Istio examples: istioctl built
// from the same istio.io/istio module (a tool of this Go module: `go tool istioctl`). Every message it reports
// must be one explained below; anything else fails.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The mesh the egress gateway's README asks for: sidecars resolve the partners' names through Istio's DNS
// proxy, and istiod allocates an address for a TCP ServiceEntry (IP auto-allocation; the analyzer reads it
// from the proxy metadata). Without it, istioctl reports IST0134 on db.partner.example, as it should.
const analyzedMesh = `defaultConfig:
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: "true"
    PILOT_ENABLE_IP_AUTOALLOCATE: "true"
`

// explained: the messages istioctl reports on the examples, and why each is expected.
var explained = []struct{ code, origin, why string }{
	{"IST0133", "EnvoyFilter istio-egress/egress-identity",
		"EnvoyFilter is Istio's break-glass API (the egress gateway README says so); TestGatewayAsIstiodGeneratesIt checks that each of its patches lands"},
	{"IST0128", "DestinationRule egress-waypoint/partner-api-team-app1",
		"the analyzer credits credentialName only on a DestinationRule with a workloadSelector; the Secret carries ca.crt, and istiod validates the partner with it (-cacert, TestWaypointAsIstiodGeneratesIt)"},
	{"IST0128", "DestinationRule egress-waypoint/partner-api-team-app2", "as for partner-api-team-app1"},
	{"IST0128", "DestinationRule egress-waypoint/partner-db-team-app1", "as for partner-api-team-app1 (the tcp destination's identity)"},
	{"IST0128", "DestinationRule egress-waypoint/partner-db-team-app2", "as for partner-api-team-app1"},
	{"IST0128", "DestinationRule egress-waypoint/db-partner-example-5432",
		"fail closed on purpose: its Secret egress-identity-no-identity never exists, so the tcp destination's own cluster never completes a handshake (TestWaypointAsIstiodGeneratesIt)"},
}

type analyzeMessage struct {
	Code      string `json:"code"`
	Level     string `json:"level"`
	Message   string `json:"message"`
	Origin    string `json:"origin"`
	Reference string `json:"reference"`
}

// analyze runs `istioctl analyze` offline on files of dir (relative to the repository), each passed through
// mutate, and returns what it reports.
func analyze(t *testing.T, dir string, files []string, mutate func(file, text string) string) []analyzeMessage {
	t.Helper()
	tmp := t.TempDir()
	args := []string{"tool", "istioctl", "analyze", "--use-kube=false", "--all-namespaces", "-o", "json",
		"--meshConfigFile", filepath.Join(tmp, "mesh.yaml")}
	if err := os.WriteFile(filepath.Join(tmp, "mesh.yaml"), []byte(analyzedMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(repo, dir, f))
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(tmp, strings.ReplaceAll(f, "/", "_"))
		if err := os.WriteFile(out, []byte(mutate(f, string(b))), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, out)
	}
	cmd := goCommand(args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, _ := cmd.Output()
	// istioctl logs to stdout too: the report is the JSON array that starts a line.
	report := string(stdout)
	if i := strings.Index(report, "\n["); i >= 0 && !strings.HasPrefix(report, "[") {
		report = report[i+1:]
	}
	var messages []analyzeMessage
	if err := json.Unmarshal([]byte(report), &messages); err != nil {
		t.Fatalf("istioctl analyze: %v\n%s\n%s", err, stdout, stderr.String())
	}
	return messages
}

func unexplained(messages []analyzeMessage) []analyzeMessage {
	var out []analyzeMessage
	for _, m := range messages {
		known := false
		for _, e := range explained {
			known = known || (m.Code == e.code && m.Origin == e.origin)
		}
		if !known {
			out = append(out, m)
		}
	}
	return out
}

// Each example as it is applied: with wasm-plugin.yaml, or with the TrafficExtension form instead.
var analyzed = []struct {
	name, dir string
	files     []string
}{
	{"egress gateway", gatewayDir, []string{"00-namespace.yaml", "service-entry.yaml", "gateway.yaml", "destination-rule.yaml",
		"virtual-service.yaml", "envoy-filter.yaml", "wasm-plugin.yaml", "authorization-policy.yaml", "network-policy.yaml", "stats.yaml"}},
	{"egress gateway, TrafficExtension", gatewayDir, []string{"00-namespace.yaml", "service-entry.yaml", "gateway.yaml",
		"destination-rule.yaml", "virtual-service.yaml", "envoy-filter.yaml", "traffic-extension/traffic-extension.yaml",
		"authorization-policy.yaml", "network-policy.yaml", "stats.yaml"}},
	{"egress waypoint", waypointDir, []string{"00-namespace.yaml", "waypoint.yaml", "service-entries.yaml", "destination-rules.yaml",
		"http-route.yaml", "authorization-policy.yaml", "wasm-plugin.yaml", "network-policy.yaml", "stats.yaml"}},
	{"egress waypoint, TrafficExtension", waypointDir, []string{"00-namespace.yaml", "waypoint.yaml", "service-entries.yaml",
		"destination-rules.yaml", "http-route.yaml", "authorization-policy.yaml", "traffic-extension/traffic-extension.yaml",
		"network-policy.yaml", "stats.yaml"}},
}

func TestIstioctlAnalyzeReportsNothingUnexplained(t *testing.T) {
	for _, a := range analyzed {
		t.Run(a.name, func(t *testing.T) {
			messages := analyze(t, a.dir, a.files, func(_, text string) string { return text })
			for _, m := range unexplained(messages) {
				t.Errorf("%s %s (%s, %s): %s", m.Level, m.Code, m.Origin, m.Reference, m.Message)
			}
			t.Logf("istioctl analyze: %d message(s), all explained", len(messages))
		})
	}
}

// The test can fail: a VirtualService that names a gateway that does not exist is reported.
func TestIstioctlAnalyzeCatchesAMisnamedGateway(t *testing.T) {
	a := analyzed[0]
	messages := analyze(t, a.dir, a.files, func(file, text string) string {
		if file != "virtual-service.yaml" {
			return text
		}
		if !strings.Contains(text, "- egress-identity\n") {
			t.Fatalf("%s does not name the gateway egress-identity: the mutation no longer applies", file)
		}
		return strings.ReplaceAll(text, "- egress-identity\n", "- egress-identity-x\n")
	})
	for _, m := range unexplained(messages) {
		if m.Code == "IST0101" && strings.Contains(m.Message, `"egress-identity-x"`) {
			return
		}
	}
	t.Errorf("the misnamed gateway was not reported: %v", messages)
}
