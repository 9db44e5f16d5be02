//! An OCI image layout (opencontainers/image-spec `image-layout.md`) holding both variants of the module:
//! `oci-layout`, `index.json` naming each image by its tag (`org.opencontainers.image.ref.name`), and
//! `blobs/sha256/<hex>` for every manifest, config and layer. It is the release artifact: a tool that reads image
//! layouts copies it to a registry unchanged (tests/oci does it with go-containerregistry), and the digests it holds
//! are the ones the registry reports after the push.
//!
//! Deterministic like the images themselves: the same module and tags give byte-identical files.

use std::collections::BTreeMap;
use std::path::Path;

use oci_client::manifest::{ImageIndexEntry, OciImageIndex};

use crate::{Error, Image, Result, OCI_MANIFEST};

/// The layout's marker file.
pub const LAYOUT_FILE: &str = "oci-layout";
/// The content of [`LAYOUT_FILE`].
pub const LAYOUT_VERSION: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// The layout's index of images.
pub const INDEX_FILE: &str = "index.json";
/// The media type of `index.json`.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The index annotation naming an image in a layout (what tools select an image of the layout by).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Where the blobs are, by digest algorithm.
pub const BLOBS_DIR: &str = "blobs/sha256";

/// The files of an OCI image layout, by path relative to its root, in the order they are written: the blobs, then
/// `index.json`, then `oci-layout` (a directory left half-written by a failure is not a layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    files: Vec<(String, Vec<u8>)>,
}

impl Layout {
    /// The layout of `images`, each named `ref_name` in `index.json`, in this order.
    pub fn new(images: &[(&Image, &str)]) -> Result<Self> {
        let mut blobs = BTreeMap::new();
        let mut manifests = Vec::with_capacity(images.len());
        for (image, ref_name) in images {
            if ref_name.is_empty() {
                return Err(Error::new(format!("the {} variant has an empty name", image.variant)));
            }
            let digest = image.digest();
            blobs.insert(blob_path(&digest)?, image.manifest_bytes.clone());
            for blob in image.blobs() {
                blobs.insert(blob_path(&blob.digest())?, blob.data.clone());
            }
            manifests.push(ImageIndexEntry {
                media_type: OCI_MANIFEST.to_string(),
                digest,
                size: i64::try_from(image.manifest_bytes.len())
                    .map_err(|e| Error::new(format!("manifest size: {e}")))?,
                platform: None,
                annotations: Some(BTreeMap::from([(REF_NAME_ANNOTATION.to_string(), ref_name.to_string())])),
                artifact_type: None,
            });
        }
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests,
            artifact_type: None,
            annotations: None,
        };
        let index = serde_json::to_vec(&index).map_err(|e| Error::new(format!("serializing {INDEX_FILE}: {e}")))?;
        let mut files: Vec<(String, Vec<u8>)> = blobs.into_iter().collect();
        files.push((INDEX_FILE.to_string(), index));
        files.push((LAYOUT_FILE.to_string(), LAYOUT_VERSION.as_bytes().to_vec()));
        Ok(Self { files })
    }

    /// The files, by path relative to the layout's root (`/`-separated), in writing order.
    pub fn files(&self) -> &[(String, Vec<u8>)] {
        &self.files
    }

    /// Writes the layout into `dir`, which must be missing or empty (a blob left from another module would make
    /// it another artifact), calling `progress` with each file's path and size once written.
    pub fn write(&self, dir: &Path, mut progress: impl FnMut(&str, usize)) -> Result<()> {
        let io = |what: &str, path: &Path| {
            let what = format!("{what} {}", path.display());
            move |e: std::io::Error| Error::new(format!("{what}: {e}"))
        };
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        if std::fs::read_dir(dir).map_err(io("reading", dir))?.next().is_some() {
            return Err(Error::new(format!("{} is not empty: give a new or empty directory", dir.display())));
        }
        for (name, data) in &self.files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
            }
            std::fs::write(&path, data).map_err(io("writing", &path))?;
            progress(name, data.len());
        }
        Ok(())
    }
}

