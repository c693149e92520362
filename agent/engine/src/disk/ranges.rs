//! Byte ranges of a disk from CSI SnapshotMetadata output, and chunk arithmetic.
//!
//! Accepted input (`--changed-blocks FILE`, `--allocated-blocks FILE`):
//! * JSON: one or more objects (concatenated or one per line), each the JSON form of a
//!   `GetMetadataDeltaResponse`/`GetMetadataAllocatedResponse`: `block_metadata` (or
//!   `blockMetadata`) is a list of `{byte_offset, size_bytes}` (or `byteOffset`, `sizeBytes`;
//!   numbers or decimal strings, as protobuf's JSON mapping writes 64-bit integers);
//! * text: one range per line, `OFFSET LENGTH` (decimal or 0x hex), `#` comments.

use anyhow::{Context, Result, bail};

/// Sorted, merged, non-empty `(offset, length)` ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u64, u64)>);

fn num(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn parse_int(s: &str) -> Result<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).with_context(|| format!("{s:?} is not a number")),
        None => s.parse().with_context(|| format!("{s:?} is not a number")),
    }
}

impl Ranges {
    pub fn new(mut v: Vec<(u64, u64)>) -> Ranges {
        v.retain(|r| r.1 > 0);
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (o, l) in v {
            match out.last_mut() {
                Some((lo, ll)) if o <= *lo + *ll => *ll = (*ll).max(o + l - *lo),
                _ => out.push((o, l)),
            }
        }
        Ranges(out)
    }

    /// Parse a file's content (see the module doc).
    pub fn parse(text: &str) -> Result<Ranges> {
        let t = text.trim_start();
        let mut v = Vec::new();
        if t.starts_with('{') || t.starts_with('[') {
            for obj in serde_json::Deserializer::from_str(t).into_iter::<serde_json::Value>() {
                let obj = obj.context("not valid JSON")?;
                let items: Vec<&serde_json::Value> = match &obj {
                    serde_json::Value::Array(a) => a.iter().collect(),
                    o => vec![o],
                };
                for o in items {
                    let list = o
                        .get("block_metadata")
                        .or_else(|| o.get("blockMetadata"))
                        .and_then(|b| b.as_array())
                        .context("a JSON object without block_metadata")?;
                    for b in list {
                        let off = b.get("byte_offset").or_else(|| b.get("byteOffset")).and_then(num);
                        let len = b.get("size_bytes").or_else(|| b.get("sizeBytes")).and_then(num);
                        match (off, len) {
                            (Some(o), Some(l)) => v.push((o, l)),
                            _ => bail!("a block_metadata entry without byte_offset and size_bytes: {b}"),
                        }
                    }
                }
            }
        } else {
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let mut f = line.split_whitespace();
                let (Some(o), Some(l), None) = (f.next(), f.next(), f.next()) else {
                    bail!("line {}: expected `OFFSET LENGTH`, found {line:?}", n + 1);
                };
                v.push((
                    parse_int(o).with_context(|| format!("line {}", n + 1))?,
                    parse_int(l).with_context(|| format!("line {}", n + 1))?,
                ));
            }
        }
        Ok(Ranges::new(v))
    }

    pub fn read(path: &std::path::Path) -> Result<Ranges> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the block list {}", path.display()))?;
        Ranges::parse(&text).with_context(|| format!("block list {}", path.display()))
    }

    /// Does any range overlap `off .. off+len`? (`cursor` makes a forward scan O(1) amortized.)
    pub fn overlaps(&self, off: u64, len: u64, cursor: &mut usize) -> bool {
        while *cursor < self.0.len() && self.0[*cursor].0 + self.0[*cursor].1 <= off {
            *cursor += 1;
        }
        self.0.get(*cursor).is_some_and(|&(o, _)| o < off + len)
    }

    pub fn max_end(&self) -> u64 {
        self.0.last().map(|(o, l)| o + l).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_stream_and_text_and_merges() {
        let j = r#"{"block_metadata_type":"FIXED_LENGTH","volume_capacity_bytes":"1048576","block_metadata":[{"byte_offset":"4096","size_bytes":"4096"},{"byte_offset":0,"size_bytes":4096}]}
{"blockMetadata":[{"byteOffset":65536,"sizeBytes":512}]}"#;
        assert_eq!(Ranges::parse(j).unwrap(), Ranges(vec![(0, 8192), (65536, 512)]));
        let t = "# changed\n0x1000 4096\n100 10\n105 20\n";
        assert_eq!(Ranges::parse(t).unwrap(), Ranges(vec![(100, 25), (4096, 4096)]));
        assert!(Ranges::parse("1 2 3").is_err());
        assert!(Ranges::parse(r#"{"x":1}"#).is_err());
    }

    #[test]
    fn overlap_scan() {
        let r = Ranges::new(vec![(10, 5), (100, 1)]);
        let mut c = 0;
        assert!(!r.overlaps(0, 10, &mut c));
        assert!(r.overlaps(10, 1, &mut c));
        assert!(!r.overlaps(15, 85, &mut c));
        assert!(r.overlaps(99, 2, &mut c));
        assert!(!r.overlaps(101, 1000, &mut c));
    }
}
