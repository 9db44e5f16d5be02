//! Publishing against a real registry: Debian's `docker-registry` (CNCF Distribution 2.8), started on a free
//! loopback port with its storage in a temporary directory, stopped when the test ends (and by a watchdog if the
//! test process is killed). `scripts/setup.sh` installs it (`scripts/registry.sh install` does only that).
//!
//! The module pushed is `$EGRESS_IDENTITY_WASM`, else `dist/egress_identity.wasm` (`make build`), else a small
//! generated module (noted on stderr).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use egress_identity_publish::{
    images, parse_tagged, plugin_from_tar_gz, sha256_digest, with_digest, with_tag, Image, Registry, RegistryOptions,
    Variant, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, PASSWORD_ENV, PLUGIN_FILE, TITLE_ANNOTATION,
    USERNAME_ENV, VARIANT_ANNOTATION, WASM_CONFIG, WASM_LAYER,
};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

const REPOSITORY: &str = "egress-identity";

// ------------------------------------------------------------------------------------------------ the registry

fn registry_binary() -> PathBuf {
    let bin = std::env::var_os("EGRESS_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"));
    assert!(
        bin.is_file(),
        "{} not found: install Debian's docker-registry (scripts/setup.sh or scripts/registry.sh install), \
         or point EGRESS_DOCKER_REGISTRY at a registry binary",
        bin.display()
    );
    bin
}

struct LocalRegistry {
    dir: PathBuf,
    port: u16,
    child: Child,
    watchdog: Option<Child>,
}

/// `publisher` / [`PASSWORD`], bcrypt (cost 4), for the registry's htpasswd.
const USER: &str = "publisher";
const PASSWORD: &str = "local-test-password";
const HTPASSWD: &str = "publisher:$2b$04$rHocRj9uHRv8i8EAS07lyOoehECnE5W4zmEHvmX5o6mUfeuFpVw0y\n";

impl LocalRegistry {
    fn start() -> Self {
        Self::start_with(false, false)
    }

