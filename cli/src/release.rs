//! A release's manifest (`release.json`, written by `make release`, scripts/release.sh): what `render istio`
//! and `render kuma` pin the module to with `--release`, so no rendered manifest carries a placeholder.
//!
//! Only what renderers need is read, and each value is checked: a digest that is not one would give a
//! manifest Istio or Kuma refuses at run time, far from its cause.

use std::path::Path;

use serde_json::Value;

/// What the renderers take from a release.
#[derive(Debug, PartialEq, Eq)]
pub struct Release {
    pub version: String,
    /// The module's sha256, hex (what Kuma's remote code source checks).
    pub wasm_sha256: String,
    /// The OCI manifest digest of the Wasm variant, `sha256:<hex>` (what Istio's WasmPlugin pins).
    pub oci_digest: String,
    /// Where the release's OCI layout was pushed, if the release names it.
    pub repository: Option<String>,
}

impl Release {
    /// Reads and checks `release.json`; errors name the JSON path.
    pub fn load(path: &Path) -> Result<Release, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Release::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Release, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not a release manifest (JSON): {e}"))?;
        let field = |pointer: &str| -> Result<&str, String> {
            doc.pointer(pointer)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{}: missing (a string)", dotted(pointer)))
        };
        if field("/name")? != "egress-identity" {
            return Err(".name: not an egress-identity release".into());
        }
        let wasm_sha256 = field("/wasm/sha256")?;
        if !is_hex_sha256(wasm_sha256) {
            return Err(format!(".wasm.sha256: `{wasm_sha256}` is not 64 lower-case hex digits"));
        }
        let oci_digest = field("/oci/wasm")?;
        if !oci_digest.strip_prefix("sha256:").is_some_and(is_hex_sha256) {
            return Err(format!(".oci.wasm: `{oci_digest}` is not a sha256:<64 hex> digest"));
        }
        let repository = match doc.pointer("/oci/repository") {
            None => None,
            Some(Value::String(r)) => Some(check_repository(r).map_err(|e| format!(".oci.repository: {e}"))?),
            Some(_) => return Err(".oci.repository: not a string".into()),
        };
        Ok(Release {
            version: field("/version")?.to_string(),
            wasm_sha256: wasm_sha256.to_string(),
            oci_digest: oci_digest.to_string(),
            repository,
        })
    }

    /// The WasmPlugin url: `oci://<repository>@<digest>`, the repository given or the release's.
    pub fn istio_image(&self, repository: Option<&str>) -> Result<String, String> {
        let repository = match repository {
            Some(r) => check_repository(r).map_err(|e| format!("--image-repository: {e}"))?,
            None => self.repository.clone().ok_or(
                "the release names no repository: give --image-repository REGISTRY/REPOSITORY (where its OCI layout was pushed)",
            )?,
        };
        Ok(format!("oci://{repository}@{}", self.oci_digest))
    }
}

fn dotted(pointer: &str) -> String {
    pointer.replace('/', ".")
}

fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `host[:port]/path`, without scheme, tag or digest.
fn check_repository(r: &str) -> Result<String, String> {
    let r = r.strip_prefix("oci://").unwrap_or(r);
    let Some((host, path)) = r.split_once('/') else {
        return Err(format!("`{r}` is not REGISTRY/REPOSITORY"));
    };
    let path_ok = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if host.is_empty() || !path_ok || r.contains('@') {
        return Err(format!("`{r}` is not REGISTRY/REPOSITORY (lower-case path, no tag or digest)"));
    }
    Ok(r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn manifest(extra: &str) -> String {
        format!(
            r#"{{ "name": "egress-identity", "version": "0.1.0", "wasm": {{ "sha256": "{HEX}" }},
                "oci": {{ "wasm": "sha256:{HEX}"{extra} }} }}"#
        )
    }

    #[test]
    fn a_release_pins_the_digest_in_the_repository_given_or_its_own() {
        let r = Release::parse(&manifest("")).unwrap();
        assert_eq!(r.wasm_sha256, HEX);
        assert_eq!(
            r.istio_image(Some("ghcr.io/acme/egress-identity")).unwrap(),
            format!("oci://ghcr.io/acme/egress-identity@sha256:{HEX}")
        );
        assert!(r.istio_image(None).unwrap_err().contains("--image-repository"));
        let own = Release::parse(&manifest(r#", "repository": "registry.local:5000/ei""#)).unwrap();
        assert_eq!(own.istio_image(None).unwrap(), format!("oci://registry.local:5000/ei@sha256:{HEX}"));
    }

    #[test]
    fn what_cannot_be_a_digest_or_repository_is_refused_with_its_path() {
        let bad = manifest("").replace(&format!("sha256:{HEX}"), "sha256:abc");
        assert!(Release::parse(&bad).unwrap_err().starts_with(".oci.wasm:"));
        let upper = manifest("").replacen(HEX, &HEX.to_uppercase(), 1);
        assert!(Release::parse(&upper).unwrap_err().starts_with(".wasm.sha256:"));
        assert!(Release::parse(r#"{"name": "other"}"#).unwrap_err().starts_with(".name:"));
        assert!(Release::parse(&manifest(r#", "repository": "ghcr.io/acme/x:1.0""#))
            .unwrap_err()
            .starts_with(".oci.repository:"));
        let r = Release::parse(&manifest("")).unwrap();
        for repo in ["ghcr.io", "ghcr.io/Acme/x", "ghcr.io/x@sha256:00", "ghcr.io//x"] {
            assert!(r.istio_image(Some(repo)).is_err(), "{repo}");
        }
    }
}
