//! Any bytes as the plugin configuration: loading never panics; a refused
//! configuration says why.
#![no_main]

use envoy_webhooks::testing::plugin::Plugin;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Plugin::load(data, |name| (name == "TOKEN").then(|| "t0ken".to_string())) {
        Ok(plugin) => {
            let _ = plugin.matcher.field_tree();
        }
        Err(problems) => assert!(!problems.is_empty()),
    }
});
