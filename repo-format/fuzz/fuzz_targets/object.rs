//! Sealed objects (`config`, `index/<id>`, `snapshots/<id>`, `gc/<id>`, pack headers): `object::check_header`
//! and `object::open` under a fixed key. Input: mode byte, type byte, then the object. Even mode:
//! the bytes as read from storage: the header check must classify them exactly as FORMAT.md
//! 5.2 says, and only a well-framed object opens. Odd mode: the bytes are a
//! payload sealed at level `mode / 2 % 4`; it must open to itself, and not as another type or
//! with a flipped bit.
#![no_main]

use ferry_fuzz::{bounded, master};
use libfuzzer_sys::fuzz_target;
use repo_format::{Error, FORMAT_VERSION};
use repo_format::fuzzing::{object_check_header, object_open, object_seal};

fn stored(t: u8, b: &[u8]) {
    let mk = master();
    for t in 1..=6 {
        let r = object_check_header(b, t).unwrap();
        let framed = b.len() >= 8 && &b[..5] == b"FERRY" && b[5] == t;
        let version = if framed { u16::from_le_bytes([b[6], b[7]]) } else { 0 };
        match r {
            Ok(v) => assert!(framed && v == version && (1..=FORMAT_VERSION).contains(&version)),
            Err(Error::UnsupportedVersion { found, supported }) => {
                assert!(framed && found == version.into() && version > FORMAT_VERSION);
                assert_eq!(supported, u32::from(FORMAT_VERSION));
            }
            Err(e) => assert!(e.is_corrupt() && (!framed || version == 0), "{e}"),
        }
    }
    if let Some(r) = bounded("object::open", b.len(), 2, || object_open(&mk, t, b)) {
        // Only an object sealed under the fixed key opens (the seeds hold some).
        let header = object_check_header(b, t).unwrap();
        match r {
            Ok(_) => assert!(matches!(header, Ok(_)), "an object with a bad header opened"),
            Err(e) => {
                assert!(e.is_corrupt() || matches!((&e, header), (Error::UnsupportedVersion { .. }, Err(_))), "{e}")
            }
        }
    }
}

fn sealed(level: i32, t: u8, payload: &[u8]) {
    let mk = master();
    let Some(obj) = object_seal(&mk, t, payload, level) else { return };
    // The payload may be zstd-compressed far below its length: it is the input that justifies.
    let plain = bounded("object::open", obj.len() + payload.len(), 2, || object_open(&mk, t, &obj)).unwrap();
    assert_eq!(plain.expect("a sealed object opens"), payload);
    let other = t % 6 + 1;
    assert!(object_open(&mk, other, &obj).unwrap().is_err(), "type {t} opened as type {other}");
    if let Some(&f) = payload.first() {
        let mut bad = obj.clone();
        let i = (usize::from(f) * 31 + payload.len()) % bad.len();
        bad[i] ^= 0x80;
        assert!(object_open(&mk, t, &bad).unwrap().is_err(), "byte {i} flipped still opens");
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, t, rest @ ..] = data else { return };
    if mode % 2 == 0 { stored(*t, rest) } else { sealed(i32::from(mode / 2 % 4), *t, rest) }
});
