//! A cluster.toml: parsed and checked into typed values, or an error naming the key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = model::Config::parse(text) {
            assert!(cfg.partitions() > 0);
        }
    }
});
