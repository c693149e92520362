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

/// Most bytes `compress_into` needs beyond the data's length: room for a zstd frame as long as
/// the data after its 5-byte header while it is tried (a kept payload is at most `1 + len`).
pub const MAX_OVERHEAD: usize = 5;

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

/// A zstd context for `level`. Levels 2–4 (the default, 3, among them) get hash and chain
/// tables of at most 2^15 and 2^14 entries (128 and 64 KiB). zstd's own for inputs above
/// 256 KiB are 2^16–2^18 entries each (level 3: 512 + 256 KiB, level 4: 1 + 1 MiB): those do not
/// fit a core's L2 cache, so most probes missed it, and compressing threads sharing a core
/// evicted each other's tables. zstd still shrinks them for small inputs. Measured on the peer
/// corpus's blobs (its sources file by file and its VM image's chunks, 964 MB, one thread):
/// zstd 13 % faster at level 3 for 1.4 % more output. Four backups of the corpus at once took
/// 5 % less CPU than one after another in two runs, where before they took from 2 % less to 19 %
/// more in four.
fn compressor(level: i32) -> zstd::bulk::Compressor<'static> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level).expect("zstd context");
    if (2..=4).contains(&level) {
        c.set_parameter(CParameter::HashLog(SMALL_HASH_LOG)).expect("zstd hash log");
        c.set_parameter(CParameter::ChainLog(SMALL_CHAIN_LOG)).expect("zstd chain log");
    }
    c
}

const SMALL_HASH_LOG: u32 = 15;
const SMALL_CHAIN_LOG: u32 = 14;

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
        // the header, which is not zeroed first. Exactly: a reused buffer grown by doubling
        // would pass what its owner keeps (`writer::PAYLOAD_KEEP`).
        out.reserve_exact(data.len().min(bound));
        let n = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().map(|(l, _)| *l) != Some(level) {
                *c = Some((level, compressor(level)));
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
    out.reserve_exact(1 + data.len());
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

    /// Chunks up to the largest (4 MiB), text-like and with long repeats, round-trip at every
    /// fast level, those with capped tables (2–4) among them, and shrink.
    #[test]
    fn big_chunks_round_trip_at_the_fast_levels() {
        let words: Vec<&[u8]> = vec![b"fn ", b"let ", b"mut ", b"impl ", b"self", b".iter()", b"; ", b"\n    "];
        let mut data = Vec::new();
        let mut x = 12345u32;
        while data.len() < 4 << 20 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.extend_from_slice(words[(x >> 16) as usize % words.len()]);
            if x % 97 == 0 {
                let from = (x as usize) % data.len();
                let rep = data[from..data.len().min(from + 3000)].to_vec();
                data.extend_from_slice(&rep);
            }
        }
        for level in 1..=5 {
            let mut out = Vec::new();
            compress_into(&data, level, &mut out);
            assert_eq!(out[0], ZSTD, "level {level}");
            assert!(out.len() < data.len() / 3, "level {level}: {} of {}", out.len(), data.len());
            assert_eq!(decompress(&out).unwrap(), data, "level {level}");
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
    fn a_reused_buffer_grows_to_exactly_the_payload() {
        // Grown by doubling, a buffer reused for a blob just above its size would double, and
        // its owner would drop it instead of keeping it.
        let mut random = vec![0u8; (1 << 20) + 1];
        crate::crypto::random_bytes(&mut random);
        let text = b"line after line after line\n".repeat(40_000);
        for data in [&random, &text] {
            let mut out = Vec::with_capacity(1 << 20);
            compress_into(data, 3, &mut out);
            assert!(out.capacity() <= data.len() + 5, "{} bytes of capacity for {}", out.capacity(), data.len());
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
