//! `pki <dir> [<sds-dir>]`: write the test PKI (harness::pki) into `<dir>`, e.g. `<run>/pki`, and the
//! gateway's SDS resources (harness::sds) into `<sds-dir>`, by default the directory `sds` next to `<dir>`
//! (`envoy/pki` -> `envoy/sds` for docker-compose, `<run>/pki` -> `<run>/sds`).

use std::path::{Path, PathBuf};

use egress_identity_harness::pki::{layout, Pki, EXTERNAL_IDENTITIES, STANDARD_WORKLOADS};
use egress_identity_harness::sds;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, sds_dir) = match args.as_slice() {
        [dir] => {
            let parent = Path::new(dir).parent().unwrap_or(Path::new("."));
            (dir.clone(), parent.join(sds::SDS_DIR_IN_RUN_DIR))
        }
        [dir, sds_dir] => (dir.clone(), PathBuf::from(sds_dir)),
        _ => {
            eprintln!("usage: pki <dir> [<sds-dir>]    (writes the test PKI into <dir>, e.g. ./run/pki, and the");
            eprintln!("       gateway's SDS resources into <sds-dir>, default: sds next to <dir>, e.g. ./run/sds)");
            std::process::exit(2);
        }
    };
    let result = Pki::generate(&dir).and_then(|pki| {
        let written = sds::write_gateway_secrets(&pki, &sds_dir)?;
        Ok((pki, written))
    });
    match result {
        Ok((pki, written)) => {
            println!("test PKI written to {}", pki.dir().display());
            println!("  mesh CA           {}", layout::MESH_CA_CERT);
            println!("  gateway server    {}", layout::GATEWAY_CERT);
            println!("  partner CA        {}", layout::PARTNER_CA_CERT);
            println!("  external server   {}", layout::EXTERNAL_SERVER_CERT);
            for id in EXTERNAL_IDENTITIES {
                println!("  external identity {}/{id}.crt (CN={id})", layout::EXTERNAL_DIR);
            }
            for (name, spiffe) in STANDARD_WORKLOADS {
                println!("  workload          {}/{name}.crt ({spiffe})", layout::WORKLOADS_DIR);
            }
            println!("gateway SDS resources written to {}", sds_dir.display());
            for path in written {
                println!("  {}", path.display());
            }
        }
        Err(e) => {
            eprintln!("pki: {e}");
            std::process::exit(1);
        }
    }
}
