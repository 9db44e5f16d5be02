//! Packaging and publishing of the filter (`dist/egress_identity.wasm`) as OCI images that Istio's
//! `WasmPlugin` (`url: oci://...`) can pull.
//!
//! Istio's image fetcher (istio/istio `pkg/wasm/imagefetcher.go`, after the solo-io Wasm image
//! specifications) accepts two layouts, and this crate builds both:
//!
//! * the **Wasm variant** ([`Variant::Wasm`], "oci" in the specification): an OCI image manifest whose
//!   config is the runtime configuration (`application/vnd.module.wasm.config.v1+json`) and which has
//!   exactly two layers: that runtime configuration again and the raw module
//!   (`application/vnd.module.wasm.content.layer.v1+wasm`). Istio requires the two layers.
//! * the **compat variant** ([`Variant::Compat`]): an ordinary OCI image (`application/vnd.oci.image.config.v1+json`)
//!   with one `application/vnd.oci.image.layer.v1.tar+gzip` layer holding `plugin.wasm` at its root and the
//!   manifest annotation `module.wasm.image/variant: compat`. Docker, podman, crane and every registry handle it.
//!
//! Both are deterministic: no timestamps, fixed tar headers, gzip without a modification time. The same module
//! always gives the same manifest digests, so [`Image::digest`] is known before anything is pushed and a
//! registry that reports another digest is caught.
//!
//! [`Registry`] pushes and pulls with `oci-client`; [`extract_wasm`] takes the module out of a pulled image
//! with Istio's rules, so a round trip through a registry checks what Istio would load; [`layout::Layout`] writes
//! both variants as an OCI image layout, the release artifact.

pub mod layout;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Write};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest as _, Sha256};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest v2 (schema 2); Istio reads its last layer as a compat layer.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Wasm variant: the runtime configuration (manifest config and first layer).
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// Wasm variant: the raw Wasm module layer.
pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// Compat variant: the image configuration.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Compat variant: the layer, a gzipped tar holding `plugin.wasm`.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The Docker flavour of the compat layer (accepted when pulling, never produced).
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Manifest annotation the compat specification requires with an OCI layer.
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
/// Descriptor annotation naming the file a layer holds.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// The file name of the module in the compat layer (and the title of the Wasm variant's module layer).
pub const PLUGIN_FILE: &str = "plugin.wasm";
/// The title of the Wasm variant's runtime configuration layer.
pub const RUNTIME_CONFIG_FILE: &str = "runtime-config.json";
/// The filter's root context id (what Envoy's `root_id` names; Istio sets it from the plugin).
pub const ROOT_ID: &str = "egress-identity";
/// The proxy-wasm ABI the filter exports (`proxy_abi_version_0_2_1`).
pub const ABI_VERSION: &str = "proxy_abi_version_0_2_1";
/// The default suffix of the compat variant's tag: `<tag>` is the Wasm variant, `<tag>-compat` the compat one.
pub const COMPAT_TAG_SUFFIX: &str = "-compat";
/// Environment variables with the registry's basic-auth credentials (both or neither).
pub const USERNAME_ENV: &str = "EGRESS_REGISTRY_USERNAME";
/// See [`USERNAME_ENV`].
pub const PASSWORD_ENV: &str = "EGRESS_REGISTRY_PASSWORD";

/// Everything that can go wrong, as one message with its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an error with what was being done, and the chain of its causes (reqwest's Display leaves them out: "error
/// sending request" would not say that the certificate was not trusted).
fn context<E: std::error::Error>(what: impl fmt::Display) -> impl FnOnce(E) -> Error {
    move |e| {
        let mut message = format!("{what}: {e}");
        let mut source = e.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message.push_str(": ");
                message.push_str(&cause_text);
            }
            source = cause.source();
        }
        Error(message)
    }
}

