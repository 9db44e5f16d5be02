//! `egress-identity sds` and `secrets` check the certificate material against the identity it serves: each
//! refusal on real PEM files (the harness's test PKI), naming the identity or role and the file, with nothing
//! written; and what they write for a certificate holds certificates only.
#![cfg(test)]
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use egress_identity_harness::pki::{layout, CertFiles, Pki, Validity};

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_egress-identity")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Out { code: out.status.code(), stdout: text(&out.stdout), stderr: text(&out.stderr) }
}

/// One destination, `acme`, presenting acme.invoicer or acme.reconciler: `certificate` is acme.invoicer's
/// declaration (absent: the default, CN=acme.invoicer).
fn policy(certificate: &str) -> String {
    format!(
        r#"{{ "localTrustDomain": "cluster.local",
  "identities": [
    {{ "name": "acme.invoicer", "principals": ["spiffe://cluster.local/ns/billing/sa/invoicer"]{certificate} }},
    {{ "name": "acme.reconciler", "principals": ["spiffe://cluster.local/ns/billing/sa/reconciler"] }} ],
  "destinations": [ {{ "name": "acme", "host": "api.acme.example", "port": 443,
    "identities": ["acme.invoicer", "acme.reconciler"] }} ] }}"#
    )
}

struct Setup {
    dir: PathBuf,
    pki: Pki,
    policy: PathBuf,
}

impl Setup {
    fn new(name: &str) -> Self {
        Self::with_policy(name, &policy(""))
    }

