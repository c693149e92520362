//! Explicit little-endian encoding of the format's records.
//!
//! Every integer on storage goes through here, so nothing depends on the host's byte order.
//! Strings and byte strings are a length prefix then the bytes. The reader never panics on short
//! or hostile input: every read is bounds-checked and returns `Corrupt`.

use crate::error::{Error, Result};
use crate::id::{ID_LEN, Id};

/// Appends encoded values to a byte vector.
#[derive(Debug, Default)]
pub(crate) struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    #[cfg(test)]
    pub fn new() -> Self {
        Enc { buf: Vec::new() }
    }
    pub fn with_capacity(n: usize) -> Self {
        Enc { buf: Vec::with_capacity(n) }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn id(&mut self, id: &Id) -> &mut Self {
        self.buf.extend_from_slice(&id.0);
        self
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// u16 length then bytes; `Invalid` if longer than 65535.
    pub fn bytes16(&mut self, b: &[u8]) -> Result<&mut Self> {
        let n = u16::try_from(b.len())
            .map_err(|_| Error::Invalid(format!("a name of {} bytes is longer than 65535", b.len())))?;
        self.u16(n);
        self.buf.extend_from_slice(b);
        Ok(self)
    }
    /// u32 length then bytes.
    pub fn bytes32(&mut self, b: &[u8]) -> Result<&mut Self> {
        let n = u32::try_from(b.len())
            .map_err(|_| Error::Invalid(format!("a value of {} bytes is longer than 4 GiB", b.len())))?;
        self.u32(n);
        self.buf.extend_from_slice(b);
        Ok(self)
    }
    /// Reserve a u32 length slot; `end_len` writes the number of bytes written since.
    pub fn begin_len(&mut self) -> usize {
        let at = self.buf.len();
        self.u32(0);
        at
    }
    pub fn end_len(&mut self, at: usize) {
        let n = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
}

/// Reads encoded values from a byte slice, bounds-checked.
#[derive(Debug)]
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Dec<'a> {
    /// `what` names the record in errors ("tree", "index", …).
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Dec { buf, pos: 0, what }
    }
    fn short(&self, need: usize) -> Error {
        Error::corrupt(
            self.what,
            format!("truncated: needs {need} bytes at offset {}, {} left", self.pos, self.remaining()),
        )
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(self.short(n));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    pub fn id(&mut self) -> Result<Id> {
        Ok(Id(self.arr::<ID_LEN>()?))
    }
    pub fn bytes16(&mut self) -> Result<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub fn bytes32(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string16(&mut self) -> Result<String> {
        let b = self.bytes16()?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::corrupt(self.what, "a text field is not UTF-8"))
    }
    /// A count of items each at least `min_item` bytes long, checked against what is left so a
    /// hostile count cannot make the caller allocate more than the input justifies.
    pub fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(Error::corrupt(
                self.what,
                format!("count {n} does not fit in the {} bytes left", self.remaining()),
            ));
        }
        Ok(n)
    }
    /// A sub-reader over a u32-length-prefixed record.
    pub fn record(&mut self) -> Result<Dec<'a>> {
        let b = self.bytes32()?;
        Ok(Dec::new(b, self.what))
    }
    /// Fail if anything is left (for records whose length is exact).
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(Error::corrupt(self.what, format!("{} unexpected trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_endian_on_every_host() {
        let mut e = Enc::new();
        e.u32(0x0403_0201).u64(0x0807_0605_0403_0201).u16(0x0201);
        assert_eq!(e.buf, [1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2]);
        let mut d = Dec::new(&e.buf, "test");
        assert_eq!(d.u32().unwrap(), 0x0403_0201);
        assert_eq!(d.u64().unwrap(), 0x0807_0605_0403_0201);
        assert_eq!(d.u16().unwrap(), 0x0201);
        assert!(d.u8().is_err());
    }

    #[test]
    fn hostile_count_is_rejected_before_allocation() {
        let mut e = Enc::new();
        e.u32(u32::MAX);
        let mut d = Dec::new(&e.buf, "test");
        assert!(d.count(1).unwrap_err().is_corrupt());
    }
}
