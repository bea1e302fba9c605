//! The byte-level reading and writing the codec is built from: [`Put`] appends
//! little-endian fixed-width values and length-prefixed strings to a buffer, [`Reader`]
//! reads them back, and [`CodecError`] says what was wrong and where.
//!
//! Invariants:
//! - a leaf: imports nothing of `codec` or `state`;
//! - [`Reader`] never panics and never reads past the payload: each read checks the
//!   bytes left first and fails with the offset where it stood.

use std::fmt;

use crate::msg::ConnRef;

/// Bytes that cannot be decoded: what was expected, and where in the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    /// What was wrong.
    pub what: &'static str,
    /// Byte offset within the payload.
    pub at: usize,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (payload byte {})", self.what, self.at)
    }
}

impl std::error::Error for CodecError {}

/// Appends fixed-width values to a byte buffer.
pub(super) trait Put {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn f64(&mut self, v: f64);
    fn str(&mut self, v: &str);
    fn conn(&mut self, c: ConnRef);
    fn opt_conn(&mut self, c: Option<ConnRef>);
}

impl Put for Vec<u8> {
    fn u8(&mut self, v: u8) {
        self.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    fn str(&mut self, v: &str) {
        self.u32(u32::try_from(v.len()).expect("string under 4 GiB"));
        self.extend_from_slice(v.as_bytes());
    }
    fn conn(&mut self, c: ConnRef) {
        self.u16(c.loop_id);
        self.u64(c.session);
    }
    fn opt_conn(&mut self, c: Option<ConnRef>) {
        match c {
            Some(c) => {
                self.u8(1);
                self.conn(c);
            }
            None => self.u8(0),
        }
    }
}

/// Reads fixed-width values from a payload.
pub(super) struct Reader<'a> {
    /// The payload.
    bytes: &'a [u8],
    /// Next byte to read.
    pub(super) at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    pub(super) fn fail<T>(&self, what: &'static str) -> Result<T, CodecError> {
        Err(CodecError { what, at: self.at })
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.bytes.len() - self.at < n {
            return self.fail("payload ends early");
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    pub(super) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub(super) fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub(super) fn f64(&mut self) -> Result<f64, CodecError> {
        Ok(f64::from_bits(self.u64()?))
    }
    pub(super) fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => self.fail("flag is neither 0 nor 1"),
        }
    }
    pub(super) fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.u32()? as usize;
        let at = self.at;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError {
            what: "string is not UTF-8",
            at,
        })
    }
    pub(super) fn conn(&mut self) -> Result<ConnRef, CodecError> {
        Ok(ConnRef {
            loop_id: self.u16()?,
            session: self.u64()?,
        })
    }
    pub(super) fn opt_conn(&mut self) -> Result<Option<ConnRef>, CodecError> {
        Ok(if self.bool()? {
            Some(self.conn()?)
        } else {
            None
        })
    }
    pub(super) fn end(&self) -> Result<(), CodecError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            self.fail("bytes after the end")
        }
    }
}
