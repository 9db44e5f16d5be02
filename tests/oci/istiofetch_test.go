package oci

// Istio's Wasm image fetcher, step by step as istio.io/istio pkg/wasm does it (imagefetcher.go PrepareFetch and
// its extract* functions, cache.go isValidWasmBinary; the version tests/istiod pins), on the same
// go-containerregistry calls. It is restated here rather than imported: istio.io/istio/pkg/wasm pulls in about
// 560 packages (gRPC, OpenTelemetry, Envoy's control plane) for these hundred lines.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxWasmBinarySize is Istio's default ISTIO_WASM_MAX_BINARY_SIZE_BYTES (pilot/pkg/features/pilot.go).
const maxWasmBinarySize = 256 * 1024 * 1024

// The layouts Istio tells apart, in the order it tries them.
const (
	variantDocker = "docker"
	variantCompat = "compat"
	variantWasm   = "wasm"
)

// fetched is what Istio's fetcher gets from a WasmPlugin url: the manifest digest it compares with the
// WasmPlugin's sha256 (hex), the layout it read the image as, and the module.
type fetched struct {
	digestHex string
	variant   string
	module    []byte
}

// istioFetch fetches url (registry/repository:tag or @sha256:..., the WasmPlugin url without oci://) as
// Istio's PrepareFetch and its binary fetcher do.
func istioFetch(url string, opts ...remote.Option) (fetched, error) {
	ref, err := name.ParseReference(url)
	if err != nil {
		return fetched{}, fmt.Errorf("could not parse url in image reference: %v", err)
	}
	desc, err := remote.Get(ref, opts...)
	if err != nil && strings.Contains(err.Error(), "server gave HTTP response") {
		ref, err = name.ParseReference(url, name.Insecure)
		if err == nil {
			desc, err = remote.Get(ref, opts...)
		}
	}
	if err != nil {
		return fetched{}, fmt.Errorf("could not fetch manifest: %v", err)
	}
	img, err := desc.Image()
	if err != nil {
		return fetched{}, fmt.Errorf("could not fetch image: %v", err)
	}
	d, err := img.Digest()
	if err != nil {
		return fetched{}, err
	}
	out := fetched{digestHex: d.Hex}
	out.variant, out.module, err = extractWasm(img)
	if err != nil {
		return fetched{}, err
	}
	if len(out.module) < 8 || !bytes.Equal(out.module[:4], []byte{0x00, 0x61, 0x73, 0x6d}) {
		return fetched{}, fmt.Errorf("fetched Wasm binary from %s is invalid", url)
	}
	return out, nil
}

// extractWasm is PrepareFetch's binaryFetcher: a Docker manifest is read as the compat variant with a Docker
// layer; any other manifest as the compat variant with an OCI layer, else as the Wasm ("oci") variant.
func extractWasm(img v1.Image) (string, []byte, error) {
	manifest, err := img.Manifest()
	if err != nil {
		return "", nil, fmt.Errorf("could not retrieve manifest: %v", err)
	}
	if manifest.MediaType == types.DockerManifestSchema2 {
		module, err := extractCompat(img, types.DockerLayer)
		return variantDocker, module, err
	}
	module, errCompat := extractCompat(img, types.OCILayer)
	if errCompat == nil {
		return variantCompat, module, nil
	}
	module, errOCI := extractOCIArtifact(img)
	if errOCI == nil {
		return variantWasm, module, nil
	}
	return "", nil, fmt.Errorf("the given image is in invalid format as an OCI image: could not parse as compat variant: %v; "+
		"could not parse as oci variant: %v", errCompat, errOCI)
}

// extractCompat: the last layer, of media type want, is a tar.gz whose first plugin.wasm (by base name) is the
// module (extractDockerImage, extractOCIStandardImage, extractWasmPluginBinary).
func extractCompat(img v1.Image, want types.MediaType) ([]byte, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("could not fetch layers: %v", err)
	}
	if len(layers) == 0 {
		return nil, errors.New("number of layers must be greater than zero")
	}
	layer := layers[len(layers)-1]
	mt, err := layer.MediaType()
	if err != nil {
		return nil, fmt.Errorf("could not get media type: %v", err)
	}
	if mt != want {
		return nil, fmt.Errorf("invalid media type %s (expect %s)", mt, want)
	}
	r, err := layer.Compressed()
	if err != nil {
		return nil, fmt.Errorf("could not get layer content: %v", err)
	}
	defer r.Close()
	gr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("failed to parse layer as tar.gz: %v", err)
	}
	tr := tar.NewReader(io.LimitReader(gr, maxWasmBinarySize))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		} else if err != nil {
			return nil, err
		}
		if filepath.Base(h.Name) == "plugin.wasm" {
			ret := make([]byte, h.Size)
			if _, err := io.ReadFull(tr, ret); err != nil {
				return nil, fmt.Errorf("failed to read plugin.wasm: %v", err)
			}
			return ret, nil
		}
	}
	return nil, errors.New("plugin.wasm not found in the archive")
}

// extractOCIArtifact: exactly two layers, one of them application/vnd.module.wasm.content.layer.v1+wasm holding
// the raw module (extractOCIArtifactImage).
func extractOCIArtifact(img v1.Image) ([]byte, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("could not fetch layers: %v", err)
	}
	if len(layers) != 2 {
		return nil, fmt.Errorf("number of layers must be 2 but got %d", len(layers))
	}
	const wasmLayerMediaType = "application/vnd.module.wasm.content.layer.v1+wasm"
	var layer v1.Layer
	for _, l := range layers {
		mt, err := l.MediaType()
		if err != nil {
			return nil, fmt.Errorf("could not retrieve the media type: %v", err)
		}
		if mt == wasmLayerMediaType {
			layer = l
			break
		}
	}
	if layer == nil {
		return nil, fmt.Errorf("could not find the layer of type %s", wasmLayerMediaType)
	}
	r, err := layer.Compressed()
	if err != nil {
		return nil, fmt.Errorf("could not get layer content: %v", err)
	}
	defer r.Close()
	return io.ReadAll(io.LimitReader(r, maxWasmBinarySize))
}