/// `sha256:<64 hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Checks the Wasm binary header: magic `\0asm` and version 1 (Istio checks the magic and the length).
pub fn check_wasm(module: &[u8]) -> Result<()> {
    match module.get(..8) {
        Some([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]) => Ok(()),
        Some(_) => Err(Error::new("not a Wasm module: its first 8 bytes are not \\0asm version 1")),
        None => Err(Error::new(format!("not a Wasm module: {} bytes, fewer than a Wasm header", module.len()))),
    }
}

/// The two layouts Istio accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Two layers: runtime configuration and the raw module (`application/vnd.module.wasm.content.layer.v1+wasm`).
    Wasm,
    /// One gzipped tar layer with `plugin.wasm`.
    Compat,
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Variant::Wasm => "wasm",
            Variant::Compat => "compat",
        })
    }
}

/// A blob of an image: the config or a layer.
#[derive(Clone, PartialEq, Eq)]
pub struct Blob {
    /// Its media type in the manifest.
    pub media_type: &'static str,
    /// Its `org.opencontainers.image.title` annotation, if any.
    pub title: Option<&'static str>,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("media_type", &self.media_type)
            .field("title", &self.title)
            .field("digest", &self.digest())
            .field("len", &self.data.len())
            .finish()
    }
}

impl Blob {
    /// `sha256:<hex>` of the bytes.
    pub fn digest(&self) -> String {
        sha256_digest(&self.data)
    }

    /// Its descriptor in a manifest.
    pub fn descriptor(&self) -> Result<OciDescriptor> {
        Ok(OciDescriptor {
            media_type: self.media_type.to_string(),
            digest: self.digest(),
            size: i64::try_from(self.data.len()).map_err(context("blob size"))?,
            urls: None,
            artifact_type: None,
            annotations: self.title.map(|title| BTreeMap::from([(TITLE_ANNOTATION.to_string(), title.to_string())])),
        })
    }
}

/// An image ready to push: its manifest (bytes exactly as pushed) and its blobs.
#[derive(Debug, Clone)]
pub struct Image {
    /// Which layout.
    pub variant: Variant,
    /// The manifest.
    pub manifest: OciImageManifest,
    /// The manifest as pushed; its digest is the image's digest.
    pub manifest_bytes: Vec<u8>,
    /// The config blob.
    pub config: Blob,
    /// The layer blobs, in manifest order.
    pub layers: Vec<Blob>,
}

impl Image {
    fn assemble(
        variant: Variant,
        config: Blob,
        layers: Vec<Blob>,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Result<Self> {
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_string()),
            config: config.descriptor()?,
            layers: layers.iter().map(Blob::descriptor).collect::<Result<_>>()?,
            subject: None,
            artifact_type: None,
            annotations,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(context("serializing the manifest"))?;
        Ok(Self { variant, manifest, manifest_bytes, config, layers })
    }

    /// The manifest digest, `sha256:<hex>`: what a registry reports for the pushed image and what
    /// `oci://registry/repo@sha256:<hex>` pins.
    pub fn digest(&self) -> String {
        sha256_digest(&self.manifest_bytes)
    }

    /// The config and the layers, each once (the Wasm variant's config is also its first layer).
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = BTreeSet::new();
        std::iter::once(&self.config).chain(self.layers.iter()).filter(|blob| seen.insert(blob.digest())).collect()
    }
}