    fn with_policy(name: &str, text: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("certificate-checks").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let pki = Pki::generate(dir.join("pki")).unwrap();
        pki.issue_external_identity("acme.invoicer").unwrap();
        pki.issue_external_identity("acme.reconciler").unwrap();
        let policy = dir.join("policy.json");
        std::fs::write(&policy, text).unwrap();
        Setup { dir, pki, policy }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn sds_out(&self) -> PathBuf {
        self.dir.join("sds")
    }

    /// `sds` with every secret of the policy: these files for acme.invoicer, the gateway, the mesh CA and
    /// acme's CA, the PKI's for acme.reconciler.
    fn sds(&self, invoicer: (&Path, &Path), gateway: (&Path, &Path), mesh_ca: &Path, acme_ca: &Path) -> Out {
        let reconciler = self.pki.external_identity("acme.reconciler");
        let (out, policy) = (self.sds_out(), self.policy.clone());
        run(&[
            "sds",
            "--out",
            out.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--gateway-cert",
            gateway.0.to_str().unwrap(),
            "--gateway-key",
            gateway.1.to_str().unwrap(),
            "--mesh-ca",
            mesh_ca.to_str().unwrap(),
            "--identity",
            &identity("acme.invoicer", invoicer),
            "--identity",
            &identity("acme.reconciler", (&reconciler.cert, &reconciler.key)),
            "--ca",
            &format!("acme={}", acme_ca.display()),
        ])
    }

    /// `sds` with every secret as the PKI issued it, but acme.invoicer's files.
    fn sds_invoicer(&self, cert: &Path, key: &Path) -> Out {
        let gateway = self.pki.gateway_cert();
        self.sds((cert, key), (&gateway.cert, &gateway.key), &self.pki.mesh_ca_cert(), &self.pki.partner_ca_cert())
    }

    /// `secrets istio|kuma` with acme.invoicer's files and the CA of acme.
    fn secrets(&self, platform: &str, invoicer: (&Path, &Path), acme_ca: &Path) -> Out {
        let reconciler = self.pki.external_identity("acme.reconciler");
        run(&[
            "secrets",
            platform,
            self.policy.to_str().unwrap(),
            "--identity",
            &identity("acme.invoicer", invoicer),
            "--identity",
            &identity("acme.reconciler", (&reconciler.cert, &reconciler.key)),
            "--ca",
            &format!("acme={}", acme_ca.display()),
        ])
    }

    /// `sds`, `secrets istio` and `secrets kuma` with acme.invoicer's files: each refuses, naming
    /// acme.invoicer and every one of `expected`, and writes nothing.
    fn refused_everywhere(&self, cert: &Path, key: &Path, expected: &[&str]) {
        let sds = self.sds_invoicer(cert, key);
        let istio = self.secrets("istio", (cert, key), &self.pki.partner_ca_cert());
        let kuma = self.secrets("kuma", (cert, key), &self.pki.partner_ca_cert());
        for (what, out) in [("sds", &sds), ("secrets istio", &istio), ("secrets kuma", &kuma)] {
            assert_eq!(out.code, Some(1), "{what} accepted it: {}", out.stderr);
            assert!(out.stdout.is_empty(), "{what}: {}", out.stdout);
            for e in expected {
                assert!(out.stderr.contains(e), "{what}: {e:?} not in {}", out.stderr);
            }
            assert!(
                out.stderr.contains(&format!("identity acme.invoicer: {}", cert.display())),
                "{what}: {}",
                out.stderr
            );
        }
        assert!(!self.sds_out().exists(), "sds wrote files although it refused");
    }

    /// The same three commands accept acme.invoicer's files (so a refusal is for what differs).
    fn accepted_everywhere(&self, cert: &Path, key: &Path) -> [Out; 3] {
        let outs = [
            self.sds_invoicer(cert, key),
            self.secrets("istio", (cert, key), &self.pki.partner_ca_cert()),
            self.secrets("kuma", (cert, key), &self.pki.partner_ca_cert()),
        ];
        for out in &outs {
            assert_eq!(out.code, Some(0), "{}", out.stderr);
        }
        let _ = std::fs::remove_dir_all(self.sds_out());
        outs
    }
}

fn identity(name: &str, (cert, key): (&Path, &Path)) -> String {
    format!("{name}={},{}", cert.display(), key.display())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Two identities' certificates given the wrong way round: the partner would see acme.reconciler's
/// certificate on acme.invoicer's requests.
#[test]
fn swapped_identity_certificates_are_refused() {
    let t = Setup::new("swapped");
    let (invoicer, reconciler) = (t.pki.external_identity("acme.invoicer"), t.pki.external_identity("acme.reconciler"));
    t.accepted_everywhere(&invoicer.cert, &invoicer.key);

    let out = t.dir.join("sds");
    let gateway = t.pki.gateway_cert();
    let ca = format!("acme={}", t.pki.partner_ca_cert().display());
    let swapped = [
        identity("acme.invoicer", (&reconciler.cert, &reconciler.key)),
        identity("acme.reconciler", (&invoicer.cert, &invoicer.key)),
    ];
    let o = run(&[
        "sds",
        "--out",
        out.to_str().unwrap(),
        "--policy",
        t.policy.to_str().unwrap(),
        "--gateway-cert",
        gateway.cert.to_str().unwrap(),
        "--gateway-key",
        gateway.key.to_str().unwrap(),
        "--mesh-ca",
        t.pki.mesh_ca_cert().to_str().unwrap(),
        "--identity",
        &swapped[0],
        "--identity",
        &swapped[1],
        "--ca",
        &ca,
    ]);
    assert_eq!(o.code, Some(1), "sds accepted swapped certificates: {}", o.stderr);
    let invoicer_line = format!(
        "sds: identity acme.invoicer: {}: the leaf certificate: the subject has CN=acme.reconciler, not the declared CN=acme.invoicer",
        reconciler.cert.display()
    );
    assert!(o.stderr.lines().any(|l| l == invoicer_line), "{}", o.stderr);
    assert!(
        o.stderr.contains("identity acme.reconciler")
            && o.stderr.contains("CN=acme.invoicer, not the declared CN=acme.reconciler"),
        "{}",
        o.stderr
    );
    assert!(!out.exists());

    t.refused_everywhere(&reconciler.cert, &reconciler.key, &["CN=acme.reconciler, not the declared CN=acme.invoicer"]);
}

/// A certificate with another pair's key: the gateway could not use it (TLS fails at every connection).
#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let t = Setup::new("key-mismatch");
    let (invoicer, reconciler) = (t.pki.external_identity("acme.invoicer"), t.pki.external_identity("acme.reconciler"));
    let mismatch = format!(
        "{} and {}: the leaf certificate's public key is not the private key's",
        invoicer.cert.display(),
        reconciler.key.display()
    );
    t.refused_everywhere(&invoicer.cert, &reconciler.key, &[&mismatch]);

    // The gateway's own certificate, with or without a policy.
    let gateway = t.pki.gateway_cert();
    let out = t.sds_out();
    let o = run(&[
        "sds",
        "--out",
        out.to_str().unwrap(),
        "--gateway-cert",
        gateway.cert.to_str().unwrap(),
        "--gateway-key",
        invoicer.key.to_str().unwrap(),
    ]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains(&format!(
            "sds: the gateway certificate: {} and {}: the leaf certificate's public key is not the private key's",
            gateway.cert.display(),
            invoicer.key.display()
        )),
        "{}",
        o.stderr
    );
    let o = t.sds(
        (&invoicer.cert, &invoicer.key),
        (&gateway.cert, &reconciler.key),
        &t.pki.mesh_ca_cert(),
        &t.pki.partner_ca_cert(),
    );
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("the gateway certificate:"), "{}", o.stderr);
    assert!(!out.exists());
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused_and_expiring_ones_warned() {
    let t = Setup::new("validity");
    let issue =
        |stem: &str, validity: Validity| t.pki.issue_external_identity_valid("acme.invoicer", stem, validity).unwrap();
    let expired = issue("expired", Validity::Expired);
    t.refused_everywhere(&expired.cert, &expired.key, &["the certificate (CN=acme.invoicer) expired on "]);
    let early = issue("early", Validity::NotYetValid);
    t.refused_everywhere(&early.cert, &early.key, &["the certificate (CN=acme.invoicer) is not valid before "]);

    let soon = issue("soon", Validity::EndsInDays(10));
    for (i, out) in t.accepted_everywhere(&soon.cert, &soon.key).iter().enumerate() {
        let prefix = if i == 0 { "sds" } else { "secrets" };
        let warning = format!(
            "{prefix}: warning: identity acme.invoicer: {}: the certificate (CN=acme.invoicer) expires on ",
            soon.cert.display()
        );
        assert!(out.stderr.contains(&warning), "{}", out.stderr);
        assert!(out.stderr.contains(", in 9 days") || out.stderr.contains(", in 10 days"), "{}", out.stderr);
    }
    // Not warned when not expiring soon.
    let fine = t.pki.external_identity("acme.invoicer");
    for out in t.accepted_everywhere(&fine.cert, &fine.key) {
        assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    }
}

#[test]
fn a_subject_or_san_other_than_declared_is_refused() {
    let declared = r#", "certificate": { "commonName": "acme.invoicer", "dnsNames": ["invoicer.acme.example"] }"#;
    let t = Setup::with_policy("subject", &policy(declared));
    let with_san =
        t.pki.issue_external_identity_with_dns("acme.invoicer", "with-san", &["invoicer.acme.example"]).unwrap();
    t.accepted_everywhere(&with_san.cert, &with_san.key);

    let without = t.pki.external_identity("acme.invoicer");
    t.refused_everywhere(
        &without.cert,
        &without.key,
        &["the leaf certificate: its DNS SANs are [], not the declared [invoicer.acme.example]"],
    );
    let other =
        t.pki.issue_external_identity_with_dns("acme.invoicer", "other-san", &["billing.acme.example"]).unwrap();
    t.refused_everywhere(
        &other.cert,
        &other.key,
        &["its DNS SANs are [billing.acme.example], not the declared [invoicer.acme.example]"],
    );
    let both = t
        .pki
        .issue_external_identity_with_dns("acme.invoicer", "two-sans", &["invoicer.acme.example", "x.acme.example"])
        .unwrap();
    t.refused_everywhere(&both.cert, &both.key, &["its DNS SANs are [invoicer.acme.example, x.acme.example]"]);
    let wrong_cn =
        t.pki.issue_external_identity_with_dns("acme.other", "wrong-cn", &["invoicer.acme.example"]).unwrap();
    t.refused_everywhere(
        &wrong_cn.cert,
        &wrong_cn.key,
        &["the subject has CN=acme.other, not the declared CN=acme.invoicer"],
    );
}

#[test]
fn a_certificate_that_is_not_a_ca_is_refused_where_a_ca_is_expected() {
    let t = Setup::new("not-a-ca");
    let invoicer = t.pki.external_identity("acme.invoicer");
    let gateway = t.pki.gateway_cert();
    let leaf = t.pki.external_server_cert().cert;
    let bundle = t.file("bundle.crt", &(read(&t.pki.mesh_ca_cert()) + &read(&gateway.cert)));
    let ids = (invoicer.cert.as_path(), invoicer.key.as_path());
    let gw = (gateway.cert.as_path(), gateway.key.as_path());

    let o = t.sds(ids, gw, &t.pki.mesh_ca_cert(), &leaf);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    let line = format!(
        "sds: the CA of destination acme: {}: the certificate (CN=api.partner.example) is not a CA (",
        leaf.display()
    );
    assert!(o.stderr.contains(&line) && o.stderr.contains("needs basicConstraints CA:TRUE"), "{}", o.stderr);
    let o = t.sds(ids, gw, &bundle, &t.pki.partner_ca_cert());
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    let line = format!("sds: the mesh CA: {}: certificate 2 (CN=egress-gateway.local) is not a CA", bundle.display());
    assert!(o.stderr.contains(&line), "{}", o.stderr);
    assert!(!o.stderr.contains("certificate 1"), "the CA of the bundle is a CA: {}", o.stderr);
    assert!(!t.sds_out().exists());
    for platform in ["istio", "kuma"] {
        let o = t.secrets(platform, ids, &leaf);
        assert_eq!((o.code, o.stdout.as_str()), (Some(1), ""), "{}", o.stderr);
        assert!(
            o.stderr.contains(&format!(
                "secrets: the CA of destination acme: {}: the certificate (CN=api.partner.example) is not a CA",
                leaf.display()
            )),
            "{}",
            o.stderr
        );
    }
}

/// A PEM file holding a certificate and its key, given as the certificate: the key would land in a field
/// that is not secret (Envoy's `certificate_chain`, shown by /config_dump; Kuma's `-cert` Secret).
#[test]
fn a_private_key_where_a_certificate_belongs_is_refused() {
    let t = Setup::new("key-in-cert");
    let invoicer = t.pki.external_identity("acme.invoicer");
    let combined = |name: &str, files: &CertFiles| t.file(name, &(read(&files.cert) + &read(&files.key)));
    let invoicer_pem = combined("invoicer.pem", &invoicer);
    let expected = "a private key besides the certificates (PRIVATE KEY) where only certificates belong";
    t.refused_everywhere(&invoicer_pem, &invoicer.key, &[expected]);

    let gateway = t.pki.gateway_cert();
    let gateway_pem = combined("gateway.pem", &gateway);
    let ca_with_key =
        t.file("partner-ca.pem", &(read(&t.pki.partner_ca_cert()) + &read(&t.pki.dir().join(layout::PARTNER_CA_KEY))));
    let mesh_ca_with_key =
        t.file("mesh-ca.pem", &(read(&t.pki.mesh_ca_cert()) + &read(&t.pki.dir().join(layout::MESH_CA_KEY))));
    let o = t.sds((&invoicer.cert, &invoicer.key), (&gateway_pem, &gateway.key), &mesh_ca_with_key, &ca_with_key);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    for role in [
        format!("sds: the gateway certificate: {}: {expected}", gateway_pem.display()),
        format!("sds: the mesh CA: {}: {expected}", mesh_ca_with_key.display()),
        format!("sds: the CA of destination acme: {}: {expected}", ca_with_key.display()),
    ] {
        assert!(o.stderr.contains(&role), "{role:?} not in {}", o.stderr);
    }
    assert!(!t.sds_out().exists());
    for platform in ["istio", "kuma"] {
        let o = t.secrets(platform, (&invoicer.cert, &invoicer.key), &ca_with_key);
        assert_eq!((o.code, o.stdout.as_str()), (Some(1), ""), "{}", o.stderr);
        assert!(
            o.stderr.contains(&format!("the CA of destination acme: {}: {expected}", ca_with_key.display())),
            "{}",
            o.stderr
        );
    }
    // A key file given as a certificate: no certificate at all.
    let o = t.sds_invoicer(&invoicer.key, &invoicer.key);
    assert!(o.stderr.contains("no PEM certificate, but a private key"), "{}", o.stderr);
}

/// What is written for a certificate is the certificate blocks of the file, nothing else (text around
/// them, other blocks); the key only where a key belongs.
#[test]
fn what_is_written_for_a_certificate_holds_certificates_only() {
    let t = Setup::new("certificates-only");
    let invoicer = t.pki.external_identity("acme.invoicer");
    let cert = read(&invoicer.cert);
    let noisy = t.file("noisy.crt", &format!("Bag Attributes\n    friendlyName: acme.invoicer\n{cert}-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"));
    let key = read(&invoicer.key);
    let [sds, istio, kuma] = t.accepted_everywhere(&noisy, &invoicer.key);
    assert!(sds.stderr.contains("wrote "), "{}", sds.stderr);

    let o = t.sds_invoicer(&noisy, &invoicer.key);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let written = read(&t.sds_out().join("external-acme.invoicer.yaml"));
    let (chain, private) = written.split_once("private_key:").unwrap();
    assert_eq!(chain.matches("BEGIN").count(), 1, "{written}");
    assert!(
        chain.contains("BEGIN CERTIFICATE")
            && !chain.contains("PRIVATE")
            && !chain.contains("CRL")
            && !chain.contains("friendlyName"),
        "{written}"
    );
    assert!(private.contains("BEGIN PRIVATE KEY"), "{written}");

    let decoded = |yaml: &str, field: &str| -> Vec<String> {
        yaml.lines()
            .filter_map(|l| l.trim().strip_prefix(field))
            .map(|v| {
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.trim().trim_matches('"')).unwrap())
                    .unwrap()
            })
            .collect()
    };
    let certificates = decoded(&istio.stdout, "tls.crt:");
    assert!(certificates.contains(&cert) && certificates.iter().all(|v| !v.contains("PRIVATE")), "{}", istio.stdout);
    assert!(decoded(&istio.stdout, "tls.key:").contains(&key), "{}", istio.stdout);
    let values = decoded(&kuma.stdout, "value:");
    assert_eq!(
        values.iter().filter(|v| v.contains("PRIVATE KEY")).count(),
        2,
        "one -key Secret per identity: {values:?}"
    );
    assert!(values.contains(&cert) && values.contains(&key), "{values:?}");
    for v in values.iter().filter(|v| !v.contains("PRIVATE KEY")) {
        assert!(v.split("-----BEGIN ").skip(1).all(|b| b.starts_with("CERTIFICATE-----")), "{v}");
    }
}

