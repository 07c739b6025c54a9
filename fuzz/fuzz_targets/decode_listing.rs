//! Any bytes as a listing body (a proxy's HTML, a truncated or hostile JSON): decoding
//! returns `Ok` or `Err`, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(listing) = loopwatch::api::wire::decode_listing(body) {
        // What a successful decode promises the diff: unique, non-empty ids.
        let mut ids = std::collections::HashSet::new();
        for c in &listing {
            assert!(!c.id.is_empty());
            assert!(ids.insert(c.id.as_str()), "duplicate id {:?}", c.id);
            let _ = c.uri();
        }
    }
});
