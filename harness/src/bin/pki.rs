//! `pki <dir>`: write the test PKI (harness::pki) into `<dir>`, e.g. `<run>/pki` for docker-compose.

use egress_identity_harness::pki::{layout, Pki, EXTERNAL_IDENTITIES, STANDARD_WORKLOADS};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!("usage: pki <dir>    (writes the test PKI into <dir>, e.g. ./run/pki)");
        std::process::exit(2);
    };
    match Pki::generate(dir) {
        Ok(pki) => {
            println!("test PKI written to {}", pki.dir().display());
            println!("  mesh CA           {}", layout::MESH_CA_CERT);
            println!("  gateway server    {}", layout::GATEWAY_CERT);
            println!("  partner CA        {}", layout::PARTNER_CA_CERT);
            println!("  external server   {}", layout::EXTERNAL_SERVER_CERT);
            for id in EXTERNAL_IDENTITIES {
                println!(
                    "  external identity {}/{id}.crt (CN={id})",
                    layout::EXTERNAL_DIR
                );
            }
            for (name, spiffe) in STANDARD_WORKLOADS {
                println!(
                    "  workload          {}/{name}.crt ({spiffe})",
                    layout::WORKLOADS_DIR
                );
            }
        }
        Err(e) => {
            eprintln!("pki: {e}");
            std::process::exit(1);
        }
    }
}
