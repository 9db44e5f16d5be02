// Package oci checks the release's OCI image layout (`egress-identity-publish layout`, make test-oci) with
// verifiers the project did not write: go-containerregistry reads the layout, validates the standard image,
// pushes both variants into its own in-process registry and pulls them back by digest, and Istio's fetcher
// rules (istiofetch_test.go) take the module out, which must be the module's exact bytes.
//
// Inputs, from the environment (the test skips when the first two are unset):
//
//	EGRESS_OCI_LAYOUT   the layout directory
//	EGRESS_WASM         the module it was made from
//	EGRESS_OCI_TAG      the --tag it was made with (the compat variant is TAG-compat)
//	EGRESS_OCI_DIGESTS  what `layout --json` printed: {"wasm": "sha256:...", "compat": "sha256:..."}
package oci

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

const refNameAnnotation = "org.opencontainers.image.ref.name"

// release is the layout under test and what it must hold.
type release struct {
	dir     string
	module  []byte
	tags    map[string]string // variant -> ref name
	digests map[string]string // variant -> manifest digest, as printed
}

func inputs(t *testing.T) release {
	t.Helper()
	dir, wasm := os.Getenv("EGRESS_OCI_LAYOUT"), os.Getenv("EGRESS_WASM")
	if dir == "" || wasm == "" {
		t.Skip("EGRESS_OCI_LAYOUT and EGRESS_WASM are unset: nothing to check (make test-oci builds a layout " +
			"from dist/egress_identity.wasm and sets them)")
	}
	tag, printed := os.Getenv("EGRESS_OCI_TAG"), os.Getenv("EGRESS_OCI_DIGESTS")
	if tag == "" || printed == "" {
		t.Fatal("EGRESS_OCI_TAG and EGRESS_OCI_DIGESTS (the output of `layout --json`) must be set with EGRESS_OCI_LAYOUT")
	}
	module, err := os.ReadFile(wasm)
	if err != nil {
		t.Fatal(err)
	}
	r := release{dir: dir, module: module, tags: map[string]string{variantWasm: tag, variantCompat: tag + "-compat"}}
	if err := json.Unmarshal([]byte(printed), &r.digests); err != nil {
		t.Fatalf("EGRESS_OCI_DIGESTS %q: %v", printed, err)
	}
	if len(r.digests) != 2 || r.digests[variantWasm] == "" || r.digests[variantCompat] == "" {
		t.Fatalf("EGRESS_OCI_DIGESTS %q: want exactly the keys wasm and compat", printed)
	}
	return r
}