/// `render envoy`'s gateway always reads its own certificate and the mesh CA: with --policy, both must be given.
#[test]
fn sds_with_a_policy_needs_the_gateway_certificate_and_the_mesh_ca() {
    let t = Setup::new("gateway-secrets");
    let (invoicer, reconciler) = (t.pki.external_identity("acme.invoicer"), t.pki.external_identity("acme.reconciler"));
    let out = t.sds_out();
    let o = run(&[
        "sds",
        "--out",
        out.to_str().unwrap(),
        "--policy",
        t.policy.to_str().unwrap(),
        "--identity",
        &identity("acme.invoicer", (&invoicer.cert, &invoicer.key)),
        "--identity",
        &identity("acme.reconciler", (&reconciler.cert, &reconciler.key)),
        "--ca",
        &format!("acme={}", t.pki.partner_ca_cert().display()),
    ]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("sds: the gateway of this policy also reads: gateway-cert (the gateway's server certificate: --gateway-cert and --gateway-key), mesh-ca (the CA of the callers' certificates: --mesh-ca)"), "{}", o.stderr);
    assert!(!out.exists());
}

/// Without a policy nothing declares what an identity's certificate carries: refused. The gateway's own
/// secrets and the CAs need no policy, and are still checked.
#[test]
fn sds_identity_needs_a_policy_and_the_rest_does_not() {
    let t = Setup::new("no-policy");
    let invoicer = t.pki.external_identity("acme.invoicer");
    let out = t.sds_out();
    let o = run(&[
        "sds",
        "--out",
        out.to_str().unwrap(),
        "--identity",
        &identity("acme.invoicer", (&invoicer.cert, &invoicer.key)),
    ]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains(
            "sds: --identity needs --policy: the policy declares what each identity's certificate must carry"
        ),
        "{}",
        o.stderr
    );
    assert!(!out.exists());

    let gateway = t.pki.gateway_cert();
    let args = |mesh_ca: &Path| {
        run(&[
            "sds",
            "--out",
            out.to_str().unwrap(),
            "--gateway-cert",
            gateway.cert.to_str().unwrap(),
            "--gateway-key",
            gateway.key.to_str().unwrap(),
            "--mesh-ca",
            mesh_ca.to_str().unwrap(),
            "--ca",
            &format!("acme={}", t.pki.partner_ca_cert().display()),
        ])
    };
    let o = args(&gateway.cert);
    assert_eq!(o.code, Some(1), "a leaf as the mesh CA: {}", o.stderr);
    assert!(o.stderr.contains("sds: the mesh CA: ") && o.stderr.contains("is not a CA"), "{}", o.stderr);
    let o = args(&t.pki.mesh_ca_cert());
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let mut written: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    written.sort();
    assert_eq!(written, ["acme-ca.yaml", "gateway-cert.yaml", "mesh-ca.yaml"]);

    // Two destinations sharing one CA secret (--ca-secret) must be given the same CA.
    let (partner_ca, mesh_ca) = (t.pki.partner_ca_cert(), t.pki.mesh_ca_cert());
    let shared = |other_ca: &Path| {
        run(&[
            "sds",
            "--out",
            out.to_str().unwrap(),
            "--ca",
            &format!("acme={}", partner_ca.display()),
            "--ca",
            &format!("globex={}", other_ca.display()),
            "--ca-secret",
            "acme=partners-ca",
            "--ca-secret",
            "globex=partners-ca",
        ])
    };
    let o = shared(&mesh_ca);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("sds: --ca globex: acme and globex share the CA secret partners-ca but were given different CAs"),
        "{}",
        o.stderr
    );
    assert_eq!(shared(&partner_ca).code, Some(0));
    assert!(out.join("partners-ca.yaml").is_file());

    // An identity the policy does not declare cannot be checked either.
    let o = run(&[
        "sds",
        "--out",
        out.to_str().unwrap(),
        "--policy",
        t.policy.to_str().unwrap(),
        "--identity",
        &identity("acme.unknown", (&invoicer.cert, &invoicer.key)),
    ]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains("sds: --identity acme.unknown: the policy declares no identity acme.unknown"),
        "{}",
        o.stderr
    );
}
