//! Any bytes as the answer of the routes beside the listing (`source`, `files`, `deploy`):
//! the first byte picks the decoder, the rest is the body. Decoding returns `Ok` or `Err`,
//! never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopwatch::api::{Source, wire};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(Source::Volume { volume_ref, path }) = wire::decode_source(body) {
                // A volume source always carries where to pull it from.
                let _ = (volume_ref.len(), path.len());
            }
        }
        1 => {
            if let Ok(page) = wire::decode_files(body) {
                let total: i64 = page
                    .files
                    .iter()
                    .fold(0i64, |t, f| t.saturating_add(f.size_bytes.max(0)));
                assert!(total >= 0);
                let _ = page.next_page_token;
            }
        }
        _ => {
            let _ = wire::decode_deployed(body);
        }
    }
});
