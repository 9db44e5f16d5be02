//! The source revision the module reports (`egress_identity_build_info{revision}`): `$EGRESS_IDENTITY_REVISION`
//! if set (e.g. a release built from a tarball), else the git commit (12 hex digits), else `unknown`. The same
//! commit gives the same value wherever it is built (the module stays reproducible).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=EGRESS_IDENTITY_REVISION");
    // A new commit, or a switch of branch, changes these.
    for path in ["../.git/HEAD", "../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let revision = std::env::var("EGRESS_IDENTITY_REVISION").ok().filter(|r| !r.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!("cargo:rustc-env=EGRESS_IDENTITY_REVISION={}", revision.unwrap_or_else(|| "unknown".into()));
}
