#![no_main]
//! `Config::load` on structured JSON: the demo policy with random structural mutations, or a document
//! generated from the configuration's vocabulary.
use arbitrary::Unstructured;
use egress_identity_fuzz::{check_config_load, gen_config, mutate, BASE_POLICY};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let doc = (|| {
        let mut doc = if u.arbitrary::<bool>()? {
            serde_json::from_str(BASE_POLICY).unwrap_or_default()
        } else {
            gen_config(&mut u)?
        };
        mutate(&mut u, &mut doc)?;
        Ok::<_, arbitrary::Error>(doc)
    })();
    if let Ok(doc) = doc {
        if let Ok(bytes) = serde_json::to_vec(&doc) {
            check_config_load(&bytes);
        }
    }
});