/// The runtime configuration of the Wasm image specification, for Envoy.
pub fn runtime_config() -> Vec<u8> {
    format!(r#"{{"type":"envoy_proxy","abiVersions":["{ABI_VERSION}"],"config":{{"rootIds":["{ROOT_ID}"]}}}}"#)
        .into_bytes()
}

/// The Wasm variant of `module`.
pub fn wasm_image(module: &[u8]) -> Result<Image> {
    check_wasm(module)?;
    let config = Blob { media_type: WASM_CONFIG, title: None, data: runtime_config() };
    let layers = vec![
        Blob { media_type: WASM_CONFIG, title: Some(RUNTIME_CONFIG_FILE), data: runtime_config() },
        Blob { media_type: WASM_LAYER, title: Some(PLUGIN_FILE), data: module.to_vec() },
    ];
    Image::assemble(Variant::Wasm, config, layers, None)
}

/// The compat variant of `module`.
pub fn compat_image(module: &[u8]) -> Result<Image> {
    check_wasm(module)?;
    let tar = plugin_tar(module)?;
    let diff_id = sha256_digest(&tar);
    let layer = Blob { media_type: OCI_LAYER_GZIP, title: None, data: gzip(&tar)? };
    let config = Blob {
        media_type: OCI_CONFIG,
        title: None,
        data: format!(
            r#"{{"architecture":"wasm","os":"wasip1","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        )
        .into_bytes(),
    };
    let annotations = BTreeMap::from([(VARIANT_ANNOTATION.to_string(), Variant::Compat.to_string())]);
    Image::assemble(Variant::Compat, config, vec![layer], Some(annotations))
}

/// Both variants of `module`: `[wasm, compat]`.
pub fn images(module: &[u8]) -> Result<[Image; 2]> {
    Ok([wasm_image(module)?, compat_image(module)?])
}

/// A tar holding `plugin.wasm` (mode 0644, owner 0:0, mtime 0): the same bytes for the same module.
fn plugin_tar(module: &[u8]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(u64::try_from(module.len()).map_err(context("module size"))?);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    builder.append_data(&mut header, PLUGIN_FILE, module).map_err(context("writing the tar"))?;
    builder.into_inner().map_err(context("writing the tar"))
}

/// gzip without file name or modification time.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).map_err(context("gzip"))?;
    encoder.finish().map_err(context("gzip"))
}

/// The bytes of the `plugin.wasm` entry of a gzipped tar (Istio takes the first entry whose base name is
/// `plugin.wasm`).
pub fn plugin_from_tar_gz(layer: &[u8]) -> Result<Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    for entry in archive.entries().map_err(context("reading the layer as tar.gz"))? {
        let mut entry = entry.map_err(context("reading the layer as tar.gz"))?;
        let path = entry.path().map_err(context("reading a tar entry name"))?;
        if path.file_name().is_some_and(|name| name == PLUGIN_FILE) {
            let mut module = Vec::new();
            entry.read_to_end(&mut module).map_err(context("reading plugin.wasm"))?;
            return Ok(module);
        }
    }
    Err(Error::new(format!("{PLUGIN_FILE} not found in the layer")))
}

/// Takes the Wasm module out of a pulled image the way Istio does (`pkg/wasm/imagefetcher.go`):
/// a Docker manifest's last layer must be a gzipped Docker layer with `plugin.wasm`; an OCI manifest is read as the
/// compat variant (last layer gzipped OCI tar with `plugin.wasm`), else as the Wasm variant (exactly two layers,
/// one `application/vnd.module.wasm.content.layer.v1+wasm` with the raw module). The module must be Wasm.
///
/// `layers` are the manifest's layer descriptors with their bytes, in manifest order.
pub fn extract_wasm(manifest_media_type: &str, layers: &[(OciDescriptor, Vec<u8>)]) -> Result<(Variant, Vec<u8>)> {
    let (variant, module) = if manifest_media_type == DOCKER_MANIFEST {
        (Variant::Compat, compat_layer(layers, DOCKER_LAYER_GZIP)?)
    } else {
        match compat_layer(layers, OCI_LAYER_GZIP) {
            Ok(module) => (Variant::Compat, module),
            Err(compat) => match wasm_layer(layers) {
                Ok(module) => (Variant::Wasm, module),
                Err(wasm) => {
                    return Err(Error::new(format!(
                        "not an image Istio can load: as the compat variant: {compat}; as the Wasm variant: {wasm}"
                    )))
                }
            },
        }
    };
    check_wasm(&module)?;
    Ok((variant, module))
}