    /// With `basic_auth`, the registry wants [`USER`] / [`PASSWORD`] (HTTP basic auth, htpasswd) for everything.
    /// With `tls`, it serves HTTPS with a self-signed certificate for 127.0.0.1 (made with the openssl CLI).
    fn start_with(basic_auth: bool, tls: bool) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let bin = registry_binary();
        let dir = std::env::temp_dir().join(format!(
            "egress-publish-test-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        remove_stale_dirs();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let auth = if basic_auth {
            std::fs::write(dir.join("htpasswd"), HTPASSWD).unwrap();
            format!("auth:\n  htpasswd:\n    realm: egress-test\n    path: {}\n", dir.join("htpasswd").display())
        } else {
            String::new()
        };
        let tls = if tls {
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            let out = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
                .args(["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .expect("running openssl (installed by scripts/setup.sh)");
            assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
            format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())
        } else {
            String::new()
        };
        let mut failures = Vec::new();
        // The free port is found by binding port 0 and closing it; another process may take it in between, so try a
        // few times.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test\n{tls}{auth}",
                    dir.join("storage").display()
                ),
            )
            .unwrap();
            let log = dir.join("registry.log");
            let child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(dir.join("registry.stderr.log")).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let watchdog = spawn_watchdog(child.id());
            let mut registry = LocalRegistry { dir: dir.clone(), port, child, watchdog };
            match registry.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return registry,
                Err(why) => {
                    failures.push(format!("port {port}: {why}\n{}", registry.logs()));
                    registry.stop();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("the local registry did not start:\n{}", failures.join("\n"));
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("docker-registry exited: {status}"));
            }
            if let Ok(response) = http_request(self.port, "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n") {
                // 200, 401 when the registry wants credentials, 400 for plain HTTP to a TLS registry.
                if ["HTTP/1.0 200", "HTTP/1.1 200", "HTTP/1.0 401", "HTTP/1.1 401", "HTTP/1.0 400", "HTTP/1.1 400"]
                    .iter()
                    .any(|s| response.starts_with(s))
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no 200 from /v2/ within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        ["registry.log", "registry.stderr.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn reference(&self, tag: &str) -> Reference {
        parse_tagged(&format!("{}/{REPOSITORY}:{tag}", self.host())).unwrap()
    }

    /// Where the filesystem storage driver keeps a blob's bytes.
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("registry logs ({}):\n{}", self.dir.display(), self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the directories of earlier test processes that died without cleaning up (their registry was stopped by
/// the watchdog).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("egress-publish-test-").and_then(|rest| rest.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Kills the registry if this test process dies without running `Drop` (SIGKILL, abort); exits by itself when
/// the registry is gone.
fn spawn_watchdog(registry_pid: u32) -> Option<Child> {
    Command::new("sh")
        .args([
            "-c",
            r#"while kill -0 "$0" 2>/dev/null; do kill -0 "$1" 2>/dev/null || exit 0; sleep 0.5; done; kill "$1" 2>/dev/null"#,
        ])
        .arg(std::process::id().to_string())
        .arg(registry_pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// One HTTP/1.0 exchange with the registry (the server closes the connection): the whole response.
fn http_request(port: u16, request: &str) -> std::io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The registry's own answer, independent of oci-client: the `Docker-Content-Digest` of `HEAD manifests/<tag>`.
fn registry_manifest_digest(registry: &LocalRegistry, tag: &str) -> String {
    let response = http_request(
        registry.port,
        &format!(
            "HEAD /v2/{REPOSITORY}/manifests/{tag} HTTP/1.0\r\nHost: {}\r\nAccept: {OCI_MANIFEST}, {DOCKER_MANIFEST}\r\n\r\n",
            registry.host()
        ),
    )
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"), "{response}");
    response
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("docker-content-digest").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Docker-Content-Digest in {response}"))
}

// ------------------------------------------------------------------------------------------------ helpers

/// The module to publish: `$EGRESS_IDENTITY_WASM`, `dist/egress_identity.wasm`, or a generated one.
fn input_module() -> Vec<u8> {
    let path = std::env::var_os("EGRESS_IDENTITY_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/egress_identity.wasm"));
    match std::fs::read(&path) {
        Ok(module) => module,
        Err(_) if std::env::var_os("EGRESS_IDENTITY_WASM").is_none() => {
            eprintln!("note: {} not built (make build); publishing a generated 64 KiB module instead", path.display());
            generated_module(64 * 1024)
        }
        Err(e) => panic!("EGRESS_IDENTITY_WASM={}: {e}", path.display()),
    }
}

/// A valid Wasm module: the header and one custom section ("x") of pseudo-random bytes.
fn generated_module(payload: usize) -> Vec<u8> {
    let mut content = vec![1u8, b'x'];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    content.extend((0..payload).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 24) as u8
    }));
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.push(0); // custom section
    let mut size = content.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            module.push(byte);
            break;
        }
        module.push(byte | 0x80);
    }
    module.extend(content);
    module
}

