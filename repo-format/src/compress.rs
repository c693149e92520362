//! Per-blob zstd compression, kept raw when it does not shrink.
//!
//! Encoded payload: `0x00 ‖ raw bytes`, or `0x01 ‖ raw length (u32 LE) ‖ zstd frame`. The raw
//! length bounds the decompression buffer, so a hostile blob cannot make a reader allocate more
//! than `MAX_BLOB_LEN`.

use std::cell::RefCell;

use crate::error::{Error, Result};

/// Largest plaintext a blob may have (chunks are at most a few MiB; trees are split below this).
pub const MAX_BLOB_LEN: usize = 64 << 20;

const RAW: u8 = 0;
const ZSTD: u8 = 1;

/// Most plaintext bytes one byte of a zstd frame can produce: RFC 8878 blocks regenerate at most
/// 128 KiB each and take at least 4 bytes (an RLE block: 3-byte header and the byte). A declared
/// length above `frame length × ZSTD_MAX_RATIO` cannot be right, and must not be reserved. (libzstd's
/// one-shot decoder does not itself check that an RLE block stays within 128 KiB; such a frame is
/// not RFC 8878 and no zstd writer makes one.)
const ZSTD_MAX_RATIO: usize = (128 << 10) / 4;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Encode `data` into `out` (appended): zstd at `level` if that is smaller, raw otherwise.
/// Level 0 means no compression.
pub fn compress_into(data: &[u8], level: i32, out: &mut Vec<u8>) {
    let start = out.len();
    if level != 0 && data.len() >= 64 {
        out.push(ZSTD);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let header = out.len();
        let bound = zstd::zstd_safe::compress_bound(data.len());
        // Only worth it if it saves something: room for the raw size (more capacity may be
        // there; the length check below decides). zstd writes into the spare capacity after
        // the header, which is not zeroed first.
        out.reserve(data.len().min(bound));
        let n = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().map(|(l, _)| *l) != Some(level) {
                *c = Some((level, zstd::bulk::Compressor::new(level).expect("zstd context")));
            }
            let (_, comp) = c.as_mut().expect("set above");
            let mut after_header = std::io::Cursor::new(&mut *out);
            after_header.set_position(header as u64);
            comp.compress_to_buffer(data, &mut after_header).ok()
        });
        match n {
            Some(n) if n + 5 < data.len() + 1 => {
                out.truncate(header + n);
                return;
            }
            _ => out.truncate(start),
        }
    }
    out.push(RAW);
    out.extend_from_slice(data);
}

/// Decode a payload made by `compress_into`.
pub fn decompress(payload: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_into(payload, &mut out)?;
    Ok(out)
}

/// The decoded bytes of `payload`: a stored (raw) payload's own bytes, without a copy;
/// otherwise decompressed into `out` (as `decompress_into`).
pub(crate) fn decoded<'a>(payload: &'a [u8], out: &'a mut Vec<u8>) -> Result<&'a [u8]> {
    match payload.split_first() {
        Some((&RAW, raw)) => Ok(raw),
        _ => {
            decompress_into(payload, out)?;
            Ok(out)
        }
    }
}