fn compat_layer(layers: &[(OciDescriptor, Vec<u8>)], media_type: &str) -> Result<Vec<u8>> {
    let (descriptor, data) = layers.last().ok_or_else(|| Error::new("the image has no layer"))?;
    if descriptor.media_type != media_type {
        return Err(Error::new(format!("last layer is {} (expected {media_type})", descriptor.media_type)));
    }
    plugin_from_tar_gz(data)
}

fn wasm_layer(layers: &[(OciDescriptor, Vec<u8>)]) -> Result<Vec<u8>> {
    if layers.len() != 2 {
        return Err(Error::new(format!("{} layers (expected 2)", layers.len())));
    }
    layers
        .iter()
        .find(|(descriptor, _)| descriptor.media_type == WASM_LAYER)
        .map(|(_, data)| data.clone())
        .ok_or_else(|| Error::new(format!("no {WASM_LAYER} layer")))
}

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Plain HTTP (a local registry without TLS).
    pub insecure: bool,
    /// HTTPS without verifying the registry's certificate (a registry with a self-signed certificate).
    pub skip_tls_verify: bool,
    /// Credentials.
    pub auth: RegistryAuth,
}

impl RegistryOptions {
    /// Credentials from `EGRESS_REGISTRY_USERNAME` / `EGRESS_REGISTRY_PASSWORD` (anonymous when neither is set).
    pub fn from_env(insecure: bool, skip_tls_verify: bool) -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let auth = match (var(USERNAME_ENV), var(PASSWORD_ENV)) {
            (Some(user), Some(password)) => RegistryAuth::Basic(user, password),
            (None, None) => RegistryAuth::Anonymous,
            _ => return Err(Error::new(format!("set both {USERNAME_ENV} and {PASSWORD_ENV}, or neither"))),
        };
        Ok(Self { insecure, skip_tls_verify, auth })
    }
}

/// An image pulled back from a registry, with its module taken out by Istio's rules.
#[derive(Clone)]
pub struct Pulled {
    /// The manifest digest (checked against the manifest bytes and the registry's `Docker-Content-Digest`).
    pub digest: String,
    /// The manifest bytes as served.
    pub manifest_bytes: Vec<u8>,
    /// The manifest.
    pub manifest: OciImageManifest,
    /// The config blob (checked against its digest).
    pub config: Vec<u8>,
    /// The layers, each checked against its digest and size, in manifest order.
    pub layers: Vec<(OciDescriptor, Vec<u8>)>,
    /// The layout Istio would read it as.
    pub variant: Variant,
    /// The Wasm module Istio would load.
    pub module: Vec<u8>,
}

impl fmt::Debug for Pulled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pulled")
            .field("digest", &self.digest)
            .field("manifest", &self.manifest)
            .field("variant", &self.variant)
            .field("module", &format_args!("{} bytes, {}", self.module.len(), sha256_digest(&self.module)))
            .finish_non_exhaustive()
    }
}

/// An OCI registry client (`oci-client`).
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
}

impl Registry {
    /// A client for registries reached with `options`.
    pub fn new(options: RegistryOptions) -> Result<Self> {
        // rustls is built without a default crypto provider: use ring. Err means one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if options.insecure { ClientProtocol::Http } else { ClientProtocol::Https },
            accept_invalid_certificates: options.skip_tls_verify,
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(context("creating the OCI client"))?;
        Ok(Self { client, auth: options.auth })
    }

    /// Pushes `image` as `reference` (a tag) and returns the manifest digest the registry resolves the tag to,
    /// after checking that it is the image's own digest.
    pub async fn push(&self, reference: &Reference, image: &Image) -> Result<String> {
        self.client
            .auth(reference, &self.auth, RegistryOperation::Push)
            .await
            .map_err(context(format!("authenticating to {} for push", reference.registry())))?;
        for blob in image.blobs() {
            let digest = blob.digest();
            let exists = self
                .client
                .blob_exists(reference, &digest)
                .await
                .map_err(context(format!("checking blob {digest} in {}", reference.whole())))?;
            if !exists {
                self.client
                    .push_blob(reference, blob.data.clone(), &digest)
                    .await
                    .map_err(context(format!("pushing blob {digest} to {}", reference.whole())))?;
            }
        }
        self.client
            .push_manifest_raw(reference, image.manifest_bytes.clone(), http::HeaderValue::from_static(OCI_MANIFEST))
            .await
            .map_err(context(format!("pushing the manifest of {}", reference.whole())))?;
        let resolved = self.resolve(reference).await?;
        if resolved != image.digest() {
            return Err(Error::new(format!(
                "{} resolves to {resolved} after the push, not to the pushed manifest {}",
                reference.whole(),
                image.digest()
            )));
        }
        Ok(resolved)
    }

