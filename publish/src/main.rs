//! `egress-identity-publish`: pushes the filter to an OCI registry in both layouts Istio accepts, pulls it
//! back to check it, and pins the Istio examples to the pushed digest. See `make publish` and
//! scripts/publish.sh.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use egress_identity_publish::layout::Layout;
use egress_identity_publish::{
    images, oci_url, parse_tagged, pin_manifest, variant_tags, with_digest, with_tag, Error, Registry, RegistryOptions,
    Result, COMPAT_TAG_SUFFIX, PASSWORD_ENV, USERNAME_ENV,
};

/// `println!` that ignores a closed stdout (`| head`) instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "egress-identity-publish",
    about = "Publish egress_identity.wasm as OCI images for Istio's WasmPlugin (Wasm variant and compat variant)",
    after_help = format!(
        "Registry credentials: {USERNAME_ENV} and {PASSWORD_ENV} (HTTP basic auth, also used to get a bearer \
         token); anonymous when unset."
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push <image> (the Wasm variant) and <image>-compat (the compat variant), pull both back and check them,
    /// and print the digests and the WasmPlugin url pinning them.
    Push {
        /// The module.
        #[arg(long, default_value = "dist/egress_identity.wasm")]
        wasm: PathBuf,
        /// Where to push the Wasm variant: registry[:port]/repository:tag.
        #[arg(long)]
        image: String,
        /// The compat variant's tag is the Wasm variant's tag followed by this.
        #[arg(long, default_value = COMPAT_TAG_SUFFIX)]
        compat_suffix: String,
        /// Rewrite the `url:` line of these WasmPlugin manifests to the pushed Wasm variant, by digest.
        #[arg(long, value_name = "FILE")]
        pin: Vec<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull an image (tag or digest), take the module out as Istio would, and print its variant and digest.
    Pull {
        /// registry[:port]/repository:tag or registry[:port]/repository@sha256:<hex>.
        #[arg(long)]
        image: String,
        /// Write the module here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Print the manifest digests both variants of the module get, without a registry (the images are
    /// reproducible: the same module always gives the same digests).
    Digest {
        /// The module.
        #[arg(long, default_value = "dist/egress_identity.wasm")]
        wasm: PathBuf,
    },
    /// Write both variants as an OCI image layout (oci-layout, index.json, blobs/sha256/): TAG names the Wasm
    /// variant and TAG-compat the compat variant (org.opencontainers.image.ref.name). Prints the two manifest
    /// digests; progress on stderr. The same module gives byte-identical files.
    Layout {
        /// The module.
        #[arg(long, default_value = "dist/egress_identity.wasm")]
        wasm: PathBuf,
        /// The Wasm variant's name in index.json (an OCI tag, e.g. 0.1.0).
        #[arg(long)]
        tag: String,
        /// The compat variant's name is TAG followed by this.
        #[arg(long, default_value = COMPAT_TAG_SUFFIX)]
        compat_suffix: String,
        /// The layout's directory: created if missing, refused unless empty.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Print {"wasm": "sha256:...", "compat": "sha256:..."} instead of one line per variant.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite the `url:` line of WasmPlugin manifests to an oci://...@sha256:<hex> URL.
    Pin {
        /// oci://registry/repository@sha256:<64 hex>.
        #[arg(long)]
        url: String,
        /// The manifests.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args)]
struct RegistryArgs {
    /// Talk plain HTTP to the registry (a local registry without TLS).
    #[arg(long, alias = "plain-http")]
    insecure: bool,
    /// HTTPS without verifying the registry's certificate.
    #[arg(long)]
    skip_tls_verify: bool,
}

impl RegistryArgs {
    fn registry(&self) -> Result<Registry> {
        Registry::new(RegistryOptions::from_env(self.insecure, self.skip_tls_verify)?)
    }
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::new(format!("reading {}: {e} (build it with `make build`)", path.display())))
}

fn pin_files(files: &[PathBuf], url: &str) -> Result<()> {
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| Error::new(format!("reading {}: {e}", file.display())))?;
        let pinned = pin_manifest(&text, url).map_err(|e| Error::new(format!("{}: {e}", file.display())))?;
        if pinned != text {
            std::fs::write(file, pinned).map_err(|e| Error::new(format!("writing {}: {e}", file.display())))?;
            out!("pinned {} to {url}", file.display());
        } else {
            out!("{} already pins {url}", file.display());
        }
    }
    Ok(())
}

async fn push(wasm: &Path, image: &str, compat_suffix: &str, pin: &[PathBuf], args: &RegistryArgs) -> Result<()> {
    let module = read_module(wasm)?;
    let reference = parse_tagged(image)?;
    let [_, compat_tag] = variant_tags(reference.tag().unwrap_or_default(), compat_suffix)?;
    let registry = args.registry()?;
    let targets = [reference.clone(), with_tag(&reference, &compat_tag)];
    let mut pushed = Vec::new();
    for (image, target) in images(&module)?.iter().zip(targets) {
        eprintln!("publish: pushing the {} variant to {} ...", image.variant, target.whole());
        let digest = registry.push(&target, image).await?;
        eprintln!("publish: pulling {digest} back to check it ...");
        out!("pushed  {:<7} {}  {digest}", image.variant, target.whole());
        // Pull it back by digest, as Istio does with a pinned url, and compare with what was pushed.
        let pulled = registry.pull(&with_digest(&reference, &digest)).await?;
        if pulled.digest != digest || pulled.variant != image.variant || pulled.module != module {
            return Err(Error::new(format!(
                "{}: pulled back {} as the {} variant with a {}-byte module, pushed {digest} as the {} variant with \
                 {} bytes",
                target.whole(),
                pulled.digest,
                pulled.variant,
                pulled.module.len(),
                image.variant,
                module.len()
            )));
        }
        pushed.push((image.variant, oci_url(&reference, &digest)));
    }
    out!(
        "verified: both pulled back by digest; Istio's rules extract the {} bytes of {}",
        module.len(),
        wasm.display()
    );
    out!("");
    out!("Istio WasmPlugin, pinned by digest:");
    for (variant, url) in &pushed {
        out!("  {variant:<7} url: {url}");
    }
    if let Some((_, url)) = pushed.first() {
        pin_files(pin, url)?;
    }
    Ok(())
}

async fn pull(image: &str, out: Option<&Path>, args: &RegistryArgs) -> Result<()> {
    let reference: oci_client::Reference =
        image.parse().map_err(|e| Error::new(format!("image reference {image:?}: {e}")))?;
    let pulled = args.registry()?.pull(&reference).await?;
    out!("{}  {}  {} variant, {}-byte module", reference.whole(), pulled.digest, pulled.variant, pulled.module.len());
    out!("url: {}", oci_url(&reference, &pulled.digest));
    if let Some(out) = out {
        std::fs::write(out, &pulled.module).map_err(|e| Error::new(format!("writing {}: {e}", out.display())))?;
        out!("wrote {}", out.display());
    }
    Ok(())
}

fn digest(wasm: &Path) -> Result<()> {
    let module = read_module(wasm)?;
    for image in images(&module)? {
        out!("{:<7} {}", image.variant, image.digest());
    }
    Ok(())
}

fn layout(wasm: &Path, tag: &str, compat_suffix: &str, out: &Path, json: bool) -> Result<()> {
    let module = read_module(wasm)?;
    let tags = variant_tags(tag, compat_suffix)?;
    let images = images(&module)?;
    let named: Vec<(&_, &str)> = images.iter().zip(&tags).map(|(image, tag)| (image, tag.as_str())).collect();
    let layout = Layout::new(&named)?;
    eprintln!("layout: {} ({} bytes) -> {}", wasm.display(), module.len(), out.display());
    layout.write(out, |name, len| eprintln!("layout: wrote {name} ({len} bytes)"))?;
    let mut digests = serde_json::Map::new();
    for (image, tag) in &named {
        digests.insert(image.variant.to_string(), image.digest().into());
        if !json {
            out!("{:<7} {}  {tag}", image.variant, image.digest());
        }
    }
    if json {
        out!("{}", serde_json::Value::Object(digests));
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Push { wasm, image, compat_suffix, pin, registry } => {
            push(&wasm, &image, &compat_suffix, &pin, &registry).await
        }
        Command::Pull { image, out, registry } => pull(&image, out.as_deref(), &registry).await,
        Command::Digest { wasm } => digest(&wasm),
        Command::Layout { wasm, tag, compat_suffix, out, json } => layout(&wasm, &tag, &compat_suffix, &out, json),
        Command::Pin { url, files } => pin_files(&files, &url),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("egress-identity-publish: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress-identity-publish: {e}");
            ExitCode::FAILURE
        }
    }
}
