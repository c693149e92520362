//! The compression payload (`decompress`, `decompress_into`) that every blob and sealed object
//! holds. A raw payload decodes to its bytes; a zstd payload to exactly its declared length, at
//! most `MAX_BLOB_LEN`. Memory is bounded by what the payload can produce: RFC 8878 blocks
//! regenerate at most 128 KiB from at least 4 bytes (an RLE block), so no more than 32 KiB per
//! input byte may be held, however much the payload declares. Decoding into a dirty reused buffer
//! gives the same bytes, and the input itself survives a compress/decompress round trip.
#![no_main]

use std::sync::Once;

use ferry_fuzz::{bounded, le32};
use libfuzzer_sys::fuzz_target;
use repo_format::{MAX_BLOB_LEN, compress_into, decompress, decompress_into};

static WARM: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // The thread's zstd contexts are made on first use and kept: not part of any one decode.
    WARM.call_once(|| {
        let mut p = Vec::new();
        compress_into(&[7; 100], 3, &mut p);
        decompress(&p).unwrap();
    });
    match bounded("decompress", data.len(), 32 << 10, || decompress(data)) {
        Ok(out) => {
            assert!(out.len() <= MAX_BLOB_LEN);
            match data[0] {
                0 => assert_eq!(out, data[1..]),
                1 => assert_eq!(Some(out.len() as u32), le32(data, 1)),
                t => panic!("compression type {t} decoded"),
            }
            let mut dirty = vec![0xa5; data.len() % 300];
            decompress_into(data, &mut dirty).unwrap();
            assert_eq!(dirty, out);
        }
        Err(e) => assert!(e.is_corrupt(), "{e}"),
    }
    let level = i32::from(data.first().copied().unwrap_or(0) % 4);
    let mut p = Vec::new();
    compress_into(data, level, &mut p);
    assert!(p.len() <= data.len() + 1, "compression made the payload longer than raw");
    assert_eq!(decompress(&p).unwrap(), data);
});