    /// The manifest digest `reference` resolves to (HEAD on the manifest).
    pub async fn resolve(&self, reference: &Reference) -> Result<String> {
        self.client
            .fetch_manifest_digest(reference, &self.auth)
            .await
            .map_err(context(format!("resolving {}", reference.whole())))
    }

    /// Pulls `reference` (tag or digest): the manifest, the config and every layer, each verified against its
    /// digest, then takes the module out with Istio's rules ([`extract_wasm`]).
    pub async fn pull(&self, reference: &Reference) -> Result<Pulled> {
        let whole = reference.whole();
        let (body, digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
            .await
            .map_err(context(format!("pulling the manifest of {whole}")))?;
        let manifest_bytes = body.to_vec();
        if sha256_digest(&manifest_bytes) != digest {
            return Err(Error::new(format!("{whole}: the manifest served does not have digest {digest}")));
        }
        let manifest: OciImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(context(format!("parsing the manifest of {whole}")))?;
        let config = self.pull_blob(reference, &manifest.config).await?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for descriptor in &manifest.layers {
            let data = self.pull_blob(reference, descriptor).await?;
            layers.push((descriptor.clone(), data));
        }
        let media_type = manifest.media_type.clone().unwrap_or_else(|| OCI_MANIFEST.to_string());
        let (variant, module) = extract_wasm(&media_type, &layers).map_err(context(&whole))?;
        Ok(Pulled { digest, manifest_bytes, manifest, config, layers, variant, module })
    }

    async fn pull_blob(&self, reference: &Reference, descriptor: &OciDescriptor) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.client.pull_blob(reference, descriptor, &mut data).await.map_err(context(format!(
            "pulling blob {} of {}",
            descriptor.digest,
            reference.whole()
        )))?;
        if i64::try_from(data.len()).ok() != Some(descriptor.size) {
            return Err(Error::new(format!(
                "blob {} of {}: {} bytes, the manifest says {}",
                descriptor.digest,
                reference.whole(),
                data.len(),
                descriptor.size
            )));
        }
        Ok(data)
    }
}

/// Parses `registry/repository:tag` (the tag is required: it is what gets pushed).
pub fn parse_tagged(image: &str) -> Result<Reference> {
    let reference: Reference = image.parse().map_err(context(format!("image reference {image:?}")))?;
    let has_tag = image.rsplit('/').next().is_some_and(|last| last.contains(':'));
    if !has_tag || reference.digest().is_some() {
        return Err(Error::new(format!("image reference {image:?}: give registry/repository:tag")));
    }
    Ok(reference)
}

/// The tags of both variants, `[wasm, compat]`: `tag` and `tag` followed by `compat_suffix`, each a valid OCI tag
/// (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`) and not the same.
pub fn variant_tags(tag: &str, compat_suffix: &str) -> Result<[String; 2]> {
    if compat_suffix.is_empty() {
        return Err(Error::new("the compat suffix must not be empty: both variants would get the same tag"));
    }
    let tags = [tag.to_string(), format!("{tag}{compat_suffix}")];
    for tag in &tags {
        let mut bytes = tag.bytes();
        let first = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !first || tag.len() > 128 || !bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return Err(Error::new(format!("{tag:?} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")));
        }
    }
    Ok(tags)
}