/// As `decompress`, into `out` (cleared first; its capacity is reused).
pub fn decompress_into(payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    match payload.first() {
        Some(&RAW) => {
            out.extend_from_slice(&payload[1..]);
            Ok(())
        }
        Some(&ZSTD) => {
            if payload.len() < 5 {
                return Err(Error::corrupt("blob", "compressed payload shorter than its header"));
            }
            let raw_len = u32::from_le_bytes(payload[1..5].try_into().expect("4 bytes")) as usize;
            if raw_len > MAX_BLOB_LEN {
                return Err(Error::corrupt("blob", format!("declared length {raw_len} exceeds the limit")));
            }
            let frame = payload.len() - 5;
            if raw_len > frame.saturating_mul(ZSTD_MAX_RATIO) {
                return Err(Error::corrupt(
                    "blob",
                    format!("declared length {raw_len} is more than a zstd frame of {frame} bytes can hold"),
                ));
            }
            // Exactly (the length is known): a reused buffer does not double past it.
            out.reserve_exact(raw_len);
            let n = DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                let d = d.get_or_insert_with(|| zstd::bulk::Decompressor::new().expect("zstd context"));
                d.decompress_to_buffer(&payload[5..], out)
            });
            let n = n.map_err(|e| Error::corrupt("blob", format!("zstd: {e}")))?;
            if n != raw_len || out.len() != raw_len {
                return Err(Error::corrupt("blob", "decompressed length differs from the declared length"));
            }
            Ok(())
        }
        Some(t) => Err(Error::corrupt("blob", format!("unknown compression type {t}"))),
        None => Err(Error::corrupt("blob", "empty payload")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..20000), level in 0i32..6) {
            let mut out = Vec::new();
            compress_into(&data, level, &mut out);
            prop_assert!(out.len() <= data.len() + 1);
            prop_assert_eq!(decompress(&out).unwrap(), data);
        }

        #[test]
        fn repetitive_round_trip(byte in any::<u8>(), n in 0usize..100_000) {
            let data = vec![byte; n];
            let mut out = Vec::new();
            compress_into(&data, 3, &mut out);
            prop_assert_eq!(decompress(&out).unwrap(), data);
        }
    }

    /// One reused output buffer, dirty from the previous blob, still gives each blob exactly.
    #[test]
    fn decompress_into_a_reused_buffer() {
        let blobs: Vec<Vec<u8>> = vec![
            b"abc".repeat(50_000),
            vec![7u8; 10],
            (0..70_000u32).map(|i| i.wrapping_mul(2654435761) as u8).collect(),
        ];
        let mut out = vec![0xee; 1 << 20];
        for b in &blobs {
            let mut payload = Vec::new();
            compress_into(b, 3, &mut payload);
            decompress_into(&payload, &mut out).unwrap();
            assert_eq!(&out, b);
        }
    }

    #[test]
    fn compresses_text_keeps_random_raw() {
        let text = b"the quick brown fox jumps over the lazy dog ".repeat(100);
        let mut out = Vec::new();
        compress_into(&text, 3, &mut out);
        assert_eq!(out[0], ZSTD);
        assert!(out.len() < text.len() / 5);
        let mut random = vec![0u8; 4096];
        crate::crypto::random_bytes(&mut random);
        let mut out = Vec::new();
        compress_into(&random, 3, &mut out);
        assert_eq!(out[0], RAW);
    }

    /// A payload of a few bytes declaring a length of up to 64 MiB made the reader reserve the
    /// whole declared length before zstd looked at the frame: 64 MiB for 6 bytes.
    #[test]
    fn declared_length_beyond_what_the_frame_can_hold_is_refused_before_reserving() {
        let mut out = Vec::new();
        let e = decompress_into(&[ZSTD, 0, 0, 0, 4, 0x28], &mut out).unwrap_err();
        assert!(e.is_corrupt() && e.to_string().contains("can hold"), "{e}");
        assert!(out.capacity() < 1 << 20, "reserved {} bytes", out.capacity());
        // The densest frames zstd writes (RLE blocks of zeros, within 5 % of the bound) still open.
        let zeros = vec![0u8; 16 << 20];
        let mut payload = Vec::new();
        compress_into(&zeros, 19, &mut payload);
        assert!((payload.len() - 5) * ZSTD_MAX_RATIO >= zeros.len());
        assert_eq!(decompress(&payload).unwrap(), zeros);
    }

    #[test]
    fn hostile_lengths_are_corrupt_not_panics() {
        assert!(decompress(&[]).is_err());
        assert!(decompress(&[1, 0xff, 0xff, 0xff, 0xff, 0]).is_err());
        assert!(decompress(&[1, 10, 0, 0, 0, 1, 2, 3]).is_err());
        assert!(decompress(&[9]).is_err());
    }
}