// open reads the layout and returns its index manifest's descriptors by variant, checked against the printed
// digests and the tags.
func open(t *testing.T, r release) (layout.Path, v1.ImageIndex, map[string]v1.Descriptor) {
	t.Helper()
	marker, err := os.ReadFile(filepath.Join(r.dir, "oci-layout"))
	if err != nil {
		t.Fatal(err)
	}
	var version struct {
		ImageLayoutVersion string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(marker, &version); err != nil || version.ImageLayoutVersion != "1.0.0" {
		t.Fatalf("oci-layout %q: want imageLayoutVersion 1.0.0 (%v)", marker, err)
	}
	p, err := layout.FromPath(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	if mt, err := idx.MediaType(); err != nil || mt != types.OCIImageIndex {
		t.Fatalf("index.json media type %q (%v), want %s", mt, err, types.OCIImageIndex)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.SchemaVersion != 2 || len(im.Manifests) != 2 {
		t.Fatalf("index.json: schemaVersion %d with %d manifests, want 2 and 2", im.SchemaVersion, len(im.Manifests))
	}
	byVariant := map[string]v1.Descriptor{}
	for variant, digest := range r.digests {
		for _, d := range im.Manifests {
			if d.Digest.String() == digest {
				byVariant[variant] = d
			}
		}
		d, ok := byVariant[variant]
		if !ok {
			t.Fatalf("index.json lists no manifest %s (the printed %s digest)", digest, variant)
		}
		if d.MediaType != types.OCIManifestSchema1 {
			t.Errorf("%s: media type %s, want %s", variant, d.MediaType, types.OCIManifestSchema1)
		}
		if got := d.Annotations[refNameAnnotation]; got != r.tags[variant] {
			t.Errorf("%s: %s %q, want %q", variant, refNameAnnotation, got, r.tags[variant])
		}
	}
	return p, idx, byVariant
}

// checkBlobs reads every blob the manifest d names (the manifest itself, its config, its layers) from the
// layout and checks its sha256 and size against the descriptor.
func checkBlobs(p layout.Path, d v1.Descriptor) error {
	raw, err := blob(p, d)
	if err != nil {
		return err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("manifest %s: %v", d.Digest, err)
	}
	for _, child := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if _, err := blob(p, child); err != nil {
			return fmt.Errorf("manifest %s: %v", d.Digest, err)
		}
	}
	return nil
}

func blob(p layout.Path, d v1.Descriptor) ([]byte, error) {
	b, err := p.Bytes(d.Digest)
	if err != nil {
		return nil, err
	}
	h, n, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if h != d.Digest || n != d.Size {
		return nil, fmt.Errorf("blob %s (%s): %d bytes with digest %s, the descriptor says %d bytes", d.Digest, d.MediaType, n, h, d.Size)
	}
	return b, nil
}

func TestLayout(t *testing.T) {
	r := inputs(t)
	p, idx, byVariant := open(t, r)
	for variant, d := range byVariant {
		if err := checkBlobs(p, d); err != nil {
			t.Errorf("%s: %v", variant, err)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		got, module, err := extractWasm(img)
		if err != nil {
			t.Fatalf("%s: Istio's rules on the layout's image: %v", variant, err)
		}
		if got != variant || !bytes.Equal(module, r.module) {
			t.Errorf("%s: Istio reads it as the %s variant with a %d-byte module, want the %d bytes of the module",
				variant, got, len(module), len(r.module))
		}
	}
	// The compat variant is an ordinary image: go-containerregistry's own validation (manifest, config, the
	// layer's digest and its diff_id in the config) holds. The Wasm variant's config is the Wasm runtime
	// configuration, not an image config, so only its blobs are checked (above).
	img, err := idx.Image(byVariant[variantCompat].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Errorf("compat: %v", err)
	}
}

// TestRegistryRoundTrip pushes both images of the layout, by their tags, into go-containerregistry's registry
// and fetches each back as Istio does, by digest (a pinned WasmPlugin url) and by tag.
func TestRegistryRoundTrip(t *testing.T) {
	r := inputs(t)
	_, idx, byVariant := open(t, r)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	repo := strings.TrimPrefix(srv.URL, "http://") + "/egress-identity"
	for variant, d := range byVariant {
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		tagged, err := name.ParseReference(repo + ":" + r.tags[variant])
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(tagged, img); err != nil {
			t.Fatalf("%s: pushing %s: %v", variant, tagged, err)
		}
		head, err := remote.Head(tagged)
		if err != nil {
			t.Fatal(err)
		}
		if head.Digest.String() != r.digests[variant] {
			t.Errorf("%s: %s resolves to %s after the push, the layout printed %s", variant, tagged, head.Digest, r.digests[variant])
		}
		for _, url := range []string{repo + "@" + r.digests[variant], tagged.String()} {
			got, err := istioFetch(url)
			if err != nil {
				t.Fatalf("%s: Istio's fetcher on %s: %v", variant, url, err)
			}
			if "sha256:"+got.digestHex != r.digests[variant] || got.variant != variant || !bytes.Equal(got.module, r.module) {
				t.Errorf("%s: %s: digest %s, read as the %s variant, %d-byte module; want %s, %s, the %d bytes of the module",
					variant, url, got.digestHex, got.variant, len(got.module), r.digests[variant], variant, len(r.module))
			}
			t.Logf("%s: fetched %s as Istio does: %s variant, %d bytes, sha256:%s", variant, url, got.variant, len(got.module), got.digestHex)
		}
	}
}

// TestCheckCatchesCorruption shows the blob check can fail: a copy of the layout with one byte of the module
// changed fails it.
func TestCheckCatchesCorruption(t *testing.T) {
	r := inputs(t)
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(r.dir)); err != nil {
		t.Fatal(err)
	}
	moduleHash, _, err := v1.SHA256(bytes.NewReader(r.module))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "blobs", moduleHash.Algorithm, moduleHash.Hex)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the layout holds no blob with the module's digest: %v", err)
	}
	b[len(b)-1] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p, _, byVariant := open(t, release{dir: dir, module: r.module, tags: r.tags, digests: r.digests})
	err = checkBlobs(p, byVariant[variantWasm])
	if err == nil || !strings.Contains(err.Error(), moduleHash.String()) {
		t.Errorf("a changed module blob: checkBlobs says %v, want an error naming %s", err, moduleHash)
	}
	if err := checkBlobs(p, byVariant[variantCompat]); err != nil {
		t.Errorf("the compat variant does not hold the raw module: %v", err)
	}
}