/// `reference` with the tag `tag`.
pub fn with_tag(reference: &Reference, tag: &str) -> Reference {
    Reference::with_tag(reference.registry().to_string(), reference.repository().to_string(), tag.to_string())
}

/// `reference`'s repository at `digest`.
pub fn with_digest(reference: &Reference, digest: &str) -> Reference {
    Reference::with_digest(reference.registry().to_string(), reference.repository().to_string(), digest.to_string())
}

/// The `WasmPlugin.spec.url` pinning `reference`'s repository at `digest`: `oci://registry/repository@sha256:<hex>`.
pub fn oci_url(reference: &Reference, digest: &str) -> String {
    format!("oci://{}/{}@{digest}", reference.registry(), reference.repository())
}

/// Rewrites every `url: oci://...` line of a WasmPlugin or TrafficExtension manifest to `url` (keeping its
/// indentation and comment lines, but for a comment above it that says the url is a PLACEHOLDER; a file may
/// hold the HTTP and the network plugin, both the same module), and each `sha256:` line at the indentation of
/// a url line, if there is one, to the digest in `url`.
pub fn pin_manifest(text: &str, url: &str) -> Result<String> {
    let hex = url
        .rsplit_once("@sha256:")
        .map(|(_, hex)| hex)
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .ok_or_else(|| Error::new(format!("{url:?} is not oci://registry/repository@sha256:<64 hex digits>")))?;
    if !url.starts_with("oci://") {
        return Err(Error::new(format!("{url:?} is not an oci:// URL")));
    }
    let is_key = |line: &str, key: &str| line.trim_start().strip_prefix(key).is_some_and(|rest| rest.starts_with(':'));
    let indent = |line: &str| line.len() - line.trim_start().len();
    let urls: Vec<usize> = text
        .split_inclusive('\n')
        .enumerate()
        .filter(|(_, line)| is_key(line, "url") && line.contains("oci://"))
        .map(|(i, _)| i)
        .collect();
    if urls.is_empty() {
        return Err(Error::new("expected a `url: oci://...` line, found none"));
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let url_indents: Vec<usize> = urls.iter().filter_map(|i| lines.get(*i)).map(|line| indent(line)).collect();
    // A comment block right above a url line that calls it a PLACEHOLDER is no longer true once pinned.
    let mut dropped = Vec::new();
    for &u in &urls {
        let block: Vec<usize> =
            (0..u).rev().take_while(|&j| lines.get(j).is_some_and(|l| l.trim_start().starts_with('#'))).collect();
        if block.iter().any(|&j| lines.get(j).is_some_and(|l| l.contains("PLACEHOLDER"))) {
            dropped.extend(block);
        }
    }
    let mut out = String::with_capacity(text.len());
    for (i, line) in lines.iter().enumerate() {
        let newline = if line.ends_with('\n') { "\n" } else { "" };
        let pad = line.get(..indent(line)).unwrap_or_default();
        if dropped.contains(&i) {
            continue;
        }
        if urls.contains(&i) {
            out.push_str(&format!("{pad}url: {url}{newline}"));
        } else if is_key(line, "sha256") && url_indents.contains(&indent(line)) {
            out.push_str(&format!("{pad}sha256: {hex}{newline}"));
        } else {
            out.push_str(line);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// The smallest valid module: header only.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn module() -> Vec<u8> {
        // header + a custom section, so the bytes are not trivially short
        let mut m = EMPTY_MODULE.to_vec();
        m.extend_from_slice(&[0x00, 0x05, 0x04, b't', b'e', b's', b't']);
        m
    }

    fn layers(image: &Image) -> Vec<(OciDescriptor, Vec<u8>)> {
        image.manifest.layers.iter().cloned().zip(image.layers.iter().map(|b| b.data.clone())).collect()
    }

    #[test]
    fn wasm_variant_layout() {
        let image = wasm_image(&module()).unwrap();
        let m = &image.manifest;
        assert_eq!(m.media_type.as_deref(), Some(OCI_MANIFEST));
        assert_eq!(m.config.media_type, WASM_CONFIG);
        let types: Vec<&str> = m.layers.iter().map(|l| l.media_type.as_str()).collect();
        assert_eq!(types, [WASM_CONFIG, WASM_LAYER]);
        assert_eq!(m.layers[1].digest, sha256_digest(&module()));
        assert_eq!(m.layers[1].size, module().len() as i64);
        assert_eq!(image.blobs().len(), 2, "config and first layer are one blob");
        let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(config["type"], "envoy_proxy");
        assert_eq!(config["config"]["rootIds"][0], ROOT_ID);
        assert_eq!(extract_wasm(OCI_MANIFEST, &layers(&image)).unwrap(), (Variant::Wasm, module()));
    }

    #[test]
    fn compat_variant_layout() {
        let image = compat_image(&module()).unwrap();
        let m = &image.manifest;
        assert_eq!(m.media_type.as_deref(), Some(OCI_MANIFEST));
        assert_eq!(m.config.media_type, OCI_CONFIG);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].media_type, OCI_LAYER_GZIP);
        assert_eq!(m.annotations.as_ref().unwrap()[VARIANT_ANNOTATION], "compat");
        assert_eq!(plugin_from_tar_gz(&image.layers[0].data).unwrap(), module());
        // The config's diff_id is the digest of the uncompressed layer.
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(image.layers[0].data.as_slice()).read_to_end(&mut tar).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256_digest(&tar));
        // plugin.wasm is the only entry, at the root.
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, [PLUGIN_FILE]);
        assert_eq!(extract_wasm(OCI_MANIFEST, &layers(&image)).unwrap(), (Variant::Compat, module()));
    }

    #[test]
    fn images_are_deterministic_and_depend_on_every_byte() {
        let [w1, c1] = images(&module()).unwrap();
        let [w2, c2] = images(&module()).unwrap();
        assert_eq!(w1.manifest_bytes, w2.manifest_bytes);
        assert_eq!(c1.manifest_bytes, c2.manifest_bytes);
        assert_ne!(w1.digest(), c1.digest());
        let mut other = module();
        *other.last_mut().unwrap() ^= 1;
        let [w3, c3] = images(&other).unwrap();
        assert_ne!(w1.digest(), w3.digest());
        assert_ne!(c1.digest(), c3.digest());
        assert_eq!(w1.digest(), sha256_digest(&w1.manifest_bytes));
    }

    #[test]
    fn refuses_what_is_not_wasm() {
        assert!(wasm_image(b"not wasm at all").is_err());
        assert!(compat_image(b"\0asm").is_err());
        assert!(check_wasm(EMPTY_MODULE).is_ok());
    }

    #[test]
    fn extraction_follows_istio() {
        let wasm = wasm_image(&module()).unwrap();
        let compat = compat_image(&module()).unwrap();
        // Wasm variant with one layer only: Istio wants two.
        let one: Vec<_> = layers(&wasm).into_iter().skip(1).collect();
        let e = extract_wasm(OCI_MANIFEST, &one).unwrap_err().to_string();
        assert!(e.contains("1 layers (expected 2)"), "{e}");
        // Two layers but no Wasm content layer.
        let mut renamed = layers(&wasm);
        renamed[1].0.media_type = "application/vnd.wasm.content.layer.v1+wasm".into();
        let e = extract_wasm(OCI_MANIFEST, &renamed).unwrap_err().to_string();
        assert!(e.contains("no application/vnd.module.wasm.content.layer.v1+wasm layer"), "{e}");
        // A Docker manifest needs the Docker layer type.
        let e = extract_wasm(DOCKER_MANIFEST, &layers(&compat)).unwrap_err().to_string();
        assert!(e.contains("expected application/vnd.docker.image.rootfs.diff.tar.gzip"), "{e}");
        let mut docker = layers(&compat);
        docker[0].0.media_type = DOCKER_LAYER_GZIP.into();
        assert_eq!(extract_wasm(DOCKER_MANIFEST, &docker).unwrap(), (Variant::Compat, module()));
        // A compat layer without plugin.wasm.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(module().len() as u64);
        tar.append_data(&mut header, "filter.wasm", module().as_slice()).unwrap();
        let mut bad = layers(&compat);
        bad[0].1 = gzip(&tar.into_inner().unwrap()).unwrap();
        let e = extract_wasm(OCI_MANIFEST, &bad).unwrap_err().to_string();
        assert!(e.contains("plugin.wasm not found"), "{e}");
        // A module that is not Wasm.
        let mut garbage = layers(&wasm);
        garbage[1].1 = b"\x7fELF not wasm".to_vec();
        assert!(extract_wasm(OCI_MANIFEST, &garbage).unwrap_err().to_string().contains("not a Wasm module"));
    }

    #[test]
    fn references() {
        let r = parse_tagged("127.0.0.1:5000/team/egress-identity:0.1.0").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/egress-identity");
        assert_eq!(with_tag(&r, "0.1.0-compat").whole(), "127.0.0.1:5000/team/egress-identity:0.1.0-compat");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(oci_url(&r, &d), format!("oci://127.0.0.1:5000/team/egress-identity@{d}"));
        assert_eq!(with_digest(&r, &d).whole(), format!("127.0.0.1:5000/team/egress-identity@{d}"));
        assert!(parse_tagged("127.0.0.1:5000/egress-identity").is_err(), "the tag is required");
        assert!(parse_tagged(&format!("ghcr.io/x/y@{d}")).is_err());
        assert_eq!(variant_tags("0.1.0", COMPAT_TAG_SUFFIX).unwrap(), ["0.1.0", "0.1.0-compat"]);
        assert!(variant_tags("0.1.0", "").is_err(), "both variants would share the tag");
        assert!(variant_tags("0.1.0", "/x").is_err());
        assert!(variant_tags("-rc", COMPAT_TAG_SUFFIX).is_err());
        assert!(variant_tags(&"a".repeat(128), COMPAT_TAG_SUFFIX).is_err(), "the compat tag is too long");
        assert!(variant_tags(&"a".repeat(121), COMPAT_TAG_SUFFIX).is_ok());
    }

    #[test]
    fn pins_the_url_line() {
        let text = "spec:\n  # pin it\n  url: oci://ghcr.io/x/y:0.1.0\n  sha256: old\n  pluginConfig:\n    url: keep\n";
        let url = format!("oci://ghcr.io/x/y@sha256:{}", "b".repeat(64));
        let pinned = pin_manifest(text, &url).unwrap();
        assert_eq!(
            pinned,
            format!("spec:\n  # pin it\n  url: {url}\n  sha256: {}\n  pluginConfig:\n    url: keep\n", "b".repeat(64))
        );
        assert_eq!(pin_manifest(&pinned, &url).unwrap(), pinned, "idempotent");
        assert!(pin_manifest(text, "oci://ghcr.io/x/y:0.1.0").is_err(), "a tag is not a pin");
        assert!(pin_manifest("spec:\n  type: HTTP\n", &url).is_err(), "no url line");
        // Two plugins in one file (HTTP and network, TrafficExtension's nested wasm.url): both pinned.
        let two = "spec:\n  url: oci://a/b:1\n---\nspec:\n  wasm:\n    url: oci://a/b:1\n    sha256: x\n";
        let expected =
            format!("spec:\n  url: {url}\n---\nspec:\n  wasm:\n    url: {url}\n    sha256: {}\n", "b".repeat(64));
        assert_eq!(pin_manifest(two, &url).unwrap(), expected);
        // A placeholder's warning goes with it; other comments stay.
        let placeholder =
            "spec:\n  # keep me\n  x: 1\n  # PLACEHOLDER -- not a published image:\n  # push it\n  url: oci://a/b:1\n";
        assert_eq!(pin_manifest(placeholder, &url).unwrap(), format!("spec:\n  # keep me\n  x: 1\n  url: {url}\n"));
    }
}