/// Runs the CLI with no registry credentials in its environment but `env`: (success, stdout + stderr).
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egress-identity-publish"))
        .args(args)
        .env_remove(USERNAME_ENV)
        .env_remove(PASSWORD_ENV)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn local_client() -> Registry {
    Registry::new(RegistryOptions { insecure: true, skip_tls_verify: false, auth: RegistryAuth::Anonymous }).unwrap()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

fn flip_byte(path: &Path, offset: usize) {
    let mut data = std::fs::read(path).unwrap();
    data[offset] ^= 0x01;
    std::fs::write(path, data).unwrap();
}

fn media_types(descriptors: &[oci_client::manifest::OciDescriptor]) -> Vec<&str> {
    descriptors.iter().map(|d| d.media_type.as_str()).collect()
}

/// Checks a pulled image against the image pushed: digest, manifest bytes, media types, and the module.
fn assert_pulled_matches(pulled: &egress_identity_publish::Pulled, image: &Image, module: &[u8]) {
    assert_eq!(pulled.digest, image.digest());
    assert_eq!(pulled.manifest_bytes, image.manifest_bytes, "the registry must serve the manifest bytes pushed");
    assert_eq!(pulled.manifest.media_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(pulled.variant, image.variant);
    assert_eq!(pulled.module.len(), module.len());
    assert!(pulled.module == module, "the module pulled back differs from the module pushed");
    assert_eq!(pulled.config, image.config.data);
    match image.variant {
        Variant::Wasm => {
            assert_eq!(pulled.manifest.config.media_type, WASM_CONFIG);
            assert_eq!(media_types(&pulled.manifest.layers), [WASM_CONFIG, WASM_LAYER]);
            let (descriptor, raw) = &pulled.layers[1];
            assert_eq!(descriptor.annotations.as_ref().unwrap()[TITLE_ANNOTATION], PLUGIN_FILE);
            assert_eq!(descriptor.digest, sha256_digest(module));
            assert!(raw == module, "the Wasm layer must be the raw module");
        }
        Variant::Compat => {
            assert_eq!(pulled.manifest.config.media_type, OCI_CONFIG);
            assert_eq!(media_types(&pulled.manifest.layers), [OCI_LAYER_GZIP]);
            assert_eq!(pulled.manifest.annotations.as_ref().unwrap()[VARIANT_ANNOTATION], "compat");
            assert!(plugin_from_tar_gz(&pulled.layers[0].1).unwrap() == module, "plugin.wasm differs");
        }
    }
}

// ------------------------------------------------------------------------------------------------ tests

#[test]
fn the_generated_fallback_module_is_wasm() {
    let module = generated_module(300);
    // header, custom section id 0, LEB128 size 302 (0xae 0x02), name "x", 300 payload bytes
    assert_eq!(&module[..11], b"\0asm\x01\0\0\0\x00\xae\x02");
    assert_eq!(module.len(), 8 + 1 + 2 + 302);
    let [wasm, compat] = images(&module).unwrap();
    assert_ne!(wasm.digest(), compat.digest());
}

#[test]
fn both_variants_round_trip_through_a_real_registry() {
    let registry = LocalRegistry::start();
    let module = input_module();
    let client = local_client();
    let [wasm, compat] = images(&module).unwrap();
    let wasm_ref = registry.reference("test");
    let compat_ref = with_tag(&wasm_ref, "test-compat");

    block_on(async {
        for (image, reference, tag) in [(&wasm, &wasm_ref, "test"), (&compat, &compat_ref, "test-compat")] {
            let digest = client.push(reference, image).await.unwrap();
            // The digest is known before the push (reproducible images) and the registry agrees.
            assert_eq!(digest, image.digest());
            assert_eq!(registry_manifest_digest(&registry, tag), digest);
            assert_eq!(client.resolve(reference).await.unwrap(), digest);

            // By tag, and by digest (what a pinned WasmPlugin url pulls).
            for pulled_ref in [reference.clone(), with_digest(reference, &digest)] {
                let pulled = client.pull(&pulled_ref).await.unwrap();
                assert_pulled_matches(&pulled, image, &module);
            }
        }
        assert_ne!(wasm.digest(), compat.digest());

        // Pushing the same module again changes nothing.
        assert_eq!(client.push(&wasm_ref, &images(&module).unwrap()[0]).await.unwrap(), wasm.digest());

        // A digest the registry does not have is not silently replaced by something else.
        let unknown = with_digest(&wasm_ref, &sha256_digest(b"nothing"));
        assert!(client.pull(&unknown).await.is_err());
    });
}

#[test]
fn tampered_bytes_are_detected() {
    let registry = LocalRegistry::start();
    let module = input_module();
    let client = local_client();
    let [wasm, compat] = images(&module).unwrap();
    let wasm_ref = registry.reference("tamper");
    let compat_ref = with_tag(&wasm_ref, "tamper-compat");

    block_on(async {
        client.push(&wasm_ref, &wasm).await.unwrap();
        client.push(&compat_ref, &compat).await.unwrap();
        assert!(client.pull(&wasm_ref).await.unwrap().module == module);
        assert!(client.pull(&compat_ref).await.unwrap().module == module);

        // One bit of the stored module changes behind the registry's back (same size).
        let module_blob = registry.blob_path(&sha256_digest(&module));
        flip_byte(&module_blob, module.len() / 2);
        let e = client.pull(&wasm_ref).await.expect_err("a tampered Wasm layer must be refused").to_string();
        assert!(e.contains(&sha256_digest(&module)), "{e}");

        let layer_blob = registry.blob_path(&compat.layers[0].digest());
        flip_byte(&layer_blob, compat.layers[0].data.len() / 2);
        let e = client.pull(&compat_ref).await.expect_err("a tampered compat layer must be refused").to_string();
        assert!(e.contains(&compat.layers[0].digest()), "{e}");

        // The stored manifest itself.
        let manifest_blob = registry.blob_path(&compat.digest());
        let manifest = std::fs::read(&manifest_blob).unwrap();
        let at = manifest.windows(b"\"size\":".len()).position(|w| w == b"\"size\":").unwrap() + b"\"size\":".len();
        assert!(manifest[at].is_ascii_digit());
        let mut tampered = manifest.clone();
        tampered[at] = if manifest[at] == b'9' { b'1' } else { manifest[at] + 1 };
        std::fs::write(&manifest_blob, &tampered).unwrap();
        assert!(client.pull(&compat_ref).await.is_err(), "a tampered manifest must be refused");
        assert!(client.pull(&with_digest(&compat_ref, &compat.digest())).await.is_err());
    });
}

#[test]
fn the_cli_pushes_verifies_and_pins_the_istio_example() {
    let registry = LocalRegistry::start();
    let module = input_module();
    let [wasm, compat] = images(&module).unwrap();
    let work = registry.dir.join("cli");
    std::fs::create_dir_all(&work).unwrap();
    let module_file = work.join("egress_identity.wasm");
    std::fs::write(&module_file, &module).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/istio/egress-gateway/wasm-plugin.yaml");
    let manifest = work.join("wasm-plugin.yaml");
    std::fs::copy(&example, &manifest).unwrap();
    let before = std::fs::read_to_string(&manifest).unwrap();

    let cli = |args: &[&str]| run_cli(args, &[]);
    let image = format!("{}/{REPOSITORY}:cli", registry.host());
    let module_arg = module_file.to_str().unwrap();

    // Offline digests = what the push reports.
    let (ok, out) = cli(&["digest", "--wasm", module_arg]);
    assert!(ok, "{out}");
    assert!(out.contains(&wasm.digest()) && out.contains(&compat.digest()), "{out}");

    let (ok, out) =
        cli(&["push", "--wasm", module_arg, "--image", &image, "--insecure", "--pin", manifest.to_str().unwrap()]);
    assert!(ok, "push failed:\n{out}");
    let pinned_url = format!("oci://{}/{REPOSITORY}@{}", registry.host(), wasm.digest());
    assert!(out.contains(&format!("{image}  {}", wasm.digest())), "{out}");
    assert!(out.contains(&format!("{image}-compat  {}", compat.digest())), "{out}");
    assert!(out.contains(&format!("url: {pinned_url}")), "{out}");
    assert_eq!(registry_manifest_digest(&registry, "cli"), wasm.digest());
    assert_eq!(registry_manifest_digest(&registry, "cli-compat"), compat.digest());

    // Only the url lines of the manifest changed, to the digest of the Wasm variant.
    let after = std::fs::read_to_string(&manifest).unwrap();
    // The example's url is the placeholder, whose warning comment goes; every other line stays, but the urls.
    assert!(before.contains("PLACEHOLDER") && !after.contains("PLACEHOLDER"));
    let placeholder_note = |l: &&str| l.trim_start().starts_with('#') && !after.contains(*l);
    let before_kept: Vec<&str> = before.lines().filter(|l| !placeholder_note(l)).collect();
    let changed: Vec<(&str, &str)> = before_kept.iter().copied().zip(after.lines()).filter(|(b, a)| b != a).collect();
    assert_eq!(before_kept.len(), after.lines().count());
    // Every plugin of the file (the HTTP and the network filter) is the same module.
    assert_eq!(changed.len(), before.matches("url: oci://").count(), "{changed:?}");
    assert!(changed.len() >= 2, "the example has the HTTP and the network plugin: {changed:?}");
    assert!(changed.iter().all(|(_, a)| a.trim() == format!("url: {pinned_url}")), "{changed:?}");

    // Pull back the compat variant by digest with the CLI: the same bytes.
    let out_file = work.join("pulled.wasm");
    let by_digest = format!("{}/{REPOSITORY}@{}", registry.host(), compat.digest());
    let (ok, out) = cli(&["pull", "--image", &by_digest, "--insecure", "--out", out_file.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("compat variant"), "{out}");
    assert!(std::fs::read(&out_file).unwrap() == module);

    // No registry there: a clear failure, not a success.
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
    let (ok, out) = cli(&["push", "--wasm", module_arg, "--image", &format!("127.0.0.1:{closed}/x:y"), "--insecure"]);
    assert!(!ok, "{out}");
    // A tag is required.
    let (ok, out) = cli(&["push", "--wasm", module_arg, "--image", &format!("{}/{REPOSITORY}", registry.host())]);
    assert!(!ok && out.contains("registry/repository:tag"), "{out}");
}

#[test]
fn basic_auth_credentials_come_from_the_environment() {
    let registry = LocalRegistry::start_with(true, false);
    let module = input_module();
    let [wasm, compat] = images(&module).unwrap();
    let module_file = registry.dir.join("auth.wasm");
    std::fs::write(&module_file, &module).unwrap();
    let image = format!("{}/{REPOSITORY}:auth", registry.host());
    let push = |env: &[(&str, &str)]| {
        run_cli(&["push", "--wasm", module_file.to_str().unwrap(), "--image", &image, "--insecure"], env)
    };

    let (ok, out) = push(&[]);
    assert!(!ok, "an anonymous push must be refused:\n{out}");
    let (ok, out) = push(&[(USERNAME_ENV, USER), (PASSWORD_ENV, "not-the-password")]);
    assert!(!ok, "a wrong password must be refused:\n{out}");
    let (ok, out) = push(&[(USERNAME_ENV, USER)]);
    assert!(!ok && out.contains(PASSWORD_ENV), "{out}");
    let (ok, out) = push(&[(USERNAME_ENV, USER), (PASSWORD_ENV, PASSWORD)]);
    assert!(ok, "push with credentials failed:\n{out}");
    assert!(out.contains(&wasm.digest()) && out.contains(&compat.digest()), "{out}");

    let reference = registry.reference("auth");
    block_on(async {
        assert!(local_client().pull(&reference).await.is_err(), "anonymous pull must be refused");
        let basic = Registry::new(RegistryOptions {
            insecure: true,
            skip_tls_verify: false,
            auth: RegistryAuth::Basic(USER.into(), PASSWORD.into()),
        })
        .unwrap();
        let pulled = basic.pull(&reference).await.unwrap();
        assert_pulled_matches(&pulled, &wasm, &module);
    });
}

#[test]
fn https_registries_are_verified_unless_told_otherwise() {
    let registry = LocalRegistry::start_with(false, true);
    let module = input_module();
    let [wasm, compat] = images(&module).unwrap();
    let module_file = registry.dir.join("tls.wasm");
    std::fs::write(&module_file, &module).unwrap();
    let image = format!("{}/{REPOSITORY}:tls", registry.host());
    let push = |extra: &[&str]| {
        let mut args = vec!["push", "--wasm", module_file.to_str().unwrap(), "--image", &image];
        args.extend_from_slice(extra);
        run_cli(&args, &[])
    };

    // The self-signed certificate is not trusted: refused.
    let (ok, out) = push(&[]);
    assert!(!ok && out.contains("invalid peer certificate"), "an untrusted certificate must be refused:\n{out}");
    // Plain HTTP to an HTTPS registry fails too.
    let (ok, out) = push(&["--insecure"]);
    assert!(!ok, "{out}");
    let (ok, out) = push(&["--skip-tls-verify"]);
    assert!(ok, "push over HTTPS failed:\n{out}");
    assert!(out.contains(&wasm.digest()) && out.contains(&compat.digest()), "{out}");
}