/// `blobs/sha256/<hex>` of a `sha256:<hex>` digest.
fn blob_path(digest: &str) -> Result<String> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| Error::new(format!("{digest:?} is not a sha256 digest")))?;
    Ok(format!("{BLOBS_DIR}/{hex}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::{images, sha256_digest, variant_tags, Variant, COMPAT_TAG_SUFFIX};

    fn module(last: u8) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        m.extend_from_slice(&[0x00, 0x05, 0x04, b't', b'e', b's', last]);
        m
    }

    fn layout_of(module: &[u8], tag: &str) -> (Layout, [Image; 2]) {
        let images = images(module).unwrap();
        let [wasm_tag, compat_tag] = variant_tags(tag, COMPAT_TAG_SUFFIX).unwrap();
        let layout = Layout::new(&[(&images[0], wasm_tag.as_str()), (&images[1], compat_tag.as_str())]).unwrap();
        (layout, images)
    }

    fn file<'a>(layout: &'a Layout, name: &str) -> &'a [u8] {
        &layout.files().iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
    }

    fn index(layout: &Layout) -> serde_json::Value {
        serde_json::from_slice(file(layout, INDEX_FILE)).unwrap()
    }

    #[test]
    fn every_blob_is_named_by_its_digest_and_every_descriptor_has_its_blob() {
        let (layout, images) = layout_of(&module(b't'), "0.1.0");
        let index = index(&layout);
        let mut blobs = 0;
        for (name, data) in layout.files() {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(format!("sha256:{hex}"), sha256_digest(data), "{name}");
                blobs += 1;
            }
        }
        // Wasm: manifest, runtime config (config and first layer), module; compat: manifest, config, layer.
        assert_eq!(blobs, 6);
        for entry in index["manifests"].as_array().unwrap() {
            let digest = entry["digest"].as_str().unwrap();
            let manifest = file(&layout, &blob_path(digest).unwrap());
            assert_eq!(entry["size"], manifest.len());
            assert_eq!(entry["mediaType"], OCI_MANIFEST);
            let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
            let layers = manifest["layers"].as_array().unwrap();
            for descriptor in layers.iter().chain([&manifest["config"]]) {
                let blob = file(&layout, &blob_path(descriptor["digest"].as_str().unwrap()).unwrap());
                assert_eq!(descriptor["size"], blob.len());
            }
        }
        let digests: Vec<String> = images.iter().map(Image::digest).collect();
        let listed: Vec<&str> =
            index["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap()).collect();
        assert_eq!(listed, digests);
        assert_eq!(images[0].variant, Variant::Wasm);
    }

    #[test]
    fn the_index_names_both_tags() {
        let (layout, _) = layout_of(&module(b't'), "1.2.3");
        let index = index(&layout);
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], OCI_INDEX);
        let names: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["annotations"][REF_NAME_ANNOTATION].as_str().unwrap())
            .collect();
        assert_eq!(names, ["1.2.3", "1.2.3-compat"]);
        assert_eq!(file(&layout, LAYOUT_FILE), br#"{"imageLayoutVersion":"1.0.0"}"#);
        let order: Vec<&str> = layout.files().iter().rev().take(2).map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, [LAYOUT_FILE, INDEX_FILE], "the marker is written last");
        let image = &images(&module(b't')).unwrap()[0];
        assert!(Layout::new(&[(image, "")]).is_err());
    }

    #[test]
    fn deterministic_twice_and_on_disk() {
        let (first, _) = layout_of(&module(b't'), "0.1.0");
        let (second, _) = layout_of(&module(b't'), "0.1.0");
        assert_eq!(first, second);
        let (other, _) = layout_of(&module(b'u'), "0.1.0");
        assert_ne!(index(&first), index(&other), "another module, other digests");

        let root = std::env::temp_dir().join(format!("egress-layout-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (a, b) = (root.join("a"), root.join("b"));
        let mut written = Vec::new();
        first.write(&a, |name, len| written.push((name.to_string(), len))).unwrap();
        second.write(&b, |_, _| {}).unwrap();
        assert_eq!(written.len(), first.files().len());
        for (name, data) in first.files() {
            assert_eq!(&std::fs::read(a.join(name)).unwrap(), data, "{name}");
            assert_eq!(std::fs::read(a.join(name)).unwrap(), std::fs::read(b.join(name)).unwrap(), "{name}");
        }
        let on_disk = |dir: &Path| std::fs::read_dir(dir.join(BLOBS_DIR)).unwrap().count();
        assert_eq!(on_disk(&a), 6, "no other file");
        let e = first.write(&a, |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("is not empty"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
