//! The edge's hello, right after the preamble exchange (see `codec`): the edge names
//! itself so the owner can label the link's counters (`stats`) with the peer's node id.
//!
//! ```text
//! hello := len:u8 node_id[len]      (edge -> owner, once, after both preambles)
//! ```

use std::io::{self, Read, Write};

/// Writes the hello for `node_id` (cut to 255 bytes: node ids have at most 64).
pub fn write_hello(w: &mut impl Write, node_id: &str) -> io::Result<()> {
    let id = node_id.as_bytes();
    let id = &id[..id.len().min(u8::MAX as usize)];
    let mut out = Vec::with_capacity(1 + id.len());
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    w.write_all(&out)
}

/// Reads a hello: the peer's node id (invalid UTF-8 replaced; the stats check it).
pub fn read_hello(r: &mut impl Read) -> io::Result<String> {
    let mut len = [0u8; 1];
    r.read_exact(&mut len)?;
    let mut id = vec![0u8; len[0] as usize];
    r.read_exact(&mut id)?;
    Ok(String::from_utf8_lossy(&id).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_a_short_one_fails() {
        let mut buf = Vec::new();
        write_hello(&mut buf, "eu-1").unwrap();
        assert_eq!(buf, b"\x04eu-1");
        assert_eq!(read_hello(&mut &buf[..]).unwrap(), "eu-1");
        assert!(read_hello(&mut &buf[..3]).is_err());
    }
}
